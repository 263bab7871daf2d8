"""Run one dispatch: every item to a provider, every output to storage, one result per item.

Nothing raises out of `run_dispatch` for a single image's trouble: each item ends
succeeded, failed or blocked with a reason, so one bad image never sinks its neighbours.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from shared.contract import DispatchInput, DispatchOutput, ItemResult, ResultStatus, WorkItem
from shared.images import THUMBNAIL_TYPE, dimensions, extension_for, make_thumbnail
from shared.storage import Storage, StorageError
from worker.providers import (
    GeneratedImage,
    GenerationBlocked,
    GenerationFailed,
    GenerationRequest,
    Provider,
    Reference,
)

log = logging.getLogger(__name__)
ProgressCallback = Callable[[ItemResult], Awaitable[None]]


class Runner:
    """Holds what all dispatches on one worker share: provider, storage, the in-flight limit."""

    def __init__(self, provider: Provider, storage: Storage, concurrency: int) -> None:
        self.provider = provider
        self.storage = storage
        self.slots = asyncio.Semaphore(concurrency)
        self.storing = asyncio.Semaphore(concurrency)  # generated images waiting to be stored

    async def run_dispatch(
        self, dispatch: DispatchInput, on_result: ProgressCallback | None = None
    ) -> DispatchOutput:
        async def run_and_report(item: WorkItem) -> ItemResult:
            result = await self.run_item(item)
            if on_result is not None:
                await on_result(result)
            return result

        results = await asyncio.gather(*(run_and_report(item) for item in dispatch.items))
        return DispatchOutput(dispatch_id=dispatch.dispatch_id, results=list(results))

    async def run_item(self, item: WorkItem) -> ItemResult:
        """Generate inside an in-flight slot; store outside it, so CPU work pipelines.

        A storing slot is taken before the in-flight slot is given back: when storage falls
        behind, generation waits, and at most 2 x concurrency images are held in memory.
        """
        started = time.monotonic()
        async with self.slots:
            outcome = await self._generate(item)
            if isinstance(outcome, GeneratedImage):
                await self.storing.acquire()
        if isinstance(outcome, GeneratedImage):
            try:
                outcome = await self._store_outcome(item, outcome)
            finally:
                self.storing.release()
        outcome.latency_ms = int((time.monotonic() - started) * 1000)
        return outcome

    def _result(self, item: WorkItem, status: ResultStatus, **fields: object) -> ItemResult:
        return ItemResult(
            output_id=item.output_id,
            status=status,
            provider=self.provider.name,
            model=item.params.model,
            seed=item.params.seed,
            **fields,
        )

    async def _generate(self, item: WorkItem) -> GeneratedImage | ItemResult:
        try:
            references = await asyncio.gather(*map(self._read_reference, item.reference_uris))
        except StorageError as exc:
            return self._result(item, ResultStatus.FAILED, error=f"reference unreadable: {exc}")
        request = GenerationRequest(prompt=item.prompt, params=item.params, references=references)
        try:
            return await self.provider.generate(request)
        except GenerationBlocked as exc:
            return self._result(item, ResultStatus.BLOCKED, error=exc.reason, attempts=exc.attempts)
        except GenerationFailed as exc:
            return self._result(item, ResultStatus.FAILED, error=exc.reason, attempts=exc.attempts)
        except Exception as exc:
            log.exception("provider crashed on output %s", item.output_id)
            return self._result(item, ResultStatus.FAILED, error=f"provider error: {exc!r}")

    async def _store_outcome(self, item: WorkItem, image: GeneratedImage) -> ItemResult:
        try:
            return await asyncio.to_thread(self._store, item, image)
        except (StorageError, OSError, ValueError) as exc:
            log.warning("could not store output %s: %s", item.output_id, exc)
            return self._result(
                item,
                ResultStatus.FAILED,
                error=f"could not store output: {exc}",
                attempts=image.attempts,
            )

    async def _read_reference(self, uri: str) -> Reference:
        key = self.storage.key_of(uri)
        data = await asyncio.to_thread(self.storage.get_bytes, key)
        content_type = {b"\x89PNG": "image/png", b"RIFF": "image/webp"}.get(data[:4], "image/jpeg")
        return Reference(data=data, content_type=content_type)

    def _store(self, item: WorkItem, image: GeneratedImage) -> ItemResult:
        width, height = dimensions(image.data)
        key = item.output_key + extension_for(image.content_type)
        stored = self.storage.put_bytes(key, image.data, content_type=image.content_type)
        thumbnail_key = item.output_key + ".thumb.webp"
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
