"""What a request does beyond one service call, shared by the JSON API and the web UI.

Each action runs its blocking service work in the thread pool, commits, and hands what must
reach RunPod to the platform's background tasks, so both front ends behave the same.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from control_plane.api.deps import commit_after
from control_plane.errors import (
    Conflict,
    DomainError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
)
from control_plane.models import Group, Job, Upload
from control_plane.schemas import AutomaticSubmit, SemiAutomaticSubmit, UploadRejected
from control_plane.services import dispatch, jobs, submissions, uploads
from control_plane.services.platform import Platform


async def read_form(request: Request, platform: Platform) -> FormData:
    """The multipart form, within the upload limits; a 422 that says why if unreadable."""
    try:
        return await request.form(max_files=platform.settings.upload_max_files, max_fields=100)
    except HTTPException as exc:  # Starlette's 400 for a multipart body it cannot parse
        raise InvalidRequest(f"could not read the multipart body: {exc.detail}") from exc


def nothing_accepted(rejected: Sequence[UploadRejected]) -> DomainError:
    """The error for an upload where no file was accepted: 413 if every file was too large."""
    too_large = bool(rejected) and all(r.reason.startswith("file is") for r in rejected)
    return (PayloadTooLarge if too_large else InvalidRequest)(
        "no image was accepted: " + "; ".join(f"{r.filename}: {r.reason}" for r in rejected[:20])
    )


async def accept_uploads(
    platform: Platform, session: Session, group_id: str, files: Sequence[UploadFile]
) -> tuple[list[Upload], list[UploadRejected]]:
    """Store every acceptable file, reject the rest with a reason, then record the stored.

    Nothing is left behind when this fails part-way: stored objects are removed.
    """
    group = await run_in_threadpool(session.get, Group, group_id)
    if group is None:
        raise NotFound(f"group {group_id} does not exist")
    group_id = group.id  # as stored (see submissions.submit): storage keys are built from it
    if not files:
        raise InvalidRequest("no files: send one or more images in the form field `files`")
    stored: list[Upload] = []
    rejected: list[UploadRejected] = []
    try:
        for upload_file in files:
            incoming = uploads.IncomingFile(
                upload_file.filename or "", upload_file.size or 0, upload_file.file
            )
            outcome = await run_in_threadpool(
                uploads.store_file, platform.storage, platform.settings, group_id, incoming
            )
            if isinstance(outcome, Upload):
                stored.append(outcome)
            else:
                rejected.append(outcome)
    except BaseException:
        await run_in_threadpool(uploads.remove_objects, platform.storage, stored)
        raise
    if stored:  # removes the stored objects itself if the rows cannot be written
        with _group_deleted_meanwhile(group_id):
            await run_in_threadpool(uploads.record, session, platform.storage, stored)
    return stored, rejected


async def submit(
    platform: Platform, session: Session, body: AutomaticSubmit | SemiAutomaticSubmit
) -> list[Job]:
    """Plan and queue a submission; its dispatches go to RunPod in the background."""
    with _group_deleted_meanwhile(body.group_id):
        created, dispatch_ids = await run_in_threadpool(
            commit_after, session, lambda: submissions.submit(session, platform.settings, body)
        )
    platform.spawn(dispatch.send_many(platform, dispatch_ids))
    return created


@contextmanager
def _group_deleted_meanwhile(group_id: str) -> Iterator[None]:
    """A 409 instead of a 500 when the group was deleted between our check and our insert
    (the foreign key refuses the rows; nothing was written)."""
    try:
        yield
    except sa.exc.IntegrityError as exc:
        raise Conflict(f"group {group_id} was deleted meanwhile; nothing was saved") from exc


async def cancel(platform: Platform, session: Session, job_id: str) -> None:
    """Cancel a job: its unfinished images fail as "cancelled"; RunPod jobs are cancelled too."""
    runpod_ids = await run_in_threadpool(
        commit_after, session, lambda: jobs.cancel(session, job_id)
    )
    for runpod_id in runpod_ids:
        platform.spawn(dispatch.cancel_quietly(platform, runpod_id))


async def retry(platform: Platform, session: Session, job_id: str) -> None:
    """Queue the job's failed images again."""
    dispatch_ids = await run_in_threadpool(
        commit_after, session, lambda: jobs.retry_failed(session, platform.settings, job_id)
    )
    platform.spawn(dispatch.send_many(platform, dispatch_ids))
