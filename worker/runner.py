"""Run one dispatch: every item to a provider, every output to storage, one result per item.

Text tasks (`task: "text"`) take an in-flight slot like images and return the provider's
answer in the result's `text`; nothing is stored.

Nothing raises out of `run_dispatch` for a single image's trouble: each item ends
succeeded, failed or blocked with a reason, so one bad image never sinks its neighbours.
A dispatch has a deadline (`dispatch_deadline_s`, kept under RunPod's executionTimeout): an
image that has not started by then fails at once, and the provider gets the time left as
its budget so it never retries past it.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared import layout
from shared.contract import (
    DispatchInput,
    DispatchOutput,
    ItemResult,
    ResultStatus,
    Task,
    WorkItem,
)
from shared.images import THUMBNAIL_TYPE, dimensions, make_thumbnail
from shared.storage import Storage, StorageError
from shared.waiting import wait_at_most
from worker.providers import (
    GeneratedImage,
    GenerationBlocked,
    GenerationFailed,
    GenerationRequest,
    Provider,
    Reference,
    TextRequest,
)
from worker.slots import Lease, Slots

log = logging.getLogger(__name__)
T = TypeVar("T")
ProgressCallback = Callable[[ItemResult], Awaitable[None]]
MAX_ERROR_TEXT = 200
NOT_STARTED = "gave up: the dispatch deadline passed before the image could start"
RECENT_DISPATCHES = 32  # dispatch sizes remembered to estimate the next one's
TYPICAL_DISPATCH_SIZE = 16  # before any is seen: the control plane's default chunk size


def describe(exc: BaseException) -> str:
    """An exception as its type and a short message: never its repr (which may hold secrets
    passed as arguments, e.g. a header value in a UnicodeEncodeError)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def items_of_run(items: list[WorkItem], run_id: str | None) -> list[WorkItem]:
    """The items with output keys of this run's own (see `Runner.run_dispatch`)."""
    if not run_id:
        return items
    return [
        item.model_copy(update={"output_key": layout.run_stem(item.output_key, run_id)})
        for item in items
    ]


