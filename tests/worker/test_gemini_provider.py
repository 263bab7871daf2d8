"""The Gemini provider against Gemini's REST API: respx on the wire, a fake server end to end."""

import asyncio
import base64
import contextlib
import dataclasses
import io
import itertools
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import respx
from PIL import Image

from shared.contract import ImageParams
from tests.conftest import jpeg_bytes, png_bytes
from tests.fakes.gemini import (
    KEYWORD_BLOCK_PROMPT,
    KEYWORD_FLAKY,
    KEYWORD_QUOTA,
    KEYWORD_TEXT_ONLY,
    KEYWORD_UNSAFE,
    FakeClock,
    FakeGemini,
)
from worker.providers import build_provider
from worker.providers.base import (
    GenerationBlocked,
    GenerationFailed,
    GenerationRequest,
    Reference,
)
from worker.providers.gemini import (
    GAVE_UP,
    GeminiAuthError,
    GeminiProvider,
    PromptBlocked,
    RateLimiter,
    image_size_for,
    retry_delay,
)
from worker.settings import WorkerSettings

pytestmark = pytest.mark.anyio

BASE = "https://gemini.test"
KEY = "AIzaTEST-key-must-never-be-logged-123"
FLASH = "gemini-2.5-flash-image"
PRO = "gemini-3-pro-image"
PNG = png_bytes(32, 18, (10, 120, 200))
JPEG = jpeg_bytes(24, 24, (200, 200, 10))

Responder = Callable[[httpx.Request], httpx.Response]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_part(data: bytes, mime: str = "image/png", thought: bool = False) -> dict[str, Any]:
    part: dict[str, Any] = {"inlineData": {"mimeType": mime, "data": b64(data)}}
    if thought:
        part["thought"] = True
    return part


def ok_body(*parts: dict[str, Any], finish: str = "STOP", model: str = FLASH) -> dict[str, Any]:
    candidate: dict[str, Any] = {"finishReason": finish, "index": 0}
    if parts:
        candidate["content"] = {"role": "model", "parts": list(parts)}
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": 9,
            "candidatesTokenCount": 1290,
            "totalTokenCount": 1299,
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
        },
        "modelVersion": f"{model}-001",
    }


def ok(*parts: dict[str, Any], finish: str = "STOP") -> httpx.Response:
    return httpx.Response(200, json=ok_body(*parts, finish=finish))


def error(code: int, status: str, message: str, *details: dict[str, Any]) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "status": status, "details": list(details)}}
    return httpx.Response(code, json=body)


def request_of(
    prompt: str = "a red fox in snow",
    *,
    model: str = FLASH,
    seed: int = 42,
    aspect_ratio: str | None = "16:9",
    image_size: str | None = None,
    negative_prompt: str | None = None,
    references: list[Reference] | None = None,
    time_budget_s: float | None = None,
) -> GenerationRequest:
    params = ImageParams(
        model=model,
        aspect_ratio=aspect_ratio,
        image_size=image_size,
        seed=seed,
        negative_prompt=negative_prompt,
    )
    return GenerationRequest(
        prompt=prompt, params=params, references=references or [], time_budget_s=time_budget_s
    )


def body_of(call: Any) -> dict[str, Any]:
    return json.loads(call.request.content)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def route(api: respx.MockRouter, model: str = FLASH) -> respx.Route:
    return api.post(f"/v1beta/models/{model}:generateContent")


@pytest.fixture
async def make(clock: FakeClock) -> AsyncIterator[Callable[..., GeminiProvider]]:
    made: list[GeminiProvider] = []

    def factory(**overrides: Any) -> GeminiProvider:
        options: dict[str, Any] = {
            "base_url": BASE,
            "clock": clock,
            "rng": random.Random(7),
            "rpm": 1_000_000,
            "max_attempts": 5,
        }
        options.update(overrides)
        provider = GeminiProvider(options.pop("api_key", KEY), **options)
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.aclose()


# --- responses -------------------------------------------------------------------------


