"""The batch tasks of the contract (version 4): one Gemini batch per dispatch, in short steps.

- submit: the items become the batch's requests (references read from storage as online
  generation reads them; an item whose reference cannot be read is left out and returned
  failed). Creating a batch is not idempotent at Google, so the batch's display name holds a
  key derived from the dispatch id and is looked up first: a re-run of the task (RunPod
  retried it, the control plane sent it again) returns the batch an earlier run created.
  Runs in one worker process take turns per dispatch; two workers running the same submit
  at the same moment could still both create one (Google offers no way to prevent it).
- poll: one look at the batch, its state and Google's counts.
- collect: every result stored and reported exactly as online generation does (the
  runner's storage writes and results), one per item: an item the batch has no result for
  fails saying so, and a batch that ended without results fails every item with its state.
  Collecting a batch that has not ended is an error: the task is asked too early.
- cancel: the batch cancelled (one that has ended stays as it is); its state after.

A failed call to the batch service fails the task (the handler's `{"error": …}`), never an
image: the control plane asks again or falls back to the online lane.
"""

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any, Final

from shared.contract import (
    BatchOutput,
    DispatchInput,
    DispatchOutput,
    DispatchTask,
    ItemResult,
    WorkItem,
)
from shared.storage import StorageError
from worker.providers.base import (
    BatchError,
    BatchOutcome,
    BatchProvider,
    BatchRequest,
    GenerationRequest,
)
from worker.runner import ProgressCallback, Runner, describe, items_of_run

log = logging.getLogger(__name__)
KEY_PREFIX: Final = "pixelfleet-"
NO_RESULT: Final = "the Gemini batch returned no result for this image"
Report = Callable[[str, BatchOutcome], Coroutine[Any, Any, None]]


def batch_key(dispatch_id: str) -> str:
    """The display name of a dispatch's batch: how a re-run submit finds it."""
    return f"{KEY_PREFIX}{dispatch_id}"


class BatchRunner:
    """Runs the batch tasks with one batch provider and the online runner's storage."""

    def __init__(self, provider: BatchProvider, runner: Runner) -> None:
        self.provider = provider
        self.runner = runner
        self._submitting: dict[str, asyncio.Lock] = {}

    async def run(
        self,
        dispatch: DispatchInput,
        *,
        run_id: str | None = None,
        on_result: ProgressCallback | None = None,
    ) -> BatchOutput | DispatchOutput:
        """The task's output; BatchError when the batch service failed it."""
        task = dispatch.task
        if task == DispatchTask.BATCH_SUBMIT:
            return await self.submit(dispatch)
        if task == DispatchTask.BATCH_COLLECT:
            return await self.collect(dispatch, run_id=run_id, on_result=on_result)
        name = self._name(dispatch)
        if task == DispatchTask.BATCH_POLL:
            info = await self.provider.get(name)
        elif task == DispatchTask.BATCH_CANCEL:
            info = await self.provider.cancel(name)
        else:
            raise BatchError(f"{task} is not a batch task")
        return BatchOutput(dispatch_id=dispatch.dispatch_id, task=task, batch=info)

    async def submit(self, dispatch: DispatchInput) -> BatchOutput:
        key = batch_key(dispatch.dispatch_id)
        lock = self._submitting.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                return await self._submit(dispatch, key)
        finally:
            if not lock.locked():
                self._submitting.pop(key, None)

    async def _submit(self, dispatch: DispatchInput, key: str) -> BatchOutput:
        found = await self.provider.find(key)
        task = DispatchTask.BATCH_SUBMIT
        if found is not None:
            log.info("dispatch %s: batch %s exists already", dispatch.dispatch_id, found.name)
            return BatchOutput(dispatch_id=dispatch.dispatch_id, task=task, batch=found)
        left_out: list[ItemResult] = []
        model = dispatch.items[0].params.model
        info = await self.provider.create(key, model, self._requests(dispatch.items, left_out))
        return BatchOutput(
            dispatch_id=dispatch.dispatch_id, task=task, batch=info, results=left_out
        )

    async def _requests(
        self, items: list[WorkItem], left_out: list[ItemResult]
    ) -> AsyncIterator[BatchRequest]:
        for item in items:
            try:
                references = await asyncio.gather(
                    *map(self.runner.read_reference, item.reference_uris)
                )
            except StorageError as exc:
                left_out.append(self.runner.failed(item, f"reference unreadable: {exc}"))
                continue
            request = GenerationRequest(
                prompt=item.prompt, params=item.params, references=references
            )
            yield BatchRequest(key=item.output_id, request=request)

    async def collect(
        self,
        dispatch: DispatchInput,
        *,
        run_id: str | None = None,
        on_result: ProgressCallback | None = None,
    ) -> DispatchOutput:
        name = self._name(dispatch)
        items = {item.output_id: item for item in items_of_run(dispatch.items, run_id)}
        found = await self.provider.results(name, {key: item.params for key, item in items.items()})
        state = found.info.state
        if not state.ended:
            raise BatchError(f"batch {name} is {state}: there is nothing to collect yet")
        results: dict[str, ItemResult] = {}

        async def report(key: str, outcome: BatchOutcome) -> None:
            try:
                result = await self.runner.result_of(items[key], outcome)
            except Exception as exc:
                log.exception("output %s crashed the batch collect", key)
                result = self.runner.failed(items[key], f"worker error: {describe(exc)}")
            finally:
                self.runner.storing.release()
            results[key] = result
            if on_result is not None:
                await on_result(result)

        if found.outcomes is not None:
            await self._each_outcome(found.outcomes, items, report)
        reason = NO_RESULT
        if found.outcomes is None:
            reason = f"the Gemini batch {state}" + (
                f": {found.info.error}" if found.info.error else ""
            )
        for key, item in items.items():
            if key not in results:
                results[key] = self.runner.failed(item, reason, attempts=0)
                if on_result is not None:
                    await on_result(results[key])
        ordered = [results[key] for key in items]
        return DispatchOutput(dispatch_id=dispatch.dispatch_id, results=ordered)

    async def _each_outcome(
        self,
        outcomes: AsyncGenerator[tuple[str, BatchOutcome], None],
        items: dict[str, WorkItem],
        report: Report,
    ) -> None:
        """Store the outcomes as they are read: a storing slot is taken before the next one
        is read, so at most the runner's `concurrency` images are held in memory."""
        tasks: set[asyncio.Task[None]] = set()
        seen: set[str] = set()
        try:
            while True:
                await self.runner.storing.acquire()
                try:
                    key, outcome = await anext(outcomes)
                except BaseException:
                    self.runner.storing.release()
                    raise
                if key not in items or key in seen:
                    self.runner.storing.release()
                    log.warning("batch result for %r ignored (unknown or repeated)", key[:80])
                    continue
                seen.add(key)
                task = asyncio.create_task(report(key, outcome))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except StopAsyncIteration:
            pass
        finally:
            if tasks:
                await asyncio.gather(*tasks)
            await outcomes.aclose()  # its temporary file, if any

    @staticmethod
    def _name(dispatch: DispatchInput) -> str:
        if dispatch.batch is None:  # the contract requires it of these tasks
            raise BatchError(f"a {dispatch.task} task names no batch")
        return dispatch.batch
