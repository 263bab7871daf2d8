"""The offline batch provider: the Batch API's stand-in for the embedded default (no key).

A batch is two files in `directory` (the worker's data dir on one machine, so every worker
process and a restarted one find it): the requests as JSON lines, references included, and
the batch's record, written after them (atomically), so a batch that exists is complete.
Its state moves on its own clock: pending for `pending_s` after creation, running for
`running_s`, then succeeded; a cancel before then ends it cancelled. Results are rendered
when collected, by the offline provider (same requests, same bytes), each reporting what
Gemini would bill for it in a batch (the model's batch price), as its online images report
the online price.
"""

import asyncio
import base64
import dataclasses
import json
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shared.contract import BatchInfo, BatchState, ImageParams
from shared.model_table import batch_image_price
from worker.providers.base import (
    BatchError,
    BatchOutcome,
    BatchProvider,
    BatchRequest,
    BatchResults,
    GenerationFailed,
    GenerationRequest,
    Reference,
)
from worker.providers.offline import OfflineProvider


class _Record(BaseModel):
    name: str
    display_name: str
    model: str
    requests: int
    created_at: float  # wall clock, seconds
    cancelled_at: float | None = None


class OfflineBatchProvider(BatchProvider):
    name = "offline"

    def __init__(
        self,
        provider: OfflineProvider,
        directory: Path,
        *,
        pending_s: float = 2.0,
        running_s: float = 3.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._provider = provider
        self._directory = directory
        self._pending_s = pending_s
        self._running_s = running_s
        self._clock = clock

    def _path(self, name: str, suffix: str) -> Path:
        if not name.startswith("batches/") or not name[8:].isalnum():
            raise BatchError(f"not an offline batch name: {name[:80]!r}")
        return self._directory / f"{name[8:]}{suffix}"

    def _record(self, name: str) -> _Record:
        try:
            return _Record.model_validate_json(self._path(name, ".json").read_bytes())
        except FileNotFoundError:
            raise BatchError(f"no such batch: {name}") from None

    def _write_record(self, record: _Record) -> None:
        path = self._path(record.name, ".json")
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(record.model_dump_json())
        os.replace(temporary, path)

    async def find(self, display_name: str) -> BatchInfo | None:
        def scan() -> _Record | None:
            if not self._directory.is_dir():
                return None
            for path in sorted(self._directory.glob("*.json")):
                record = _Record.model_validate_json(path.read_bytes())
                if record.display_name == display_name:
                    return record
            return None

        found = await asyncio.to_thread(scan)
        return None if found is None else self._info(found)

    async def create(
        self, display_name: str, model: str, requests: AsyncIterator[BatchRequest]
    ) -> BatchInfo | None:
        name = f"batches/{uuid.uuid4().hex}"
        await asyncio.to_thread(self._directory.mkdir, parents=True, exist_ok=True)
        lines = self._path(name, ".jsonl")
        count = 0
        with lines.open("wb") as spool:
            async for request in requests:
                await asyncio.to_thread(spool.write, _line(request))
                count += 1
        if count == 0:
            lines.unlink()
            return None
        record = _Record(
            name=name,
            display_name=display_name,
            model=model,
            requests=count,
            created_at=self._clock(),
        )
        await asyncio.to_thread(self._write_record, record)
        return self._info(record).model_copy(update={"input": "file", "created": True})

    async def get(self, name: str) -> BatchInfo:
        return self._info(await asyncio.to_thread(self._record, name))

    async def cancel(self, name: str) -> BatchInfo:
        record = await asyncio.to_thread(self._record, name)
        if not self._state(record).ended:
            record.cancelled_at = self._clock()
            await asyncio.to_thread(self._write_record, record)
        return self._info(record)

    async def results(self, name: str, params: Mapping[str, ImageParams]) -> BatchResults:
        record = await asyncio.to_thread(self._record, name)
        info = self._info(record)
        if info.state != BatchState.SUCCEEDED:
            return BatchResults(info)
        return BatchResults(info, self._outcomes(name, params))

    async def _outcomes(
        self, name: str, params: Mapping[str, ImageParams]
    ) -> AsyncGenerator[tuple[str, BatchOutcome], None]:
        with self._path(name, ".jsonl").open("rb") as lines:
            while line := await asyncio.to_thread(lines.readline):
                key, request = _parse_line(line)
                if key not in params:
                    continue
                try:
                    image = await self._provider.generate(request)
                except GenerationFailed as failed:
                    yield key, failed
                    continue
                price = batch_image_price(request.params.model, request.params.image_size)
                yield key, dataclasses.replace(image, cost_usd=price)

    def _state(self, record: _Record) -> BatchState:
        if record.cancelled_at is not None:
            return BatchState.CANCELLED
        age = self._clock() - record.created_at
        if age < self._pending_s:
            return BatchState.PENDING
        if age < self._pending_s + self._running_s:
            return BatchState.RUNNING
        return BatchState.SUCCEEDED

    def _info(self, record: _Record) -> BatchInfo:
        state = self._state(record)
        total = record.requests
        done = 0
        if state == BatchState.SUCCEEDED:
            done = total
        elif state == BatchState.RUNNING and self._running_s > 0:
            elapsed = self._clock() - record.created_at - self._pending_s
            done = min(total, int(total * elapsed / self._running_s))
        pending = 0 if state.ended else total - done
        return BatchInfo(
            name=record.name,
            state=state,
            requests=total,
            succeeded=done,
            failed=0,
            pending=pending,
        )


def _line(request: BatchRequest) -> bytes:
    generation = request.request
    references = [
        {"content_type": ref.content_type, "data": base64.b64encode(ref.data).decode()}
        for ref in generation.references
    ]
    body: dict[str, Any] = {
        "key": request.key,
        "prompt": generation.prompt,
        "params": generation.params.model_dump(mode="json"),
        "references": references,
    }
    return (json.dumps(body) + "\n").encode()


def _parse_line(line: bytes) -> tuple[str, GenerationRequest]:
    body = json.loads(line)
    references = [
        Reference(data=base64.b64decode(ref["data"]), content_type=ref["content_type"])
        for ref in body["references"]
    ]
    params = ImageParams.model_validate(body["params"])
    return body["key"], GenerationRequest(body["prompt"], params, references)
