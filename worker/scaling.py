"""runpod's JobScaler, with the concurrency_modifier's value applied at once.

runpod 1.12's `JobScaler.set_scale` (runpod/serverless/modules/rp_scale.py) asks the
concurrency_modifier before each fetch and, whenever the value differs from the last one,
stops fetching until every job the worker holds has finished (it rebuilds its local job
queue, which it only does when empty). A modifier that follows the free image slots
(`Runner.job_capacity`) changes at almost every fetch, so the stock scaler would drain the
worker again and again. Here the local queue is unbounded (it only hands fetched jobs to the
loop that starts them) and the value applies at once: the scaler fetches `value - held` jobs,
as it does between changes, and starts every job it has fetched.

Everything else (fetching, heartbeats, stop signals, results) is runpod's own.
`worker/main.py` installs it; only it imports runpod.
"""

import asyncio
import logging
from typing import Any

from runpod.serverless.modules import rp_scale

log = logging.getLogger(__name__)


class SlotScaler(rp_scale.JobScaler):
    """A JobScaler whose concurrency follows the modifier without draining first."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.jobs_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def set_scale(self) -> None:
        current = int(self.current_concurrency)  # type: ignore[has-type]
        wanted = max(1, int(self.concurrency_modifier(current)))
        # Never below what it already holds: `run_jobs` starts fetched jobs only while fewer
        # run than this, and a fetched job must start.
        wanted = max(wanted, self.current_occupancy())
        if wanted != current:
            log.debug("job concurrency %d -> %d", current, wanted)
        self.current_concurrency = wanted


def install() -> None:
    """Make `runpod.serverless.start` run its worker loop with `SlotScaler`."""
    rp_scale.JobScaler = SlotScaler
