"""Waiting with a time limit (`shared/waiting.py`): a cancel is never lost."""

import asyncio
import time

import pytest

from shared.waiting import wait_at_most


def test_a_cancel_that_arrives_as_the_wait_ends_still_cancels() -> None:
    """Python 3.11's `asyncio.wait_for` returns normally here, and a task cancelled to stop
    it carries on (the local endpoint's stop hung on that)."""

    async def scenario() -> None:
        ends = asyncio.get_running_loop().create_future()
        waiting = asyncio.create_task(wait_at_most(ends, 10))
        await asyncio.sleep(0)
        waiting.cancel()
        if not ends.done():  # asyncio.timeout cancels what it awaits; wait_for left it
            ends.set_result(None)
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(scenario())


def test_it_returns_when_the_awaited_thing_ends_or_quietly_at_the_limit() -> None:
    async def scenario() -> tuple[float, float, bool]:
        event = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, event.set)
        started = time.monotonic()
        await wait_at_most(event.wait(), 10)
        ended = time.monotonic() - started
        never = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        await wait_at_most(never, 0.05)
        return ended, time.monotonic() - started, never.cancelled()

    ended, timed_out, given_up = asyncio.run(scenario())
    assert ended < 5
    assert 0.05 <= timed_out < 5
    assert given_up  # what was awaited is cancelled, not left pending
