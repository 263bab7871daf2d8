"""Job operations beyond submission: cancel and retry."""

import logging

from sqlmodel import Session, col, select, update

from control_plane.errors import Conflict, NotFound
from control_plane.models import (
    TERMINAL_DISPATCH,
    Dispatch,
    DispatchStatus,
    Job,
    JobStatus,
    Output,
    OutputStatus,
    utcnow,
)
from control_plane.services.finalise import refresh_job
from control_plane.settings import Settings
from shared.ids import new_token

log = logging.getLogger(__name__)


def get_job(session: Session, job_id: str, *, lock: bool = False) -> Job:
    job = session.get(Job, job_id, with_for_update=lock)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def outputs_of(session: Session, job_id: str) -> list[Output]:
    """The job's images, in order."""
    return list(
        session.exec(
            select(Output).where(Output.job_id == job_id).order_by(col(Output.position))
        ).all()
    )


def cancel(session: Session, job_id: str) -> list[str]:
    """Stop a job: unfinished images fail as "cancelled". Returns RunPod job ids to cancel."""
    job = get_job(session, job_id, lock=True)
    if job.status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
        raise Conflict(f"job {job_id} is already {job.status}")
    now = utcnow()
    live = session.exec(
        select(Dispatch).where(
            col(Dispatch.job_id) == job_id, col(Dispatch.status).not_in(TERMINAL_DISPATCH)
        )
    ).all()
    for dispatch in live:
        dispatch.status, dispatch.error = DispatchStatus.FAILED, "cancelled by user"
        dispatch.finished_at = dispatch.updated_at = now
        session.add(dispatch)
    session.exec(
        update(Output)
        .where(
            col(Output.job_id) == job_id,
            col(Output.status).in_((OutputStatus.PENDING, OutputStatus.RUNNING)),
        )
        .values(
            status=OutputStatus.FAILED, error="cancelled by user", completed_at=now, updated_at=now
        )
    )
    job.status, job.completed_at, job.error = JobStatus.CANCELLED, now, "cancelled by user"
    session.add(job)
    refresh_job(session, job_id)
    return [d.runpod_job_id for d in live if d.runpod_job_id]


def retry_failed(session: Session, settings: Settings, job_id: str) -> list[str]:
    """Queue the job's failed images again (blocked ones stay blocked). Returns dispatch ids."""
    job = get_job(session, job_id, lock=True)
    failed = session.exec(
        select(Output)
        .where(Output.job_id == job_id, col(Output.status) == OutputStatus.FAILED)
        .order_by(col(Output.position))
    ).all()
    if not failed:
        raise Conflict(f"job {job_id} has no failed images to retry")
    chunk = settings.dispatch_chunk_size if job.mode == "automatic" else len(failed)
    now = utcnow()
    dispatch_ids = []
    for start in range(0, len(failed), chunk):
        dispatch = Dispatch(job_id=job_id, webhook_token=new_token())
        session.add(dispatch)
        dispatch_ids.append(dispatch.id)
        for output in failed[start : start + chunk]:
            output.dispatch_id, output.status = dispatch.id, OutputStatus.PENDING
            output.error = output.completed_at = None
            output.updated_at = now
            session.add(output)
    job.status, job.completed_at, job.error = JobStatus.PROCESSING, None, None
    session.add(job)
    refresh_job(session, job_id)
    return dispatch_ids
