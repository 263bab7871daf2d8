"""A fake Gemini API on a real loopback socket, and a fake clock, for end-to-end tests.

`FakeGemini` answers `POST /{version}/models/{model}:generateContent` like Google does
(camelCase JSON, base64 image parts, Google's error bodies) and is scripted by keywords in
the prompt text:

    BLOCKPROMPT -> prompt blocked (promptFeedback.blockReason SAFETY), HTTP 200
    UNSAFE      -> output blocked (finishReason IMAGE_SAFETY), HTTP 200
    TEXTONLY    -> finishReason NO_IMAGE with a text part only
    FLAKY       -> 503 UNAVAILABLE for the first `flaky_failures` calls of that prompt, then OK
    QUOTA       -> 429 RESOURCE_EXHAUSTED with RetryInfo `retry_delay` once per prompt, then OK
    anything else -> a PNG (plus a text part; Gemini 3 models also send a thought image first)

Text requests (no `responseModalities` IMAGE) go to a text model (`TEXT_MODELS`) and are
answered with text: JSON matching `responseSchema` in JSON mode (written by the worker's
offline text writer from the prompt and seed), else a sentence. UNSAFE blocks them (finish
reason SAFETY), FLAKY and QUOTA work as for images, and

    BADJSON     -> a JSON-mode answer that is not JSON, every time

It checks the API key (400 API_KEY_INVALID like the real service), the model (404), the
aspect ratio / image size / number of references against `shared.model_table`, and records
every call in `calls`. Images are real PNGs whose shape follows the requested aspect ratio
(1/16 of the real pixel size) and whose colour follows prompt and seed.

    with FakeGemini(api_key="k") as fake:
        provider = GeminiProvider("k", base_url=fake.base_url, clock=FakeClock())
"""

import asyncio
import base64
import hashlib
import io
import itertools
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from shared.images import output_size
from shared.model_table import model_table
from tests.fakes.servers import reserve_socket, run_server
from worker.providers import offline_text

KEYWORD_BLOCK_PROMPT = "BLOCKPROMPT"
KEYWORD_UNSAFE = "UNSAFE"
KEYWORD_TEXT_ONLY = "TEXTONLY"
KEYWORD_FLAKY = "FLAKY"
KEYWORD_QUOTA = "QUOTA"
KEYWORD_BAD_JSON = "BADJSON"
TEXT_MODELS = frozenset({"gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite"})


