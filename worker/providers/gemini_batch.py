"""Gemini's Batch API through google-genai: half-price images, results within 24 h.

Requests are built exactly as the online provider builds them (`build_contents`,
`build_config`) and answers read as it reads them (`extract_image`: the same blocks, the
same reasons); an image costs the model's batch price. Requests go inline while their JSON
stays within `inline_max_bytes` (Google's limit for an inline batch is 20 MB), else as a
JSONL file uploaded with the Files API (at most 2 GB: a bigger dispatch is refused, to be
split); a file's results come back as a JSONL file, which is
downloaded to a temporary file and read a line at a time, so memory does not grow with the
batch.

The batch's state and counts are read with one GET of `batches/{id}` through the SDK's API
client (its key, base URL, timeout and errors): the SDK's `BatchJob` drops Google's
`batchStats` and the operation's `error` for the Gemini API.
"""

import asyncio
import contextlib
import json
import logging
import re
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from typing import IO, Any

import httpx
from google.genai import _common, batches, errors, types
from pydantic import BaseModel, ConfigDict, Field

from shared.contract import BatchInfo, BatchState, ImageParams
from shared.model_table import batch_image_price
from worker.providers.base import (
    BatchError,
    BatchOutcome,
    BatchProvider,
    BatchRequest,
    BatchResults,
    GeneratedImage,
    GenerationBlocked,
    GenerationFailed,
)
from worker.providers.gemini import (
    GeminiProvider,
    _Retry,
    build_config,
    build_contents,
    extract_image,
    usage_of,
)

log = logging.getLogger(__name__)

INLINE_MAX_BYTES = 20_000_000  # Google: an inline batch request stays under 20 MB
FILE_MAX_BYTES = 2_000_000_000  # Google: an input file is at most 2 GB
LIST_PAGE_SIZE = 100
JSONL_MIME = "jsonl"  # what Google's Batch API docs upload request files as
_NAME = re.compile(r"^batches/[^/]+$")
STATES: dict[str, BatchState] = {
    "BATCH_STATE_PENDING": BatchState.PENDING,
    "BATCH_STATE_RUNNING": BatchState.RUNNING,
    "BATCH_STATE_SUCCEEDED": BatchState.SUCCEEDED,
    "BATCH_STATE_FAILED": BatchState.FAILED,
    "BATCH_STATE_CANCELLED": BatchState.CANCELLED,
    "BATCH_STATE_EXPIRED": BatchState.EXPIRED,
}


class _Stats(BaseModel):
    model_config = ConfigDict(extra="ignore")

    requestCount: int | None = None
    successfulRequestCount: int | None = None
    failedRequestCount: int | None = None
    pendingRequestCount: int | None = None


class _Metadata(BaseModel):
    model_config = ConfigDict(extra="ignore")

    displayName: str | None = None
    model: str | None = None
    state: str = "BATCH_STATE_UNSPECIFIED"
    batchStats: _Stats = Field(default_factory=_Stats)
    output: dict[str, Any] | None = None


