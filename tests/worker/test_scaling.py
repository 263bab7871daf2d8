"""worker/scaling.py: runpod's JobScaler, applying a changed concurrency_modifier value at
once (the stock one waits until the worker is idle), never below the jobs it holds, and
when full asking again as soon as an image ends."""

import asyncio
from pathlib import Path

import pytest
from runpod.serverless.modules import rp_scale
from runpod.serverless.modules.worker_state import JobsProgress

from tests.worker.test_handler import PerImageProvider, _dispatch_of, _settle, _until
from worker import scaling
from worker.handler import make_handler
from worker.settings import WorkerSettings


def test_the_slot_scaler_follows_the_modifier_without_draining() -> None:
    values = [3, 5, 2]
    scaler = scaling.SlotScaler(
        {"handler": lambda job: None, "concurrency_modifier": lambda _current: values.pop(0)}
    )
    held = [{"id": f"held-{n}"} for n in range(4)]

    async def scenario() -> list[int]:
        seen = []
        JobsProgress().add(held[0])  # a job in progress: the stock scaler would wait here
        await scaler.set_scale()
        seen.append(scaler.current_concurrency)
        await scaler.set_scale()
        seen.append(scaler.current_concurrency)
        for job in held[1:]:
            JobsProgress().add(job)
        await scaler.set_scale()  # asks 2 while holding 4: the 4 fetched jobs still start
        seen.append(scaler.current_concurrency)
        return seen

    try:
        assert asyncio.run(scenario()) == [3, 5, 4]
    finally:
        for job in held:
            JobsProgress().remove(job)
    original = rp_scale.JobScaler
    try:
        scaling.install()
        assert rp_scale.JobScaler is scaling.SlotScaler
    finally:
        rp_scale.JobScaler = original


def test_a_full_slot_scaler_asks_again_as_soon_as_an_image_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With pixelfleet's SlotModifier, a full worker's `set_scale` waits for an image to end
    (not runpod's one-second sleep; here the fallback poll is a minute) and returns once a
    job fits: 2 image slots, sets of 2, a and b held, c taken when a's images end."""
    monkeypatch.setattr(scaling, "FULL_POLL_S", 60.0)
    settings = WorkerSettings(
        storage_url=str(tmp_path), provider="offline", worker_concurrency=2, worker_max_jobs=8
    )
    handler, modifier, runner = make_handler(settings)
    provider = PerImageProvider()
    runner.provider = provider
    scaler = scaling.SlotScaler({"handler": handler, "concurrency_modifier": modifier})
    held = [{"id": "a"}, {"id": "b"}]

    async def scenario() -> None:
        tasks = [asyncio.create_task(handler(_dispatch_of(job["id"], 2))) for job in held]
        await _settle()
        scaling_up = asyncio.create_task(scaler.set_scale())
        await _settle()
        assert not scaling_up.done() and scaler.current_concurrency == 2  # full
        provider.gate("a_0").set()
        await _until(lambda: runner.unfinished == 3)
        await _settle()
        assert not scaling_up.done()  # one free slot: no room for a set of 2 yet
        provider.gate("a_1").set()
        await asyncio.wait_for(scaling_up, 10)
        assert scaler.current_concurrency == 3 > scaler.current_occupancy()
        for gate in ("b_0", "b_1"):
            provider.gate(gate).set()
        await asyncio.gather(*tasks)

    for job in held:
        JobsProgress().add(job)
    try:
        asyncio.run(scenario())
    finally:
        for job in held:
            JobsProgress().remove(job)
