"""The worker: offline provider, runner and handler, on real storage."""

import asyncio
import hashlib
import io
import json
import logging
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageStat

from shared.contract import DispatchInput, DispatchOutput, ImageParams, WorkItem
from shared.storage import LocalStorage, StorageError
from tests.conftest import png_bytes
from tests.fake_gemini import FakeClock
from tests.servers import run_server
from worker.handler import make_handler
from worker.local_endpoint import build_endpoint_app_from_settings
from worker.providers import GeneratedImage, GenerationRequest, Provider, Reference
from worker.providers.gemini import GeminiProvider
from worker.providers.offline import OfflineProvider, render
from worker.runner import NOT_STARTED, Runner
from worker.settings import WorkerSettings


def _request(
    prompt: str = "a red fox", seed: int = 1, refs: list[bytes] | None = None, **params: str
) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt,
        params=ImageParams(model="gemini-2.5-flash-image", seed=seed, **params),
        references=[Reference(data, "image/png") for data in refs or []],
    )


def test_offline_is_deterministic_and_varies_with_prompt_and_seed() -> None:
    base = render(_request())
    assert render(_request()) == base
    assert render(_request(prompt="a blue whale")) != base
    assert render(_request(seed=2)) != base
    assert Image.open(io.BytesIO(base)).format == "JPEG"


@pytest.mark.parametrize("refs", [None, [png_bytes(40, 30, (20, 200, 60))]], ids=["text", "edit"])
def test_offline_folds_the_negative_prompt_in(refs: list[bytes] | None) -> None:
    plain = render(_request(refs=refs, image_size="512"))
    negative = render(_request(refs=refs, image_size="512", negative_prompt="dogs, blur"))
    assert negative != plain
    assert render(_request(refs=refs, image_size="512", negative_prompt="dogs, blur")) == negative
    assert render(_request(refs=refs, image_size="512", negative_prompt="cats")) != negative


@pytest.mark.parametrize(
    ("ratio", "size", "expected"),
    [
        ("1:1", "1K", (1024, 1024)),
        ("16:9", "1K", (1368, 768)),
        ("9:16", "512", (384, 680)),
        ("4:3", "2K", (2368, 1776)),
    ],
)
def test_offline_honours_aspect_ratio_and_size(
    ratio: str, size: str, expected: tuple[int, int]
) -> None:
    image = Image.open(io.BytesIO(render(_request(aspect_ratio=ratio, image_size=size))))
    assert image.size == expected
    width, height = expected
    across, down = (int(n) for n in ratio.split(":"))
    assert abs(width / height - across / down) < 0.02


def test_offline_output_is_derived_from_the_reference() -> None:
    green = render(_request(refs=[png_bytes(80, 80, (0, 255, 0))], image_size="512"))
    blue = render(_request(refs=[png_bytes(80, 80, (0, 0, 255))], image_size="512"))
    green_mean = ImageStat.Stat(Image.open(io.BytesIO(green)).convert("RGB")).mean
    blue_mean = ImageStat.Stat(Image.open(io.BytesIO(blue)).convert("RGB")).mean
    assert green_mean[1] > green_mean[2] + 60
    assert blue_mean[2] > blue_mean[1] + 60


def _dispatch(storage: LocalStorage, n: int, prompt: str = "p") -> DispatchInput:
    ref = storage.put_bytes("groups/g/inputs/ref.png", png_bytes(), content_type="image/png")
    return DispatchInput(
        dispatch_id="dsp_1",
        job_id="job_1",
        items=[
            WorkItem(
                output_id=f"out_{i}",
                prompt=prompt,
                reference_uris=[storage.uri(ref.key)],
                params=ImageParams(model="gemini-3.1-flash-image", seed=i, image_size="512"),
                output_key=f"groups/g/outputs/job_1/out_{i}",
            )
            for i in range(n)
        ],
    )


