"""A typed client of the pixelfleet API (what the `pixelfleet generate|jobs|download` commands
use, and what scripts can import):

    from client import Client

    with Client("http://127.0.0.1:8000") as api:
        group = api.find_group("cats") or api.create_group("cats")
        uploaded = api.upload_folder(group.id, Path("photos"))
        ...

Every creating POST carries an `Idempotency-Key` (a fresh one per call, the same one on the
client's own retries), so a call retried after a timeout is answered once. Calls that are
safe to repeat (reads, keyed POSTs) are retried on connection errors and timeouts with a
growing pause; others only when the connection was refused (nothing was sent).
"""

import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from client.errors import ApiError, ApiUnreachable, ClientError
from client.files import LocalFile, batches, images_in, local_file, wire_name
from control_plane.schemas import (
    CatalogDetail,
    CatalogPublic,
    CharacterDetail,
    CharacterPublic,
    CursorPage,
    Estimate,
    GroupPublic,
    JobDetail,
    JobImages,
    JobPublic,
    ModelTable,
    OutputDetail,
    OutputPublic,
    Page,
    PersonaBatch,
    PersonaDetail,
    PersonaPublic,
    PresetDetail,
    PresetExamplesResponse,
    PresetPublic,
    PresetUsageReset,
    SubmitResponse,
    UploadPublic,
    UploadRejected,
    Usage,
)
from shared.ids import is_id
from shared.tls import tls_context

log = logging.getLogger(__name__)
ModelT = TypeVar("ModelT", bound=BaseModel)
ResultT = TypeVar("ResultT")
ItemT = TypeVar("ItemT")

DEFAULT_API_URL = "http://127.0.0.1:8000"
API_URL_ENV = "PIXELFLEET_API_URL"
KEY_ENV = "PIXELFLEET_API_KEY"
PASSWORD_ENV = "PIXELFLEET_API_PASSWORD"
PAGE_LIMIT = 200  # the API's largest page
IMAGE_PAGE_LIMIT = 1_000  # the API's largest page of a job's images
# One upload request's size. The server's limit (control_plane/web/limits.py) is room for
# its most files at full size unless PIXELFLEET_UPLOAD_MAX_REQUEST_BYTES lowers it; a batch
# answered 413 is split in halves and sent again, so any limit of at least one file works.
UPLOAD_BATCH_BYTES = 16 * 1024 * 1024
UPLOAD_BATCH_FILES = 32
UPLOAD_WORKERS = 4
RETRY_LATER_S = 120.0  # most time spent waiting as servers' Retry-After headers ask
NOTHING_DONE = frozenset({429, 503})  # statuses whose Retry-After promises nothing changed
ACTIVE_JOB_STATUSES = frozenset({"queued", "processing"})
ENDED_PERSONA_STATUSES = frozenset({"completed", "failed"})
Body = Mapping[str, Any] | BaseModel


class UploadedImage(UploadPublic):
    duplicate: bool = False  # the group already had this file: this is the existing upload


class UploadAnswer(BaseModel):
    images: list[UploadedImage]
    rejected: list[UploadRejected]


@dataclass(frozen=True)
class FileUpload:
    """What became of one local file: uploaded now; skipped (the group had it, or another
    local file with the same content); a duplicate the server recognised; or rejected."""

    file: LocalFile
    state: Literal["uploaded", "skipped", "duplicate", "rejected"]
    upload_id: str | None
    reason: str | None = None


