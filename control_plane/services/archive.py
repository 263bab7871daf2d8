"""A group's results as one streamed ZIP: files stored (not recompressed), plus manifest.jsonl
and metadata.jsonl.

Memory stays small whatever the group's size: planning reads the group's images a batch at
a time as rows of the columns it needs, writes the manifest and metadata lines to temporary
files (`Spool`: on disk past 1 MiB), and lists storage a folder at a time (a job's outputs,
the group's uploads); what it keeps per image is its entry (name, key, size), a few hundred
bytes, which zipstream-ng needs to promise the archive's length. Entries are added as lazy
iterators over storage chunks, and zipstream-ng writes each as it is read. Order is
deterministic (job creation, then position, then the reference images under `inputs/`);
entry names are built from ids and sanitised parts only.

A download selects (`selection`): some of the group's jobs or all, images of some statuses
(succeeded by default), and optionally the reference images those images were made from.
`manifest.jsonl` accounts for every selected image; `metadata.jsonl`, one line per
generated image in the ZIP, is what Hugging Face's `imagefolder` loader reads, so the
unzipped folder loads with `datasets.load_dataset("imagefolder", data_dir=…)`.

Planning checks every succeeded image's object, and every reference image's, against
listings of storage: an object that is missing, or whose size is not the one recorded,
stays out of the ZIP and the manifest says why (an image's line says `failed`; a reference
is named in `reference_errors`). The rest of the archive stays valid.
"""

import json
import re
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select
from zipstream import ZIP_STORED, ZipStream

from control_plane.db import in_batches
from control_plane.errors import InvalidRequest, Unavailable
from control_plane.models import (
    OUTPUTS,
    Job,
    JobMode,
    Output,
    OutputKind,
    OutputStatus,
    Upload,
)
from control_plane.services.uploads import safe_name, safe_stem
from shared import layout
from shared.ids import is_id
from shared.images import extension_for
from shared.layout import ObjectKind
from shared.storage import Storage, StorageError

MANIFEST = "manifest.jsonl"
METADATA = "metadata.jsonl"
INPUTS = "inputs"
MISSING_FILE = "file missing from storage"
MAX_JOB_IDS = 1000
STATUSES: dict[str, frozenset[str] | None] = {  # None: every status
    "succeeded": frozenset({OutputStatus.SUCCEEDED}),
    "failed": frozenset({OutputStatus.FAILED}),
    "blocked": frozenset({OutputStatus.BLOCKED}),
    "all": None,
}
INCLUDES = ("inputs",)
# Words `datasets` reads as split names in a file's path (train, validation, test) when they
# stand between separators ("-", ".", "_", " ", digits) or at either end of a name: one such
# name would turn the folder into a "test" split and leave no "train" split to load. Its
# patterns are case-sensitive, so the word is capitalised instead ("00003_Test.png").
_SPLIT_WORD = re.compile(
    r"(?<![^-._ 0-9])(?:train|training|validation|valid|val|dev|test|testing|eval|evaluation)"
    r"(?![^-._ 0-9])"
)


class ArchiveAborted(Exception):
    """An object changed after the ZIP was planned: the archive promised (its length is
    already sent) can no longer be made, so the download must end as an error."""


@dataclass(frozen=True)
class Selection:
    """What a ZIP holds: the images of `job_ids` (every job of the group when empty) whose
    status is one of `statuses` (every status when None); with `inputs`, their references."""

    job_ids: tuple[str, ...] = ()
    statuses: frozenset[str] | None = STATUSES["succeeded"]
    inputs: bool = False


@dataclass(frozen=True)
class Entry:
    arcname: str
    key: str
    size: int


@dataclass(frozen=True)
class Reference:
    """An image another was made from: an upload, or an image generated before."""

    id: str
    key: str | None  # None: it has no file (an image that did not succeed)
    bytes: int | None
    content_type: str | None
    filename: str | None  # an upload's, as the user named it


