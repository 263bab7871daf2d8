"""runpod's JobScaler, with the concurrency_modifier's value applied at once, and a full
worker asking again as soon as an image ends.

runpod 1.12's `JobScaler.set_scale` (runpod/serverless/modules/rp_scale.py) asks the
concurrency_modifier before each fetch and, whenever the value differs from the last one,
stops fetching until every job the worker holds has finished (it rebuilds its local job
queue, which it only does when empty). A modifier that follows the free image slots
(`Runner.job_capacity`) changes at almost every fetch, so the stock scaler would drain the
worker again and again. Here the local queue is unbounded (it only hands fetched jobs to the
loop that starts them) and the value applies at once: the scaler fetches `value - held` jobs,
as it does between changes, and starts every job it has fetched.

When the worker is full, runpod's `get_jobs` sleeps a second before asking again, so image
slots freed meanwhile idle for up to a second (with 2 s model calls, a quarter of the time
after each wave). With pixelfleet's `SlotModifier`, `set_scale` instead waits until one of
the worker's images ends (`SlotModifier.freed`, at most `FULL_POLL_S`) and asks again then;
it returns once the worker has room, so that sleep is not reached. A job-take request still
goes out only when there is room for a whole job.

Everything else (fetching, heartbeats, stop signals, results) is runpod's own.
`worker/main.py` installs it; only it imports runpod.
"""

import asyncio
import logging
from typing import Any

from runpod.serverless.modules import rp_scale

from worker.handler import SlotModifier

log = logging.getLogger(__name__)
FULL_POLL_S = 1.0  # a full worker asks again at least this often, as runpod does


class SlotScaler(rp_scale.JobScaler):
    """A JobScaler whose concurrency follows the modifier without draining first."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.jobs_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def set_scale(self) -> None:
        modifier = self.concurrency_modifier
        while True:
            current = int(self.current_concurrency)  # type: ignore[has-type]
            wanted = max(1, int(modifier(current)))
            # Never below what it already holds: `run_jobs` starts fetched jobs only while
            # fewer run than this, and a fetched job must start.
            held = self.current_occupancy()
            wanted = max(wanted, held)
            if wanted != current:
                log.debug("job concurrency %d -> %d", current, wanted)
            self.current_concurrency = wanted
            if wanted > held or not isinstance(modifier, SlotModifier) or not self.is_alive():
                return
            await modifier.freed(FULL_POLL_S)


def install() -> None:
    """Make `runpod.serverless.start` run its worker loop with `SlotScaler`."""
    rp_scale.JobScaler = SlotScaler
