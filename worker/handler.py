"""The RunPod handler: the one function both RunPod and the local endpoint run.

`make_handler` returns an async handler (RunPod runs all jobs on one asyncio loop, so a
sync handler would run them one after another) and a concurrency_modifier that tells
RunPod how many jobs this worker can take now: runpod calls it with the current concurrency
before fetching jobs and fetches up to the returned value minus the jobs it already holds.
It follows the free image slots (`Runner.job_capacity`: the jobs it holds, plus as many as
the free slots can take with a few images waiting), so a set whose last image is retrying
never keeps the other slots idle, and a busy worker leaves further jobs in RunPod's queue for
other workers instead of holding them IN_PROGRESS towards their executionTimeout. runpod's
own JobScaler would stop fetching until idle whenever that value changes, and when full it
asks again only a second later: `worker/main.py` runs it with `worker/scaling.py`'s change,
which applies the value at once and, when full, asks again as soon as an image ends
(`SlotModifier.freed`).

A dispatch with a `progress_url` (contract version 3) has each result posted there as it is
stored (`worker/progress.py`), best effort; the output still carries every result.

Batch tasks (contract version 4: submit, poll, collect, cancel of a dispatch's Gemini batch)
run in `worker/batch.py`; a collect posts its progress as a generate task does. A batch
call that fails fails the task (`{"error": …}`), never an image.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from shared.contract import CONTRACT_VERSION, DispatchInput, DispatchTask
from shared.storage import open_storage
from worker.batch import BatchRunner
from worker.progress import ProgressPoster
from worker.providers import build_batch_provider, build_provider
from worker.providers.base import BatchError
from worker.runner import ProgressCallback, Runner
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class SlotModifier:
    """The concurrency_modifier: called as runpod calls one (`Runner.job_capacity`, bounded
    by `worker_max_jobs`), and `freed`, which a scaler that found the worker full awaits to
    ask again as soon as an image ends rather than on a fixed cadence."""

    def __init__(self, runner: Runner, max_jobs: int) -> None:
        self.runner = runner
        self.max_jobs = max_jobs

    def __call__(self, current: int) -> int:
        capacity = self.runner.job_capacity(self.max_jobs)
        if capacity != current:
            log.debug("concurrency_modifier: %d -> %d jobs", current, capacity)
        return capacity

    async def freed(self, timeout_s: float) -> None:
        """Return when an image ends (a slot frees), or after `timeout_s`."""
        await self.runner.wait_for_room(timeout_s)


def make_handler(settings: WorkerSettings) -> tuple[Handler, SlotModifier, Runner]:
    provider = build_provider(settings)
    runner = Runner(
        provider=provider,
        storage=open_storage(settings.storage_url),
        concurrency=settings.worker_concurrency,
        dispatch_deadline_s=settings.worker_dispatch_deadline_s,
    )
    batches = BatchRunner(build_batch_provider(settings, provider), runner)

    async def run(
        dispatch: DispatchInput, run_id: str, on_result: ProgressCallback | None
    ) -> dict[str, Any]:
        if dispatch.task == DispatchTask.GENERATE:
            output = await runner.run_dispatch(dispatch, on_result=on_result, run_id=run_id)
            return output.model_dump(mode="json")
        try:
            done = await batches.run(dispatch, run_id=run_id, on_result=on_result)
        except BatchError as exc:
            log.warning("dispatch %s: %s failed: %s", dispatch.dispatch_id, dispatch.task, exc)
            return {"error": exc.reason}
        return done.model_dump(mode="json")

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        raw = job.get("input") or {}
        if isinstance(raw, dict) and raw.get("version", CONTRACT_VERSION) != CONTRACT_VERSION:
            return {"error": f"unsupported contract version {raw.get('version')!r}"}
        try:
            dispatch = DispatchInput.model_validate(raw)
        except ValidationError as exc:
            return {"error": f"invalid input: {exc.errors(include_url=False)}"}
        log.info(
            "dispatch %s: %s, %d images", dispatch.dispatch_id, dispatch.task, len(dispatch.items)
        )
        run_id = str(job.get("id") or "")
        if dispatch.progress_url is None:
            return await run(dispatch, run_id, None)
        poster = ProgressPoster(
            dispatch.progress_url,
            dispatch.dispatch_id,
            interval_s=settings.worker_progress_interval_s,
            attempts=settings.worker_progress_attempts,
        )
        try:
            return await run(dispatch, run_id, poster.add)
        finally:
            await poster.close()

    return handler, SlotModifier(runner, settings.worker_max_jobs), runner