class Spool:
    """Lines of JSON written as planning goes, read back once as the ZIP streams them: in
    memory up to SPOOL_MEMORY bytes, then in a temporary file."""

    def __init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115

    def write(self, line: dict[str, object]) -> None:
        self._file.write((json.dumps(line, ensure_ascii=False) + "\n").encode())

    @property
    def size(self) -> int:
        return self._file.tell()

    def chunks(self) -> Iterator[bytes]:
        """What was written, from the start (once: the ZIP reads each entry once)."""
        self._file.seek(0)
        while chunk := self._file.read(SPOOL_CHUNK):
            yield chunk

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class Plan:
    """A ZIP's manifest, metadata and file entries in ZIP order; `close` drops the spools."""

    manifest: Spool
    metadata: Spool
    entries: list[Entry]

    def close(self) -> None:
        self.manifest.close()
        self.metadata.close()


FINISHED_BATCH = 1_000  # images read per query when listing or planning a group's images
SPOOL_MEMORY = 1 << 20  # a manifest or metadata past this many bytes goes to a temporary file
SPOOL_CHUNK = 1 << 16
BLOCK = 1 << 16  # the least a download's write carries (`Archive.blocks`)
LISTINGS_KEPT = 4
THUMBNAILS = frozenset({ObjectKind.OUTPUT_THUMBNAIL, ObjectKind.UPLOAD_THUMBNAIL})
# What the ZIP's names, entries, manifest and metadata read of an image
ARCHIVED_COLUMNS = tuple(
    OUTPUTS.c[name]
    for name in [
        "id",
        "position",
        "status",
        "error",
        "prompt",
        "prompt_id",
        "tags",
        "reference_ids",
        "seed",
        "provider",
        "model",
        "model_version",
        "params",
        "sha256",
        "bytes",
        "width",
        "height",
        "content_type",
        "cost_usd",
        "storage_key",
    ]
)
ArchivedOutput = sa.Row[Any]  # a row of ARCHIVED_COLUMNS


def finished_outputs(
    open_session: Callable[[], Session], group_id: str, batch: int | None = None
) -> Iterator[list[Output]]:
    """The group's succeeded images (not text answers) by job and position, `batch` at a
    time: each batch is one short query on outputs(job_id, position) in a session of its own,
    so a group of any size is listed in bounded memory without holding a connection."""
    batch = batch or FINISHED_BATCH
    with open_session() as session:
        job_ids = list(
            session.exec(select(Job.id).where(Job.group_id == group_id).order_by(col(Job.id)))
        )
    for job_id in job_ids:
        query = select(Output).where(
            col(Output.job_id) == job_id,
            col(Output.status) == OutputStatus.SUCCEEDED,
            col(Output.kind) == OutputKind.IMAGE,
        )
        yield from _by_position(query, batch, lambda page: _in_own_session(open_session, page))


def _in_own_session(open_session: Callable[[], Session], query: Any) -> list[Any]:
    with open_session() as session:
        return list(session.exec(query))


def _by_position(
    query: Any, batch: int, read: Callable[[Any], Sequence[Any]]
) -> Iterator[list[Any]]:
    """`query`'s outputs (one job's) in keyset pages of `batch` by position, on the index
    outputs(job_id, position); `read` runs each page's query."""
    after = -1
    while True:
        rows = list(
            read(query.where(OUTPUTS.c.position > after).order_by(OUTPUTS.c.position).limit(batch))
        )
        if rows:
            yield rows
        if len(rows) < batch:
            return
        after = rows[-1].position


# -- what a download asks for --------------------------------------------------------------


def selection(
    session: Session,
    group_id: str,
    job_ids: Sequence[str] = (),
    statuses: Sequence[str] = (),
    include: Sequence[str] = (),
) -> Selection:
    """The download's query, checked: each value repeated or comma-separated; a job id that
    is not one of the group's jobs, or an unknown value, is refused (422) by name."""
    wanted_statuses = _values(statuses) or ["succeeded"]
    _refuse_unknown("status", wanted_statuses, list(STATUSES))
    _refuse_unknown("include", _values(include), list(INCLUDES))
    chosen = [STATUSES[value] for value in wanted_statuses]
    return Selection(
        job_ids=_checked_jobs(session, group_id, _values(job_ids)),
        statuses=None if None in chosen else frozenset().union(*filter(None, chosen)),
        inputs="inputs" in _values(include),
    )


