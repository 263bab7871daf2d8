"""Apply a RunPod job's final state to its dispatch, outputs and job — idempotently.

Webhooks can be lost, duplicated, delayed or early, and `/status` polls can race them, so
every path comes here: the dispatch row is locked, and a dispatch already finished is left
alone. A failed dispatch is retried as a new dispatch (its own RunPod job and token) until
`dispatch_max_attempts`, then its unfinished outputs fail with the reason.
"""

import contextlib
import json
import logging
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session, col, func, select, update

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
from control_plane.schemas import RunPodJobState
from control_plane.settings import Settings
from shared.contract import DispatchOutput, ItemResult
from shared.ids import new_token
from shared.storage import Storage, StorageError

log = logging.getLogger(__name__)
UNFINISHED = (OutputStatus.PENDING, OutputStatus.RUNNING)
MAX_ERROR_CHARS = 2_000  # what RunPod and workers send is stored clipped: MySQL TEXT is 64 KB


def clip(text: str | None, limit: int = MAX_ERROR_CHARS) -> str | None:
    """`text` cut to `limit` characters (marked with …), so a column can always hold it."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def apply_state(
    session: Session, settings: Settings, storage: Storage, dispatch_id: str, state: RunPodJobState
) -> list[str]:
    """Finalise from a terminal RunPod state; returns ids of new dispatches to send."""
    dispatch = lock_dispatch(session, dispatch_id)
    if dispatch is None or dispatch.status in TERMINAL_DISPATCH:
        return []
    dispatch.runpod_job_id = dispatch.runpod_job_id or clip(state.id, 80)
    dispatch.runpod_status = clip(state.status, 20)
    dispatch.delay_ms, dispatch.execution_ms = state.delayTime, state.executionTime
    output, problem = _parse_output(state)
    if output is None:
        return fail_dispatch(session, settings, dispatch, problem)
    _apply_results(session, storage, dispatch, output.results)
    dispatch.status = DispatchStatus.COMPLETED
    dispatch.finished_at = dispatch.updated_at = utcnow()
    session.add(dispatch)
    refresh_job(session, dispatch.job_id)
    return []


def _parse_output(state: RunPodJobState) -> tuple[DispatchOutput | None, str]:
    if state.status != "COMPLETED":
        return None, describe_failure(state)
    if not state.output:
        return None, "RunPod reported COMPLETED without output (the worker's result was lost)"
    try:
        return DispatchOutput.model_validate(state.output), ""
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False)
        return None, f"worker output does not match the contract: {problems}"


def describe_failure(state: RunPodJobState) -> str:
    """A person-readable reason from RunPod's status and `error` (a JSON string when raised)."""
    error = state.error
    if isinstance(error, str):
        with contextlib.suppress(ValueError):
            error = json.loads(error)
    if isinstance(error, dict):
        kind, message = error.get("error_type"), error.get("error_message") or error.get("error")
        detail = f"{kind}: {message}" if kind and message else str(message or error)
    else:
        detail = str(error) if error else ""
    default = {
        "TIMED_OUT": "RunPod timed the job out (executionTimeout)",
        "CANCELLED": "the RunPod job was cancelled",
    }.get(state.status, f"RunPod job {state.status}")
    return detail or default


def lock_dispatch(session: Session, dispatch_id: str) -> Dispatch | None:
    """Lock a dispatch's job row, then the dispatch: the one lock order every writer uses
    (cancel and retry lock the job first too), so MySQL never deadlocks them. The job lock
    also serialises finalisers of one job, so its counts come from a stable view."""
    job_id = session.exec(select(Dispatch.job_id).where(col(Dispatch.id) == dispatch_id)).first()
    if job_id is None:
        return None
    session.exec(select(Job.id).where(col(Job.id) == job_id).with_for_update()).first()
    return session.get(Dispatch, dispatch_id, with_for_update=True, populate_existing=True)


def _apply_results(
    session: Session, storage: Storage, dispatch: Dispatch, results: list[ItemResult]
) -> None:
    outputs = {
        output.id: output
        for output in session.exec(
            select(Output).where(
                col(Output.dispatch_id) == dispatch.id, col(Output.status).in_(UNFINISHED)
            )
        ).all()
    }
    now = utcnow()
    for result in results:
        output = outputs.pop(result.output_id, None)
        if output is not None:
            _apply_result(storage, output, result, now)
            session.add(output)
    for output in outputs.values():  # the worker said nothing about these
        _finish(output, OutputStatus.FAILED, "the worker returned no result for this image", now)
        session.add(output)


