"""Store uploaded images: validate each file, stream it into storage, record it.

Files are judged one by one (a bad file is rejected with a reason, the rest go on); the
rows are written in one transaction, and if that fails every object this request stored is
deleted again, so a failed request leaves nothing behind.

A group holds each image once: a file whose sha256 (of the bytes stored) is already an
upload of the group, or an earlier file of the same request, is answered with that upload,
marked a duplicate, and stores nothing (nor changes it: attributes sent with it are not
applied; `update_attributes` changes an upload's). Two requests bringing the same new file
at once are settled under the group's row lock when the rows are written (`record`): the
later one finds the earlier's row, answers with it and deletes the copy it stored.
"""

import functools
import hashlib
import io
import logging
import os
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import pydantic
import sqlalchemy as sa
from sqlmodel import Session, col, func, select, update

from control_plane.access import Viewer
from control_plane.db import lock_row
from control_plane.errors import (
    Conflict,
    DomainError,
    InvalidRequest,
    PayloadTooLarge,
    describe_validation,
)
from control_plane.models import Group, Upload, utcnow
from control_plane.schemas import (
    MAX_UPLOAD_ATTRIBUTES,
    UploadAttributes,
    UploadPatch,
    UploadRejected,
)
from control_plane.services.rows import fetch, visible
from control_plane.settings import Settings
from shared import layout
from shared.ids import new_id
from shared.images import (
    THUMBNAIL_TYPE,
    ImageRejected,
    InspectedImage,
    inspect_upload,
    make_thumbnail,
)
from shared.storage import Storage, StorageError
from shared.storage.base import CHUNK_SIZE

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class IncomingFile:
    """A file as a front end received it: its name as sent, its size, its bytes."""

    filename: str
    size: int
    file: BinaryIO


@dataclass
class Accepted:
    """An image a request brought: stored now, or already in the group (`duplicate`)."""

    upload: Upload
    duplicate: bool = False


def accept(
    session: Session,
    storage: Storage,
    settings: Settings,
    group_id: str,
    files: Sequence[IncomingFile],
    viewer: Viewer,
    attributes: dict[str, Any] | None = None,
) -> tuple[list[Accepted], list[UploadRejected]]:
    """Store every acceptable new file (with `attributes`), answer files the group already
    has with their upload (unchanged), reject the rest with a reason, then record the stored
    (committed). Nothing is left behind when this fails part-way: stored objects are removed.
    """
    group = fetch(session, Group, group_id, "group", viewer=viewer)
    group_id = group.id  # as stored (MySQL pads trailing spaces): storage keys are built from it
    if not files:
        raise InvalidRequest("no files: send one or more images in the form field `files`")
    accepted: list[Accepted] = []
    rejected: list[UploadRejected] = []
    stored: dict[str, Upload] = {}  # this request's new uploads, by sha256
    try:
        for incoming in files:
            outcome = _accept_file(session, storage, settings, group_id, incoming, stored)
            if isinstance(outcome, Accepted):
                accepted.append(outcome)
            else:
                rejected.append(outcome)
    except BaseException:
        remove_objects(storage, list(stored.values()))
        raise
    if not stored:
        return accepted, rejected
    for upload in stored.values():
        upload.attributes = attributes or None
    recorded_meanwhile = record(session, storage, group_id, list(stored.values()))
    return [_settled(item, recorded_meanwhile) for item in accepted], rejected


def _accept_file(
    session: Session,
    storage: Storage,
    settings: Settings,
    group_id: str,
    incoming: IncomingFile,
    stored: dict[str, Upload],
) -> Accepted | UploadRejected:
    """One file: rejected, a duplicate (nothing decoded or stored), or stored anew."""
    name = display_name(incoming.filename)
    problem = _size_problem(incoming.size, settings.upload_max_file_bytes)
    if problem:
        return UploadRejected(filename=name, reason=problem)
    digest = sha256_of(incoming.file)
    known = stored.get(digest) or upload_with_sha256(session, group_id, digest)
    if known is not None:
        return Accepted(known, duplicate=True)
    try:
        image, body, thumbnail = _decode(incoming.file, settings)
    except ImageRejected as exc:
        return UploadRejected(filename=name, reason=str(exc))
    if body is not incoming.file:  # turned upright: what is stored is the re-encoded image
        digest = sha256_of(body)
        known = stored.get(digest) or upload_with_sha256(session, group_id, digest)
        if known is not None:
            return Accepted(known, duplicate=True)
    upload = _store(storage, group_id, name, image, body, thumbnail)
    stored[upload.sha256] = upload
    return Accepted(upload)


def _settled(item: Accepted, recorded_meanwhile: dict[str, Upload]) -> Accepted:
    """`item`, or the upload another request recorded meanwhile with the same content."""
    existing = recorded_meanwhile.get(item.upload.sha256)
    if existing is None:
        return item
    return Accepted(existing, duplicate=True)