def _values(raw: Sequence[str]) -> list[str]:
    """Repeated and comma-separated values as one list, in order, without repeats or blanks."""
    parts = (part.strip() for value in raw for part in value.split(","))
    return list(dict.fromkeys(part for part in parts if part))


def _refuse_unknown(name: str, values: list[str], choices: list[str]) -> None:
    unknown = [value for value in values if value not in choices]
    if unknown:
        raise InvalidRequest(
            f"unknown {name} {', '.join(repr(_clip(v)) for v in unknown[:10])}; "
            f"choose from: {', '.join(choices)}"
        )


def _checked_jobs(session: Session, group_id: str, job_ids: list[str]) -> tuple[str, ...]:
    """`job_ids` if each is a job of the group; malformed ids are refused before any query."""
    if len(job_ids) > MAX_JOB_IDS:
        raise InvalidRequest(f"{len(job_ids)} job_id values; at most {MAX_JOB_IDS} at once")
    malformed = [job_id for job_id in job_ids if not is_id("job", job_id)]
    if malformed:
        raise InvalidRequest(
            f"job_id {_listed(malformed)}: not shaped like a job id (job_ and 26 characters "
            "of lower-case Crockford base32)"
        )
    found = set(
        session.exec(select(Job.id).where(col(Job.id).in_(job_ids), Job.group_id == group_id)).all()
        if job_ids
        else ()
    )
    missing = [job_id for job_id in job_ids if job_id not in found]
    if missing:
        raise InvalidRequest(f"job_id {_listed(missing)}: not a job of group {group_id}")
    return tuple(job_ids)


def _listed(values: list[str], shown: int = 10) -> str:
    return ", ".join(_clip(value) for value in values[:shown]) + (
        " …" if len(values) > shown else ""
    )


def _clip(value: str, chars: int = 40) -> str:
    """A value named in a message, cut short so a message never echoes a long input."""
    return value if len(value) <= chars else value[:chars] + "…"


# -- planning ------------------------------------------------------------------------------


def plan(
    session: Session, storage: Storage, group_id: str, chosen: Selection | None = None
) -> Plan:
    """The manifest, the metadata and the file entries of a group's ZIP, in ZIP order, read
    a job and a batch of its images at a time.

    Raises Unavailable when storage cannot list the group's files.
    """
    chosen = chosen or Selection()
    planned = Plan(Spool(), Spool(), [])
    try:
        _plan_into(planned, session, storage, group_id, chosen)
    except BaseException:
        planned.close()
        raise
    return planned


def _plan_into(
    planned: Plan, session: Session, storage: Storage, group_id: str, chosen: Selection
) -> None:
    sizes = _Sizes(storage)
    references: dict[str, Reference] = {}
    inputs: dict[str, Entry | str] = {}
    for job in _jobs(session, group_id, chosen):
        for rows in _batches(session, job.id, chosen):
            wanted = _wanted_references(rows, job, chosen.inputs)
            references |= _references(session, [ref for ref in wanted if ref not in references])
            if chosen.inputs:
                _add_inputs(inputs, rows, references, sizes)
            for output in rows:
                _plan_image(planned, output, job, references, sizes, inputs, chosen.inputs)
    planned.entries.extend(entry for entry in inputs.values() if isinstance(entry, Entry))


def _plan_image(
    planned: Plan,
    output: ArchivedOutput,
    job: Job,
    references: dict[str, Reference],
    sizes: "_Sizes",
    inputs: dict[str, Entry | str],
    included: bool,
) -> None:
    """The image's manifest line, and its entry and metadata line when its file goes in."""
    entry = _entry(output, job, references, sizes) if _expects_file(output) else None
    files = _reference_files(output, inputs, included)
    if isinstance(entry, Entry):
        planned.entries.append(entry)
        planned.metadata.write(_metadata_line(output, job, entry, files))
    planned.manifest.write(_manifest_line(output, job, entry, files, inputs))


def _jobs(session: Session, group_id: str, chosen: Selection) -> list[Job]:
    """The group's jobs the download covers, oldest first."""
    query = select(Job).where(Job.group_id == group_id)
    if chosen.job_ids:
        query = query.where(col(Job.id).in_(chosen.job_ids))
    return list(session.exec(query.order_by(col(Job.id))).all())


