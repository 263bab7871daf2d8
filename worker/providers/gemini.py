"""The Gemini provider: one image (or one text answer) per `generateContent` call, through
google-genai. Text tasks use JSON mode (`response_mime_type="application/json"` with the
task's `response_schema`) and share everything below with images.

What it adds on top of the SDK (which has no timeout and no retries by default):
- an explicit deadline per request, retries with backoff for 429 / 5xx / network trouble,
  honouring Google's `RetryInfo.retryDelay` on 429;
- safety blocks (HTTP 200, the SDK raises nothing) turned into `GenerationBlocked`;
- a bad API key remembered: a key that cannot be sent (non-ASCII, control characters) is
  refused when the provider is built, and after the first 401/403/API_KEY_INVALID every call
  in this worker fails at once with the same message instead of retrying per image; the key
  is scrubbed from every message the provider raises or logs;
- a time budget per image (`GenerationRequest.time_budget_s`, from the dispatch deadline):
  no retry sleep or rate-limiter wait runs past it, and each request's timeout is capped to
  the time left;
- an HTTP 200 without an image that is not a safety block (MAX_TOKENS, MALFORMED_RESPONSE,
  no candidates, only thought images, a body that is not JSON) retried like a 5xx;
- one rate limiter (requests per minute, smoothly spaced) and one concurrency cap shared by
  every image in flight. A 429's retry delay holds back the call that got it; it holds back
  every call of the worker only once `QUOTA_SPENT_STREAK` calls sent one after another were
  all answered 429 (the quota is spent; `QuotaWatch`), so a throttled call now and then
  never pauses the other images. A call being retried takes the next free call slot ahead
  of images' first calls (`worker/slots.py`), so retry chains run while fresh images fill
  the other slots instead of piling up at the end, and an image waits for its retry inside
  the request's `idle`, where the runner lends its image slot to another;
- exponential backoff (full jitter) for retries without a delay from Google, doubling on
  those only: a 429's RetryInfo wait before a 503 does not lengthen the 503's backoff.

All waiting goes through an injectable clock, so tests never really sleep. The httpx clients
are created here and handed to the SDK: google-genai would otherwise pick aiohttp or httpx2,
which bypass respx and ignore our connection limits.
"""

import asyncio
import contextlib
import copy
import json
import logging
import random
import re
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import httpx
from google import genai
from google.genai import errors, types

from shared.model_table import image_price, model_table
from shared.tls import tls_context
from worker.providers.base import (
    GeneratedImage,
    GeneratedText,
    GenerationBlocked,
    GenerationFailed,
    GenerationRequest,
    IdleHook,
    Provider,
    TextRequest,
)
from worker.slots import Slots

log = logging.getLogger(__name__)
T = TypeVar("T")

BLOCK_FINISH_REASONS = frozenset(
    {
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "IMAGE_OTHER",
        "SAFETY",
        "PROHIBITED_CONTENT",
        "RECITATION",
        "SPII",
        "BLOCKLIST",
        "OTHER",
        "NO_IMAGE",
    }
)
AUTH_STATUSES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})
MAX_TEXT_IN_REASON = 200
MAX_UNEXPECTED_IN_REASON = 300
QUOTA_SPENT_STREAK = 3  # calls sent in a row, all 429s: a retry delay then holds back every call
MIN_ATTEMPT_S = 1.0  # a retry is only worth it if it leaves its request at least this long
GAVE_UP = "gave up: retrying would pass the dispatch deadline"
REDACTED = "[redacted]"
_SEED_MODULUS = 2**31  # Gemini's seed is an int32
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")
_MAGIC = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"RIFF": "image/webp"}


