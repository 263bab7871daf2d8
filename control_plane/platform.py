"""The long-lived things one control-plane process holds, built once at start-up: settings,
the database engine, storage, the RunPod client, the event relay and the background loops."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import sqlalchemy as sa
from sqlmodel import Session

from control_plane.background import Loop, Service
from control_plane.batching import Batches
from control_plane.db import new_session, session_scope
from control_plane.errors import DomainError
from control_plane.events import Relay
from control_plane.runpod import webhook
from control_plane.runpod.client import RunPodClient
from control_plane.runpod.rate import TokenBucket
from control_plane.runpod.webhook import Answer, Post
from control_plane.settings import Settings
from shared.storage import Storage

log = logging.getLogger(__name__)
Step = Callable[["Platform"], Awaitable[Any]]
WEBHOOKS_TOGETHER = 32  # at most, in one transaction (`control_plane/batching.py`)


@dataclass
class Platform:
    settings: Settings
    engine: sa.Engine
    storage: Storage
    runpod: RunPodClient
    relay: Relay = field(init=False)
    run_bucket: TokenBucket = field(init=False)  # paces this process's `/run` calls
    # RunPod's webhooks and the worker's progress posts applied at once (`reports_at_once`)
    reports: anyio.CapacityLimiter = field(init=False)
    # RunPod's webhooks, authenticated and applied together as they arrive together
    webhooks: Batches[Post, Answer] = field(init=False)
    loops: dict[str, Loop] = field(default_factory=dict)
    # where wakes go for services this process does not run (the relay process hands them
    # to the API: `control_plane/relaying.py`); None: they are ignored
    elsewhere: Callable[[str], None] | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.relay = Relay(self.engine, self.wake)
        self.run_bucket = TokenBucket(self.settings.run_rate_per_s)
        self.reports = anyio.CapacityLimiter(self.settings.reports_at_once)
        at_once = self.settings.reports_at_once
        self.webhooks = Batches(self._receive_webhooks, self.reports, at_once, WEBHOOKS_TOGETHER)

    def _receive_webhooks(self, posts: list[Post]) -> list[Answer | DomainError]:
        with self.session() as session:
            return webhook.receive(session, self.settings, self.storage, posts)

    # -- sessions ---------------------------------------------------------------------------

    def session(self) -> Session:
        """A session whose commits wake the services its changes made work for."""
        return new_session(self.engine, self.wake)

    @contextlib.contextmanager
    def session_scope(self) -> Iterator[Session]:
        """`session()` that commits on success and rolls back on any error."""
        with session_scope(self.engine, self.wake) as session:
            yield session

    # -- background services ----------------------------------------------------------------

    def add_loop(
        self, service: Service, step: Step, interval_s: float | None, spacing_s: float = 0.0
    ) -> None:
        async def run_step() -> Any:
            return await step(self)

        self.loops[service] = Loop(service, run_step, interval_s, spacing_s)

    def start(self) -> None:
        """Start every loop on the running event loop (once, at start-up)."""
        self._loop = asyncio.get_running_loop()
        for loop in self.loops.values():
            self.spawn(loop.run_forever())
            loop.wake()  # catch up with what earlier processes left

    def wake(self, service: str) -> None:
        """Wake `service` (from any thread): this process's, or `elsewhere`; otherwise, and
        once stopped, nothing."""
        loop = self.loops.get(service)
        if self._loop is None or self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the event loop is shutting down
            if loop is not None:
                self._loop.call_soon_threadsafe(loop.wake)
            elif self.elsewhere is not None:
                self._loop.call_soon_threadsafe(self.elsewhere, service)

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout_s: float = 60.0) -> Any:
        """Run `coroutine` on the event loop from a worker thread and wait for its result."""
        if self._loop is None:
            raise RuntimeError("the platform is not started")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run `coroutine` in the background, keeping a reference and logging its failure."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait until every woken service has run its pass (tests and shutdown)."""
        while not all(loop.idle for loop in self.loops.values()):
            await asyncio.sleep(0.005)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.runpod.aclose()
        self.engine.dispose()