def _batches(session: Session, job_id: str, chosen: Selection) -> Iterator[list[ArchivedOutput]]:
    """The job's images the download covers, by position, FINISHED_BATCH at a time."""
    clauses = [OUTPUTS.c.job_id == job_id, OUTPUTS.c.kind == OutputKind.IMAGE]
    if chosen.statuses is not None:
        clauses.append(OUTPUTS.c.status.in_(sorted(chosen.statuses)))
    query = sa.select(*ARCHIVED_COLUMNS).where(*clauses)
    return _by_position(query, FINISHED_BATCH, lambda page: session.execute(page).all())


def _expects_file(output: ArchivedOutput | Output) -> bool:
    """Only succeeded images have (or should have) an object."""
    return output.status == OutputStatus.SUCCEEDED


def _wanted_references(rows: list[ArchivedOutput], job: Job, inputs: bool) -> list[str]:
    """Every reference of the rows when their inputs go in the ZIP; else only those whose
    names an automatic image's file name carries."""
    if inputs:
        return [ref for output in rows for ref in output.reference_ids]
    if job.mode != JobMode.AUTOMATIC:
        return []
    return [output.reference_ids[0] for output in rows if output.reference_ids]


def _references(session: Session, ids: Iterable[str]) -> dict[str, Reference]:
    """The references among `ids` that exist, by id: uploads (`img_…`) and generated images
    (`out_…`)."""
    wanted = sorted(set(ids))
    found: dict[str, Reference] = {}
    for batch in in_batches([i for i in wanted if is_id("img", i)]):
        for upload in session.exec(select(Upload).where(col(Upload.id).in_(batch))).all():
            found[upload.id] = Reference(
                upload.id, upload.storage_key, upload.bytes, upload.content_type, upload.filename
            )
    for batch in in_batches([i for i in wanted if is_id("out", i)]):
        for output in session.exec(select(Output).where(col(Output.id).in_(batch))).all():
            key = output.storage_key if _expects_file(output) else None
            found[output.id] = Reference(
                output.id, key, output.bytes, output.content_type, filename=None
            )
    return found


class _Sizes:
    """Stored objects' sizes, a folder's listing at a time (a job's outputs, the group's
    uploads), the last LISTINGS_KEPT listings kept: planning goes job by job, so it holds
    the listing of the job it is at and of the uploads, not the whole group's."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._listings: dict[str, dict[str, int]] = {}

    def get(self, key: str) -> int | None:
        folder = key.rpartition("/")[0] + "/"
        if folder not in self._listings:
            if len(self._listings) >= LISTINGS_KEPT:
                del self._listings[next(iter(self._listings))]
            self._listings[folder] = self._list(folder)
        listing = self._listings.pop(folder)
        self._listings[folder] = listing  # the most recently used last
        return listing.get(key)

    def _list(self, folder: str) -> dict[str, int]:
        try:
            return {
                info.key: info.size
                for info in self._storage.list(folder)
                if info.key.rpartition("/")[0] + "/" == folder and not _is_thumbnail(info.key)
            }
        except StorageError as exc:
            raise Unavailable(f"could not list the group's files in storage: {exc}") from exc


def _is_thumbnail(key: str) -> bool:
    parsed = layout.parse(key)
    return parsed is not None and parsed.kind in THUMBNAILS


def _usable_size(key: str, recorded: int | None, sizes: _Sizes) -> int | str:
    """The object's size, or why it cannot go into the ZIP."""
    size = sizes.get(key)
    if size is None:
        return MISSING_FILE
    if recorded is not None and recorded != size:
        return f"stored size {recorded} does not match the object's {size} bytes"
    return size


def _entry(
    output: ArchivedOutput, job: Job, references: dict[str, Reference], sizes: _Sizes
) -> Entry | str:
    """The ZIP entry of a succeeded image, or why its object cannot go into the ZIP."""
    key = output.storage_key
    if key is None:
        return MISSING_FILE
    size = _usable_size(key, output.bytes, sizes)
    return size if isinstance(size, str) else Entry(_arcname(output, job, references), key, size)