class Clock(Protocol):
    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class RateLimiter:
    """GCRA: requests spaced `60 / rpm` seconds apart, with `burst` allowed back to back.

    Each caller reserves its slot before waiting, so concurrent callers queue up in order
    without a lock. `hold_off` pushes every later slot back (a 429 says the quota is spent)
    and blocks until then: a caller that reserved its slot earlier and wakes inside the
    announced wait reserves a new slot after it instead of sending.
    """

    def __init__(self, rpm: float, clock: Clock, burst: int = 1) -> None:
        if rpm <= 0 or burst < 1:
            raise ValueError("rpm must be positive and burst at least 1")
        self.interval = 60.0 / rpm
        self._tolerance = (burst - 1) * self.interval
        self._clock = clock
        self._next = clock.monotonic()
        self._blocked_until = float("-inf")

    def reserve(self) -> float:
        """Take the next slot; returns how long to wait for it."""
        now = self._clock.monotonic()
        slot = max(self._next, now)
        self._next = slot + self.interval
        return max(0.0, slot - self._tolerance - now)

    async def acquire(self, deadline: float | None = None) -> bool:
        """Wait for a slot outside any hold-off; False (at once) if it would pass `deadline`."""
        while True:
            now = self._clock.monotonic()
            wait = max(self.reserve(), self._blocked_until - now)
            if deadline is not None and now + wait >= deadline:
                return False
            if wait > 0:
                await self._clock.sleep(wait)
            if self._clock.monotonic() >= self._blocked_until:
                return True

    def hold_off(self, seconds: float) -> None:
        until = self._clock.monotonic() + seconds
        self._next = max(self._next, until)
        self._blocked_until = max(self._blocked_until, until)


class QuotaWatch:
    """Whether the quota looks spent: `streak` calls sent one after another all answered 429.

    Counted in the order calls were sent, not answered: Gemini answers a 429 at once, while
    the calls sent around it run the model for seconds, so by arrival a few scattered 429s
    (one call in five, say) come "in a row" before any of their neighbours' answers.
    """

    KEEP = 1024  # the most recent calls whose 429s are remembered

    def __init__(self, streak: int) -> None:
        self._streak = streak
        self._sent = 0
        self._throttled: set[int] = set()

    def sent(self) -> int:
        """Number the call about to be sent."""
        self._sent += 1
        return self._sent

    def throttled(self, call: int) -> bool:
        """Record that call number `call` got a 429; True if the quota now looks spent."""
        self._throttled.add(call)
        if len(self._throttled) > self.KEEP:
            self._throttled = {n for n in self._throttled if n > self._sent - self.KEEP}
        first = last = call
        while first - 1 in self._throttled:
            first -= 1
        while last + 1 in self._throttled:
            last += 1
        return last - first + 1 >= self._streak


class GeminiAuthError(GenerationFailed):
    """Gemini refused the API key; nothing this worker sends will succeed."""


class PromptBlocked(GenerationBlocked):
    """The prompt itself was refused; a new seed cannot help."""


