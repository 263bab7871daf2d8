"""A fake Gemini Batch API on a real loopback socket, spoken to by the real google-genai SDK.

`FakeGeminiBatch` is a `FakeGemini` (its `generateContent` still answers) that also serves,
as Google's REST API does (v1beta, camelCase, int64 counts as strings):

    POST upload/{v}/files                      the Files API's resumable upload: `start`
                                               answers an absolute `x-goog-upload-url`,
                                               whose chunks (`upload`, then `…, finalize`,
                                               with `X-Goog-Upload-Offset`) must line up
    GET  {v}/files/{id}:download?alt=media     a results file
    POST {v}/models/{model}:batchGenerateContent
                                               inline requests or an uploaded `fileName`
    GET  {v}/batches/{id}, GET {v}/batches     an operation whose metadata is the batch
                                               (raw `BATCH_STATE_*`, `batchStats`), and the
                                               list of them (`operations`, paged)
    POST {v}/batches/{id}:cancel               400 FAILED_PRECONDITION once it has ended

A batch stays pending until the test moves it: `set_state(name, "BATCH_STATE_RUNNING")`,
`finish(name)` (each request answered by `FakeGemini`'s keywords: UNSAFE, BLOCKPROMPT, …,
and FAILREQUEST: a per-request error), or any other state (FAILED, EXPIRED, CANCELLED: no
results). Inline batches answer inline, file batches with a results file, as Google does.
Every batch is in `batches` (its requests, as sent), every uploaded file in `uploads`.
"""

import itertools
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from tests.fakes.gemini import FakeGemini, RecordedCall, google_error

KEYWORD_FAIL_REQUEST = "FAILREQUEST"
ENDED = frozenset({"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED"})
ENDED |= {"BATCH_STATE_EXPIRED"}
BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
TIME = "2026-12-06T08:00:00.000000Z"


@dataclass
class FakeBatch:
    name: str
    model: str
    display_name: str
    api_key: str | None
    input: str  # "inline" or "file"
    requests: list[tuple[str, dict[str, Any]]]  # (key, GenerateContentRequest JSON)
    state: str = "BATCH_STATE_PENDING"
    output: dict[str, Any] | None = None
    stats: dict[str, int] = field(default_factory=dict)
    error: dict[str, Any] | None = None

    @property
    def prompts(self) -> list[str]:
        from tests.fakes.gemini import prompt_of

        return [prompt_of(body) for _, body in self.requests]


@dataclass
class _Upload:
    name: str
    display_name: str | None
    mime_type: str | None
    size: int
    data: bytearray = field(default_factory=bytearray)
    chunks: int = 0
    final: bool = False