class FakeClock:
    """Virtual time for the provider: `sleep` returns at once and moves `now` forward.

    Every sleep is recorded in `sleeps`. Concurrent sleepers wake in order of their wake
    times (each yields until no earlier sleeper is pending), so spacing stays measurable.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._pending: set[tuple[float, int]] = set()
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        entry = (self.now + max(0.0, seconds), next(self._seq))
        self._pending.add(entry)
        try:
            await asyncio.sleep(0)
            while min(self._pending) < entry:
                await asyncio.sleep(0)
            self.now = max(self.now, entry[0])
        finally:
            self._pending.discard(entry)

    @property
    def slept(self) -> float:
        return sum(self.sleeps)


@dataclass
class RecordedCall:
    api_version: str
    model: str
    body: dict[str, Any]
    api_key: str | None
    status: int = 200
    outcome: str = ""

    @property
    def prompt(self) -> str:
        return prompt_of(self.body)

    @property
    def seed(self) -> int | None:
        return self.body.get("generationConfig", {}).get("seed")


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    outcome: str
    headers: dict[str, str] = field(default_factory=dict)


def prompt_of(body: dict[str, Any]) -> str:
    parts = [p for c in body.get("contents", []) for p in c.get("parts", [])]
    return "\n".join(p["text"] for p in parts if "text" in p)


def google_error(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status, "details": list(details)}}


def png_of(size: tuple[int, int], key: str) -> bytes:
    digest = hashlib.sha256(key.encode()).digest()
    buffer = io.BytesIO()
    Image.new("RGB", size, (digest[0], digest[1], digest[2])).save(buffer, "PNG")
    return buffer.getvalue()


class FakeGemini:
    """See the module docstring. Use as a context manager; `base_url` is set inside."""

    def __init__(
        self,
        api_key: str = "fake-gemini-key",
        *,
        retry_delay: str = "2s",
        flaky_failures: int = 2,
        scale: int = 16,
    ) -> None:
        self.api_key = api_key
        self.retry_delay = retry_delay
        self.flaky_failures = flaky_failures
        self.scale = scale
        self.calls: list[RecordedCall] = []
        self.base_url = ""
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: Any = None
        self.app = self._build_app()

    def __enter__(self) -> "FakeGemini":
        sock = reserve_socket()
        self._server = run_server(self.app, sock)
        self.base_url = self._server.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.__exit__(exc_type, exc, traceback)

    def calls_for(self, keyword: str) -> list[RecordedCall]:
        with self._lock:
            return [call for call in self.calls if keyword in call.prompt]

    def _build_app(self) -> FastAPI:
        app = FastAPI()
        self._add_routes(app)
        return app

    def _add_routes(self, app: FastAPI) -> None:
        """The routes; a subclass adds its own first (this one takes any `models/…` POST)."""

        @app.post("/{version}/models/{target}")
        async def generate_content(version: str, target: str, request: Request) -> JSONResponse:
            model, _, action = target.partition(":")
            body = await request.json()
            call = RecordedCall(version, model, body, request.headers.get("x-goog-api-key"))
            answer = self._answer(call, action)
            call.status, call.outcome = answer.status, answer.outcome
            with self._lock:
                self.calls.append(call)
            return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)

    def _answer(self, call: RecordedCall, action: str) -> Answer:
        problem = self._problem(call, action)
        if problem is not None:
            return problem
        prompt = call.prompt
        with self._lock:
            seen = self._seen.get(prompt, 0)
            self._seen[prompt] = seen + 1
        if KEYWORD_QUOTA in prompt and seen == 0:
            return self._quota()
        if KEYWORD_FLAKY in prompt and seen < self.flaky_failures:
            body = google_error(503, "UNAVAILABLE", "The model is overloaded. Try again later.")
            return Answer(503, body, "unavailable")
        if KEYWORD_BLOCK_PROMPT in prompt:
            body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": _usage(0)}
            return Answer(200, body, "prompt-blocked")
        if is_text_request(call.body):
            return self._text_answer(call)
        if KEYWORD_UNSAFE in prompt:
            return Answer(200, self._response(call, [], "IMAGE_SAFETY"), "image-safety")
        if KEYWORD_TEXT_ONLY in prompt:
            parts = [{"text": "I can only describe this one: a quiet harbour at dusk."}]
            return Answer(200, self._response(call, parts, "NO_IMAGE"), "no-image")
        return Answer(200, self._response(call, self._image_parts(call), "STOP"), "image")

    def _problem(self, call: RecordedCall, action: str) -> Answer | None:
        if call.api_key != self.api_key:
            body = google_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                },
            )
            return Answer(400, body, "bad-key")
        spec = model_table().get(call.model)
        if is_text_request(call.body) and call.model in TEXT_MODELS:
            return None if action == "generateContent" else self._not_found(call)
        if spec is None or action != "generateContent":
            return self._not_found(call)
        config = call.body.get("generationConfig", {}).get("imageConfig", {})
        references = [
            p
            for c in call.body.get("contents", [])
            for p in c.get("parts", [])
            if "inlineData" in p
        ]
        message: str | None = None
        if config.get("aspectRatio", "1:1") not in spec.aspect_ratios:
            message = f"Unsupported aspect ratio {config.get('aspectRatio')}"
        elif config.get("imageSize", spec.default_image_size) not in spec.image_sizes:
            message = f"Unsupported image size {config.get('imageSize')}"
        elif len(references) > spec.max_reference_images:
            message = f"Too many input images: {len(references)}"
        if message is None:
            return None
        return Answer(400, google_error(400, "INVALID_ARGUMENT", message), "invalid")

    def _not_found(self, call: RecordedCall) -> Answer:
        missing = f"models/{call.model} is not found for API version {call.api_version}"
        return Answer(404, google_error(404, "NOT_FOUND", missing), "not-found")

    def _text_answer(self, call: RecordedCall) -> Answer:
        config = call.body.get("generationConfig", {})
        if KEYWORD_UNSAFE in call.prompt:
            return Answer(200, self._response(call, [], "SAFETY"), "text-safety")
        if config.get("responseMimeType") != "application/json":
            text = f"A short answer to: {call.prompt[:40]}"
        elif KEYWORD_BAD_JSON in call.prompt:
            text = 'Sure! Here is the persona: {"name": "Ana'
        else:
            text = offline_text.write(call.prompt, config.get("seed", 0), config["responseSchema"])
        parts = [{"text": "Planning the answer.", "thought": True}, {"text": text}]
        return Answer(200, self._response(call, parts, "STOP"), "text")

    def _quota(self) -> Answer:
        body = google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": self.retry_delay},
        )
        return Answer(429, body, "quota")

    def _image_parts(self, call: RecordedCall) -> list[dict[str, Any]]:
        config = call.body.get("generationConfig", {})
        image_config = config.get("imageConfig", {})
        width, height = output_size(image_config.get("aspectRatio"), image_config.get("imageSize"))
        size = (max(8, width // self.scale), max(8, height // self.scale))
        data = png_of(size, f"{call.prompt}|{config.get('seed')}")
        parts: list[dict[str, Any]] = []
        if call.model.startswith("gemini-3"):
            thought = png_of(size, "thought")
            parts.append({"text": "Sketching the layout first.", "thought": True})
            parts.append(
                {"inlineData": {"mimeType": "image/png", "data": _b64(thought)}, "thought": True}
            )
        parts.append({"text": "Here is the image you asked for."})
        parts.append({"inlineData": {"mimeType": "image/png", "data": _b64(data)}})
        return parts

    def _response(
        self, call: RecordedCall, parts: list[dict[str, Any]], finish: str
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"finishReason": finish, "index": 0}
        if parts:
            candidate["content"] = {"role": "model", "parts": parts}
        images = sum(1 for part in parts if "inlineData" in part and not part.get("thought"))
        return {
            "candidates": [candidate],
            "usageMetadata": _usage(images),
            "modelVersion": call.model,
            "responseId": f"fake-{len(self.calls)}",
        }


def is_text_request(body: dict[str, Any]) -> bool:
    return "IMAGE" not in body.get("generationConfig", {}).get("responseModalities", [])


def _usage(images: int) -> dict[str, Any]:
    image_tokens = 1290 * images
    return {
        "promptTokenCount": 12,
        "candidatesTokenCount": image_tokens,
        "totalTokenCount": 12 + image_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": image_tokens}],
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
