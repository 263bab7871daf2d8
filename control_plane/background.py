"""Background services: small loops that run a pass when woken (after a commit that made work
for them) or when their interval elapses (work made by another process, or work to retry).
"""

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from shared.waiting import wait_at_most

log = logging.getLogger(__name__)


WAKE_HEADER = "X-Pixelfleet-Wake"  # the token of a wake handed between processes


class Service(StrEnum):
    """The background services of a control-plane process; transactions wake them by name."""

    SENDER = "sender"  # hands pending dispatches to RunPod (`control_plane/runpod/sender.py`)
    POLLER = "poller"  # asks RunPod about dispatches that never reported back
    BATCHES = "batches"  # takes due steps of the batch lane's Gemini batches (polls, deadlines)
    RELAY = "relay"  # feeds committed events to their consumers (`control_plane/events.py`)
    WEBHOOKS = "webhooks"  # sends webhooks to users' own URLs (`control_plane/deliveries.py`)


class Loop:
    """Runs `step` whenever woken, or every `interval_s` when that is set; never two at once,
    and woken passes at least `spacing_s` apart (a burst of commits makes one pass, not one
    each)."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[Any]],
        interval_s: float | None,
        spacing_s: float = 0.0,
    ) -> None:
        self.name = name
        self.step = step
        self.interval_s = interval_s
        self.spacing_s = spacing_s
        self._wanted = asyncio.Event()
        self._running = asyncio.Lock()
        self._last_start = -math.inf

    def wake(self) -> None:
        """Ask for a pass (call on the event loop's thread)."""
        self._wanted.set()

    async def run_forever(self) -> None:
        while True:
            await wait_at_most(self._wanted.wait(), self.interval_s)  # a wake, or a timed pass
            # Wakes that come faster than `spacing_s` share the next pass.
            await asyncio.sleep(self._last_start + self.spacing_s - time.monotonic())
            await self.run_once()

    async def run_once(self) -> Any:
        """One pass now; a failure is logged and the next wake or interval tries again."""
        async with self._running:
            self._wanted.clear()
            self._last_start = time.monotonic()
            try:
                return await self.step()
            except Exception:
                log.exception("%s pass failed; trying again later", self.name)
                return None

    @property
    def idle(self) -> bool:
        return not self._running.locked() and not self._wanted.is_set()
