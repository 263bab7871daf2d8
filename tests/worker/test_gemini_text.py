"""Text tasks on the Gemini provider: JSON mode with a response schema, on the wire (respx
through the provider's own httpx clients) and against the fake Gemini over real HTTP."""

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import respx

from control_plane.services.personas import persona_schema
from tests.fakes.gemini import (
    KEYWORD_BAD_JSON,
    KEYWORD_FLAKY,
    KEYWORD_QUOTA,
    KEYWORD_UNSAFE,
    FakeClock,
    FakeGemini,
)
from worker.providers.base import GenerationBlocked, GenerationFailed, TextRequest
from worker.providers.gemini import GeminiProvider, PromptBlocked

pytestmark = pytest.mark.anyio

BASE = "https://gemini.test"
KEY = "AIzaTEST-text-key-never-logged-456"
TEXT_MODEL = "gemini-2.5-flash"
SCHEMA = persona_schema({"gender": "female", "age_range": "25-35"})
ANSWER = {
    "name": "Mei Chen",
    "age": 31,
    "gender": "female",
    "ethnicity": "East Asian",
    "bio": "Mei designs bridges.",
    "appearance": "long straight black hair, brown eyes",
    "style": "minimalist",
    "tags": ["architect", "minimalist", "cycling"],
}


def text_request(prompt: str = "invent a persona", schema: Any = SCHEMA) -> TextRequest:
    return TextRequest(prompt=prompt, model=TEXT_MODEL, seed=7, response_schema=schema)


def answer(*texts: str, finish: str = "STOP") -> httpx.Response:
    parts = [{"text": "Let me think.", "thought": True}, *({"text": t} for t in texts)]
    candidate: dict[str, Any] = {"finishReason": finish, "index": 0}
    if texts:
        candidate["content"] = {"role": "model", "parts": parts}
    body = {
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 90},
        "modelVersion": f"{TEXT_MODEL}-001",
    }
    return httpx.Response(200, json=body)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wire() -> Iterator[respx.Route]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router.post(f"/v1beta/models/{TEXT_MODEL}:generateContent")


@pytest.fixture
async def make(clock: FakeClock) -> AsyncIterator[Callable[..., GeminiProvider]]:
    made: list[GeminiProvider] = []

    def factory(**options: Any) -> GeminiProvider:
        defaults = {"base_url": BASE, "clock": clock, "rng": random.Random(3), "rpm": 10**6}
        provider = GeminiProvider(KEY, **{**defaults, **options})
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.aclose()


async def test_json_mode_sends_the_schema_and_reads_the_answer(
    wire: respx.Route, make: Callable[..., GeminiProvider]
) -> None:
    wire.mock(return_value=answer(json.dumps(ANSWER)))
    written = await make().generate_text(text_request())
    assert json.loads(written.text) == ANSWER  # the thought part is left out
    assert written.model_version == f"{TEXT_MODEL}-001" and written.attempts == 1
    assert written.usage == {"promptTokenCount": 40, "candidatesTokenCount": 90}
    body = json.loads(wire.calls.last.request.content)
    assert body["contents"] == [{"role": "user", "parts": [{"text": "invent a persona"}]}]
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json" and config["seed"] == 7
    schema = config["responseSchema"]
    assert schema["type"] == "OBJECT" and schema["required"] == SCHEMA["required"]
    assert schema["properties"]["gender"]["enum"] == ["female"]
    assert (schema["properties"]["age"]["minimum"], schema["properties"]["age"]["maximum"]) == (
        25,
        35,
    )
    assert schema["properties"]["tags"]["items"]["type"] == "STRING"
    assert "responseModalities" not in config
    assert SCHEMA["properties"]["age"]["type"] == "integer"  # the task's schema is untouched


async def test_plain_text_without_a_schema(
    wire: respx.Route, make: Callable[..., GeminiProvider]
) -> None:
    wire.mock(return_value=answer("A quiet harbour at dusk."))
    written = await make().generate_text(text_request(schema=None))
    assert written.text == "A quiet harbour at dusk."
    config = json.loads(wire.calls.last.request.content)["generationConfig"]
    assert config == {"seed": 7}


async def test_429_and_503_are_retried_as_for_images(
    wire: respx.Route, make: Callable[..., GeminiProvider], clock: FakeClock
) -> None:
    quota = {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "quota",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}],
        }
    }
    busy = {"error": {"code": 503, "status": "UNAVAILABLE", "message": "overloaded"}}
    wire.side_effect = [
        httpx.Response(429, json=quota),
        httpx.Response(503, json=busy),
        answer(json.dumps(ANSWER)),
    ]
    written = await make().generate_text(text_request())
    assert written.attempts == 3 and json.loads(written.text)["name"] == "Mei Chen"
    assert 12.0 in clock.sleeps


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        ([answer(finish="MAX_TOKENS")] * 2, "no complete text returned (finish reason MAX_TOKENS)"),
        ([answer('{"name": "Mei')] * 2, "the answer is not valid JSON"),
    ],
)
async def test_unusable_answers_are_retried_then_fail(
    wire: respx.Route,
    make: Callable[..., GeminiProvider],
    replies: list[httpx.Response],
    expected: str,
) -> None:
    wire.side_effect = replies
    with pytest.raises(GenerationFailed, match="Gemini failed 2 times") as failed:
        await make(max_attempts=2).generate_text(text_request())
    assert expected in failed.value.reason and wire.call_count == 2


async def test_blocks_are_not_retried(
    wire: respx.Route, make: Callable[..., GeminiProvider]
) -> None:
    wire.mock(return_value=answer(finish="SAFETY"))
    with pytest.raises(GenerationBlocked, match="answer blocked: SAFETY"):
        await make().generate_text(text_request())
    wire.mock(return_value=httpx.Response(200, json={"promptFeedback": {"blockReason": "OTHER"}}))
    with pytest.raises(PromptBlocked, match="prompt blocked: OTHER"):
        await make().generate_text(text_request())
    assert wire.call_count == 2


async def test_against_the_fake_gemini_over_http(clock: FakeClock) -> None:
    with FakeGemini(api_key=KEY, retry_delay="2s", flaky_failures=1) as fake:
        provider = GeminiProvider(
            KEY, base_url=fake.base_url, clock=clock, rng=random.Random(1), max_attempts=3
        )
        prompts = ["persona 1", KEYWORD_FLAKY, KEYWORD_QUOTA, KEYWORD_UNSAFE, KEYWORD_BAD_JSON]
        outcomes = await asyncio.gather(
            *(provider.generate_text(text_request(prompt)) for prompt in prompts),
            return_exceptions=True,
        )
        plain, flaky, quota, unsafe, bad_json = outcomes
        for written in (plain, flaky, quota):
            assert not isinstance(written, BaseException), written
            persona = json.loads(written.text)
            assert set(persona) == set(SCHEMA["required"])
            assert persona["gender"] == "female" and 25 <= persona["age"] <= 35
        assert isinstance(unsafe, GenerationBlocked) and "SAFETY" in unsafe.reason
        assert isinstance(bad_json, GenerationFailed)
        assert "not valid JSON" in bad_json.reason
        assert [c.status for c in fake.calls_for(KEYWORD_FLAKY)] == [503, 200]
        assert len(fake.calls_for(KEYWORD_BAD_JSON)) == 3
        call = fake.calls_for("persona 1")[0]
        assert (call.model, call.api_key) == (TEXT_MODEL, KEY)
        assert call.body["generationConfig"]["responseMimeType"] == "application/json"
        await provider.aclose()