class EveryCallDifferent(Provider):
    """Like a real model: the same request twice gives two different pictures."""

    name = "offline"

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.calls += 1
        return GeneratedImage(data=png_bytes(32, 32, (self.calls, 0, 0)), content_type="image/png")


def test_a_dispatch_run_twice_never_overwrites_the_first_runs_files(tmp_path: Path) -> None:
    """RunPod may run one dispatch twice (an accepted /run retried after a timeout): each run
    writes under keys of its own, so what the first run reported stays true."""
    storage = LocalStorage(tmp_path)
    handler, _, runner = make_handler(WorkerSettings(storage_url=str(tmp_path)))
    runner.provider = EveryCallDifferent()
    dispatch = {"input": _dispatch(storage, 2).model_dump(mode="json")}
    first = asyncio.run(handler({"id": "rp-first", **dispatch}))["results"]
    second = asyncio.run(handler({"id": "rp-second", **dispatch}))["results"]
    for old, new in zip(first, second, strict=True):
        assert old["output_uri"] != new["output_uri"] and old["sha256"] != new["sha256"]
        assert old["output_uri"].startswith(storage.uri("groups/g/outputs/job_1/out_"))
        kept = storage.get_bytes(storage.key_of(old["output_uri"]))
        assert hashlib.sha256(kept).hexdigest() == old["sha256"]
        assert storage.exists(storage.key_of(old["thumbnail_uri"]))
    again = asyncio.run(handler({"id": "rp-first", **dispatch}))["results"]
    assert [r["output_uri"] for r in again] == [r["output_uri"] for r in first]  # stable per run