class _Retry(Exception):
    """One attempt failed in a way worth trying again."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class _Tally:
    """HTTP requests sent for one image (all seeds), its deadline on the provider's clock,
    and what to wait inside before a retry (the request's `idle`)."""

    def __init__(self, deadline: float | None = None, idle: IdleHook | None = None) -> None:
        self.count = 0
        self.deadline = deadline
        self._idle = idle

    def idle(self) -> AbstractAsyncContextManager[None]:
        return self._idle() if self._idle is not None else contextlib.nullcontext()


def key_problem(api_key: str) -> str | None:
    """Why `api_key` cannot be used at all (None if it can be sent)."""
    if not api_key:
        return "no Gemini API key configured: set GEMINI_API_KEY"
    if not api_key.isascii():
        return "GEMINI_API_KEY is not a valid key (non-ASCII characters)"
    if not api_key.isprintable():
        return "GEMINI_API_KEY is not a valid key (control characters)"
    return None


class GeminiProvider(Provider):
    name = "gemini"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        api_version: str = "v1beta",
        timeout_s: float = 120.0,
        max_attempts: int = 5,
        rpm: int = 500,
        concurrency: int = 32,
        reseed_on_block: bool = False,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_retry_delay_s: float = 300.0,
        burst: int = 1,
    ) -> None:
        if max_attempts < 1 or timeout_s <= 0:
            raise ValueError("max_attempts must be at least 1 and timeout_s positive")
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._reseed_on_block = reseed_on_block
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._max_retry_delay_s = max_retry_delay_s
        self._limiter = RateLimiter(rpm, self._clock, burst)
        self._quota = QuotaWatch(QUOTA_SPENT_STREAK)
        self._slots = Slots(concurrency)
        self._auth_error: GeminiAuthError | None = None
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            verify=tls_context(),
        )
        # The SDK wants a sync client too; it is never used.
        self._sync_http = httpx.Client(timeout=timeout_s, verify=tls_context())
        self._client: genai.Client | None = None
        self._key = api_key.strip()
        problem = key_problem(self._key)
        if problem is not None:
            self._auth_error = GeminiAuthError(problem)
        else:
            self._client = genai.Client(
                api_key=self._key,
                http_options=types.HttpOptions(
                    base_url=base_url,
                    api_version=api_version,
                    # Must be set: the SDK passes it per request, overriding the client's own
                    # timeout (None there means no timeout at all).
                    timeout=int(timeout_s * 1000),
                    httpx_client=self._sync_http,
                    httpx_async_client=self._http,
                ),
            )

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        tally = self._tally(request.time_budget_s, request.idle)
        return await self._guarded(self._generate(request, tally), tally)

    async def generate_text(self, request: TextRequest) -> GeneratedText:
        """A text model's answer, JSON matching `response_schema` when one is given (JSON
        mode); retried, blocked and failed like images."""
        tally = self._tally(request.time_budget_s, request.idle)
        return await self._guarded(self._generate_text(request, tally), tally)

    def _tally(self, budget: float | None, idle: IdleHook | None) -> _Tally:
        return _Tally(None if budget is None else self._clock.monotonic() + budget, idle)

    async def _guarded(self, call: Awaitable[T], tally: _Tally) -> T:
        """`call`, with the key scrubbed from its reasons and any unexpected error failed."""
        try:
            return await call
        except (GenerationBlocked, GenerationFailed) as exc:
            exc.reason = self._scrub(exc.reason)
            exc.args = (exc.reason,)
            raise
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc))
            log.error("gemini: unexpected error\n%s", self._scrub(trace))
            reason = self._scrub(f"unexpected error: {type(exc).__name__}: {exc}")
            raise GenerationFailed(reason[:MAX_UNEXPECTED_IN_REASON], tally.count) from None

    async def _generate(self, request: GenerationRequest, tally: _Tally) -> GeneratedImage:
        self._check_auth(tally)
        seed = request.params.seed
        try:
            return await self._generate_with_seed(request, seed, tally)
        except PromptBlocked:
            raise
        except GenerationBlocked as blocked:
            if not self._reseed_on_block:
                raise
            new_seed = (seed + 1) % _SEED_MODULUS
            log.info(
                "gemini output blocked (%s); one more try with seed %d", blocked.reason, new_seed
            )
            return await self._generate_with_seed(request, new_seed, tally)

    async def aclose(self) -> None:
        await self._http.aclose()
        self._sync_http.close()

    async def _generate_with_seed(
        self, request: GenerationRequest, seed: int, tally: _Tally
    ) -> GeneratedImage:
        model = request.params.model
        contents = build_contents(request)
        config = build_config(request, seed)
        response, (data, content_type) = await self._call_with_retries(
            model, contents, config, tally, extract_image
        )
        return GeneratedImage(
            data=data,
            content_type=content_type,
            model_version=response.model_version,
            usage=usage_of(response),
            attempts=tally.count,
            cost_usd=image_price(model, request.params.image_size),
            seed=seed,  # differs from the request's after a reseed
        )

    async def _generate_text(self, request: TextRequest, tally: _Tally) -> GeneratedText:
        self._check_auth(tally)
        config = build_text_config(request)
        structured = request.response_schema is not None

        def extract(response: types.GenerateContentResponse, attempts: int) -> str:
            return extract_text(response, attempts, structured=structured)

        response, text = await self._call_with_retries(
            request.model, [request.prompt], config, tally, extract
        )
        return GeneratedText(
            text=text,
            model_version=response.model_version,
            usage=usage_of(response),
            attempts=tally.count,
        )

    async def _call_with_retries(
        self,
        model: str,
        contents: list[types.PartUnion],
        config: types.GenerateContentConfig,
        tally: _Tally,
        extract: Callable[[types.GenerateContentResponse, int], T],
    ) -> tuple[types.GenerateContentResponse, T]:
        """The response and what `extract` reads from it (an image, a text), retrying
        transient trouble (and answers `extract` finds nothing usable in)."""
        backoffs = 0  # retries without a delay from Google: what the backoff doubles on
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = await self._send(model, contents, config, tally)
                return response, extract(response, tally.count)
            except _Retry as retry:
                if attempt == self._max_attempts:
                    raise GenerationFailed(
                        f"Gemini failed {attempt} times, last: {retry.reason}", tally.count
                    ) from None
                delay = retry.delay
                if delay is None:
                    backoffs += 1
                    delay = self._backoff(backoffs)
                self._check_time_left(tally, delay, retry.reason)
                log.warning(
                    "gemini %s: %s; retry %d/%d in %.1f s",
                    model,
                    self._scrub(retry.reason),
                    attempt,
                    self._max_attempts - 1,
                    delay,
                )
                async with tally.idle():  # the image's slot serves another meanwhile
                    await self._clock.sleep(delay)
                self._check_auth(tally)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self,
        model: str,
        contents: list[types.PartUnion],
        config: types.GenerateContentConfig,
        tally: _Tally,
    ) -> types.GenerateContentResponse:
        async with self._slots.hold(retry=tally.count > 0):
            if not await self._limiter.acquire(tally.deadline):
                raise GenerationFailed(
                    "gave up: waiting for the rate limit would pass the dispatch deadline",
                    tally.count,
                )
            client = self._usable_client(tally)  # another image may have found the key bad
            timeout = self._request_timeout(tally)
            tally.count += 1
            call = self._quota.sent()
            try:
                async with asyncio.timeout(timeout):
                    return await client.aio.models.generate_content(
                        model=model, contents=contents, config=config
                    )
            except errors.APIError as exc:
                raise self._classify(exc, tally, call) from None
            except httpx.TimeoutException as exc:
                raise _Retry(f"timed out ({type(exc).__name__})") from None
            except TimeoutError:
                raise _Retry(f"no answer within {timeout:g} s") from None
            except json.JSONDecodeError:
                raise _Retry("Gemini answered HTTP 200 with a body that is not JSON") from None
            except httpx.UnsupportedProtocol as exc:
                raise GenerationFailed(f"bad Gemini URL: {exc}", tally.count) from None
            except httpx.TransportError as exc:
                raise _Retry(f"network error: {type(exc).__name__}: {exc}") from None

    def _classify(self, exc: errors.APIError, tally: _Tally, call: int) -> Exception:
        """The exception to raise for call number `call`'s HTTP error: a `_Retry` or a final
        failure."""
        described = f"{exc.code} {exc.status or ''}".strip() + f": {exc.message or exc.details}"
        if is_auth_error(exc):
            if self._auth_error is None:
                self._auth_error = GeminiAuthError(
                    f"Gemini rejected the API key ({described}); check GEMINI_API_KEY",
                    tally.count,
                )
                log.error(
                    "%s; failing every further image on this worker",
                    self._scrub(self._auth_error.reason),
                )
            return GeminiAuthError(self._auth_error.reason, tally.count)
        if exc.code == 429:
            delay = retry_delay(exc.details)
            if delay is not None and delay > self._max_retry_delay_s:
                return GenerationFailed(
                    f"Gemini quota exhausted ({described}); it asks to wait {delay:g} s",
                    tally.count,
                )
            if self._quota.throttled(call) and delay is not None:
                self._limiter.hold_off(delay)
            return _Retry(described, delay)
        if exc.code == 408 or exc.code >= 500:
            return _Retry(described)
        return GenerationFailed(f"Gemini refused the request ({described})", tally.count)

    def _request_timeout(self, tally: _Tally) -> float:
        """The configured timeout, capped to the time left before the deadline."""
        if tally.deadline is None:
            return self._timeout_s
        left = tally.deadline - self._clock.monotonic()
        if left <= 0:
            raise GenerationFailed("gave up: the dispatch deadline has passed", tally.count)
        return min(self._timeout_s, left)

    def _check_time_left(self, tally: _Tally, delay: float, reason: str) -> None:
        """Fail now if waiting `delay` and trying again would run past the deadline."""
        if tally.deadline is None:
            return
        if self._clock.monotonic() + delay + MIN_ATTEMPT_S > tally.deadline:
            raise GenerationFailed(
                f"{GAVE_UP} (after {tally.count} attempts, last: {reason})", tally.count
            )

    def _scrub(self, text: str) -> str:
        """`text` without the API key in it."""
        return text.replace(self._key, REDACTED) if self._key else text

    scrub = _scrub

    def sdk_client(self) -> genai.Client:
        """The google-genai client (for the Batch API); GeminiAuthError when the key is bad."""
        return self._usable_client(_Tally())

    def _check_auth(self, tally: _Tally) -> None:
        if self._auth_error is not None:
            raise GeminiAuthError(self._auth_error.reason, tally.count)

    def _usable_client(self, tally: _Tally) -> genai.Client:
        self._check_auth(tally)
        if self._client is None:  # only without a key, and then _auth_error is set
            raise GeminiAuthError("no Gemini client", tally.count)
        return self._client

    def _backoff(self, nth: int) -> float:
        """Exponential backoff with full jitter before the `nth` retry that has no delay from
        Google (a 429's RetryInfo waits are not counted: they do not double it)."""
        ceiling = min(self._backoff_max_s, self._backoff_base_s * 2 ** (nth - 1))
        return self._rng.uniform(0, ceiling)