def sha256_of(file: BinaryIO) -> str:
    """The sha256 of the whole of `file`, read in chunks (left at its start)."""
    file.seek(0)
    digest = hashlib.sha256()
    while chunk := file.read(CHUNK_SIZE):
        digest.update(chunk)
    file.seek(0)
    return digest.hexdigest()


def upload_with_sha256(session: Session, group_id: str, sha256: str) -> Upload | None:
    """The group's (oldest) upload of exactly these bytes, if any."""
    return session.exec(
        select(Upload)
        .where(Upload.group_id == group_id, Upload.sha256 == sha256)
        .order_by(col(Upload.created_at), col(Upload.id))
        .limit(1)
    ).first()


def nothing_accepted(rejected: Sequence[UploadRejected]) -> DomainError:
    """The error for an upload where no file was accepted: 413 if every file was too large."""
    too_large = bool(rejected) and all(r.reason.startswith("file is") for r in rejected)
    return (PayloadTooLarge if too_large else InvalidRequest)(
        "no image was accepted: " + "; ".join(f"{r.filename}: {r.reason}" for r in rejected[:20])
    )


def get_upload(session: Session, upload_id: str, viewer: Viewer) -> Upload:
    return fetch(session, Upload, upload_id, "upload", viewer=viewer)


ATTRIBUTES = pydantic.TypeAdapter(UploadAttributes)


def parse_attributes(text: str) -> dict[str, Any] | None:
    """The form field `attributes` (a JSON object of strings, numbers and booleans) read and
    checked; None when blank or empty. InvalidRequest says what is wrong."""
    if not text.strip():
        return None
    try:
        return ATTRIBUTES.validate_json(text) or None
    except pydantic.ValidationError as exc:
        problems = describe_validation(exc.errors())
        raise InvalidRequest(
            f"form field attributes: {problems} (send a JSON object of strings, numbers and "
            f'booleans, e.g. {{"gender": "female"}})'
        ) from exc


