"""A group's results as one streamed ZIP: files stored (not recompressed), plus manifest.jsonl.

Memory stays bounded whatever the group's size: entries are added as lazy iterators over
storage chunks, and zipstream-ng writes each as it is read. Order is deterministic (job
creation, then position); entry names are built from ids and sanitised stems only.
"""

import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from sqlmodel import Session, col, select
from zipstream import ZIP_STORED, ZipStream

from control_plane.models import Job, Output, OutputStatus, Upload
from control_plane.services.uploads import safe_stem
from shared.images import extension_for
from shared.storage import Storage

MANIFEST = "manifest.jsonl"


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
        if job.mode == "automatic" and output.reference_ids
    }
    names: dict[str, str] = {}
    id_list = sorted(ids)
    for start in range(0, len(id_list), 1000):
        batch = id_list[start : start + 1000]
        names.update(
            session.exec(select(Upload.id, Upload.filename).where(col(Upload.id).in_(batch))).all()
        )
    return names


def plan(session: Session, group_id: str) -> tuple[bytes, list[Entry]]:
    """The manifest and the file entries for a group, in ZIP order."""
    rows = _rows(session, group_id)
    sources = _source_names(session, rows)
    lines, entries = [], []
    for output, job in rows:
        arcname = None
        if output.status == OutputStatus.SUCCEEDED and output.storage_key:
            stem = (
                safe_stem(sources.get(output.reference_ids[0], "")) if output.reference_ids else ""
            )
            suffix = f"_{stem}" if stem and job.mode == "automatic" else ""
            arcname = (
                f"{job.id}/{output.position:05d}{suffix}{extension_for(output.content_type or '')}"
            )
            entries.append(Entry(arcname, output.storage_key, output.bytes or 0))
        lines.append(_manifest_line(output, job, arcname))
    manifest = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
    return manifest, entries


def _manifest_line(output: Output, job: Job, arcname: str | None) -> dict[str, object]:
    return {
        "job_id": job.id,
        "mode": job.mode,
        "set_index": job.set_index,
        "image_id": output.id,
        "position": output.position,
        "file": arcname,
        "status": output.status,
        "error": output.error,
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
    """The ZIP as a lazy stream; bodies come through `iter_many`, which may read ahead."""
    archive = ZipStream(compress_type=ZIP_STORED, sized=True)
    archive.add(manifest, MANIFEST)
    bodies = storage.iter_many(entry.key for entry in entries)
    for entry in entries:
        archive.add(_body(bodies, entry.key), entry.arcname, size=entry.size)
    return Archive(archive, bodies)


def _body(bodies: Iterator[tuple[str, Iterator[bytes]]], key: str) -> Iterator[bytes]:
    """The next body from `bodies`; zipstream reads entries in the order they were added."""
    got, chunks = next(bodies)
    if got != key:
        raise RuntimeError(f"archive out of order: expected {key}, got {got}")
    yield from chunks