def prompt_text(request: GenerationRequest) -> str:
    negative = request.params.negative_prompt
    return f"{request.prompt}\n\nAvoid: {negative}" if negative else request.prompt


def build_contents(request: GenerationRequest) -> list[types.PartUnion]:
    parts: list[types.PartUnion] = [
        types.Part.from_bytes(data=ref.data, mime_type=ref.content_type)
        for ref in request.references
    ]
    parts.append(prompt_text(request))
    return parts


def image_size_for(model: str, requested: str | None) -> str | None:
    """The imageSize to send: only to models with a choice of sizes (or unknown models).

    Models with one size (gemini-2.5-flash-image) get none: they have no such option.
    """
    spec = model_table().get(model)
    if spec is None:
        return requested
    if len(spec.image_sizes) <= 1:
        return None
    return requested or spec.default_image_size


def build_config(request: GenerationRequest, seed: int) -> types.GenerateContentConfig:
    params = request.params
    return types.GenerateContentConfig(
        response_modalities=["IMAGE"],
        image_config=types.ImageConfig(
            aspect_ratio=params.aspect_ratio,
            image_size=image_size_for(params.model, params.image_size),
        ),
        seed=seed,
    )


def usage_of(response: types.GenerateContentResponse) -> dict[str, Any] | None:
    """The response's token counts as Google names them."""
    usage = response.usage_metadata
    return usage.model_dump(mode="json", exclude_none=True, by_alias=True) if usage else None