def update_attributes(
    session: Session, upload_id: str, patch: UploadPatch, viewer: Viewer
) -> Upload:
    """Merge `patch` into the upload's attributes (a null value deletes its key; null
    attributes delete them all) and commit."""
    locked = lock_row(session, Upload, upload_id)
    upload = visible(session, locked, "upload", upload_id, viewer)
    merged = dict(upload.attributes or {}) if patch.attributes is not None else {}
    for key, value in (patch.attributes or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > MAX_UPLOAD_ATTRIBUTES:
        session.rollback()
        raise InvalidRequest(
            f"upload {upload_id} would have {len(merged)} attributes; "
            f"the limit is {MAX_UPLOAD_ATTRIBUTES} (send null for a key to delete it)"
        )
    upload.attributes = merged or None
    session.add(upload)
    session.commit()
    return upload


def page_of_uploads(
    session: Session, group_id: str, page: int, limit: int
) -> tuple[int, Sequence[Upload]]:
    """The group's number of uploads, and page `page` (1-based) of them, oldest first."""
    total = session.exec(select(func.count()).where(Upload.group_id == group_id)).one()
    rows = session.exec(
        select(Upload)
        .where(Upload.group_id == group_id)
        .order_by(col(Upload.created_at), col(Upload.id))
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return total, rows


def upload_ids_of(session: Session, group_id: str) -> list[str]:
    """Every upload of the group, oldest first."""
    return list(
        session.exec(
            select(Upload.id)
            .where(Upload.group_id == group_id)
            .order_by(col(Upload.created_at), col(Upload.id))
        ).all()
    )


def display_name(filename: str | None) -> str:
    """The file's own name, for display only: no directories, no control characters."""
    name = os.path.basename((filename or "").replace("\\", "/"))
    name = "".join(
        ch for ch in unicodedata.normalize("NFC", name) if unicodedata.category(ch)[0] != "C"
    )
    return name.strip()[:255] or "unnamed"


def safe_stem(filename: str, limit: int = 60) -> str:
    """A filename stem reduced to [A-Za-z0-9._-], for ZIP entry names."""
    return safe_name(os.path.splitext(filename)[0], limit)


def safe_name(text: str, limit: int = 60) -> str:
    """`text` reduced to [A-Za-z0-9._-], never starting or ending with '-' or '.' (so never
    '..'), for names in ZIPs; may be empty."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:limit]


def _size_problem(size: int, limit: int) -> str | None:
    if size == 0:
        return "empty file (0 bytes)"
    if size > limit:
        return f"file is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB"
    return None


def _store(
    storage: Storage,
    group_id: str,
    name: str,
    image: InspectedImage,
    body: BinaryIO,
    thumbnail: bytes,
) -> Upload:
    """Store a checked image and its thumbnail (blocking: run it in a thread)."""
    upload_id = new_id("img")
    thumbnail_key = layout.upload_thumbnail_key(group_id, upload_id)
    upload = Upload(
        id=upload_id,
        group_id=group_id,
        filename=name,
        storage_key=layout.upload_key(group_id, upload_id, image.extension),
        thumbnail_key=thumbnail_key,
        content_type=image.content_type,
        width=image.width,
        height=image.height,
        bytes=0,
        sha256="",
    )
    try:  # the original streams from the spooled upload (resumable on GCS when large)
        body.seek(0)
        stored = storage.put_file(upload.storage_key, body, content_type=image.content_type)
        storage.put_bytes(thumbnail_key, thumbnail, content_type=THUMBNAIL_TYPE)
    except StorageError:
        remove_objects(storage, [upload])
        raise
    upload.bytes, upload.sha256 = stored.size, stored.sha256
    return upload


def _decode(file: BinaryIO, settings: Settings) -> tuple[InspectedImage, BinaryIO, bytes]:
    """The checked image, the body to store (upright) and its thumbnail."""
    return decode_gate(settings.upload_decode_concurrency).run(lambda: _inspect(file, settings))


def _inspect(file: BinaryIO, settings: Settings) -> tuple[InspectedImage, BinaryIO, bytes]:
    image = inspect_upload(file, max_pixels=settings.upload_max_pixels)
    body = io.BytesIO(image.reencoded) if image.reencoded else file
    body.seek(0)
    return image, body, make_thumbnail(body)


class DecodeGate:
    """Image decodes, at most `size` at once, on `size` threads of their own.

    Each decode holds a whole image in memory (a 50 MP one about 200 MB). Running them on
    their own few threads bounds that memory to `size` decodes: the C allocator keeps what a
    thread freed in that thread's arena, so decodes spread over the request threads would
    each leave their peak resident (a semaphore alone did not lower the peak).
    """

    def __init__(self, size: int) -> None:
        self._threads = ThreadPoolExecutor(size, thread_name_prefix="decode")
        self._count_lock = threading.Lock()
        self.active = 0
        self.peak = 0  # the most decodes seen at once (for operators and tests)

    def run(self, decode: Callable[[], T]) -> T:
        """`decode()` on a decode thread, when one is free (blocking)."""
        return self._threads.submit(self._counted, decode).result()

    def _counted(self, decode: Callable[[], T]) -> T:
        with self._count_lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            return decode()
        finally:
            with self._count_lock:
                self.active -= 1


@functools.cache
def decode_gate(size: int) -> DecodeGate:
    """The process's gate for PIXELFLEET_UPLOAD_DECODE_CONCURRENCY = `size`."""
    return DecodeGate(size)


def remove_objects(storage: Storage, uploads: list[Upload]) -> None:
    for upload in uploads:
        for key in (upload.storage_key, upload.thumbnail_key):
            if key:
                try:
                    storage.delete(key)
                except StorageError:
                    log.warning("could not delete %s after a failed upload", key)


def record(
    session: Session, storage: Storage, group_id: str, uploads: list[Upload]
) -> dict[str, Upload]:
    """Insert the rows of this request's new uploads under the group's lock (committed), but
    not of those whose content another request recorded meanwhile: their objects are
    deleted, and the uploads recorded meanwhile are returned, by sha256. On failure every
    object of `uploads` is deleted and the error re-raised."""
    try:
        owner = _lock_group(session, group_id)
        meanwhile = _uploads_by_sha256(session, group_id, [upload.sha256 for upload in uploads])
        for upload in uploads:
            upload.user_id = owner
        session.add_all([upload for upload in uploads if upload.sha256 not in meanwhile])
        session.commit()
    except sa.exc.IntegrityError as exc:  # the group was deleted meanwhile
        session.rollback()
        remove_objects(storage, uploads)
        raise Conflict(f"group {group_id} was deleted meanwhile; nothing was saved") from exc
    except BaseException:
        session.rollback()
        remove_objects(storage, uploads)
        raise
    remove_objects(storage, [upload for upload in uploads if upload.sha256 in meanwhile])
    return meanwhile


def _lock_group(session: Session, group_id: str) -> str | None:
    """Lock the group's row until commit (an update: on SQLite it takes the write lock), so
    concurrent uploads into the group record one at a time; Conflict if it was deleted.
    Returns the group's owner."""
    touched = session.exec(
        update(Group).where(col(Group.id) == group_id).values(updated_at=utcnow())
    )
    if not touched.rowcount:
        raise Conflict(f"group {group_id} was deleted meanwhile; nothing was saved")
    return session.exec(select(Group.user_id).where(col(Group.id) == group_id)).one()


SHA256_BATCH = 500  # values in one IN (…) list


def _uploads_by_sha256(session: Session, group_id: str, digests: list[str]) -> dict[str, Upload]:
    """The group's oldest upload of each of `digests` it holds."""
    found: dict[str, Upload] = {}
    for start in range(0, len(digests), SHA256_BATCH):
        rows = session.exec(
            select(Upload)
            .where(
                Upload.group_id == group_id,
                col(Upload.sha256).in_(digests[start : start + SHA256_BATCH]),
            )
            .order_by(col(Upload.created_at), col(Upload.id))
        ).all()
        for upload in rows:
            found.setdefault(upload.sha256, upload)
    return found