class FakeGeminiBatch(FakeGemini):
    """See the module docstring."""

    def __init__(self, api_key: str = "fake-gemini-key", *, page_size: int = 2) -> None:
        self.batches: dict[str, FakeBatch] = {}
        self.uploads: dict[str, _Upload] = {}
        self.results_files: dict[str, bytes] = {}
        self.page_size = page_size  # the most batches a list page holds
        self.created = 0  # batchGenerateContent calls that created a batch
        self.listed = 0  # batches list calls
        self._batch_lock = threading.Lock()
        self._ids = itertools.count(1)
        super().__init__(api_key)

    # --- what tests do -----------------------------------------------------------------------

    def only_batch(self) -> FakeBatch:
        with self._batch_lock:
            assert len(self.batches) == 1, f"{len(self.batches)} batches"
            return next(iter(self.batches.values()))

    def set_state(self, name: str, state: str, message: str | None = None) -> None:
        with self._batch_lock:
            batch = self.batches[name]
            batch.state = state
            if message is not None:
                batch.error = {"code": 13, "message": message}

    def finish(self, name: str) -> None:
        """Answer every request of the batch and let it succeed."""
        with self._batch_lock:
            batch = self.batches[name]
        answers = [(key, self._answer_one(batch, body)) for key, body in batch.requests]
        failed = sum(1 for _, answer in answers if "error" in answer)
        with self._batch_lock:
            batch.stats = {"successful": len(answers) - failed, "failed": failed}
            if batch.input == "inline":
                responses = [{**answer, "metadata": {"key": key}} for key, answer in answers]
                batch.output = {"inlinedResponses": {"inlinedResponses": responses}}
            else:
                lines = "".join(json.dumps({"key": k, **answer}) + "\n" for k, answer in answers)
                file_id = f"batch-{name.removeprefix('batches/')}"
                self.results_files[file_id] = lines.encode()
                batch.output = {"responsesFile": f"files/{file_id}"}
            batch.state = "BATCH_STATE_SUCCEEDED"

    # --- the service -------------------------------------------------------------------------

    def _answer_one(self, batch: FakeBatch, body: dict[str, Any]) -> dict[str, Any]:
        request = dict(body)
        if "generation_config" in request:  # files may use the proto field name
            request["generationConfig"] = request.pop("generation_config")
        call = RecordedCall("v1beta", batch.model, request, batch.api_key)
        if KEYWORD_FAIL_REQUEST in call.prompt:
            return {"error": {"code": 13, "message": "Internal error encountered."}}
        answer = self._answer(call, "generateContent")
        if answer.status != 200:
            error = answer.body.get("error", {})
            return {"error": {"code": error.get("code"), "message": error.get("message")}}
        return {"response": answer.body}

    def _operation(self, batch: FakeBatch) -> dict[str, Any]:
        total = len(batch.requests)
        stats = {"requestCount": str(total)}
        if batch.stats:
            stats["successfulRequestCount"] = str(batch.stats["successful"])
            stats["failedRequestCount"] = str(batch.stats["failed"])
        elif batch.state not in ENDED:
            stats["pendingRequestCount"] = str(total)
        metadata: dict[str, Any] = {
            "@type": BATCH_TYPE,
            "model": f"models/{batch.model}",
            "displayName": batch.display_name,
            "name": batch.name,
            "state": batch.state,
            "createTime": TIME,
            "updateTime": TIME,
            "batchStats": stats,
        }
        operation: dict[str, Any] = {"name": batch.name, "metadata": metadata}
        if batch.state in ENDED:
            operation["done"] = True
        if batch.output is not None:
            metadata["output"] = batch.output
            operation["response"] = {"@type": OUTPUT_TYPE, **batch.output}
        if batch.error is not None:
            operation["error"] = batch.error
        return operation

    def _key_problem(self, request: Request) -> JSONResponse | None:
        if request.headers.get("x-goog-api-key") == self.api_key:
            return None
        body = google_error(400, "INVALID_ARGUMENT", "API key not valid.")
        return JSONResponse(body, status_code=400)

    def _add_routes(self, app: FastAPI) -> None:
        @app.post("/upload/{version}/files")
        async def start_upload(version: str, request: Request) -> Response:
            if (problem := self._key_problem(request)) is not None:
                return problem
            headers = request.headers
            assert headers.get("x-goog-upload-protocol") == "resumable"
            assert headers.get("x-goog-upload-command") == "start"
            file = (await request.json()).get("file", {})
            upload = _Upload(
                name=f"files/upload-{next(self._ids)}",
                display_name=file.get("displayName", file.get("display_name")),  # proto JSON
                mime_type=headers.get("x-goog-upload-header-content-type"),
                size=int(headers["x-goog-upload-header-content-length"]),
            )
            session = upload.name.removeprefix("files/")
            with self._batch_lock:
                self.uploads[session] = upload
            url = f"{self.base_url}/upload-session/{session}"
            return Response(
                headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"},
                media_type="application/json",
                content="{}",
            )

        @app.post("/upload-session/{session}")
        async def upload_chunk(session: str, request: Request) -> Response:
            upload = self.uploads.get(session)
            if upload is None or upload.final:
                return JSONResponse(google_error(404, "NOT_FOUND", "no such upload"), 404)
            command = request.headers.get("x-goog-upload-command", "")
            offset = int(request.headers.get("x-goog-upload-offset", "-1"))
            if offset != len(upload.data):
                body = google_error(400, "INVALID_ARGUMENT", f"offset {offset} is not next")
                return JSONResponse(body, 400, headers={"x-goog-upload-status": "active"})
            upload.data.extend(await request.body())
            upload.chunks += 1
            if "finalize" not in command:
                return Response(headers={"x-goog-upload-status": "active"})
            upload.final = True
            assert len(upload.data) == upload.size, "finalized before every byte came"
            file = {
                "name": upload.name,
                "displayName": upload.display_name,
                "mimeType": upload.mime_type,
                "sizeBytes": str(upload.size),
                "state": "ACTIVE",
                "uri": f"{self.base_url}/v1beta/{upload.name}",
            }
            return JSONResponse({"file": file}, headers={"x-goog-upload-status": "final"})

        @app.get("/{version}/files/{target}")
        async def download(version: str, target: str, request: Request) -> Response:
            if (problem := self._key_problem(request)) is not None:
                return problem
            file_id, _, action = target.partition(":")
            data = self.results_files.get(file_id)
            if action != "download" or request.query_params.get("alt") != "media" or data is None:
                return JSONResponse(google_error(404, "NOT_FOUND", "no such file"), 404)
            return Response(data, media_type="application/octet-stream")

        @app.post("/{version}/models/{model}:batchGenerateContent")
        async def create(version: str, model: str, request: Request) -> JSONResponse:
            if (problem := self._key_problem(request)) is not None:
                return problem
            batch = (await request.json())["batch"]
            source = batch["inputConfig"]
            if "fileName" in source:
                upload = self.uploads.get(source["fileName"].removeprefix("files/"))
                if upload is None or not upload.final:
                    body = google_error(400, "INVALID_ARGUMENT", "no such input file")
                    return JSONResponse(body, 400)
                lines = bytes(upload.data).decode().splitlines()
                requests = [(line["key"], line["request"]) for line in map(json.loads, lines)]
                kind = "file"
            else:
                inlined = source["requests"]["requests"]
                requests = [(item["metadata"]["key"], item["request"]) for item in inlined]
                kind = "inline"
            name = f"batches/fake{next(self._ids)}"
            key = request.headers.get("x-goog-api-key")
            made = FakeBatch(name, model, batch.get("displayName", ""), key, kind, requests)
            with self._batch_lock:
                self.batches[name] = made
                self.created += 1
                return JSONResponse(self._operation(made))

        @app.post("/{version}/batches/{target}")
        async def cancel(version: str, target: str, request: Request) -> JSONResponse:
            if (problem := self._key_problem(request)) is not None:
                return problem
            batch_id, _, action = target.partition(":")
            with self._batch_lock:
                batch = self.batches.get(f"batches/{batch_id}")
                if batch is None or action != "cancel":
                    return JSONResponse(google_error(404, "NOT_FOUND", "no such batch"), 404)
                if batch.state in ENDED:
                    body = google_error(400, "FAILED_PRECONDITION", "the batch has ended")
                    return JSONResponse(body, 400)
                batch.state = "BATCH_STATE_CANCELLED"
            return JSONResponse({})

        @app.get("/{version}/batches/{batch_id}")
        async def get(version: str, batch_id: str, request: Request) -> JSONResponse:
            if (problem := self._key_problem(request)) is not None:
                return problem
            with self._batch_lock:
                batch = self.batches.get(f"batches/{batch_id}")
                if batch is None:
                    return JSONResponse(google_error(404, "NOT_FOUND", "no such batch"), 404)
                return JSONResponse(self._operation(batch))

        @app.get("/{version}/batches")
        async def listing(version: str, request: Request) -> JSONResponse:
            if (problem := self._key_problem(request)) is not None:
                return problem
            size = min(int(request.query_params.get("pageSize", 50)), self.page_size)
            start = int(request.query_params.get("pageToken") or 0)
            with self._batch_lock:
                self.listed += 1
                newest_first = list(reversed(self.batches.values()))
                page = [self._operation(b) for b in newest_first[start : start + size]]
            body: dict[str, Any] = {"operations": page}
            if start + size < len(newest_first):
                body["nextPageToken"] = str(start + size)
            return JSONResponse(body)

        super()._add_routes(app)