def build_text_config(request: TextRequest) -> types.GenerateContentConfig:
    """Plain text, or JSON mode with the schema (a copy: the SDK rewrites it in place)."""
    if request.response_schema is None:
        return types.GenerateContentConfig(seed=request.seed)
    return types.GenerateContentConfig(
        response_mime_type="application/json",
        response_schema=copy.deepcopy(request.response_schema),
        seed=request.seed,
    )


def _name(value: Any) -> str | None:
    """An SDK enum (or unknown string) as its plain name."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _with_text(reason: str, text: str) -> str:
    if not text:
        return reason
    if len(text) > MAX_TEXT_IN_REASON:
        text = text[: MAX_TEXT_IN_REASON - 1] + "…"
    return f"{reason}; model said: {text}"


def _mime_of(blob: types.Blob) -> str | None:
    if blob.mime_type:
        return blob.mime_type if blob.mime_type.startswith("image/") else None
    data = blob.data or b""
    return next((mime for magic, mime in _MAGIC.items() if data.startswith(magic)), None)


def extract_image(response: types.GenerateContentResponse, attempts: int) -> tuple[bytes, str]:
    """The first non-thought image of the first candidate, else why not.

    `GenerationBlocked` for safety blocks (prompt_feedback.block_reason, the finish reasons in
    BLOCK_FINISH_REASONS) and for a model that answered in words only (STOP with text);
    `_Retry` for anything else without an image (no candidates, MAX_TOKENS,
    MALFORMED_RESPONSE, only thought images, ...): worth another try, not a block.
    """
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        reason = f"prompt blocked: {_name(feedback.block_reason)}"
        if feedback.block_reason_message:
            reason += f" ({feedback.block_reason_message})"
        raise PromptBlocked(reason, attempts)
    if not response.candidates:
        raise _Retry("no image returned: the response has no candidates")
    candidate = response.candidates[0]
    finish = _name(candidate.finish_reason)
    parts = (candidate.content.parts if candidate.content else None) or []
    text = " ".join(p.text.strip() for p in parts if p.text and not p.thought).strip()
    if finish in BLOCK_FINISH_REASONS:
        raise GenerationBlocked(_with_text(f"output blocked: {finish}", text), attempts)
    for part in parts:
        blob = part.inline_data
        if part.thought or blob is None or not blob.data:
            continue
        mime = _mime_of(blob)
        if mime is not None:
            return blob.data, mime
    reason = _with_text(f"no image returned (finish reason {finish or 'none'})", text)
    if text and finish == "STOP":
        raise GenerationBlocked(reason, attempts)  # the model chose to answer in words
    raise _Retry(reason)


def extract_text(
    response: types.GenerateContentResponse, attempts: int, *, structured: bool
) -> str:
    """The first candidate's text (thoughts left out), else why not: blocks as for images;
    `_Retry` for no candidates, an empty or cut-off answer (MAX_TOKENS), or, in JSON mode,
    an answer that is not JSON."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        raise PromptBlocked(f"prompt blocked: {_name(feedback.block_reason)}", attempts)
    if not response.candidates:
        raise _Retry("no text returned: the response has no candidates")
    candidate = response.candidates[0]
    finish = _name(candidate.finish_reason)
    if finish in BLOCK_FINISH_REASONS:
        raise GenerationBlocked(f"answer blocked: {finish}", attempts)
    parts = (candidate.content.parts if candidate.content else None) or []
    text = "".join(part.text for part in parts if part.text and not part.thought).strip()
    if not text or finish == "MAX_TOKENS":
        raise _Retry(f"no complete text returned (finish reason {finish or 'none'})")
    if structured:
        try:
            json.loads(text)
        except ValueError:
            raise _Retry("the answer is not valid JSON") from None
    return text