async def test_text_and_image_response(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    calls = route(api).mock(return_value=ok({"text": "Here you go."}, image_part(PNG)))
    provider = make(timeout_s=30)
    image = await provider.generate(request_of(negative_prompt="blur, text"))

    assert image.data == PNG
    assert image.content_type == "image/png"
    assert image.model_version == f"{FLASH}-001"
    assert image.usage == {
        "promptTokenCount": 9,
        "candidatesTokenCount": 1290,
        "totalTokenCount": 1299,
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
    }
    assert image.attempts == 1
    assert image.cost_usd == pytest.approx(0.039)

    sent = calls.calls.last.request
    assert sent.url.path == f"/v1beta/models/{FLASH}:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.extensions["timeout"] == {"connect": 30, "read": 30, "write": 30, "pool": 30}
    body = json.loads(sent.content)
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "a red fox in snow\n\nAvoid: blur, text"}]}
    ]
    # gemini-2.5-flash-image has one size: no imageSize, which it would not accept
    assert body["generationConfig"] == {
        "responseModalities": ["IMAGE"],
        "imageConfig": {"aspectRatio": "16:9"},
        "seed": 42,
    }


async def test_two_references_go_first_as_inline_data(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    calls = route(api, PRO).mock(return_value=ok(image_part(JPEG, "image/jpeg")))
    references = [Reference(PNG, "image/png"), Reference(JPEG, "image/jpeg")]
    image = await make().generate(
        request_of("merge them", model=PRO, image_size="2K", references=references, seed=7)
    )

    assert image.content_type == "image/jpeg"
    assert image.data == JPEG
    assert image.cost_usd == pytest.approx(0.134)
    body = body_of(calls.calls.last)
    parts = body["contents"][0]["parts"]
    assert len(parts) == 3
    assert parts[0]["inlineData"]["mime_type"] == "image/png"
    assert base64.urlsafe_b64decode(parts[0]["inlineData"]["data"]) == PNG
    assert parts[1]["inlineData"]["mime_type"] == "image/jpeg"
    assert base64.urlsafe_b64decode(parts[1]["inlineData"]["data"]) == JPEG
    assert parts[2] == {"text": "merge them"}
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    assert body["generationConfig"]["seed"] == 7


@pytest.mark.parametrize(
    ("model", "requested", "sent"),
    [
        (FLASH, None, None),
        (FLASH, "1K", None),
        ("gemini-3.1-flash-lite-image", "1K", None),
        (PRO, None, "1K"),
        (PRO, "4K", "4K"),
        ("gemini-3.1-flash-image", "512", "512"),
        ("some-future-image-model", "2K", "2K"),
        ("some-future-image-model", None, None),
    ],
)
def test_image_size_only_where_the_model_has_a_choice(
    model: str, requested: str | None, sent: str | None
) -> None:
    assert image_size_for(model, requested) == sent


async def test_thought_image_is_skipped(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    route(api, PRO).mock(
        return_value=ok(
            {"text": "Planning the composition.", "thought": True},
            image_part(PNG, thought=True),
            {"text": "Done."},
            image_part(JPEG, "image/jpeg"),
        )
    )
    image = await make().generate(request_of(model=PRO))
    assert image.data == JPEG
    assert image.content_type == "image/jpeg"


async def test_prompt_blocked(api: respx.MockRouter, make: Callable[..., GeminiProvider]) -> None:
    body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}}
    calls = route(api).mock(return_value=httpx.Response(200, json=body))
    with pytest.raises(GenerationBlocked) as caught:
        await make().generate(request_of())
    assert caught.value.reason == "prompt blocked: SAFETY"
    assert caught.value.attempts == 1
    assert calls.call_count == 1


