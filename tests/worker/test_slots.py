"""worker/slots.py: slots that go to retries first (the Gemini provider's call slots, the
runner's image slots), and a lease that lends its slot while its holder only waits."""

import asyncio

import pytest

from worker.slots import Lease, Slots

pytestmark = pytest.mark.anyio


async def settle() -> None:
    """Let every task run until it waits on something (no real time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def one_slot_free(slots: Slots) -> None:
    """Exactly one slot is free: none was lost (a first lease gets one), none doubled (a
    second one waits until the first is done)."""
    async with asyncio.timeout(5), Lease(slots):
        second = asyncio.create_task(Lease(slots).__aenter__())
        await settle()
        assert not second.done()
    await asyncio.wait_for(second, 5)
    slots.release()


async def test_slots_give_a_freed_slot_to_a_retry_before_a_waiting_first_call() -> None:
    slots = Slots(1)
    order: list[str] = []

    async def call(name: str, *, retry: bool) -> None:
        async with slots.hold(retry=retry):
            order.append(name)

    async with slots.hold(retry=False):
        waiting = [
            asyncio.create_task(call("first 1", retry=False)),
            asyncio.create_task(call("retry 1", retry=True)),
            asyncio.create_task(call("first 2", retry=False)),
            asyncio.create_task(call("retry 2", retry=True)),
        ]
        await settle()
        assert order == []
    await asyncio.gather(*waiting)
    assert order == ["retry 1", "retry 2", "first 1", "first 2"]


async def test_slots_lose_no_slot_to_a_cancelled_waiter() -> None:
    slots = Slots(1)
    async with slots.hold(retry=False):
        cancelled_waiting = asyncio.create_task(slots.hold(retry=True).__aenter__())
        handed_then_cancelled = asyncio.create_task(slots.hold(retry=False).__aenter__())
        await settle()
        cancelled_waiting.cancel()
        await settle()
    handed_then_cancelled.cancel()  # the slot was handed to it on release; it never ran
    for task in (cancelled_waiting, handed_then_cancelled):
        with pytest.raises(asyncio.CancelledError):
            await task
    async with asyncio.timeout(5):  # a lost slot would block here for good
        async with slots.hold(retry=False):
            pass


async def test_a_lease_lends_its_slot_while_waiting_and_takes_one_back_before_first_tries() -> None:
    slots = Slots(1)
    order: list[str] = []
    lent, back = asyncio.Event(), asyncio.Event()

    async def fresh(name: str) -> None:
        async with Lease(slots):
            order.append(name)
            if name == "b":
                await back.wait()  # b holds the lent slot until a wants it back

    async def retrying() -> None:
        async with Lease(slots) as lease:
            order.append("a")
            async with lease.lend():
                lent.set()
                await back.wait()
            order.append("a again")

    first = asyncio.create_task(retrying())
    await lent.wait()
    others = [asyncio.create_task(fresh(name)) for name in ("b", "c")]
    await settle()
    assert order == ["a", "b"]  # b runs on a's lent slot; c waits
    back.set()
    await asyncio.gather(first, *others)
    assert order == ["a", "b", "a again", "c"]  # a takes the slot back ahead of c
    await one_slot_free(slots)


async def test_a_lease_cancelled_while_taking_its_slot_back_releases_nothing() -> None:
    slots = Slots(1)
    lent = asyncio.Event()

    async def retrying() -> None:
        async with Lease(slots) as lease, lease.lend():
            lent.set()
            await asyncio.sleep(0)

    async with Lease(slots):
        pass
    blocker = Lease(slots)
    task = asyncio.create_task(retrying())
    await lent.wait()
    await blocker.__aenter__()  # takes the lent slot: the lease waits to take one back
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await blocker.__aexit__(None, None, None)
    await one_slot_free(slots)