def _apply_result(storage: Storage, output: Output, result: ItemResult, now: Any) -> None:
    output.provider, output.model = clip(result.provider, 40), clip(result.model, 80)
    output.model_version, output.usage, output.cost_usd = (
        clip(result.model_version, 80),
        result.usage,
        result.cost_usd,
    )
    output.attempts += result.attempts
    output.latency_ms = result.latency_ms
    if result.seed is not None:
        output.seed = result.seed
    if result.status == "succeeded":
        try:
            output.storage_key = storage.key_of(result.output_uri or "")
            output.thumbnail_key = (
                storage.key_of(result.thumbnail_uri) if result.thumbnail_uri else None
            )
        except StorageError as exc:
            _finish(
                output,
                OutputStatus.FAILED,
                f"worker reported an unusable output location: {exc}",
                now,
            )
            return
        output.content_type, output.width, output.height = (
            clip(result.content_type, 64),
            result.width,
            result.height,
        )
        output.bytes, output.sha256 = result.bytes, result.sha256
        _finish(output, OutputStatus.SUCCEEDED, None, now)
    else:
        _finish(output, OutputStatus(result.status), result.error or result.status, now)


def _finish(output: Output, status: OutputStatus, error: str | None, now: Any) -> None:
    output.status, output.error = status, clip(error)
    output.completed_at = output.updated_at = now


def fail_dispatch(
    session: Session, settings: Settings, dispatch: Dispatch, reason: str
) -> list[str]:
    """Mark `dispatch` failed; retry its unfinished outputs in a new dispatch if attempts remain."""
    now = utcnow()
    reason = clip(reason) or "failed"
    dispatch.status, dispatch.error = DispatchStatus.FAILED, reason
    dispatch.finished_at = dispatch.updated_at = now
    session.add(dispatch)
    job = session.get(Job, dispatch.job_id)
    retry = (
        dispatch.attempt < settings.dispatch_max_attempts
        and job is not None
        and job.status != JobStatus.CANCELLED
    )
    unfinished = col(Output.dispatch_id) == dispatch.id, col(Output.status).in_(UNFINISHED)
    new_ids = []
    if retry:
        log.warning(
            "dispatch %s failed (%s); retrying as attempt %d",
            dispatch.id,
            reason,
            dispatch.attempt + 1,
        )
        again = Dispatch(
            job_id=dispatch.job_id, attempt=dispatch.attempt + 1, webhook_token=new_token()
        )
        session.add(again)
        session.flush()
        session.exec(
            update(Output)
            .where(*unfinished)
            .values(dispatch_id=again.id, status=OutputStatus.PENDING, error=reason, updated_at=now)
        )
        new_ids.append(again.id)
    else:
        log.warning("dispatch %s failed for good: %s", dispatch.id, reason)
        session.exec(
            update(Output)
            .where(*unfinished)
            .values(status=OutputStatus.FAILED, error=reason, completed_at=now, updated_at=now)
        )
    refresh_job(session, dispatch.job_id)
    return new_ids


def output_counts(session: Session, condition: Any) -> dict[str, int]:
    """How many outputs matching `condition` are in each status."""
    rows = session.exec(
        select(Output.status, func.count()).where(condition).group_by(col(Output.status))
    ).all()
    return dict(rows)


def refresh_job(session: Session, job_id: str) -> None:
    """Recompute a job's counts and status from its outputs (derived, never incremented)."""
    session.flush()
    job = session.get(Job, job_id)
    if job is None:
        return
    counts = output_counts(session, col(Output.job_id) == job_id)
    job.succeeded = counts.get(OutputStatus.SUCCEEDED, 0)
    job.failed = counts.get(OutputStatus.FAILED, 0)
    job.blocked = counts.get(OutputStatus.BLOCKED, 0)
    job.total = sum(counts.values())
    now = utcnow()
    finished = job.succeeded + job.failed + job.blocked == job.total
    if finished and job.status != JobStatus.CANCELLED:
        job.status = JobStatus.COMPLETED if job.succeeded else JobStatus.FAILED
        job.completed_at = job.completed_at or now
        job.error = None if job.succeeded else _first_error(session, job_id)
    elif not finished and job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
        job.status, job.completed_at = JobStatus.PROCESSING, None  # a retry reopened it
    job.updated_at = now
    session.add(job)


def _first_error(session: Session, job_id: str) -> str | None:
    return session.exec(
        select(Output.error)
        .where(Output.job_id == job_id, sa.not_(col(Output.error).is_(None)))
        .order_by(col(Output.position))
        .limit(1)
    ).first()