def _add_inputs(
    inputs: dict[str, Entry | str],
    rows: list[ArchivedOutput],
    references: dict[str, Reference],
    sizes: _Sizes,
) -> None:
    """Each reference of the rows not yet in `inputs`, in order of first use: its entry under
    inputs/, or why it cannot go into the ZIP."""
    for output in rows:
        for ref_id in output.reference_ids:
            if ref_id not in inputs:
                inputs[ref_id] = _input_entry(ref_id, references.get(ref_id), sizes)


def _input_entry(ref_id: str, ref: Reference | None, sizes: _Sizes) -> Entry | str:
    if ref is None:
        return "no upload or image has this id"
    if ref.key is None:
        return "the referenced image has no file"
    size = _usable_size(ref.key, ref.bytes, sizes)
    if isinstance(size, str):
        return size
    stem = safe_stem(ref.filename or "")
    name = f"{ref.id}_{stem}" if stem else ref.id
    return Entry(_zip_path([INPUTS, name + extension_for(ref.content_type or "")]), ref.key, size)


def _reference_files(
    output: ArchivedOutput, inputs: dict[str, Entry | str], included: bool
) -> list[str]:
    """Where an image's references are in the ZIP (those that are), or, without inputs, their
    ids."""
    if not included:
        return list(output.reference_ids)
    return [
        entry.arcname
        for ref_id in output.reference_ids
        if isinstance(entry := inputs[ref_id], Entry)
    ]


# -- names ---------------------------------------------------------------------------------


def _arcname(output: ArchivedOutput, job: Job, references: dict[str, Reference]) -> str:
    """`{job}/{position}[_{source name}]` (automatic), `{job}/{position}` (semi-automatic),
    `{job}/{tag}/{prompt id}_{position}` (catalog), `{job}/{prompt id}_{position}` (import),
    `{persona}/base`, `{persona}/variation_{n}` (persona images)."""
    position = f"{output.position:05d}"
    if job.mode == JobMode.CATALOG:
        tag = safe_name(str(job.config.get("tag") or "")) or "untagged"
        parts = [job.id, tag, _labelled(output.prompt_id, position)]
    elif job.mode == JobMode.IMPORT:
        parts = [job.id, _labelled(output.prompt_id, position)]
    elif job.mode == JobMode.PERSONA_IMAGES:
        parts = _persona_parts(output, job)
    elif job.mode == JobMode.AUTOMATIC and output.reference_ids:
        source = references.get(output.reference_ids[0])
        stem = safe_stem(source.filename or "") if source else ""
        parts = [job.id, f"{position}_{stem}" if stem else position]
    else:
        parts = [job.id, position]
    parts[-1] += extension_for(output.content_type or "")
    return _zip_path(parts)


def _persona_parts(output: ArchivedOutput, job: Job) -> list[str]:
    """`{persona}/base`, `{persona}/variation_{n}`: the folder is the persona's name, made
    unique in its group when its images were first asked for (`services/personas.py`)."""
    folder = safe_name(str(job.config.get("folder") or "")) or safe_name(job.source_id or job.id)
    if job.config.get("stage") == "base":
        return [folder, "base"]
    return [folder, f"variation_{output.position + 1}"]


def _labelled(label: str | None, position: str) -> str:
    part = safe_name(label or "")
    return f"{part}_{position}" if part else position


def _zip_path(parts: list[str]) -> str:
    """A path in the ZIP from sanitised parts, none holding a dataset split word."""
    return "/".join(_SPLIT_WORD.sub(lambda word: word[0].capitalize(), part) for part in parts)


# -- lines ---------------------------------------------------------------------------------


