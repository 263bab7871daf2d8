"""A group's results as one streamed ZIP: files stored (not recompressed), plus manifest.jsonl.

Memory stays bounded whatever the group's size: entries are added as lazy iterators over
storage chunks, and zipstream-ng writes each as it is read. Order is deterministic (job
creation, then position); entry names are built from ids and sanitised stems only.

Planning checks every succeeded image's object against one listing of the group's outputs:
an object that is missing, or whose size is not the one recorded, stays out of the ZIP and
its manifest line says `failed`, with the reason. The rest of the archive stays valid.
"""

import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from sqlmodel import Session, col, select
from zipstream import ZIP_STORED, ZipStream

from control_plane.errors import Unavailable
from control_plane.models import Job, JobMode, Output, OutputStatus, Upload
from control_plane.services.uploads import safe_stem
from shared import layout
from shared.images import extension_for
from shared.storage import Storage, StorageError

MANIFEST = "manifest.jsonl"
MISSING_FILE = "file missing from storage"


class ArchiveAborted(Exception):
    """An object changed after the ZIP was planned: the archive promised (its length is
    already sent) can no longer be made, so the download must end as an error."""


@dataclass(frozen=True)
class Entry:
    arcname: str
    key: str
    size: int


def finished_outputs(session: Session, group_id: str) -> list[Output]:
    """The group's succeeded images, by job and position."""
    return list(
        session.exec(
            select(Output)
            .where(Output.group_id == group_id, Output.status == OutputStatus.SUCCEEDED)
            .order_by(col(Output.job_id), col(Output.position))
        ).all()
    )


def _rows(session: Session, group_id: str) -> list[tuple[Output, Job]]:
    return list(
        session.exec(
            select(Output, Job)
            .join(Job, col(Job.id) == col(Output.job_id))
            .where(Output.group_id == group_id)
            .order_by(col(Job.id), col(Output.position))
        ).all()
    )


def _source_names(session: Session, rows: list[tuple[Output, Job]]) -> dict[str, str]:
    ids = {
        output.reference_ids[0]
        for output, job in rows
        if job.mode == JobMode.AUTOMATIC and output.reference_ids
    }
    names: dict[str, str] = {}
    id_list = sorted(ids)
    for start in range(0, len(id_list), 1000):
        batch = id_list[start : start + 1000]
        names.update(
            session.exec(select(Upload.id, Upload.filename).where(col(Upload.id).in_(batch))).all()
        )
    return names


def plan(session: Session, storage: Storage, group_id: str) -> tuple[bytes, list[Entry]]:
    """The manifest and the file entries for a group, in ZIP order.

    Raises Unavailable when storage cannot list the group's outputs.
    """
    rows = _rows(session, group_id)
    sources = _source_names(session, rows)
    sizes = _object_sizes(storage, group_id, rows)
    lines, entries = [], []
    for output, job in rows:
        entry = _entry(output, job, sources, sizes) if _expects_file(output) else None
        if isinstance(entry, Entry):
            entries.append(entry)
        lines.append(_manifest_line(output, job, entry))
    manifest = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
    return manifest, entries


def _expects_file(output: Output) -> bool:
    """Only succeeded images have (or should have) an object."""
    return output.status == OutputStatus.SUCCEEDED


def _object_sizes(
    storage: Storage, group_id: str, rows: list[tuple[Output, Job]]
) -> dict[str, int]:
    """The stored size of each object the group's images refer to, from one listing."""
    wanted = {output.storage_key for output, _ in rows if _expects_file(output)}
    if not wanted:
        return {}
    try:
        return {
            info.key: info.size
            for info in storage.list(layout.group_outputs_prefix(group_id))
            if info.key in wanted
        }
    except StorageError as exc:
        raise Unavailable(f"could not list the group's files in storage: {exc}") from exc


def _entry(output: Output, job: Job, sources: dict[str, str], sizes: dict[str, int]) -> Entry | str:
    """The ZIP entry of a succeeded image, or why its object cannot go into the ZIP."""
    key = output.storage_key
    if key is None or key not in sizes:
        return MISSING_FILE
    if output.bytes is not None and output.bytes != sizes[key]:
        return f"stored size {output.bytes} does not match the object's {sizes[key]} bytes"
    return Entry(_arcname(output, job, sources), key, sizes[key])


def _arcname(output: Output, job: Job, sources: dict[str, str]) -> str:
    stem = safe_stem(sources.get(output.reference_ids[0], "")) if output.reference_ids else ""
    suffix = f"_{stem}" if stem and job.mode == JobMode.AUTOMATIC else ""
    return f"{job.id}/{output.position:05d}{suffix}{extension_for(output.content_type or '')}"


def _manifest_line(output: Output, job: Job, entry: Entry | str | None) -> dict[str, object]:
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
        "reference_ids": output.reference_ids,
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
    }


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


def stream(storage: Storage, manifest: bytes, entries: list[Entry]) -> Archive:
    """The ZIP as a lazy stream; bodies come through `iter_many`, which may read ahead.

    Iterating it raises ArchiveAborted when an object no longer matches its plan (deleted,
    unreadable, or of another size).
    """
    archive = ZipStream(compress_type=ZIP_STORED, sized=True)
    archive.add(manifest, MANIFEST)
    bodies = storage.iter_many(entry.key for entry in entries)
    for entry in entries:
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
