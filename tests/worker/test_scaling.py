"""worker/scaling.py: runpod's JobScaler, applying a changed concurrency_modifier value at
once (the stock one waits until the worker is idle), never below the jobs it holds."""

import asyncio

from runpod.serverless.modules import rp_scale
from runpod.serverless.modules.worker_state import JobsProgress

from worker import scaling


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
