"""Slots that go to waiting retries before waiting first tries: the Gemini provider's call
slots and the runner's image slots.

A retry's image has already waited (its call, then the retry delay): letting it go first
keeps retry chains moving while fresh images fill the other slots, instead of leaving them
to the end of a batch. A `Lease` is one image's hold on a slot, which it can lend to other
images while it only waits (`Lease.lend`, before a retry) and take back as a retry.
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType


class Slots:
    """At most `limit` holders; a freed slot goes to a waiting retry before any waiting first
    try (each kind in arrival order). The slot is handed over on release, so nobody
    overtakes."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._free = limit
        self._retries: deque[asyncio.Future[None]] = deque()
        self._firsts: deque[asyncio.Future[None]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, *, retry: bool) -> AsyncIterator[None]:
        await self.acquire(retry=retry)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, *, retry: bool) -> None:
        if self._free > 0 and not self._retries and (retry or not self._firsts):
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        queue = self._retries if retry else self._firsts
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # a release may have dropped it already
                    queue.remove(waiter)
            raise

    def release(self) -> None:
        self._free += 1
        while self._free > 0:
            waiter = self._next_waiter()
            if waiter is None:
                return
            self._free -= 1
            waiter.set_result(None)

    def _next_waiter(self) -> asyncio.Future[None] | None:
        for queue in (self._retries, self._firsts):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    return waiter
        return None


class Lease:
    """One holder's slot (`async with`), which it can lend while it only waits."""

    def __init__(self, slots: Slots) -> None:
        self._slots = slots
        self._held = False

    async def __aenter__(self) -> "Lease":
        await self._slots.acquire(retry=False)
        self._held = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._held:
            self._held = False
            self._slots.release()

    @contextlib.asynccontextmanager
    async def lend(self) -> AsyncIterator[None]:
        """Give the slot to another holder for the block, then take the next free one back
        ahead of first tries. Not holding one (lent already, or cancelled while taking it
        back), it waits without lending."""
        if not self._held:
            yield
            return
        self._held = False
        self._slots.release()
        try:
            yield
        finally:
            await self._slots.acquire(retry=True)
            self._held = True
