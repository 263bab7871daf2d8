"""Deleting groups and jobs with their objects, and finding objects nothing refers to.

The database is the source of truth: rows go first (one transaction), objects after. An
object left behind by a crash in between, or by a worker whose result never arrived, has
no row; `find_orphans` lists such objects once they are older than a grace period (so
outputs being written right now are never taken), and `pixelfleet storage gc` deletes them.
"""

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, delete, select

from control_plane.access import Viewer
from control_plane.db import lock_row
from control_plane.errors import Conflict
from control_plane.models import ACTIVE_JOB, Dispatch, Group, Job, Output, Persona, Upload
from control_plane.services.rows import visible
from shared import layout
from shared.storage import ObjectInfo, Storage, StorageError

log = logging.getLogger(__name__)


def delete_group(session: Session, storage: Storage, group_id: str, viewer: Viewer) -> int:
    """Delete a group, its uploads, jobs, images and personas; returns the number of objects
    removed."""
    group = visible(session, lock_row(session, Group, group_id), "group", group_id, viewer)
    group_id = group.id  # as stored: MySQL matches trailing spaces, and keys come from it
    _refuse_active(session, Job.group_id == group_id, f"group {group_id}")
    job_ids = select(Job.id).where(col(Job.group_id) == group_id)
    session.exec(delete(Dispatch).where(col(Dispatch.job_id).in_(job_ids)))
    session.exec(delete(Output).where(col(Output.group_id) == group_id))
    session.exec(delete(Job).where(col(Job.group_id) == group_id))
    session.exec(delete(Upload).where(col(Upload.group_id) == group_id))
    session.exec(delete(Persona).where(col(Persona.group_id) == group_id))
    session.delete(group)
    session.commit()
    return _delete_prefix(storage, layout.group_prefix(group_id))


def delete_job(session: Session, storage: Storage, job_id: str, viewer: Viewer) -> int:
    """Delete a finished job and its images; returns the number of objects removed."""
    job = visible(session, lock_row(session, Job, job_id), "job", job_id, viewer)
    job_id = job.id
    _refuse_active(session, Job.id == job_id, f"job {job_id}")
    session.exec(delete(Dispatch).where(col(Dispatch.job_id) == job_id))
    session.exec(delete(Output).where(col(Output.job_id) == job_id))
    session.delete(job)
    session.commit()
    return _delete_prefix(storage, layout.job_outputs_prefix(job.group_id, job_id))


def _refuse_active(session: Session, condition: object, what: str) -> None:
    active = session.exec(
        select(sa.func.count()).select_from(Job).where(condition, col(Job.status).in_(ACTIVE_JOB))  # type: ignore[arg-type]
    ).one()
    if active:
        raise Conflict(f"{what} has {active} job(s) still running; cancel them first")


def _delete_prefix(storage: Storage, prefix: str) -> int:
    try:
        return storage.delete_prefix(prefix)
    except StorageError as exc:  # the rows are gone; `storage gc` will find what is left
        log.warning("could not delete objects under %s: %s", prefix, exc)
        return 0


def known_keys(session: Session) -> set[str]:
    keys: set[str] = set()
    for table in (Upload, Output):
        rows = session.exec(select(table.storage_key, table.thumbnail_key)).all()
        for main, thumb in rows:
            keys.update(key for key in (main, thumb) if key)
    return keys


def find_orphans(session: Session, storage: Storage, grace_s: float) -> Iterator[ObjectInfo]:
    """Objects under the layout's ROOT that no row refers to and that are older than `grace_s`."""
    keys = known_keys(session)
    cutoff = datetime.now(UTC) - timedelta(seconds=grace_s)
    for info in storage.list(layout.ROOT):
        updated = info.updated if info.updated.tzinfo else info.updated.replace(tzinfo=UTC)
        if info.key not in keys and updated < cutoff:
            yield info