class _Status(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: int | None = None
    message: str | None = None


class _Batch(BaseModel):
    """A batch as Google's REST API answers it: a long-running operation whose metadata is
    the batch (int64 counts come as strings)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    metadata: _Metadata = Field(default_factory=_Metadata)
    error: _Status | None = None


def state_of(raw: str) -> BatchState:
    """Google's `BATCH_STATE_*` (or the SDK's `JOB_STATE_*` for it) in pixelfleet's terms; an
    unspecified or unknown state reads as pending (not started, as far as anyone knows)."""
    state = STATES.get(raw) or STATES.get(raw.replace("JOB_STATE_", "BATCH_STATE_", 1))
    if state is None:
        if raw != "BATCH_STATE_UNSPECIFIED":
            log.warning("Gemini batch state %r is unknown: read as pending", raw)
        return BatchState.PENDING
    return state


def info_of(batch: _Batch) -> BatchInfo:
    stats = batch.metadata.batchStats
    error = None
    if batch.error is not None and (batch.error.message or batch.error.code):
        error = f"{batch.error.code or ''} {batch.error.message or ''}".strip()
    return BatchInfo(
        name=batch.name,
        state=state_of(batch.metadata.state),
        requests=stats.requestCount,
        succeeded=stats.successfulRequestCount,
        failed=stats.failedRequestCount,
        pending=stats.pendingRequestCount,
        error=error,
    )


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise BatchError(f"not a Gemini batch name: {name[:80]!r} (batches/…)")
    return name


def inlined_request(request: BatchRequest) -> types.InlinedRequest:
    """One request as the online provider would send it, with its key as metadata."""
    generation = request.request
    return types.InlinedRequest(
        contents=build_contents(generation),
        config=build_config(generation, generation.params.seed),
        metadata={"key": request.key},
    )


def jsonl_line(api_client: Any, request: BatchRequest, inlined: types.InlinedRequest) -> bytes:
    """The request as a line of a batch input file, converted by the SDK's own converter of
    inline requests: `{"key", "request": {"contents", "generation_config"}}` (the field name
    Google's file examples use)."""
    wire = batches._InlinedRequest_to_mldev(api_client, inlined)
    encoded: dict[str, Any] = _common.encode_unserializable_types(_common.convert_to_dict(wire))
    body = dict(encoded["request"])
    if "generationConfig" in body:
        body["generation_config"] = body.pop("generationConfig")
    return (json.dumps({"key": request.key, "request": body}) + "\n").encode()


def outcome_of(raw: Mapping[str, Any], params: ImageParams) -> BatchOutcome:
    """One request's result (its `response` or `error`, REST JSON) read as online answers
    are: an image, a block with its reason, or a failure with Google's error. An answer the
    online provider would retry (no candidates, no image) fails: failed images of a batch go
    to the online lane."""
    error = raw.get("error")
    if error is not None or not isinstance(raw.get("response"), Mapping):
        return GenerationFailed(f"Gemini batch request failed: {_described(error)}", 1)
    response = types.GenerateContentResponse._from_response(
        response=batches._GenerateContentResponse_from_mldev(raw["response"]), kwargs={}
    )
    try:
        data, content_type = extract_image(response, 1)
    except GenerationBlocked as blocked:
        return blocked
    except _Retry as retry:
        return GenerationFailed(retry.reason, 1)
    return GeneratedImage(
        data=data,
        content_type=content_type,
        model_version=response.model_version,
        usage=usage_of(response),
        cost_usd=batch_image_price(params.model, params.image_size),
    )


def _described(error: Any) -> str:
    if not isinstance(error, Mapping):
        return "no response"
    parts = [str(error.get(key)) for key in ("code", "status", "message") if error.get(key)]
    return " ".join(parts) or json.dumps(error)[:200]


class GeminiBatchProvider(BatchProvider):
    """Batches through the online provider's client (its key checks, transport, scrubbing)."""

    name = "gemini"

    def __init__(
        self,
        gemini: GeminiProvider,
        *,
        inline_max_bytes: int = INLINE_MAX_BYTES,
        list_page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self._gemini = gemini
        self._inline_max_bytes = inline_max_bytes
        self._list_page_size = list_page_size

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Any failure of a call as a BatchError saying what failed, the key scrubbed."""
        try:
            yield
        except BatchError:
            raise
        except GenerationFailed as exc:  # a bad or missing key
            raise BatchError(self._gemini.scrub(exc.reason)) from None
        except errors.APIError as exc:
            status = f"{exc.code} {exc.status or ''}".strip()
            reason = f"Gemini {what} failed ({status}: {exc.message or exc.details})"
            raise BatchError(self._gemini.scrub(reason)) from None
        except (httpx.HTTPError, ValueError, KeyError, OSError) as exc:
            reason = f"Gemini {what} failed: {type(exc).__name__}: {exc}"
            raise BatchError(self._gemini.scrub(reason)) from None

    async def find(self, display_name: str) -> BatchInfo | None:
        with self._calling("batch list"):
            client = self._gemini.sdk_client()
            config = types.ListBatchJobsConfig(page_size=self._list_page_size)
            async for job in await client.aio.batches.list(config=config):
                if job.display_name == display_name and job.name:
                    return await self.get(job.name)
        return None

    async def create(
        self, display_name: str, model: str, requests: AsyncIterator[BatchRequest]
    ) -> BatchInfo | None:
        with self._calling("batch creation"):
            client = self._gemini.sdk_client()
            with tempfile.TemporaryFile() as spool:
                inline, count = await self._spool(client._api_client, requests, spool)
                if count == 0:
                    return None
                config = types.CreateBatchJobConfig(display_name=display_name)
                if inline is not None:
                    job = await client.aio.batches.create(model=model, src=inline, config=config)
                else:
                    spool.seek(0)
                    upload = types.UploadFileConfig(display_name=display_name, mime_type=JSONL_MIME)
                    file = await client.aio.files.upload(file=spool, config=upload)
                    if not file.name:
                        raise BatchError("the Files API returned no file name")
                    job = await client.aio.batches.create(model=model, src=file.name, config=config)
            if not job.name:
                raise BatchError("Gemini created a batch without a name")
            info = await self.get(job.name)
            input_kind = "file" if inline is None else "inline"
            log.info("Gemini batch %s created: %d requests, %s", job.name, count, input_kind)
            return info.model_copy(update={"input": input_kind, "created": True})

    async def _spool(
        self, api_client: Any, requests: AsyncIterator[BatchRequest], spool: IO[bytes]
    ) -> tuple[list[types.InlinedRequest] | None, int]:
        """Write every request's JSONL line to `spool`; the requests themselves too while
        their lines stay within the inline limit (None once they do not)."""
        inline: list[types.InlinedRequest] | None = []
        size = count = 0
        async for request in requests:
            inlined = inlined_request(request)
            line = await asyncio.to_thread(jsonl_line, api_client, request, inlined)
            size += len(line)
            if size > FILE_MAX_BYTES:
                raise BatchError(
                    f"the batch's requests pass the Files API's {FILE_MAX_BYTES:,} bytes "
                    f"at request {count + 1}: split the dispatch over several batches"
                )
            await asyncio.to_thread(spool.write, line)
            count += 1
            if inline is not None:
                inline = [*inline, inlined] if size <= self._inline_max_bytes else None
        return inline, count

    async def get(self, name: str) -> BatchInfo:
        return info_of(await self._get(check_name(name)))

    async def _get(self, name: str) -> _Batch:
        with self._calling("batch lookup"):
            client = self._gemini.sdk_client()
            response = await client.aio._api_client.async_request("get", name, {}, None)
            return _Batch.model_validate_json(response.body or "{}")

    async def cancel(self, name: str) -> BatchInfo:
        check_name(name)
        with self._calling("batch cancel"):
            client = self._gemini.sdk_client()
            try:
                await client.aio.batches.cancel(name=name)
            except errors.ClientError as exc:
                if exc.code not in (400, 409):  # FAILED_PRECONDITION: it has ended
                    raise
                log.info("Gemini batch %s not cancelled (%s): it has ended", name, exc.status)
        return await self.get(name)

    async def results(self, name: str, params: Mapping[str, ImageParams]) -> BatchResults:
        batch = await self._get(check_name(name))
        info = info_of(batch)
        output = batch.metadata.output or {}
        if info.state != BatchState.SUCCEEDED or not output:
            return BatchResults(info)
        inlined = (output.get("inlinedResponses") or {}).get("inlinedResponses")
        if isinstance(inlined, list):
            return BatchResults(info, self._inline_outcomes(inlined, params))
        file_name = output.get("responsesFile")
        if not isinstance(file_name, str):
            return BatchResults(info)
        return BatchResults(info, self._file_outcomes(file_name, params))

    async def _inline_outcomes(
        self, responses: list[Any], params: Mapping[str, ImageParams]
    ) -> AsyncGenerator[tuple[str, BatchOutcome], None]:
        keys = list(params)
        for index, raw in enumerate(responses):
            if not isinstance(raw, Mapping):
                continue
            key = (raw.get("metadata") or {}).get("key")
            if key is None and index < len(keys):
                key = keys[index]  # no metadata echoed: responses come in request order
            if isinstance(key, str) and key in params:
                yield key, await asyncio.to_thread(outcome_of, raw, params[key])

    async def _file_outcomes(
        self, file_name: str, params: Mapping[str, ImageParams]
    ) -> AsyncGenerator[tuple[str, BatchOutcome], None]:
        with tempfile.TemporaryFile() as results:
            with self._calling("results download"):
                client = self._gemini.sdk_client()
                await client.aio.files.download(file=file_name, destination=results)
            results.seek(0)
            while line := await asyncio.to_thread(results.readline):
                try:
                    raw = json.loads(line)
                except ValueError:
                    log.warning("batch %s: a results line that is not JSON", file_name)
                    continue
                key = raw.get("key") if isinstance(raw, dict) else None
                if isinstance(key, str) and key in params:
                    yield key, await asyncio.to_thread(outcome_of, raw, params[key])