class Client:
    """The pixelfleet API over one `httpx.Client` (use it as a context manager, or `close()`).

    `api_url` and `password` (an API key, or the admin password) default to PIXELFLEET_API_URL
    (else http://127.0.0.1:8000) and PIXELFLEET_API_KEY (else PIXELFLEET_API_PASSWORD), sent
    as `Authorization: Bearer`.
    Failed calls raise `ApiError` (the server's status and message) or `ApiUnreachable`.
    """

    def __init__(
        self,
        api_url: str | None = None,
        password: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        image_page: int = IMAGE_PAGE_LIMIT,
    ) -> None:
        self.api_url = (api_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")
        if password is None:
            password = os.environ.get(KEY_ENV) or os.environ.get(PASSWORD_ENV)
        headers = {"Authorization": f"Bearer {password}"} if password else {}
        self.retries = retries
        self.backoff_s = backoff_s
        self.image_page = image_page
        self._http = httpx.Client(
            base_url=self.api_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            verify=tls_context(),
        )

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Groups ---------------------------------------------------------------------------
    def create_group(self, name: str) -> GroupPublic:
        return self._post(GroupPublic, "/api/groups", json={"name": name})

    def group(self, group_id: str) -> GroupPublic:
        return self._get(GroupPublic, f"/api/groups/{group_id}")

    def groups(self) -> Iterator[GroupPublic]:
        """Every group, newest first."""
        yield from self._pages(GroupPublic, "/api/groups")

    def find_group(self, name_or_id: str) -> GroupPublic | None:
        """The group with this id, or the one group with this name (None if there is none;
        `ClientError` if several groups have the name)."""
        if is_id("grp", name_or_id):
            try:
                return self.group(name_or_id)
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise
        named = [group for group in self.groups() if group.name == name_or_id]
        if len(named) > 1:
            ids = ", ".join(group.id for group in named)
            raise ClientError(f"{len(named)} groups are named {name_or_id!r} ({ids}): name one")
        return named[0] if named else None

    # Uploads --------------------------------------------------------------------------
    def uploads(self, group_id: str) -> Iterator[UploadPublic]:
        """Every upload of the group, oldest first."""
        yield from self._pages(UploadPublic, f"/api/groups/{group_id}/uploads")

    def upload(
        self,
        group_id: str,
        files: Sequence[LocalFile],
        attributes: Mapping[str, Any] | None = None,
    ) -> UploadAnswer:
        """One upload request with these files (see `upload_files` for any number), each new
        one given `attributes` (files the group already has keep theirs)."""
        parts = [
            ("files", (wire_name(file.path), file.path.read_bytes(), "application/octet-stream"))
            for file in files
        ]
        fields = {"group_id": group_id}
        if attributes:
            fields["attributes"] = json.dumps(dict(attributes))
        return self._post(UploadAnswer, "/api/uploads", data=fields, files=parts)

    def set_attributes(self, upload_id: str, changes: Mapping[str, Any] | None) -> UploadPublic:
        """Merge `changes` into an upload's attributes (None values delete keys; None
        deletes them all): `PATCH /api/uploads/{id}`."""
        body = {"attributes": None if changes is None else dict(changes)}
        return _parsed(UploadPublic, self._call("PATCH", f"/api/uploads/{upload_id}", json=body))

    def upload_files(
        self,
        group_id: str,
        files: Sequence[LocalFile],
        *,
        workers: int = UPLOAD_WORKERS,
        on_batch: Callable[[list[FileUpload]], None] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> list[FileUpload]:
        """Upload `files` in batches, `workers` requests at once; what became of each file,
        in order. `on_batch` hears of each finished batch (from a worker thread)."""

        def send(batch: list[LocalFile]) -> list[FileUpload]:
            outcome = self._upload_batch(group_id, batch, attributes)
            if on_batch is not None:
                on_batch(outcome)
            return outcome

        planned = list(batches(files, UPLOAD_BATCH_BYTES, UPLOAD_BATCH_FILES))
        return [upload for outcome in _in_parallel(send, planned, workers) for upload in outcome]

    def upload_folder(
        self,
        group_id: str,
        paths: Iterable[Path] | Path,
        *,
        workers: int = UPLOAD_WORKERS,
        on_hashed: Callable[[LocalFile], None] | None = None,
        on_plan: Callable[[Sequence[LocalFile]], None] | None = None,
        on_batch: Callable[[list[FileUpload]], None] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> list[FileUpload]:
        """Upload a folder's images (or these paths) that the group does not have yet, by
        sha256; files with the content of an upload of the group are skipped, so running it
        again after an interruption sends only what is missing. `on_hashed` hears of each
        file read, `on_plan` of the files about to be sent, `on_batch` of each batch sent;
        new uploads get `attributes` (skipped ones keep theirs)."""
        listed = images_in(paths) if isinstance(paths, Path) else list(paths)
        local = _in_parallel(_hashed(on_hashed), listed, workers)
        have = {upload.sha256: upload.id for upload in self.uploads(group_id)}
        first: dict[str, LocalFile] = {}
        for file in local:
            if file.sha256 not in have:
                first.setdefault(file.sha256, file)
        to_send = list(first.values())
        if on_plan is not None:
            on_plan(to_send)
        sending = self.upload_files(
            group_id, to_send, workers=workers, on_batch=on_batch, attributes=attributes
        )
        sent = {upload.file.sha256: upload for upload in sending}
        return [_outcome_of(file, have, first, sent) for file in local]

    def _upload_batch(
        self, group_id: str, batch: list[LocalFile], attributes: Mapping[str, Any] | None
    ) -> list[FileUpload]:
        try:
            answer = self.upload(group_id, batch, attributes)
        except ApiError as exc:
            if exc.status not in (413, 422):
                raise
            if len(batch) == 1:  # the server's reason, without its "no image was accepted"
                said = f"no image was accepted: {wire_name(batch[0].path)}: "
                return [FileUpload(batch[0], "rejected", None, exc.detail.removeprefix(said))]
            half = len(batch) // 2  # too large, or one bad file among them: halves, again
            return self._upload_batch(group_id, batch[:half], attributes) + self._upload_batch(
                group_id, batch[half:], attributes
            )
        return _matched(batch, answer)

    # Jobs -----------------------------------------------------------------------------
    def submit(self, body: Body) -> SubmitResponse:
        """Any submission (automatic, semi-automatic, catalog): `POST /api/jobs/submit`."""
        return self._post(SubmitResponse, "/api/jobs/submit", json=_jsonable(body))

    def import_rows(
        self,
        group_id: str,
        rows: Path,
        *,
        template: str | None = None,
        config: Mapping[str, Any] | None = None,
        webhook: Mapping[str, Any] | None = None,
    ) -> SubmitResponse:
        """A CSV (with a header row) or JSONL file of rows as one job: `POST /api/jobs/import`
        (`webhook`: `{url, events}`, told of the job's events)."""
        form = _import_form(group_id, rows, template, config, webhook)
        return self._post(SubmitResponse, "/api/jobs/import", **form)

    def estimate(self, body: Body) -> Estimate:
        """What a submission would cost, nothing written: any body of `submit`, or a
        workflow's with its `mode` and id (`POST /api/jobs/estimate`)."""
        answer = self._call("POST", "/api/jobs/estimate", idempotent=True, json=_jsonable(body))
        return _parsed(Estimate, answer)

    def estimate_import(
        self,
        group_id: str,
        rows: Path,
        *,
        template: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Estimate:
        """What `import_rows` with the same arguments would cost, nothing written."""
        form = _import_form(group_id, rows, template, config)
        answer = self._call("POST", "/api/jobs/import/estimate", idempotent=True, **form)
        return _parsed(Estimate, answer)

    def models(self) -> ModelTable:
        """The model table: limits and prices per image (`GET /api/models`)."""
        return self._get(ModelTable, "/api/models")

    def usage(
        self, *, start: str | None = None, end: str | None = None, group_by: str = "day"
    ) -> Usage:
        """Images and cost per bucket of outputs that ended from `start` to `end` (days)."""
        query = {"from": start, "to": end, "group_by": group_by}
        params = {key: value for key, value in query.items() if value is not None}
        return _parsed(Usage, self._call("GET", "/api/usage", params=params))

    # Catalogs -------------------------------------------------------------------------
    def create_catalog(self, body: Body) -> CatalogPublic:
        """A prompt catalog, `{name, prompts: [{id, tags, prompt, ...}]}`: `POST /api/catalogs`."""
        return self._post(CatalogPublic, "/api/catalogs", json=_jsonable(body))

    def catalogs(self) -> Iterator[CatalogPublic]:
        """Every catalog (without its prompts), newest first."""
        yield from self._pages(CatalogPublic, "/api/catalogs")

    def catalog(self, catalog_id: str) -> CatalogDetail:
        return self._get(CatalogDetail, f"/api/catalogs/{catalog_id}")

    # Presets --------------------------------------------------------------------------
    def create_preset(self, body: Body) -> PresetPublic:
        """`{name, prompt, config?, examples_per_reference?}`: `POST /api/presets`."""
        return self._post(PresetPublic, "/api/presets", json=_jsonable(body))

    def preset(self, preset_id: str, *, page: int = 1, limit: int = 20) -> PresetDetail:
        """A preset with a page of its gallery, newest first."""
        params = {"page": page, "limit": limit}
        return _parsed(PresetDetail, self._call("GET", f"/api/presets/{preset_id}", params=params))

    def presets(self) -> Iterator[PresetPublic]:
        """Every preset, newest first."""
        yield from self._pages(PresetPublic, "/api/presets")

    def preset_examples(self, preset_id: str, body: Body) -> PresetExamplesResponse:
        """Pick references from a pool and submit the preset's examples over them."""
        return self._post(
            PresetExamplesResponse,
            f"/api/presets/{preset_id}/examples",
            creates=True,
            json=_jsonable(body),
        )

    def reset_preset_usage(self, preset_id: str) -> PresetUsageReset:
        """Let the preset pick its pool's references again: `DELETE /api/presets/{id}/usage`."""
        answer = self._call("DELETE", f"/api/presets/{preset_id}/usage", idempotent=True)
        return _parsed(PresetUsageReset, answer)

    # Characters -----------------------------------------------------------------------
    def create_character(self, body: Body) -> CharacterPublic:
        """`{name, references, seed?, style?}`: `POST /api/characters`."""
        return self._post(CharacterPublic, "/api/characters", json=_jsonable(body))

    def characters(self) -> Iterator[CharacterPublic]:
        """Every character, newest first."""
        yield from self._pages(CharacterPublic, "/api/characters")

    def character(self, character_id: str) -> CharacterDetail:
        """A character with its packs (newest first, each with its progress)."""
        return self._get(CharacterDetail, f"/api/characters/{character_id}")

    def create_pack(self, character_id: str, body: Body) -> SubmitResponse:
        """A pack of the character, `{size?, scenes?, group_id?}`: one job."""
        path = f"/api/characters/{character_id}/packs"
        return self._post(SubmitResponse, path, json=_jsonable(body))

    # Jobs (reading and following) -----------------------------------------------------
    def job(self, job_id: str, *, images: bool = True) -> JobDetail:
        """The job with all its images (read a page at a time), or with none of them."""
        params = {"image_limit": self.image_page if images else 0}
        job = _parsed(JobDetail, self._call("GET", f"/api/jobs/{job_id}", params=params))
        if job.images_next is None:
            return job
        rest = self.job_images(job_id, cursor=job.images_next)
        return job.model_copy(update={"images": [*job.images, *rest], "images_next": None})

    def job_images(
        self, job_id: str, *, status: str | None = None, cursor: str | None = None
    ) -> Iterator[OutputPublic]:
        """The job's images by position (of one status if asked; after `cursor` if given),
        read a page at a time."""
        while True:
            params = _present({"status": status, "cursor": cursor, "limit": self.image_page})
            answer = self._call("GET", f"/api/jobs/{job_id}/images", params=params)
            page = _parsed(JobImages, answer)
            yield from page.images
            if page.next is None:
                return
            cursor = page.next

    def jobs(
        self,
        *,
        group_id: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
        page: int | None = None,
        limit: int = 20,
        with_total: bool = False,
    ) -> CursorPage[JobPublic]:
        """A page of jobs, newest first: the first, the one after `cursor` (a page's `next`),
        or page number `page`; with their total when `with_total` (or by page number)."""
        params = {
            "group_id": group_id,
            "status": status,
            "cursor": cursor,
            "page": page,
            "limit": limit,
            "with_total": with_total or None,
        }
        answer = self._call("GET", "/api/jobs", params=_present(params))
        return _parsed(CursorPage[JobPublic], answer)

    def cancel(self, job_id: str) -> JobPublic:
        return self._post(JobPublic, f"/api/jobs/{job_id}/cancel", creates=False)

    def retry(self, job_id: str) -> JobPublic:
        """Queue the job's failed images again."""
        return self._post(JobPublic, f"/api/jobs/{job_id}/retry", creates=False)

    def rerun(self, job_id: str) -> JobPublic:
        """The job made again (same prompts, references, settings; new seeds)."""
        return self._post(JobPublic, f"/api/jobs/{job_id}/rerun")

    # Images and their variations --------------------------------------------------------
    def output(self, output_id: str) -> OutputDetail:
        """One image: its job, group, status, file and variation sets."""
        return self._get(OutputDetail, f"/api/outputs/{output_id}")

    def vary(
        self,
        output_id: str,
        *,
        count: int = 4,
        prompt: str | None = None,
        strength: str | None = None,
    ) -> SubmitResponse:
        """A variation set of a succeeded image: `count` new images that use it as their
        reference (its prompt unless `prompt`; strength "subtle" or "strong")."""
        body = _present({"count": count, "prompt": prompt, "strength": strength})
        return self._post(SubmitResponse, f"/api/outputs/{output_id}/variations", json=body)

    def follow(self, job_ids: Sequence[str], interval_s: float = 1.0) -> Iterator[list[JobDetail]]:
        """The jobs as they are now, again and again, until none is queued or processing.
        Polls no faster than every `interval_s` (slower when the answers take long). While
        a job runs it comes without its images; the last answer has all of them."""
        while True:
            started = time.monotonic()
            jobs = [self.job(job_id, images=False) for job_id in job_ids]
            if not any(job.status in ACTIVE_JOB_STATUSES for job in jobs):
                yield [self.job(job_id) for job_id in job_ids]
                return
            yield jobs
            took = time.monotonic() - started
            time.sleep(max(interval_s, 4 * took) - took)

    # Personas -------------------------------------------------------------------------
    def create_personas(self, body: Body) -> PersonaBatch:
        """`{group_id, count, brief?, attributes?, config?}`: `POST /api/personas`."""
        return self._post(PersonaBatch, "/api/personas", json=_jsonable(body))

    def persona(self, persona_id: str) -> PersonaDetail:
        return self._get(PersonaDetail, f"/api/personas/{persona_id}")

    def personas(
        self, *, batch_id: str | None = None, group_id: str | None = None
    ) -> Iterator[PersonaPublic]:
        """Every persona of the batch and/or group, oldest first."""
        params = _present({"batch_id": batch_id, "group_id": group_id})
        yield from self._pages(PersonaPublic, "/api/personas", params)

    def follow_personas(
        self, batch_id: str, interval_s: float = 1.0
    ) -> Iterator[list[PersonaPublic]]:
        """The batch's personas as they are now, again and again, until each is completed or
        failed. Polls no faster than every `interval_s` (slower when the answers take long)."""
        while True:
            started = time.monotonic()
            personas = list(self.personas(batch_id=batch_id))
            yield personas
            if all(persona.status in ENDED_PERSONA_STATUSES for persona in personas):
                return
            took = time.monotonic() - started
            time.sleep(max(interval_s, 4 * took) - took)

    # Downloads ------------------------------------------------------------------------
    def download_zip(
        self,
        group_id: str,
        destination: Path,
        *,
        job_ids: Sequence[str] = (),
        include_inputs: bool = False,
        on_progress: Callable[[int, int | None], None] | None = None,
    ) -> int:
        """Stream the group's ZIP (only these jobs, with their reference images under
        `inputs/` if asked) to `destination`; returns its size. `on_progress(chunk bytes,
        total or None)` hears of each chunk. A cut-off download is started over."""
        params = httpx.QueryParams([("job_id", job_id) for job_id in job_ids])
        if include_inputs:
            params = params.add("include", "inputs")
        partial = destination.with_name(destination.name + ".part")
        try:
            size = self._retrying(
                lambda: self._stream_to(
                    f"/api/download/{group_id}/zip", params, partial, on_progress
                ),
                idempotent=True,
            )
            partial.replace(destination)
        finally:
            partial.unlink(missing_ok=True)
        return size

    def _stream_to(
        self,
        path: str,
        params: httpx.QueryParams,
        destination: Path,
        on_progress: Callable[[int, int | None], None] | None,
    ) -> int:
        with self._http.stream("GET", path, params=params) as response:
            if response.is_error:
                response.read()
                raise _api_error(response)
            declared = response.headers.get("content-length")
            total = int(declared) if declared and declared.isdigit() else None
            written = 0
            with destination.open("wb") as sink:
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                    written += len(chunk)
                    if on_progress is not None:
                        on_progress(len(chunk), total)
        return written

    # Transport ------------------------------------------------------------------------
    def _get(self, model: type[ModelT], path: str) -> ModelT:
        return _parsed(model, self._call("GET", path))

    def _post(
        self, model: type[ModelT], path: str, *, creates: bool = True, **request: Any
    ) -> ModelT:
        headers = {"Idempotency-Key": str(uuid.uuid4())} if creates else {}
        answer = self._call("POST", path, headers=headers, idempotent=creates, **request)
        return _parsed(model, answer)

    def _pages(
        self, model: type[ModelT], path: str, params: Mapping[str, Any] | None = None
    ) -> Iterator[ModelT]:
        page = 1
        while True:
            query = {**(params or {}), "page": page, "limit": PAGE_LIMIT}
            answer = self._call("GET", path, params=query)
            listed = _parsed(Page[model], answer)  # type: ignore[valid-type]
            yield from listed.data
            if not listed.data or page * PAGE_LIMIT >= listed.total:
                return
            page += 1

    def _call(
        self, method: str, path: str, *, idempotent: bool | None = None, **request: Any
    ) -> httpx.Response:
        safe = method == "GET" if idempotent is None else idempotent

        def send() -> httpx.Response:
            answer = self._http.request(method, path, **request)
            if answer.is_error:
                raise _api_error(answer)
            return answer

        return self._retrying(send, idempotent=safe)

    def _retrying(self, send: Callable[[], ResultT], *, idempotent: bool) -> ResultT:
        """`send()`, again after a pause when the connection failed (any transport error if
        the call is idempotent, else only when nothing was sent), and when the server says
        to try again later (`Retry-After`) for up to RETRY_LATER_S in all: if the call is
        idempotent (e.g. a 409 for the same Idempotency-Key still being answered), or
        whatever it is when the answer says nothing was done (429, 503: a busy database)."""
        failures, waited = 0, 0.0
        while True:
            try:
                return send()
            except httpx.TransportError as exc:
                refused = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if failures == self.retries or not (idempotent or refused):
                    raise ApiUnreachable(self.api_url, _reason(exc), refused=refused) from exc
                pause = self.backoff_s * 2**failures
                failures += 1
                log.info("no answer from %s (%s); again in %.1f s", self.api_url, exc, pause)
            except ApiError as exc:
                again = idempotent or exc.status in NOTHING_DONE
                if not again or exc.retry_after is None or waited >= RETRY_LATER_S:
                    raise
                pause = min(exc.retry_after, RETRY_LATER_S - waited)
                waited += pause
                log.info("%s; again in %.1f s", exc, pause)
            time.sleep(pause)


def _in_parallel(
    work: Callable[[ItemT], ResultT], items: Sequence[ItemT], workers: int
) -> list[ResultT]:
    """`work` on each item, `workers` at once, results in order. When one raises (or Ctrl-C
    interrupts), the items not yet started are dropped rather than waited for."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        return list(pool.map(work, items))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _hashed(on_hashed: Callable[[LocalFile], None] | None) -> Callable[[Path], LocalFile]:
    def hash_one(path: Path) -> LocalFile:
        file = local_file(path)
        if on_hashed is not None:
            on_hashed(file)
        return file

    return hash_one


def _outcome_of(
    file: LocalFile,
    have: Mapping[str, str],
    first: Mapping[str, LocalFile],
    sent: Mapping[str, FileUpload],
) -> FileUpload:
    if file.sha256 in have:
        return FileUpload(file, "skipped", have[file.sha256], "already in the group")
    uploaded = sent[file.sha256]
    if first[file.sha256] is file:
        return uploaded
    if uploaded.upload_id is None:
        return FileUpload(file, "rejected", None, uploaded.reason)
    return FileUpload(file, "skipped", uploaded.upload_id, f"same as {first[file.sha256].path}")


def _matched(batch: Sequence[LocalFile], answer: UploadAnswer) -> list[FileUpload]:
    """Each file of the batch with its part of the answer (both keep the files' order)."""
    images, rejected = deque(answer.images), deque(answer.rejected)
    outcome: list[FileUpload] = []
    for file in batch:
        if rejected and rejected[0].filename == wire_name(file.path):
            outcome.append(FileUpload(file, "rejected", None, rejected.popleft().reason))
        elif images:
            image = images.popleft()
            state: Literal["uploaded", "duplicate"] = "duplicate" if image.duplicate else "uploaded"
            outcome.append(FileUpload(file, state, image.id))
        else:
            raise ClientError("the API's answer to an upload does not match the files sent")
    if images or rejected:
        raise ClientError("the API's answer to an upload names more files than were sent")
    return outcome


def _import_form(
    group_id: str,
    rows: Path,
    template: str | None,
    config: Mapping[str, Any] | None,
    webhook: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    fields = {"group_id": group_id}
    if template is not None:
        fields["template"] = template
    if config:
        fields["config"] = json.dumps(dict(config))
    if webhook:
        fields["webhook"] = json.dumps(dict(webhook))
    kind = "application/x-ndjson" if rows.suffix.lower() == ".jsonl" else "text/csv"
    return {"data": fields, "files": {"file": (wire_name(rows), rows.read_bytes(), kind)}}


def _parsed(model: type[ModelT], response: httpx.Response) -> ModelT:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ClientError(
            f"unexpected answer from {response.request.method} {response.request.url.path}: "
            f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}"
        ) from exc


def _api_error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        said, listed = body["detail"], body.get("errors")
        detail = said if isinstance(said, str) else json.dumps(said)
        errors = listed if isinstance(listed, list) else None
    else:
        detail, errors = response.text.strip()[:500] or response.reason_phrase, None
    return ApiError(response.status_code, detail, errors, retry_after=_retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    """The seconds a 409, 429 or 503 asks to wait before trying again, if it says."""
    value = response.headers.get("retry-after", "")
    if response.status_code in (409, 429, 503) and value.isdigit():
        return float(value)
    return None


def _reason(exc: httpx.TransportError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _jsonable(body: Body) -> Any:
    return body.model_dump(mode="json", exclude_none=True) if isinstance(body, BaseModel) else body


def _present(params: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in params.items() if value is not None}
