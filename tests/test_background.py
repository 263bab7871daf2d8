"""Background loops (`control_plane/background.py`): woken passes, spaced."""

import asyncio
import time

from control_plane.background import Loop


def test_a_burst_of_wakes_makes_one_pass_now_and_one_after_the_spacing() -> None:
    async def scenario() -> list[float]:
        started = time.monotonic()
        passes: list[float] = []

        async def step() -> None:
            passes.append(time.monotonic() - started)

        loop = Loop("test", step, interval_s=None, spacing_s=0.5)
        running = asyncio.get_running_loop().create_task(loop.run_forever())
        for _ in range(20):  # e.g. 20 webhooks' commits within 0.2 s
            loop.wake()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.8)
        running.cancel()
        return passes

    passes = asyncio.run(scenario())
    assert len(passes) == 2, passes
    first, second = passes
    assert first < 0.2  # the first wake is not held back
    assert second - first >= 0.5 - 0.01  # the rest of the burst shares one pass


def test_without_spacing_each_wake_after_a_pass_makes_a_pass() -> None:
    async def scenario() -> int:
        passes = 0

        async def step() -> None:
            nonlocal passes
            passes += 1

        loop = Loop("test", step, interval_s=None)
        running = asyncio.get_running_loop().create_task(loop.run_forever())
        for _ in range(5):
            loop.wake()
            await asyncio.sleep(0.02)
        running.cancel()
        return passes

    assert asyncio.run(scenario()) == 5


def test_a_loop_stops_when_cancelled_as_a_wake_arrives() -> None:
    """A stop that coincides with a wake (a webhook's commit) still stops the loop."""

    async def scenario() -> bool:
        async def step() -> None:
            pass

        loop = Loop("test", step, interval_s=60, spacing_s=0)
        running = asyncio.get_running_loop().create_task(loop.run_forever())
        await asyncio.sleep(0.01)
        loop.wake()
        running.cancel()
        await asyncio.wait({running}, timeout=2)
        return running.cancelled()  # asked here: asyncio.run cancels what is left at its end

    assert asyncio.run(scenario())