def test_runner_writes_outputs_thumbnails_and_reports(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    runner = Runner(OfflineProvider(), storage, concurrency=4)
    output = asyncio.run(runner.run_dispatch(_dispatch(storage, 3)))
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
    dispatch = _dispatch(storage, 2)
    dispatch.items[1].reference_uris = [storage.uri("groups/g/inputs/missing.png")]
    output = asyncio.run(Runner(OfflineProvider(), storage, 2).run_dispatch(dispatch))
    assert output.results[0].status == "succeeded"
    assert output.results[1].status == "failed" and "reference unreadable" in (
        output.results[1].error or ""
    )


def test_runner_refuses_references_outside_its_storage(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    dispatch = _dispatch(storage, 1)
    dispatch.items[0].reference_uris = ["file:///etc/passwd"]
    output = asyncio.run(Runner(OfflineProvider(), storage, 1).run_dispatch(dispatch))
    assert output.results[0].status == "failed" and "outside the storage root" in (
        output.results[0].error or ""
    )


def test_runner_reports_a_storage_write_failure_as_failed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    dispatch = _dispatch(storage, 1)
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
            runner.run_dispatch(_dispatch(storage, 4)), runner.run_dispatch(_dispatch(storage, 4))
        )

    asyncio.run(both())
    assert peak == 3


def test_handler_validates_input_and_returns_the_contract(tmp_path: Path) -> None:
    settings = WorkerSettings(storage_url=str(tmp_path), provider="offline", worker_max_jobs=5)
    handler, concurrency_modifier, runner = make_handler(settings)
    assert 1 <= concurrency_modifier(1) <= 5
    bad = asyncio.run(handler({"id": "rp-1", "input": {"version": 1, "items": []}}))
    assert "invalid input" in bad["error"]
    future = asyncio.run(handler({"id": "rp-2", "input": {"version": 99}}))
    assert "unsupported contract version" in future["error"]
    good = asyncio.run(
        handler({"id": "rp-3", "input": json.loads(_dispatch(runner.storage, 2).model_dump_json())})
    )  # type: ignore[arg-type]
    assert [r.status for r in DispatchOutput.model_validate(good).results] == [
        "succeeded",
        "succeeded",
    ]


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
    output = asyncio.run(runner.run_dispatch(_dispatch(storage, 10)))
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


# --- the concurrency_modifier follows the free image slots --------------------------------


class GatedProvider(Provider):
    """Holds every image until `gate` is set."""

    name = "offline"

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        await self.gate.wait()
        return GeneratedImage(data=png_bytes(), content_type="image/png")


def _dispatch_of(name: str, size: int) -> dict[str, Any]:
    items = [
        WorkItem(
            output_id=f"{name}_{n}",
            prompt="p",
            params=ImageParams(model="gemini-2.5-flash-image", seed=n),
            output_key=f"out/{name}_{n}",
        )
        for n in range(size)
    ]
    dispatch = DispatchInput(dispatch_id=name, job_id="j", items=items)
    return {"id": name, "input": dispatch.model_dump(mode="json")}


def test_concurrency_modifier_follows_what_the_image_slots_can_take(tmp_path: Path) -> None:
    settings = WorkerSettings(
        storage_url=str(tmp_path), provider="offline", worker_concurrency=4, worker_max_jobs=8
    )
    handler, modifier, runner = make_handler(settings)
    provider = GatedProvider()
    runner.provider = provider

    async def scenario() -> list[int]:
        seen = [modifier(1)]  # fresh: dispatches assumed of 16, one fills 4 slots, +1 waiting
        tasks = []
        for name in ("a", "b", "c"):  # dispatches of 2 images on 4 slots
            tasks.append(asyncio.create_task(handler(_dispatch_of(name, 2))))
            await asyncio.sleep(0.01)
            seen.append(modifier(seen[-1]))
        seen.append(runner.job_capacity(2))  # bounded by worker_max_jobs
        provider.gate.set()
        outputs = await asyncio.gather(*tasks)
        assert all(r["status"] == "succeeded" for o in outputs for r in o["results"])
        seen.append(modifier(seen[-2]))
        return seen

    # Two dispatches of 2 fill 4 slots, one more waits; steady however busy the slots are,
    # since runpod drains the worker before applying a changed value.
    assert asyncio.run(scenario()) == [2, 3, 3, 3, 2, 3]

    small = WorkerSettings(storage_url=str(tmp_path), provider="offline", worker_concurrency=1)
    handler, modifier, runner = make_handler(small)
    asyncio.run(handler(_dispatch_of("big", 3)))
    assert modifier(5) == 2  # a dispatch bigger than the slots, and one waiting
    semi = WorkerSettings(storage_url=str(tmp_path), provider="offline", worker_concurrency=32)
    handler, modifier, runner = make_handler(semi)
    asyncio.run(handler(_dispatch_of("set", 4)))
    assert modifier(1) == 8  # sets of 4: 8 fill 32 slots, +1 waiting, capped by max jobs 8


def test_the_local_endpoint_leaves_jobs_queued_while_the_image_slots_are_full(
    tmp_path: Path,
) -> None:
    """p8's situation, small: 2 image slots, 4 jobs of 2 images of 0.3 s each."""
    settings = WorkerSettings(
        storage_url=str(tmp_path),
        provider="offline",
        worker_concurrency=2,
        worker_max_jobs=8,
        offline_latency_ms=300,
        endpoint_api_key="k",
    )
    with (
        run_server(build_endpoint_app_from_settings(settings)) as url,
        httpx.Client(
            base_url=f"{url}/v2/local", headers={"Authorization": "Bearer k"}, timeout=10
        ) as client,
    ):
        ids = [
            client.post("/run", json={"input": _dispatch_of(f"d{n}", 2)["input"]}).json()["id"]
            for n in range(4)
        ]
        peak, deadline = 0, time.monotonic() + 20
        while True:
            statuses = [client.get(f"/status/{job_id}").json()["status"] for job_id in ids]
            peak = max(peak, statuses.count("IN_PROGRESS"))
            if all(status == "COMPLETED" for status in statuses) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    assert statuses == ["COMPLETED"] * 4
    assert peak == 2  # one dispatch fills the 2 slots, one waits; the other two stay queued
