"""A group's results as one streamed ZIP: files stored (not recompressed), plus manifest.jsonl
and metadata.jsonl.

Memory stays bounded whatever the group's size: entries are added as lazy iterators over
storage chunks, and zipstream-ng writes each as it is read. Order is deterministic (job
creation, then position, then the reference images under `inputs/`); entry names are built
from ids and sanitised parts only.

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
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass

from sqlmodel import Session, col, select
from zipstream import ZIP_STORED, ZipStream

from control_plane.db import in_batches
from control_plane.errors import InvalidRequest, Unavailable
from control_plane.models import Job, JobMode, Output, OutputKind, OutputStatus, Upload
from control_plane.services.uploads import safe_name, safe_stem
from shared import layout
from shared.ids import is_id
from shared.images import extension_for
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


@dataclass(frozen=True)
class Plan:
    manifest: bytes
    metadata: bytes
    entries: list[Entry]


FINISHED_BATCH = 1_000  # images read per query when listing a group's finished images


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
        after = -1
        while True:
            with open_session() as session:
                rows = list(
                    session.exec(
                        select(Output)
                        .where(
                            col(Output.job_id) == job_id,
                            col(Output.position) > after,
                            col(Output.status) == OutputStatus.SUCCEEDED,
                            col(Output.kind) == OutputKind.IMAGE,
                        )
                        .order_by(col(Output.position))
                        .limit(batch)
                    )
                )
            if rows:
                yield rows
            if len(rows) < batch:
                break
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
    """The manifest, the metadata and the file entries of a group's ZIP, in ZIP order.

    Raises Unavailable when storage cannot list the group's files.
    """
    chosen = chosen or Selection()
    rows = _rows(session, group_id, chosen)
    references = _references(session, _wanted_references(rows, chosen.inputs))
    sizes = _object_sizes(storage, group_id, _wanted_keys(rows, references))
    inputs = _input_entries(rows, references, sizes) if chosen.inputs else {}
    manifest, metadata, entries = [], [], []
    for output, job in rows:
        entry = _entry(output, job, references, sizes) if _expects_file(output) else None
        files = _reference_files(output, inputs, chosen.inputs)
        if isinstance(entry, Entry):
            entries.append(entry)
            metadata.append(_metadata_line(output, job, entry, files))
        manifest.append(_manifest_line(output, job, entry, files, inputs))
    entries += [entry for entry in inputs.values() if isinstance(entry, Entry)]
    return Plan(_jsonl(manifest), _jsonl(metadata), entries)


def _jsonl(lines: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


def _rows(session: Session, group_id: str, chosen: Selection) -> list[tuple[Output, Job]]:
    query = (
        select(Output, Job)
        .join(Job, col(Job.id) == col(Output.job_id))
        .where(Output.group_id == group_id, Output.kind == OutputKind.IMAGE)
    )
    if chosen.job_ids:
        query = query.where(col(Output.job_id).in_(chosen.job_ids))
    if chosen.statuses is not None:
        query = query.where(col(Output.status).in_(sorted(chosen.statuses)))
    return list(session.exec(query.order_by(col(Job.id), col(Output.position))).all())


def _expects_file(output: Output) -> bool:
    """Only succeeded images have (or should have) an object."""
    return output.status == OutputStatus.SUCCEEDED


def _wanted_references(rows: list[tuple[Output, Job]], inputs: bool) -> list[str]:
    """Every reference of the rows when their inputs go in the ZIP; else only those whose
    names an automatic image's file name carries."""
    if inputs:
        return [ref for output, _ in rows for ref in output.reference_ids]
    return [
        output.reference_ids[0]
        for output, job in rows
        if job.mode == JobMode.AUTOMATIC and output.reference_ids
    ]


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


def _wanted_keys(rows: list[tuple[Output, Job]], references: dict[str, Reference]) -> set[str]:
    outputs = {output.storage_key for output, _ in rows if _expects_file(output)}
    return {key for key in outputs if key} | {ref.key for ref in references.values() if ref.key}


def _object_sizes(storage: Storage, group_id: str, wanted: set[str]) -> dict[str, int]:
    """The stored size of each wanted object, from one listing of the group's outputs and
    one of each other folder a wanted object is in (the group's uploads)."""
    outputs = layout.group_outputs_prefix(group_id)
    prefixes = sorted(
        {outputs if key.startswith(outputs) else key.rpartition("/")[0] + "/" for key in wanted}
    )
    try:
        return {
            info.key: info.size
            for prefix in prefixes
            for info in storage.list(prefix)
            if info.key in wanted
        }
    except StorageError as exc:
        raise Unavailable(f"could not list the group's files in storage: {exc}") from exc


def _usable_size(key: str, recorded: int | None, sizes: dict[str, int]) -> int | str:
    """The object's size, or why it cannot go into the ZIP."""
    if key not in sizes:
        return MISSING_FILE
    if recorded is not None and recorded != sizes[key]:
        return f"stored size {recorded} does not match the object's {sizes[key]} bytes"
    return sizes[key]


def _entry(
    output: Output, job: Job, references: dict[str, Reference], sizes: dict[str, int]
) -> Entry | str:
    """The ZIP entry of a succeeded image, or why its object cannot go into the ZIP."""
    key = output.storage_key
    if key is None:
        return MISSING_FILE
    size = _usable_size(key, output.bytes, sizes)
    return size if isinstance(size, str) else Entry(_arcname(output, job, references), key, size)


def _input_entries(
    rows: list[tuple[Output, Job]], references: dict[str, Reference], sizes: dict[str, int]
) -> dict[str, Entry | str]:
    """Each reference of the rows once, in order of first use: its entry under inputs/, or
    why it cannot go into the ZIP."""
    entries: dict[str, Entry | str] = {}
    for output, _ in rows:
        for ref_id in output.reference_ids:
            if ref_id not in entries:
                entries[ref_id] = _input_entry(ref_id, references.get(ref_id), sizes)
    return entries


def _input_entry(ref_id: str, ref: Reference | None, sizes: dict[str, int]) -> Entry | str:
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


def _reference_files(output: Output, inputs: dict[str, Entry | str], included: bool) -> list[str]:
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


def _arcname(output: Output, job: Job, references: dict[str, Reference]) -> str:
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


def _persona_parts(output: Output, job: Job) -> list[str]:
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
    output: Output,
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
    output: Output, job: Job, entry: Entry, reference_files: list[str]
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
    """A ZIP being streamed: iterate `zip`; `close()` stops the storage read-ahead at once
    (call it when the download ends early, e.g. the client went away)."""

    zip: ZipStream
    bodies: Generator[tuple[str, Iterator[bytes]], None, None]

    def __len__(self) -> int:
        return len(self.zip)

    def close(self) -> None:
        self.bodies.close()


def stream(storage: Storage, planned: Plan) -> Archive:
    """The ZIP as a lazy stream; bodies come through `iter_many`, which may read ahead.

    Iterating it raises ArchiveAborted when an object no longer matches its plan (deleted,
    unreadable, or of another size).
    """
    archive = ZipStream(compress_type=ZIP_STORED, sized=True)
    archive.add(planned.manifest, MANIFEST)
    archive.add(planned.metadata, METADATA)
    bodies = storage.iter_many(entry.key for entry in planned.entries)
    for entry in planned.entries:
        archive.add(_body(bodies, entry), entry.arcname, size=entry.size)
    return Archive(archive, bodies)


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