async def test_image_safety_blocks_without_retry(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    calls = route(api).mock(return_value=ok(finish="IMAGE_SAFETY"))
    with pytest.raises(GenerationBlocked) as caught:
        await make().generate(request_of())
    assert caught.value.reason == "output blocked: IMAGE_SAFETY"
    assert not isinstance(caught.value, PromptBlocked)
    assert calls.call_count == 1


async def test_no_image_reports_the_models_text_truncated(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    words = "I cannot draw that, but here is a description. " * 20
    route(api).mock(return_value=ok({"text": words}, finish="NO_IMAGE"))
    with pytest.raises(GenerationBlocked) as caught:
        await make().generate(request_of())
    reason = caught.value.reason
    assert reason.startswith("output blocked: NO_IMAGE; model said: I cannot draw that")
    assert reason.endswith("…")
    assert len(reason) < 300


async def test_text_only_with_stop_is_blocked_too(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    route(api).mock(return_value=ok({"text": "Sure! Imagine a fox."}))
    with pytest.raises(GenerationBlocked, match=r"no image returned \(finish reason STOP\)"):
        await make().generate(request_of())


NOT_SAFETY = {
    "MAX_TOKENS": ok({"text": "Let me think about the composition..."}, finish="MAX_TOKENS"),
    "MALFORMED_RESPONSE": ok(finish="MALFORMED_RESPONSE"),
    "UNEXPECTED_TOOL_CALL": ok(finish="UNEXPECTED_TOOL_CALL"),
    "empty 200": httpx.Response(200, json={}),
    "thought image only": ok(
        {"text": "Sketching.", "thought": True}, image_part(PNG, thought=True)
    ),
    "not JSON": httpx.Response(200, text="<html>gateway</html>"),
}
NOT_SAFETY_REASONS = {
    "MAX_TOKENS": "no image returned (finish reason MAX_TOKENS); model said: Let me think about"
    " the composition...",
    "MALFORMED_RESPONSE": "no image returned (finish reason MALFORMED_RESPONSE)",
    "UNEXPECTED_TOOL_CALL": "no image returned (finish reason UNEXPECTED_TOOL_CALL)",
    "empty 200": "no image returned: the response has no candidates",
    "thought image only": "no image returned (finish reason STOP)",
    "not JSON": "Gemini answered HTTP 200 with a body that is not JSON",
}


@pytest.mark.parametrize("case", list(NOT_SAFETY))
async def test_an_answer_without_an_image_that_is_no_safety_block_is_retried_then_fails(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock, case: str
) -> None:
    calls = route(api).mock(return_value=NOT_SAFETY[case])
    with pytest.raises(GenerationFailed) as caught:
        await make(max_attempts=3).generate(request_of())
    assert not isinstance(caught.value, GenerationBlocked)
    assert calls.call_count == 3 and caught.value.attempts == 3
    assert caught.value.reason == f"Gemini failed 3 times, last: {NOT_SAFETY_REASONS[case]}"
    assert len(clock.sleeps) == 2  # backed off like any transient error


@pytest.mark.parametrize("case", list(NOT_SAFETY))
async def test_an_answer_without_an_image_then_one_with(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], case: str
) -> None:
    route(api).mock(side_effect=[NOT_SAFETY[case], ok(image_part(PNG))])
    image = await make().generate(request_of())
    assert (image.data, image.attempts) == (PNG, 2)


# --- errors and retries ----------------------------------------------------------------


async def test_429_waits_the_retry_delay_google_gives(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    quota = error(
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for metric generate_content_requests",
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "47s"},
    )
    calls = route(api).mock(side_effect=[quota, ok(image_part(PNG))])
    started = time.monotonic()
    image = await make().generate(request_of())

    assert image.attempts == 2
    assert calls.call_count == 2
    assert clock.sleeps == [pytest.approx(47.0)]
    assert time.monotonic() - started < 5  # the fake clock, not a real 47 s


async def test_the_wait_before_a_retry_runs_inside_the_requests_idle(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    """The runner lends the image's slot while the provider waits before a retry: the wait
    (and only it) runs inside `request.idle()`."""
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}
    calls = route(api).mock(
        side_effect=[error(429, "RESOURCE_EXHAUSTED", "quota", retry_info), ok(image_part(PNG))]
    )
    idle_spans: list[tuple[float, float, int]] = []

    @contextlib.asynccontextmanager
    async def idle() -> AsyncIterator[None]:
        entered, sent = clock.now, calls.call_count
        yield
        idle_spans.append((entered, clock.now, sent))

    request = dataclasses.replace(request_of(), idle=idle)
    image = await make().generate(request)

    assert image.attempts == 2
    [(entered, left, sent)] = idle_spans
    assert left - entered == pytest.approx(3.0) and sent == 1  # the 429's wait, after call 1


async def test_a_lone_429_holds_back_its_own_call_and_three_in_a_row_every_call(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    """A throttled call now and then waits its own retry delay and pauses nobody else; 429s
    in a row mean the quota is spent, and then every call waits the announced delay."""
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}
    quota = error(429, "RESOURCE_EXHAUSTED", "quota", retry_info)
    calls = route(api).mock(side_effect=[quota, ok(image_part(PNG)), quota, quota, quota])
    provider = make(max_attempts=1)  # each 429 fails its image at once: no retry sleep
    with pytest.raises(GenerationFailed):
        await provider.generate(request_of("throttled"))
    await provider.generate(request_of("next"))
    assert max(clock.sleeps, default=0) < 1  # only the limiter's spacing: no 30 s hold
    for _ in range(3):
        with pytest.raises(GenerationFailed):
            await provider.generate(request_of("spent"))
    calls.mock(side_effect=None, return_value=ok(image_part(PNG)))
    await provider.generate(request_of("after"))
    assert max(clock.sleeps) == pytest.approx(30, abs=0.01)  # three in a row: every call waits


async def test_429s_count_as_a_streak_by_the_order_calls_were_sent_not_answered(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    """Gemini answers 429s at once while other calls run the model: every other call sent
    throttled comes back as three 429s in a row before any success, which is not a spent
    quota (nobody waits 30 s); three calls sent one after another all throttled is."""
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}
    quota = error(429, "RESOURCE_EXHAUSTED", "quota", retry_info)
    model_runs = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["contents"][0]["parts"][-1]["text"]
        if prompt.startswith("slow"):
            await model_runs.wait()
            return ok(image_part(PNG))
        return quota if prompt.startswith("throttled") else ok(image_part(PNG))

    route(api).mock(side_effect=answer)
    provider = make(max_attempts=1)  # each 429 fails its image at once: no retry sleep
    tasks = []
    for n in range(3):  # sent: throttled, slow, throttled, slow, throttled, slow
        for kind in ("throttled", "slow"):
            tasks.append(asyncio.create_task(provider.generate(request_of(f"{kind} {n}"))))
            await settle()
    assert sum(task.done() for task in tasks) == 3  # the three 429s, before any success
    await provider.generate(request_of("next"))
    assert max(clock.sleeps, default=0) < 1  # no hold: the quota is not spent
    model_runs.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert [isinstance(outcome, GenerationFailed) for outcome in outcomes] == [True, False] * 3
    for n in range(3):  # now three sent in a row, all throttled
        with pytest.raises(GenerationFailed):
            await provider.generate(request_of(f"throttled again {n}"))
    await provider.generate(request_of("after"))
    assert max(clock.sleeps) == pytest.approx(30, abs=0.01)


async def test_429_without_retry_info_backs_off_and_a_huge_delay_fails_at_once(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    calls = route(api).mock(
        side_effect=[error(429, "RESOURCE_EXHAUSTED", "slow down"), ok(image_part(PNG))]
    )
    assert (await make().generate(request_of())).attempts == 2
    assert len(clock.sleeps) == 1 and 0 <= clock.sleeps[0] <= 1.0
    assert calls.call_count == 2

    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "86400s"}
    calls.mock(side_effect=None, return_value=error(429, "RESOURCE_EXHAUSTED", "daily", retry_info))
    with pytest.raises(GenerationFailed, match="asks to wait 86400 s") as caught:
        await make().generate(request_of())
    assert caught.value.attempts == 1


def test_retry_delay_parsing() -> None:
    def details(*entries: dict[str, Any]) -> dict[str, Any]:
        return {"error": {"code": 429, "details": list(entries)}}

    info = "type.googleapis.com/google.rpc.RetryInfo"
    assert retry_delay(details({"@type": info, "retryDelay": "47s"})) == 47.0
    assert retry_delay(details({"@type": info, "retryDelay": "1.5s"})) == 1.5
    assert retry_delay(details({"@type": info, "retryDelay": {"seconds": 2, "nanos": 5e8}})) == 2.5
    quota_first = details({"@type": "x.QuotaFailure"}, {"@type": info, "retryDelay": "3s"})
    assert retry_delay(quota_first) == 3
    assert retry_delay(details({"@type": info, "retryDelay": "soon"})) is None
    assert retry_delay({"message": "no details"}) is None
    assert retry_delay(None) is None


async def test_503_twice_then_success(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    busy = error(503, "UNAVAILABLE", "The model is overloaded.")
    calls = route(api).mock(side_effect=[busy, busy, ok(image_part(PNG))])
    image = await make().generate(request_of())

    assert image.attempts == 3
    assert calls.call_count == 3
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 1.0  # full jitter under 1 s, then under 2 s
    assert 0 <= clock.sleeps[1] <= 2.0


class Ceiling(random.Random):
    """Jitter that always picks the top of its range: the longest backoff allowed."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_a_429s_retry_delay_does_not_double_a_later_503s_backoff(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}
    quota = error(429, "RESOURCE_EXHAUSTED", "quota", retry_info)
    busy = error(503, "UNAVAILABLE", "The model is overloaded.")
    route(api).mock(side_effect=[quota, busy, busy, ok(image_part(PNG))])
    image = await make(rng=Ceiling(), backoff_base_s=0.5).generate(request_of())
    assert image.attempts == 4
    assert clock.sleeps == [pytest.approx(3.0), pytest.approx(0.5), pytest.approx(1.0)]


async def test_5xx_gives_up_after_max_attempts(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    calls = route(api).mock(return_value=error(500, "INTERNAL", "An internal error occurred."))
    with pytest.raises(GenerationFailed) as caught:
        await make(max_attempts=3).generate(request_of())
    assert calls.call_count == 3
    assert caught.value.attempts == 3
    assert "500 INTERNAL: An internal error occurred." in caught.value.reason


async def test_400_fails_at_once_with_googles_message(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    message = "Unsupported aspect ratio: 7:3"
    calls = route(api).mock(return_value=error(400, "INVALID_ARGUMENT", message))
    with pytest.raises(GenerationFailed) as caught:
        await make().generate(request_of())
    assert not isinstance(caught.value, GeminiAuthError)
    assert message in caught.value.reason
    assert caught.value.attempts == 1
    assert calls.call_count == 1
    assert clock.sleeps == []


async def test_read_timeout_is_retried_then_fails(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    calls = route(api).mock(side_effect=httpx.ReadTimeout("read timed out"))
    with pytest.raises(GenerationFailed) as caught:
        await make(max_attempts=3).generate(request_of())
    assert calls.call_count == 3
    assert caught.value.attempts == 3
    assert "timed out (ReadTimeout)" in caught.value.reason
    assert len(clock.sleeps) == 2


async def test_a_hanging_request_hits_the_overall_deadline(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return ok(image_part(PNG))

    answers: list[Any] = [hang, ok(image_part(PNG))]
    route(api).mock(side_effect=answers)
    started = time.monotonic()
    image = await make(timeout_s=0.2).generate(request_of())
    assert image.attempts == 2
    assert time.monotonic() - started < 5


async def test_connection_error_is_retried(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    calls = route(api).mock(side_effect=[httpx.ConnectError("refused"), ok(image_part(PNG))])
    assert (await make().generate(request_of())).attempts == 2
    assert calls.call_count == 2


@pytest.mark.parametrize(
    "rejection",
    [
        error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
        error(403, "PERMISSION_DENIED", "Generative Language API has not been used in project"),
        error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"},
        ),
    ],
    ids=["401", "403", "400-API_KEY_INVALID"],
)
async def test_bad_key_fails_fast_from_then_on(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], rejection: httpx.Response
) -> None:
    calls = route(api).mock(return_value=rejection)
    provider = make()
    with pytest.raises(GeminiAuthError) as first:
        await provider.generate(request_of())
    assert first.value.attempts == 1
    assert "Gemini rejected the API key" in first.value.reason
    assert "GEMINI_API_KEY" in first.value.reason

    with pytest.raises(GeminiAuthError) as second:
        await provider.generate(request_of("another image"))
    assert second.value.reason == first.value.reason
    assert second.value.attempts == 0
    assert calls.call_count == 1


async def test_bad_key_stops_images_already_in_flight(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    calls = route(api).mock(return_value=error(401, "UNAUTHENTICATED", "bad credentials"))
    provider = make(concurrency=1)
    outcomes = await asyncio.gather(
        *(provider.generate(request_of(f"image {n}")) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(outcome, GeminiAuthError) for outcome in outcomes)
    assert calls.call_count == 1


async def test_missing_key_fails_every_image_without_a_request(api: respx.MockRouter) -> None:
    calls = route(api).mock(return_value=ok(image_part(PNG)))
    provider = build_provider(
        WorkerSettings(provider="gemini", gemini_api_key=None, gemini_base_url=BASE)
    )
    with pytest.raises(GeminiAuthError, match="no Gemini API key configured"):
        await provider.generate(request_of())
    assert calls.call_count == 0
    await provider.aclose()


async def test_build_provider_wires_the_settings(api: respx.MockRouter) -> None:
    calls = api.post(f"/v1alpha/models/{FLASH}:generateContent").mock(
        return_value=ok(image_part(PNG))
    )
    settings = WorkerSettings(
        gemini_api_key=KEY, gemini_base_url=BASE, gemini_api_version="v1alpha", gemini_timeout_s=9
    )
    provider = build_provider(settings)
    assert isinstance(provider, GeminiProvider)
    assert provider.name == "gemini"
    await provider.generate(request_of())
    assert calls.calls.last.request.extensions["timeout"]["read"] == 9
    await provider.aclose()


async def test_the_key_never_reaches_logs_or_reasons(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    busy = error(503, "UNAVAILABLE", "overloaded")
    route(api).mock(
        side_effect=[busy, ok(image_part(PNG)), error(401, "UNAUTHENTICATED", "bad key")]
    )
    provider = make()
    await provider.generate(request_of())
    with pytest.raises(GeminiAuthError) as caught:
        await provider.generate(request_of())
    assert "retry 1/4" in caplog.text  # the retry was logged ...
    assert "Gemini rejected the API key" in caplog.text  # ... and so was the bad key
    assert KEY not in caplog.text
    assert KEY not in caught.value.reason


async def test_a_key_the_server_echoes_is_scrubbed_from_reasons_and_logs(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = error(503, "UNAVAILABLE", f"backend busy for key {KEY}")
    refused = error(400, "INVALID_ARGUMENT", f"request with key {KEY} is invalid")
    route(api).mock(side_effect=[echo, refused])
    with pytest.raises(GenerationFailed) as caught:
        await make().generate(request_of())
    assert "request with key [redacted] is invalid" in caught.value.reason
    assert KEY not in caught.value.reason and KEY not in str(caught.value)
    assert "backend busy for key [redacted]" in caplog.text
    assert KEY not in caplog.text


async def test_an_unexpected_error_becomes_a_failure_without_the_key(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    route(api).mock(side_effect=RuntimeError(f"something broke near {KEY}"))
    with pytest.raises(GenerationFailed) as caught:
        await make().generate(request_of())
    assert caught.value.reason == (
        "unexpected error: RuntimeError: something broke near [redacted]"
    )
    assert caught.value.attempts == 1
    assert "RuntimeError" in caplog.text and KEY not in caplog.text


@pytest.mark.parametrize(
    ("key", "why"),
    [("\u201cAIzaTEST-key\u201d", "non-ASCII characters"), ("AIzaTEST\tkey", "control characters")],
)
async def test_an_unsendable_key_fails_every_image_without_a_request(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], key: str, why: str
) -> None:
    calls = route(api).mock(return_value=ok(image_part(PNG)))
    provider = make(api_key=key)
    for _ in range(2):
        with pytest.raises(GeminiAuthError) as caught:
            await provider.generate(request_of())
        assert caught.value.reason == f"GEMINI_API_KEY is not a valid key ({why})"
        assert caught.value.attempts == 0
    assert calls.call_count == 0


# --- the time budget (the dispatch deadline) -------------------------------------------


async def test_no_retry_wait_runs_past_the_time_budget(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "299s"}
    calls = route(api).mock(return_value=error(429, "RESOURCE_EXHAUSTED", "quota", retry_info))
    started = clock.monotonic()
    with pytest.raises(GenerationFailed) as caught:
        await make().generate(request_of(time_budget_s=540))
    assert caught.value.reason.startswith(f"{GAVE_UP} (after 2 attempts, last: 429")
    assert not isinstance(caught.value, GenerationBlocked)
    assert calls.call_count == 2 and caught.value.attempts == 2
    assert clock.sleeps == [pytest.approx(299)]  # the second 299 s would pass 540
    assert clock.monotonic() - started < 540


async def test_each_request_timeout_is_capped_to_the_time_left(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return ok(image_part(PNG))

    route(api).mock(side_effect=hang)
    started = time.monotonic()
    with pytest.raises(GenerationFailed) as caught:
        await make(timeout_s=120).generate(request_of(time_budget_s=0.3))
    assert time.monotonic() - started < 5  # 0.3 s, not 120 s
    assert caught.value.reason == f"{GAVE_UP} (after 1 attempts, last: no answer within 0.3 s)"
    assert caught.value.attempts == 1 and clock.sleeps == []


async def test_a_rate_limiter_wait_past_the_time_budget_fails_at_once(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    calls = route(api).mock(return_value=ok(image_part(PNG)))
    provider = make(rpm=1)  # one request a minute
    assert (await provider.generate(request_of(time_budget_s=30))).attempts == 1
    with pytest.raises(GenerationFailed, match="waiting for the rate limit would pass"):
        await provider.generate(request_of(time_budget_s=30))
    assert calls.call_count == 1 and clock.sleeps == []


async def test_retries_within_the_time_budget_still_happen(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    busy = error(503, "UNAVAILABLE", "The model is overloaded.")
    route(api).mock(side_effect=[busy, busy, ok(image_part(PNG))])
    image = await make().generate(request_of(time_budget_s=540))
    assert image.attempts == 3 and len(clock.sleeps) == 2


# --- throughput ------------------------------------------------------------------------


async def test_rate_limiter_spaces_concurrent_requests(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    sent_at: list[float] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent_at.append(clock.monotonic())
        return ok(image_part(PNG))

    route(api).mock(side_effect=record)
    provider = make(rpm=120)  # one request every 0.5 s
    await asyncio.gather(*(provider.generate(request_of(f"image {n}")) for n in range(6)))

    gaps = [later - earlier for earlier, later in itertools.pairwise(sent_at)]
    assert gaps == [pytest.approx(0.5)] * 5
    await provider.generate(request_of("one more, later"))
    assert sent_at[-1] - sent_at[-2] == pytest.approx(0.5)


def test_rate_limiter_burst_and_hold_off(clock: FakeClock) -> None:
    limiter = RateLimiter(rpm=60, clock=clock, burst=3)
    assert [limiter.reserve() for _ in range(5)] == [0, 0, 0, 1, 2]
    clock.now += 10  # idle: the burst refills
    assert [limiter.reserve() for _ in range(3)] == [0, 0, 0]
    limiter.hold_off(30)
    assert limiter.reserve() == pytest.approx(28)  # 30 s out, minus the 2-slot tolerance


async def test_hold_off_stops_callers_that_already_waited_for_their_slot(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(rpm=60, clock=clock)  # a slot a second
    start = clock.monotonic()
    sent: list[float] = []

    async def send() -> None:
        await limiter.acquire()
        sent.append(clock.monotonic() - start)

    await send()  # slot 0: answered 429 "retryDelay 30s" ...
    waiting = [asyncio.create_task(send()) for _ in range(3)]  # slots 1, 2, 3 reserved
    await asyncio.sleep(0)
    assert clock.monotonic() == start  # nobody has woken yet
    limiter.hold_off(30)  # ... which arrives now
    await asyncio.gather(*waiting)
    assert sent[0] == 0
    assert all(at >= 30 for at in sent[1:]), sent  # none inside the announced wait
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent[1:])]
    assert gaps == [pytest.approx(1.0)] * 2  # and still spaced after it


async def test_concurrency_cap(api: respx.MockRouter, make: Callable[..., GeminiProvider]) -> None:
    in_flight = 0
    peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return ok(image_part(PNG))

    calls = route(api).mock(side_effect=slow)
    provider = make(concurrency=2)
    await asyncio.gather(*(provider.generate(request_of(f"image {n}")) for n in range(6)))
    assert calls.call_count == 6
    assert peak == 2


async def settle() -> None:
    """Let every task run until it waits on something (no real time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_a_retried_call_goes_before_a_waiting_first_call(
    api: respx.MockRouter, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    """One call slot: an image back from its 429's retry delay takes the next free slot ahead
    of an image that has waited longer for its first call."""
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
    quota = error(429, "RESOURCE_EXHAUSTED", "quota", retry_info)
    throttled_answers, held_answers = asyncio.Event(), asyncio.Event()
    sent: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["contents"][0]["parts"][-1]["text"]
        sent.append(prompt)
        if prompt == "throttled" and sent.count(prompt) == 1:
            await throttled_answers.wait()
            return quota
        if prompt == "held":
            await held_answers.wait()
        return ok(image_part(PNG))

    route(api).mock(side_effect=answer)
    provider = make(concurrency=1)
    throttled = asyncio.create_task(provider.generate(request_of("throttled")))
    await settle()
    held = asyncio.create_task(provider.generate(request_of("held")))
    await settle()
    fresh = asyncio.create_task(provider.generate(request_of("fresh")))
    await settle()
    throttled_answers.set()  # its 429 frees the slot for "held"; it waits 1 s, then queues
    await settle()
    assert sent == ["throttled", "held"] and max(clock.sleeps) == pytest.approx(1.0)
    held_answers.set()
    images = await asyncio.gather(throttled, held, fresh)
    assert sent == ["throttled", "held", "throttled", "fresh"]
    assert [image.attempts for image in images] == [2, 1, 1]


# --- reseed on block -------------------------------------------------------------------


async def test_reseed_on_block_tries_once_with_the_next_seed(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    calls = route(api).mock(side_effect=[ok(finish="IMAGE_SAFETY"), ok(image_part(PNG))])
    image = await make(reseed_on_block=True).generate(request_of(seed=41))
    assert image.data == PNG
    assert image.attempts == 2
    assert [body_of(call)["generationConfig"]["seed"] for call in calls.calls] == [41, 42]


async def test_reseed_gives_up_after_one_more_block(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    calls = route(api).mock(return_value=ok(finish="IMAGE_PROHIBITED_CONTENT"))
    with pytest.raises(GenerationBlocked) as caught:
        await make(reseed_on_block=True).generate(request_of())
    assert caught.value.attempts == 2
    assert calls.call_count == 2


async def test_no_reseed_by_default_nor_for_blocked_prompts(
    api: respx.MockRouter, make: Callable[..., GeminiProvider]
) -> None:
    calls = route(api).mock(return_value=ok(finish="IMAGE_SAFETY"))
    with pytest.raises(GenerationBlocked):
        await make().generate(request_of())
    assert calls.call_count == 1

    blocked = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}
    calls.mock(return_value=httpx.Response(200, json=blocked))
    with pytest.raises(PromptBlocked):
        await make(reseed_on_block=True).generate(request_of())
    assert calls.call_count == 2


# --- the whole client stack over real HTTP ---------------------------------------------


async def test_end_to_end_against_a_fake_gemini_server(clock: FakeClock) -> None:
    with FakeGemini(api_key=KEY, retry_delay="3s", flaky_failures=2) as fake:
        provider = GeminiProvider(KEY, base_url=fake.base_url, clock=clock, rng=random.Random(1))
        prompts = ["a lighthouse", KEYWORD_FLAKY, KEYWORD_QUOTA, KEYWORD_UNSAFE, KEYWORD_TEXT_ONLY]
        prompts.append(KEYWORD_BLOCK_PROMPT)
        outcomes = await asyncio.gather(
            *(provider.generate(request_of(p, model=PRO, aspect_ratio="16:9")) for p in prompts),
            return_exceptions=True,
        )
        plain, flaky, quota, unsafe, text_only, blocked = outcomes
        for image in (plain, flaky, quota):
            assert not isinstance(image, BaseException), image
            assert image.content_type == "image/png"
            with Image.open(io.BytesIO(image.data)) as decoded:
                assert decoded.width > decoded.height  # 16:9, and not the square thought image
            assert image.usage is not None and image.usage["candidatesTokenCount"] == 1290
        assert not isinstance(plain, BaseException)
        assert not isinstance(flaky, BaseException)
        assert not isinstance(quota, BaseException)
        assert (plain.attempts, flaky.attempts, quota.attempts) == (1, 3, 2)
        assert 3.0 in clock.sleeps
        assert isinstance(unsafe, GenerationBlocked)
        assert unsafe.reason == "output blocked: IMAGE_SAFETY"
        assert isinstance(text_only, GenerationBlocked)
        assert "NO_IMAGE; model said: I can only describe" in text_only.reason
        assert isinstance(blocked, PromptBlocked)

        call = fake.calls_for("a lighthouse")[0]
        assert (call.api_version, call.model, call.api_key) == ("v1beta", PRO, KEY)
        assert call.body["generationConfig"] == {
            "responseModalities": ["IMAGE"],
            "imageConfig": {"aspectRatio": "16:9", "imageSize": "1K"},
            "seed": 42,
        }
        assert [c.status for c in fake.calls_for(KEYWORD_FLAKY)] == [503, 503, 200]
        await provider.aclose()

        wrong = GeminiProvider("not-the-key", base_url=fake.base_url, clock=clock)
        with pytest.raises(GeminiAuthError, match="API key not valid"):
            await wrong.generate(request_of())
        with pytest.raises(GeminiAuthError):
            await wrong.generate(request_of())
        assert len([c for c in fake.calls if c.api_key == "not-the-key"]) == 1
        await wrong.aclose()


def test_price_depends_on_image_size_where_the_table_says_so() -> None:
    from shared.model_table import image_price

    assert image_price("gemini-3-pro-image", "1K") == 0.134
    assert image_price("gemini-3-pro-image", "4K") == 0.24
    assert image_price("gemini-3.1-flash-image", "4K") == 0.151
    assert image_price("gemini-2.5-flash-image", None) == 0.039
    assert image_price("no-such-model") is None
