"""The event relay in a process of its own (`pixelfleet relay`), which `pixelfleet api` starts
on MySQL/MariaDB (`settings.relay_process`). In the API's process a relay pass (the analytics
log, users' webhooks, pipeline stages) holds the GIL that RunPod's webhooks wait for; here it
runs on another core.

Nothing in the API's process wakes it: every `relay_spacing_s` it asks the database whether a
consumer is behind the newest event, and passes then. What its own commits wake (the sender
for a pipeline's next stage, the deliverer for a user's webhook) it hands to the API
(`WakeForwarder`, `POST /api/internal/wake`), which runs those services; their timers catch
up should a wake be lost."""

import asyncio
import logging
import math
import signal
import time

import httpx
import sqlalchemy as sa
from sqlmodel import col, func, select

from control_plane.app import build_platform, subscribe_consumers
from control_plane.background import WAKE_HEADER, Service
from control_plane.db import new_session
from control_plane.models import Event, EventCursor
from control_plane.platform import Platform
from control_plane.settings import Settings
from shared.storage import Storage

log = logging.getLogger(__name__)
RETRY_STUCK_S = 1.0  # a consumer still behind after a pass that moved nothing: tried again
WAKE_TIMEOUT_S = 5.0

Positions = tuple[int, tuple[int, ...]]  # the newest event's id; the consumers' cursors


async def run_relay(settings: Settings, storage: Storage, wake_url: str) -> None:
    """Relay events until SIGTERM or SIGINT; hand wakes for other services to `wake_url`."""
    platform = build_platform(settings, storage)
    subscribe_consumers(platform)
    platform.add_loop(Service.RELAY, RelayWhenBehind(), settings.relay_spacing_s)
    forwarder = WakeForwarder(platform, wake_url, settings.wake_token) if wake_url else None
    platform.elsewhere = forwarder
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    platform.start()
    log.info("relaying events to %d consumers", len(platform.relay.consumers))
    try:
        await stop.wait()
    finally:
        await platform.aclose()
        if forwarder is not None:
            await forwarder.aclose()


class RelayWhenBehind:
    """The relay process's step: a pass when a consumer's cursor is behind the newest event,
    unless nothing has moved since the last pass, which then waits RETRY_STUCK_S (a
    consumer that fails, or events after a gap that has to settle)."""

    def __init__(self) -> None:
        self._last: Positions | None = None
        self._last_pass = -math.inf

    async def __call__(self, platform: Platform) -> int:
        names = [consumer.name for consumer in platform.relay.consumers]
        now = await asyncio.to_thread(positions, platform.engine, names)
        newest, cursors = now
        if len(cursors) == len(names) and all(cursor >= newest for cursor in cursors):
            return 0
        if now == self._last and time.monotonic() - self._last_pass < RETRY_STUCK_S:
            return 0
        self._last, self._last_pass = now, time.monotonic()
        return await asyncio.to_thread(platform.relay.run_pass)


def positions(engine: sa.Engine, consumers: list[str]) -> Positions:
    """The newest event's id (0: none) and the cursors of `consumers` that exist."""
    with new_session(engine) as session:
        newest = session.exec(select(func.max(Event.id))).one() or 0
        query = select(EventCursor.position).where(col(EventCursor.consumer).in_(consumers))
        cursors = tuple(sorted(session.exec(query).all()))
    return newest, cursors


class WakeForwarder:
    """Hands the API the wakes of services this process does not run. One request per
    service at a time; a wake asked meanwhile sends one more once it is answered (the pass
    the first one started may have begun before the commit that asked)."""

    def __init__(self, platform: Platform, url: str, token: str) -> None:
        self.platform = platform
        self.url = url
        self.client = httpx.AsyncClient(timeout=WAKE_TIMEOUT_S, headers={WAKE_HEADER: token})
        self._sending: set[str] = set()
        self._again: set[str] = set()

    def __call__(self, service: str) -> None:
        """Forward a wake of `service` (on the event loop's thread)."""
        if service in self._sending:
            self._again.add(service)
            return
        self._sending.add(service)
        self.platform.spawn(self._send(service))

    async def _send(self, service: str) -> None:
        try:
            while True:
                self._again.discard(service)
                try:
                    answer = await self.client.post(self.url, params={"service": service})
                    answer.raise_for_status()
                except httpx.HTTPError as exc:
                    log.warning("could not wake the API's %s (%s); its timer will", service, exc)
                if service not in self._again:
                    return
        finally:
            self._sending.discard(service)

    async def aclose(self) -> None:
        await self.client.aclose()
