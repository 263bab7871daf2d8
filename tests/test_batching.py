"""Group commit (control_plane/batching.py): items handed in while a batch is applied go
together in the next; each request gets its own item's outcome, even when the request
applying its batch is cancelled; a cancelled request's waiting item is not applied."""

import asyncio
import threading

import anyio
import pytest

from control_plane.batching import Batches

pytestmark = pytest.mark.anyio


class Recorder:
    """An `apply` that records its batches, doubles each item (or answers an item of -1 with
    an error), and holds a batch while `hold` is clear (batch number N: `gates[N]`, if set)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.gates: dict[int, threading.Event] = {}

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        self.gates.get(len(self.batches) - 1, self.hold).wait(10)
        return [ValueError(f"bad {item}") if item < 0 else item * 2 for item in items]


def batches(apply: Recorder, at_once: int = 1) -> Batches[int, int]:
    return Batches(apply, anyio.CapacityLimiter(4), at_once=at_once, most=3)


async def until(condition: object) -> None:
    for _ in range(1_000):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


async def first_batch_held(
    apply: Recorder, at_once: int = 1
) -> tuple[Batches[int, int], asyncio.Task[int]]:
    """Batches over `apply`, the first (item 1) handed in and held on its thread; its request."""
    together = batches(apply, at_once)
    apply.hold.clear()
    first = asyncio.ensure_future(together.run(1))
    await until(lambda: apply.batches == [[1]])
    return together, first


async def test_items_handed_in_while_a_batch_is_applied_go_together_next() -> None:
    apply = Recorder()
    together, first = await first_batch_held(apply)
    rest = [asyncio.ensure_future(together.run(item)) for item in (2, 3, 4, 5)]
    await until(lambda: together.waiting == 4)
    apply.hold.set()
    assert await first == 2 and await asyncio.gather(*rest) == [4, 6, 8, 10]
    assert apply.batches == [[1], [2, 3, 4], [5]]  # at most `most` at a time


async def test_one_at_a_time_each_is_its_own_batch() -> None:
    apply = Recorder()
    together = batches(apply)
    assert [await together.run(item) for item in (1, 2)] == [2, 4]
    assert apply.batches == [[1], [2]]


async def test_an_items_error_is_raised_in_its_own_request_only() -> None:
    apply = Recorder()
    together, first = await first_batch_held(apply)
    bad, good = asyncio.ensure_future(together.run(-1)), asyncio.ensure_future(together.run(3))
    await until(lambda: together.waiting == 2)
    apply.hold.set()
    assert await first == 2 and await good == 6
    with pytest.raises(ValueError, match="bad -1"):
        await bad
    assert apply.batches == [[1], [-1, 3]]


async def test_a_batch_that_raises_fails_each_of_its_requests() -> None:
    def broken(items: list[int]) -> list[int | BaseException]:
        raise RuntimeError("database gone")

    together: Batches[int, int] = Batches(broken, anyio.CapacityLimiter(1), at_once=1, most=8)
    for outcome in await asyncio.gather(together.run(1), together.run(2), return_exceptions=True):
        assert isinstance(outcome, RuntimeError) and str(outcome) == "database gone"


async def test_the_others_get_their_outcomes_when_the_request_applying_them_is_cancelled() -> None:
    apply = Recorder()
    together, first = await first_batch_held(apply)
    applier, other = asyncio.ensure_future(together.run(2)), asyncio.ensure_future(together.run(3))
    await until(lambda: together.waiting == 2)
    apply.gates[1] = gate = threading.Event()
    apply.hold.set()
    await until(lambda: len(apply.batches) == 2)  # [2, 3], by the first to wait: `applier`
    assert await first == 2
    applier.cancel()  # while its batch is on the thread
    with pytest.raises(asyncio.CancelledError):
        await applier
    await asyncio.sleep(0.02)
    assert not other.done()
    gate.set()
    with anyio.fail_after(5):
        assert await other == 6
    assert apply.batches == [[1], [2, 3]]


async def test_a_cancelled_request_waiting_for_its_turn_is_not_applied() -> None:
    apply = Recorder()
    together, first = await first_batch_held(apply)
    gone = asyncio.ensure_future(together.run(2))
    await until(lambda: together.waiting == 1)
    gone.cancel()
    await asyncio.sleep(0.01)
    assert together.waiting == 0
    apply.hold.set()
    assert await first == 2
    assert apply.batches == [[1]]


async def test_at_most_at_once_batches_are_applied_at_a_time() -> None:
    apply = Recorder()
    together, first = await first_batch_held(apply, at_once=2)
    second = asyncio.ensure_future(together.run(2))  # a second batch at once
    await until(lambda: len(apply.batches) == 2)
    third = asyncio.ensure_future(together.run(3))  # waits for one of them
    await until(lambda: together.waiting == 1)
    await asyncio.sleep(0.02)
    assert len(apply.batches) == 2
    apply.hold.set()
    assert await asyncio.gather(first, second, third) == [2, 4, 6]
    assert apply.batches == [[1], [2], [3]]


async def test_a_batch_whose_request_is_cancelled_before_a_thread_takes_it_waits_again() -> None:
    """The others' items go back to the waiting ones (the cancelled request's own is not
    applied), and the next request to apply takes them."""
    apply = Recorder()
    limiter = anyio.CapacityLimiter(1)
    together: Batches[int, int] = Batches(apply, limiter, at_once=1, most=8)
    await limiter.acquire()  # no thread for anyone yet
    first = asyncio.ensure_future(together.run(1))
    await until(lambda: limiter.statistics().tasks_waiting == 1)  # applying [1], no thread
    applier, other = asyncio.ensure_future(together.run(2)), asyncio.ensure_future(together.run(3))
    await until(lambda: together.waiting == 2)
    first.cancel()  # the next to apply takes [2, 3]
    await until(lambda: together.waiting == 0 and limiter.statistics().tasks_waiting == 1)
    applier.cancel()  # [3] waits again, for `other`
    await until(lambda: together.waiting == 0 and limiter.statistics().tasks_waiting == 1)
    limiter.release()
    with anyio.fail_after(5):
        assert await other == 6
    assert apply.batches == [[3]]
    for cancelled in (first, applier):
        with pytest.raises(asyncio.CancelledError):
            await cancelled
