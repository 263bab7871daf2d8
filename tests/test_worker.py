"""The worker: offline provider, runner and handler, on real storage."""

import asyncio
import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from shared.contract import DispatchInput, DispatchOutput, ImageParams, WorkItem
from shared.storage import LocalStorage
from tests.conftest import png_bytes
from worker.handler import make_handler
from worker.providers import GenerationRequest, Reference
from worker.providers.offline import OfflineProvider, render
from worker.runner import Runner
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
    assert concurrency_modifier(1) == 5
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