class Runner:
    """Holds what all dispatches on one worker share: provider, storage, the in-flight limit."""

    def __init__(
        self,
        provider: Provider,
        storage: Storage,
        concurrency: int,
        *,
        dispatch_deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.storage = storage
        self.concurrency = concurrency
        self.dispatch_deadline_s = dispatch_deadline_s
        self.clock = clock
        self.slots = Slots(concurrency)  # images in flight; lent while one awaits a retry
        self.storing = asyncio.Semaphore(concurrency)  # generated images waiting to be stored
        self._recent_sizes: deque[int] = deque(maxlen=RECENT_DISPATCHES)
        self.held = 0  # dispatches running now
        self.unfinished = 0  # their images without a result yet (running or waiting)
        self._room_waiters: list[asyncio.Future[None]] = []

    def job_capacity(self, max_jobs: int) -> int:
        """How many dispatches (RunPod jobs) this worker should hold now: those it holds, plus
        as many more as its free image slots can take with a few images waiting, bounded by
        `max_jobs`, at least 1.

        Waiting are at most half the slots' worth of images (or one dispatch, if bigger):
        runpod's JobScaler asks again only a second after it found the worker full, so slots
        that free up meanwhile start waiting images rather than idle; a job none of whose
        images could start soon stays in RunPod's queue for other workers.

        It counts images, not dispatches: a dispatch down to its last (retrying) image holds
        one slot, and the other slots take new work. A dispatch's size is guessed from the
        largest recent one. The value follows the load, so it changes often: runpod's own
        JobScaler would stop fetching until idle at each change, which `worker/scaling.py`
        avoids.
        """
        per_dispatch = max(self._recent_sizes, default=TYPICAL_DISPATCH_SIZE)
        room = self.concurrency + max(per_dispatch, -(-self.concurrency // 2)) - self.unfinished
        more = max(0, room // per_dispatch)
        return max(1, min(max_jobs, self.held + more))

    async def wait_for_room(self, timeout_s: float) -> None:
        """Return when one of the held images ends (`job_capacity` may have grown), or after
        `timeout_s`: a scaler that found the worker full asks again as soon as a slot frees."""
        waiter = asyncio.get_running_loop().create_future()
        self._room_waiters.append(waiter)
        try:
            await wait_at_most(waiter, timeout_s)
        finally:
            with contextlib.suppress(ValueError):  # already taken out by _image_ended
                self._room_waiters.remove(waiter)

    def _image_ended(self) -> None:
        self.unfinished -= 1
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def run_dispatch(
        self,
        dispatch: DispatchInput,
        on_result: ProgressCallback | None = None,
        run_id: str | None = None,
    ) -> DispatchOutput:
        """Run every item; `run_id` (the RunPod job's id) makes this run's object keys its own.

        RunPod may run one dispatch twice (a /run retried after a timeout it had accepted, a
        retry while an old run lingers): each run writes its own objects, so a late run can
        never overwrite the files a finished one reported. The control plane keeps the first
        report; the other run's objects are orphans for `pixelfleet storage gc`.
        """
        items = items_of_run(dispatch.items, run_id)
        deadline = None
        if self.dispatch_deadline_s is not None:
            deadline = self.clock() + self.dispatch_deadline_s

        async def run_and_report(item: WorkItem) -> ItemResult:
            try:
                result = await self._run_item_safely(item, deadline)
            finally:
                self._image_ended()
            if on_result is not None:
                await on_result(result)
            return result

        # Counted before the first await: whoever asks job_capacity next sees this dispatch.
        self._recent_sizes.append(len(items))
        self.held += 1
        self.unfinished += len(items)
        try:
            results = await asyncio.gather(*(run_and_report(item) for item in items))
        finally:
            self.held -= 1
        return DispatchOutput(dispatch_id=dispatch.dispatch_id, results=list(results))

    async def _run_item_safely(self, item: WorkItem, deadline: float | None) -> ItemResult:
        """`run_item`, with any unexpected exception turned into a failed result."""
        try:
            return await self.run_item(item, deadline)
        except Exception as exc:
            log.exception("output %s crashed the runner", item.output_id)
            return self._result(item, ResultStatus.FAILED, error=f"worker error: {describe(exc)}")

    async def run_item(self, item: WorkItem, deadline: float | None = None) -> ItemResult:
        """Generate inside an in-flight slot; store outside it, so CPU work pipelines.

        While the provider only waits before a retry, the slot serves another image (the
        request's `idle`, `Lease.lend`), and is taken back ahead of images not yet started:
        an image sleeping off a 429 never leaves a call unmade.

        A storing slot is taken before the in-flight slot is given back: when storage falls
        behind, generation waits, and at most 2 x concurrency images are held in memory.
        `deadline` is on `self.clock`; past it, the item fails without being generated.
        """
        started = time.monotonic()
        if item.task == Task.TEXT:
            async with Lease(self.slots) as slot:
                answer = await self._write_text(item, deadline, slot)
            answer.latency_ms = int((time.monotonic() - started) * 1000)
            return answer
        async with Lease(self.slots) as slot:
            outcome = await self._generate(item, deadline, slot)
            if isinstance(outcome, GeneratedImage):
                await self.storing.acquire()
        if isinstance(outcome, GeneratedImage):
            try:
                outcome = await self._store_outcome(item, outcome)
            finally:
                self.storing.release()
        outcome.latency_ms = int((time.monotonic() - started) * 1000)
        return outcome

    async def result_of(
        self, item: WorkItem, outcome: GeneratedImage | GenerationBlocked | GenerationFailed
    ) -> ItemResult:
        """The result of an image another way made (a batch's): stored as `run_item` stores
        it, or blocked or failed with the reason."""
        started = time.monotonic()
        if isinstance(outcome, GenerationBlocked):
            return self._result(
                item, ResultStatus.BLOCKED, error=outcome.reason, attempts=outcome.attempts
            )
        if isinstance(outcome, GenerationFailed):
            return self.failed(item, outcome.reason, attempts=outcome.attempts)
        result = await self._store_outcome(item, outcome)
        result.latency_ms = int((time.monotonic() - started) * 1000)
        return result

    def failed(self, item: WorkItem, error: str, *, attempts: int = 1) -> ItemResult:
        return self._result(item, ResultStatus.FAILED, error=error, attempts=attempts)

    def _result(self, item: WorkItem, status: ResultStatus, **fields: object) -> ItemResult:
        return ItemResult(
            output_id=item.output_id,
            status=status,
            provider=self.provider.name,
            model=item.text_model or item.params.model,
            seed=item.params.seed,
            **fields,
        )

    async def _generate(
        self, item: WorkItem, deadline: float | None, slot: Lease
    ) -> GeneratedImage | ItemResult:
        if deadline is not None and deadline <= self.clock():
            return self._result(item, ResultStatus.FAILED, error=NOT_STARTED, attempts=0)
        try:
            references = await asyncio.gather(*map(self.read_reference, item.reference_uris))
        except StorageError as exc:
            return self._result(item, ResultStatus.FAILED, error=f"reference unreadable: {exc}")
        budget = None if deadline is None else deadline - self.clock()
        if budget is not None and budget <= 0:
            return self._result(item, ResultStatus.FAILED, error=NOT_STARTED, attempts=0)
        request = GenerationRequest(
            prompt=item.prompt,
            params=item.params,
            references=references,
            time_budget_s=budget,
            idle=slot.lend,
        )
        return await self._provided(item, self.provider.generate(request))

    async def _write_text(self, item: WorkItem, deadline: float | None, slot: Lease) -> ItemResult:
        budget = None if deadline is None else deadline - self.clock()
        if budget is not None and budget <= 0:
            return self._result(item, ResultStatus.FAILED, error=NOT_STARTED, attempts=0)
        assert item.text_model is not None  # the contract requires it of text tasks
        request = TextRequest(
            prompt=item.prompt,
            model=item.text_model,
            seed=item.params.seed,
            response_schema=item.response_schema,
            time_budget_s=budget,
            idle=slot.lend,
        )
        outcome = await self._provided(item, self.provider.generate_text(request))
        if isinstance(outcome, ItemResult):
            return outcome
        return self._result(
            item,
            ResultStatus.SUCCEEDED,
            text=outcome.text,
            attempts=outcome.attempts,
            model_version=outcome.model_version,
            usage=outcome.usage,
            cost_usd=outcome.cost_usd,
        )

    async def _provided(self, item: WorkItem, call: Awaitable[T]) -> T | ItemResult:
        """What the provider made, or a blocked or failed result saying why not."""
        try:
            return await call
        except GenerationBlocked as exc:
            return self._result(item, ResultStatus.BLOCKED, error=exc.reason, attempts=exc.attempts)
        except GenerationFailed as exc:
            return self._result(item, ResultStatus.FAILED, error=exc.reason, attempts=exc.attempts)
        except Exception as exc:
            log.exception("provider crashed on output %s", item.output_id)
            return self._result(item, ResultStatus.FAILED, error=f"provider error: {describe(exc)}")

    async def _store_outcome(self, item: WorkItem, image: GeneratedImage) -> ItemResult:
        """Store a generated image; on any error a failed result that keeps what was billed."""
        try:
            return await asyncio.to_thread(self._store, item, image)
        except (StorageError, OSError) as exc:
            log.warning("could not store output %s: %s", item.output_id, exc)
            error = f"could not store output: {exc}"
        except Exception as exc:
            log.warning("could not store output %s", item.output_id, exc_info=True)
            error = f"could not store output: {describe(exc)}"
        result = self._result(
            item,
            ResultStatus.FAILED,
            error=error,
            attempts=image.attempts,
            model_version=image.model_version,
            usage=image.usage,
            cost_usd=image.cost_usd,
        )
        if image.seed is not None:
            result.seed = image.seed
        return result

    async def read_reference(self, uri: str) -> Reference:
        key = self.storage.key_of(uri)
        data = await asyncio.to_thread(self.storage.get_bytes, key)
        content_type = {b"\x89PNG": "image/png", b"RIFF": "image/webp"}.get(data[:4], "image/jpeg")
        return Reference(data=data, content_type=content_type)

    def _store(self, item: WorkItem, image: GeneratedImage) -> ItemResult:
        width, height = dimensions(image.data)
        key = layout.output_key(item.output_key, image.content_type)
        stored = self.storage.put_bytes(key, image.data, content_type=image.content_type)
        thumbnail_key = layout.thumbnail_key(item.output_key)
        self.storage.put_bytes(
            thumbnail_key, make_thumbnail(image.data), content_type=THUMBNAIL_TYPE
        )
        result = self._result(
            item,
            ResultStatus.SUCCEEDED,
            output_uri=self.storage.uri(stored.key),
            thumbnail_uri=self.storage.uri(thumbnail_key),
            content_type=image.content_type,
            width=width,
            height=height,
            bytes=stored.size,
            sha256=stored.sha256,
            attempts=image.attempts,
            model_version=image.model_version,
            usage=image.usage,
            cost_usd=image.cost_usd,
        )
        if image.seed is not None:  # e.g. the provider reseeded after a blocked output
            result.seed = image.seed
        return result
