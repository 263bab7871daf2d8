"""Group commit: items handed in by many requests at once, applied in batches on worker
threads, so that what a transaction costs whatever its size (its locks, statements and
commit) is paid once per batch instead of once per item.

A request hands its item in and waits for its outcome. While fewer than `at_once` batches
are being applied, it applies every item waiting (its own among them, at most `most`) on a
worker thread; otherwise it waits until its item's outcome is in, or a batch ends and it may
take the next. Each batch is as large as what arrived while the last one was applied: one
item when requests come one at a time, more under load, with no timer to wait for. Should
the request applying a batch be cancelled (its client gone), the batch's other items still
get their outcomes, or wait again for the next request to apply if no thread had taken it
yet; a cancelled request's own item is not applied unless a thread already has it."""

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio

ItemT = TypeVar("ItemT")
OutcomeT = TypeVar("OutcomeT")
Waiting = tuple[ItemT, asyncio.Future[OutcomeT | BaseException]]


class Batches(Generic[ItemT, OutcomeT]):
    """`apply` takes a batch of items and returns one outcome per item, in order: a result, or
    an exception to raise in that item's request. Should `apply` itself raise, every item of
    the batch gets its exception. Threads are taken under `limiter`."""

    def __init__(
        self,
        apply: Callable[[list[ItemT]], Sequence[OutcomeT | BaseException]],
        limiter: anyio.CapacityLimiter,
        at_once: int,
        most: int,
    ) -> None:
        self._apply, self._limiter = apply, limiter
        self._at_once, self._most = at_once, most
        self._waiting: list[Waiting[ItemT, OutcomeT]] = []
        self._applying = 0
        self._batch_ended = asyncio.Event()

    @property
    def waiting(self) -> int:
        """Items handed in and not yet taken into a batch."""
        return len(self._waiting)

    async def run(self, item: ItemT) -> OutcomeT:
        """`item`'s outcome, once a batch holding it is applied (its exception raised)."""
        loop = asyncio.get_running_loop()
        waiting: Waiting[ItemT, OutcomeT] = (item, loop.create_future())
        self._waiting.append(waiting)
        outcome = waiting[1]
        try:
            while not outcome.done():
                if self._waiting and self._applying < self._at_once:
                    await self._apply_waiting(loop)
                else:
                    await self._until_done_or_batch_ended(outcome)
        except BaseException:
            if waiting in self._waiting:  # a cancelled request's item is not applied
                self._waiting.remove(waiting)
            raise
        result = outcome.result()
        if isinstance(result, BaseException):
            raise result
        return result

    async def _apply_waiting(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting[: self._most], self._waiting[self._most :]
        claim = _Claim()
        self._applying += 1
        try:
            await anyio.to_thread.run_sync(self._settle, batch, loop, claim, limiter=self._limiter)
        except BaseException:
            if claim.take():  # cancelled before a thread took the batch: it waits again
                self._waiting[:0] = [waiting for waiting in batch if not waiting[1].done()]
            raise
        finally:
            self._applying -= 1
            self._batch_ended.set()
            self._batch_ended = asyncio.Event()

    def _settle(
        self,
        batch: list[Waiting[ItemT, OutcomeT]],
        loop: asyncio.AbstractEventLoop,
        claim: "_Claim",
    ) -> None:
        """Apply `batch` (on a worker thread) and hand each item its outcome on the event loop:
        settled here, they reach their requests even if the one applying them is cancelled."""
        if not claim.take():  # handed back to the waiting ones meanwhile
            return
        outcomes: Sequence[OutcomeT | BaseException]
        try:
            outcomes = self._apply([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{len(outcomes)} outcomes for a batch of {len(batch)}")
        except Exception as exc:  # every request of the batch answers with it
            outcomes = [exc] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            loop.call_soon_threadsafe(_set, future, outcome)

    async def _until_done_or_batch_ended(self, outcome: "asyncio.Future[Any]") -> None:
        ended = asyncio.ensure_future(self._batch_ended.wait())
        try:
            await asyncio.wait((outcome, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()


class _Claim:
    """Who deals with a batch: the thread that applies it, or, should the request applying
    it be cancelled before a thread takes it, the event loop, which hands it back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = False

    def take(self) -> bool:
        """True for the first caller only."""
        with self._lock:
            taken, self._taken = self._taken, True
            return not taken


def _set(future: "asyncio.Future[Any]", outcome: object) -> None:
    if not future.done():
        future.set_result(outcome)