def _manifest_line(
    output: ArchivedOutput,
    job: Job,
    entry: Entry | str | None,
    reference_files: list[str],
    inputs: dict[str, Entry | str],
) -> dict[str, object]:
    """`entry`: the image's ZIP entry, the reason its object is unusable, or None (no file)."""
    unusable = isinstance(entry, str)
    return {
        "job_id": job.id,
        "mode": job.mode,
        "set_index": job.set_index,
        "image_id": output.id,
        "position": output.position,
        "file": entry.arcname if isinstance(entry, Entry) else None,
        "status": OutputStatus.FAILED if unusable else output.status,
        "error": entry if unusable else output.error,
        "prompt": output.prompt,
        "prompt_id": output.prompt_id,
        "tags": output.tags or [],
        "reference_ids": output.reference_ids,
        "reference_files": reference_files,
        "reference_errors": {
            ref_id: reason
            for ref_id in output.reference_ids
            if isinstance(reason := inputs.get(ref_id), str)
        },
        "seed": output.seed,
        "provider": output.provider,
        "model": output.model,
        "model_version": output.model_version,
        "params": output.params,
        "sha256": output.sha256,
        "bytes": output.bytes,
        "width": output.width,
        "height": output.height,
        "content_type": output.content_type,
        "cost_usd": output.cost_usd,
    }


def _metadata_line(
    output: ArchivedOutput, job: Job, entry: Entry, reference_files: list[str]
) -> dict[str, object]:
    """One row of the `imagefolder` dataset: the image's path in the ZIP and its columns."""
    return {
        "file_name": entry.arcname,
        "prompt": output.prompt,
        "negative_prompt": output.params.get("negative_prompt"),
        "seed": output.seed,
        "model": output.model,
        "tags": output.tags or [],
        "prompt_id": output.prompt_id,
        "job_id": job.id,
        "image_id": output.id,
        "reference_files": reference_files,
    }


# -- streaming -----------------------------------------------------------------------------


@dataclass
class Archive:
    """A ZIP being streamed: iterate `blocks()`; `close()` stops the storage read-ahead at once
    (call it when the download ends early, e.g. the client went away)."""

    zip: ZipStream
    bodies: Generator[tuple[str, Iterator[bytes]], None, None]
    planned: Plan

    def __len__(self) -> int:
        return len(self.zip)

    def blocks(self) -> Iterator[bytes]:
        """The ZIP in pieces of at least BLOCK bytes (but the last): zipstream yields each
        header and directory record on its own, a few dozen bytes, and every piece costs the
        download a thread hop and a write (20,000 images: some 60,000 pieces)."""
        pending: list[bytes] = []
        held = 0
        try:
            for piece in self.zip:
                if len(piece) >= BLOCK:
                    if pending:
                        yield b"".join(pending)
                        pending, held = [], 0
                    yield piece
                    continue
                pending.append(piece)
                held += len(piece)
                if held >= BLOCK:
                    yield b"".join(pending)
                    pending, held = [], 0
        except ArchiveAborted:  # what came before the changed object still goes out first
            if pending:
                yield b"".join(pending)
            raise
        if pending:
            yield b"".join(pending)

    def close(self) -> None:
        self.bodies.close()
        self.planned.close()


def stream(storage: Storage, planned: Plan) -> Archive:
    """The ZIP as a lazy stream; bodies come through `iter_many`, which may read ahead.

    Iterating it raises ArchiveAborted when an object no longer matches its plan (deleted,
    unreadable, or of another size).
    """
    archive = ZipStream(compress_type=ZIP_STORED, sized=True)
    archive.add(planned.manifest.chunks(), MANIFEST, size=planned.manifest.size)
    archive.add(planned.metadata.chunks(), METADATA, size=planned.metadata.size)
    bodies = storage.iter_many(entry.key for entry in planned.entries)
    for entry in planned.entries:
        archive.add(_body(bodies, entry), entry.arcname, size=entry.size)
    return Archive(archive, bodies, planned)


def _body(bodies: Iterator[tuple[str, Iterator[bytes]]], entry: Entry) -> Iterator[bytes]:
    """The next body from `bodies`, exactly `entry.size` bytes of it; zipstream reads entries
    in the order they were added."""
    got, chunks = next(bodies)
    if got != entry.key:
        raise RuntimeError(f"archive out of order: expected {entry.key}, got {got}")
    sent = 0
    try:
        for chunk in chunks:
            sent += len(chunk)
            if sent > entry.size:
                break
            yield chunk
    except StorageError as exc:
        raise ArchiveAborted(f"{entry.key} could not be read: {exc}") from exc
    if sent != entry.size:
        raise ArchiveAborted(f"{entry.key} is no longer the {entry.size} bytes planned")
