"""The runner (worker/runner.py) on real storage: outputs and thumbnails, one image's
trouble never sinking the others, concurrency, the dispatch deadline."""

import asyncio
import hashlib
import io
import logging
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from shared.contract import DispatchInput, DispatchOutput, ImageParams, WorkItem
from shared.storage import LocalStorage, StorageError
from tests.conftest import png_bytes
from tests.fakes.dispatches import make_dispatch
from tests.fakes.gemini import FakeClock
from worker.handler import make_handler
from worker.providers import GeneratedImage, GenerationRequest, Provider
from worker.providers.gemini import GeminiProvider
from worker.providers.offline import OfflineProvider
from worker.runner import NOT_STARTED, Runner
from worker.settings import WorkerSettings


def test_runner_writes_outputs_thumbnails_and_reports(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    runner = Runner(OfflineProvider(), storage, concurrency=4)
    output = asyncio.run(runner.run_dispatch(make_dispatch(storage, 3)))
    assert [r.status for r in output.results] == ["succeeded"] * 3
    for result in output.results:
        data = storage.get_bytes(storage.key_of(result.output_uri or ""))
        assert hashlib.sha256(data).hexdigest() == result.sha256 and len(data) == result.bytes
        assert (result.width, result.height) == (512, 512) and result.provider == "offline"
        thumb = Image.open(
            io.BytesIO(storage.get_bytes(storage.key_of(result.thumbnail_uri or "")))
        )
        assert thumb.format == "WEBP" and max(thumb.size) == 256


def test_runner_fails_one_image_without_sinking_the_rest(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    dispatch = make_dispatch(storage, 2)
    dispatch.items[1].reference_uris = [storage.uri("groups/g/inputs/missing.png")]
    output = asyncio.run(Runner(OfflineProvider(), storage, 2).run_dispatch(dispatch))
    assert output.results[0].status == "succeeded"
    assert output.results[1].status == "failed" and "reference unreadable" in (
        output.results[1].error or ""
    )


def test_runner_refuses_references_outside_its_storage(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    dispatch = make_dispatch(storage, 1)
    dispatch.items[0].reference_uris = ["file:///etc/passwd"]
    output = asyncio.run(Runner(OfflineProvider(), storage, 1).run_dispatch(dispatch))
    assert output.results[0].status == "failed" and "outside the storage root" in (
        output.results[0].error or ""
    )


def test_runner_reports_a_storage_write_failure_as_failed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    dispatch = make_dispatch(storage, 1)
    blocker = tmp_path / "groups" / "g" / "outputs" / "job_1"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where a folder should be")
    output = asyncio.run(Runner(OfflineProvider(), storage, 1).run_dispatch(dispatch))
    assert output.results[0].status == "failed" and "could not store output" in (
        output.results[0].error or ""
    )


def test_concurrency_limit_is_shared_across_dispatches(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    provider = OfflineProvider(latency_ms=100)
    in_flight, peak = 0, 0
    original = provider.generate

    async def counting(request: GenerationRequest):  # type: ignore[no-untyped-def]
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await original(request)
        finally:
            in_flight -= 1

    provider.generate = counting  # type: ignore[method-assign]
    runner = Runner(provider, storage, concurrency=3)

    async def both() -> None:
        await asyncio.gather(
            runner.run_dispatch(make_dispatch(storage, 4)),
            runner.run_dispatch(make_dispatch(storage, 4)),
        )

    asyncio.run(both())
    assert peak == 3


def test_slow_storage_holds_back_generation(tmp_path: Path) -> None:
    """Generated-but-unstored images never exceed the in-flight limit: memory stays bounded."""
    import threading
    import time as clock

    storage = LocalStorage(tmp_path)
    runner = Runner(OfflineProvider(), storage, concurrency=2)
    waiting, peak, lock = 0, 0, threading.Lock()
    original = runner._store

    def slow_store(item, image):  # type: ignore[no-untyped-def]
        nonlocal waiting, peak
        with lock:
            waiting += 1
            peak = max(peak, waiting)
        clock.sleep(0.05)
        with lock:
            waiting -= 1
        return original(item, image)

    runner._store = slow_store  # type: ignore[method-assign]
    output = asyncio.run(runner.run_dispatch(make_dispatch(storage, 10)))
    assert all(r.status == "succeeded" for r in output.results)
    assert peak <= 2


# --- one image's trouble never sinks the others, and what was billed stays on the result ---


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# A PNG header claiming 20000 x 20000 pixels: Pillow raises DecompressionBombError (not an
# OSError) as soon as it reads the size.
BOMB = (
    b"\x89PNG\r\n\x1a\n"
    + _chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    + _chunk(b"IEND", b"")
)


class BilledProvider(Provider):
    """Answers a billed PNG at once (a bomb for the prompt "bomb"); records each request."""

    name = "gemini"

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.requests.append(request)
        data = BOMB if request.prompt == "bomb" else png_bytes()
        return GeneratedImage(
            data=data,
            content_type="image/png",
            model_version="gemini-2.5-flash-image-001",
            usage={"promptTokenCount": 9},
            attempts=2,
            cost_usd=0.039,
            seed=request.params.seed + 1,
        )


def _items(*prompts: str) -> list[WorkItem]:
    return [
        WorkItem(
            output_id=f"out_{n}",
            prompt=prompt,
            params=ImageParams(model="gemini-2.5-flash-image", seed=n),
            output_key=f"groups/g/outputs/job_1/out_{n}",
        )
        for n, prompt in enumerate(prompts)
    ]


def test_an_unexpected_storing_error_fails_only_its_image(tmp_path: Path) -> None:
    runner = Runner(BilledProvider(), LocalStorage(tmp_path), concurrency=4)
    dispatch = DispatchInput(dispatch_id="d", job_id="j", items=_items("ok", "bomb", "ok too"))
    output = asyncio.run(runner.run_dispatch(dispatch))
    assert [r.status for r in output.results] == ["succeeded", "failed", "succeeded"]
    bomb = output.results[1]
    assert bomb.error is not None
    assert bomb.error.startswith("could not store output: DecompressionBombError: ")
    assert bomb.cost_usd == 0.039  # Gemini billed it


def test_a_storing_failure_keeps_what_was_billed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path)

    def unavailable(*args: object, **kwargs: object) -> None:
        raise StorageError("bucket unavailable")

    monkeypatch.setattr(storage, "put_bytes", unavailable)
    [item] = _items("a fox")
    result = asyncio.run(Runner(BilledProvider(), storage, concurrency=1).run_item(item))
    assert result.status == "failed"
    assert result.error == "could not store output: bucket unavailable"
    assert result.cost_usd == 0.039
    assert result.usage == {"promptTokenCount": 9}
    assert result.model_version == "gemini-2.5-flash-image-001"
    assert result.attempts == 2
    assert result.seed == 1  # the seed Gemini was sent


def test_the_runner_catches_anything_a_provider_raises_without_its_repr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "\u201cAIzaSECRET-never-stored\u201d"

    class Crashing(Provider):
        name = "gemini"

        async def generate(self, request: GenerationRequest) -> GeneratedImage:
            secret.encode("ascii")  # what httpx does with a header value
            raise AssertionError("unreachable")

    caplog.set_level(logging.DEBUG)
    [item] = _items("a fox")
    result = asyncio.run(Runner(Crashing(), LocalStorage(tmp_path), concurrency=1).run_item(item))
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith("provider error: UnicodeEncodeError: 'ascii' codec")
    assert "SECRET" not in result.model_dump_json()
    assert "SECRET" not in caplog.text


@pytest.mark.parametrize(
    "key", ["\u201cAIzaSECRET-key-123\u201d", "AIzaSECRET-key-ß", "AIzaSECRET\x00"]
)
def test_an_unsendable_gemini_key_fails_every_image_fast_and_never_shows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, key: str
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = GeminiProvider(key, base_url="http://127.0.0.1:9", clock=FakeClock())
    runner = Runner(provider, LocalStorage(tmp_path), concurrency=2)
    dispatch = DispatchInput(dispatch_id="d", job_id="j", items=_items("a", "b", "c"))

    async def run() -> DispatchOutput:
        try:
            return await runner.run_dispatch(dispatch)
        finally:
            await provider.aclose()

    output = asyncio.run(run())
    expected = "GEMINI_API_KEY is not a valid key (non-ASCII characters)"
    if key.isascii():
        expected = "GEMINI_API_KEY is not a valid key (control characters)"
    for result in output.results:
        assert (result.status, result.error, result.attempts) == ("failed", expected, 0)
    assert "SECRET" not in output.model_dump_json()
    assert "SECRET" not in caplog.text


# --- the dispatch deadline ---------------------------------------------------------------


class SlowProvider(Provider):
    """Each image takes `seconds` of the fake clock; records the budget it was given."""

    name = "offline"

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self.budgets: list[float | None] = []

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.budgets.append(request.time_budget_s)
        self.clock.now += self.seconds
        return GeneratedImage(data=png_bytes(), content_type="image/png")


def test_images_not_started_by_the_dispatch_deadline_fail_and_the_rest_keep_theirs(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    provider = SlowProvider(clock, seconds=60)
    runner = Runner(
        provider,
        LocalStorage(tmp_path),
        concurrency=1,
        dispatch_deadline_s=100,
        clock=clock.monotonic,
    )
    dispatch = DispatchInput(dispatch_id="d", job_id="j", items=_items("a", "b", "c"))
    output = asyncio.run(runner.run_dispatch(dispatch))
    assert [r.status for r in output.results] == ["succeeded", "succeeded", "failed"]
    assert provider.budgets == [pytest.approx(100), pytest.approx(40)]
    assert (output.results[2].error, output.results[2].attempts) == (NOT_STARTED, 0)


def test_the_dispatch_deadline_is_a_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert WorkerSettings(storage_url=str(tmp_path)).worker_dispatch_deadline_s == 540
    monkeypatch.setenv("PIXELFLEET_WORKER_DISPATCH_DEADLINE_S", "300")
    settings = WorkerSettings(storage_url=str(tmp_path), provider="offline")
    _, _, runner = make_handler(settings)
    assert runner.dispatch_deadline_s == 300


class RetryingProvider(Provider):
    """Image "slow" waits once before its retry (inside the request's `idle`, as the Gemini
    provider does); `order` records each call."""

    name = "offline"

    def __init__(self) -> None:
        self.order: list[str] = []
        self.waiting = asyncio.Event()
        self.retry = asyncio.Event()
        self.b_done = asyncio.Event()

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.order.append(request.prompt)
        if request.prompt == "b":
            await self.b_done.wait()
        if request.prompt == "slow":
            assert request.idle is not None
            async with request.idle():
                self.waiting.set()
                await self.retry.wait()
            self.order.append("slow again")
        return GeneratedImage(data=png_bytes(), content_type="image/png")


def test_an_image_waiting_for_its_retry_lends_its_slot(tmp_path: Path) -> None:
    """One image slot: while "slow" waits for its retry another image uses the slot, and
    "slow" takes it back ahead of the images that have not started."""
    storage = LocalStorage(tmp_path)
    provider = RetryingProvider()
    runner = Runner(provider, storage, concurrency=1)
    dispatch = make_dispatch(storage, 3)
    for item, prompt in zip(dispatch.items, ("slow", "b", "c"), strict=True):
        item.prompt = prompt

    async def scenario() -> DispatchOutput:
        task = asyncio.create_task(runner.run_dispatch(dispatch))
        await provider.waiting.wait()
        async with asyncio.timeout(10):  # b reads its reference in a thread first
            while "b" not in provider.order:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert provider.order == ["slow", "b"]  # b on slow's slot, c waits
        provider.retry.set()  # slow wants its slot back: it goes before c
        provider.b_done.set()
        return await task

    output = asyncio.run(scenario())
    assert [result.status for result in output.results] == ["succeeded"] * 3
    assert provider.order == ["slow", "b", "slow again", "c"]