def _error_details(details: Any) -> list[Mapping[str, Any]]:
    """The `error.details` entries of a Google error body (empty when there are none)."""
    error = details.get("error") if isinstance(details, Mapping) else None
    entries = error.get("details") if isinstance(error, Mapping) else None
    if not isinstance(entries, list):
        return []
    return [entry for entry in entries if isinstance(entry, Mapping)]


def _parse_duration(value: Any) -> float | None:
    """A protobuf Duration in JSON ("47s", "1.5s") or as {"seconds", "nanos"}."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        return float(match.group(1)) if match else None
    if isinstance(value, Mapping):
        try:
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            return None
    return None


def retry_delay(details: Any) -> float | None:
    """Seconds Google asks us to wait (`google.rpc.RetryInfo.retryDelay`), if it says."""
    for entry in _error_details(details):
        if str(entry.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = _parse_duration(entry.get("retryDelay"))
            if delay is not None:
                return delay
    return None


def is_auth_error(exc: errors.APIError) -> bool:
    if exc.code in (401, 403) or (exc.status or "") in AUTH_STATUSES:
        return True
    reasons = {str(entry.get("reason", "")) for entry in _error_details(exc.details)}
    return bool(reasons & AUTH_REASONS) or "API key not valid" in (exc.message or "")
