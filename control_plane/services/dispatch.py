"""Hand dispatches to RunPod: claim, build the input, POST /run, record the outcome.

A dispatch is claimed (pending → submitting) by one sender at a time; a claim older than
STALE_CLAIM is taken over, so a crash between claim and record never strands a chunk.
RunPod's webhook may arrive before /run has returned: it is routed by the dispatch id in
its URL, so the order does not matter.
"""

import asyncio
import logging
from datetime import timedelta
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlmodel import Session, col, select, update

from control_plane.db import session_scope
from control_plane.models import (
    Dispatch,
    DispatchStatus,
    Job,
    JobStatus,
    Output,
    OutputStatus,
    Upload,
    utcnow,
)
from control_plane.runpod_client import RunPodError
from control_plane.services.finalise import clip, fail_dispatch, lock_dispatch
from control_plane.services.platform import Platform
from shared.contract import DispatchInput, ImageParams, WorkItem
from shared.storage import Storage

log = logging.getLogger(__name__)
STALE_CLAIM = timedelta(minutes=2)
SEND_CONCURRENCY = 8


def output_key(output: Output) -> str:
    return f"groups/{output.group_id}/outputs/{output.job_id}/{output.id}"


def webhook_url(public_url: str, dispatch: Dispatch) -> str:
    query = urlencode({"dispatch": dispatch.id, "token": dispatch.webhook_token})
    return f"{public_url.rstrip('/')}/api/webhook/runpod?{query}"


def claim(session: Session, dispatch_id: str) -> bool:
    now = utcnow()
    claimable = sa.or_(
        col(Dispatch.status) == DispatchStatus.PENDING,
        sa.and_(
            col(Dispatch.status) == DispatchStatus.SUBMITTING,
            col(Dispatch.updated_at) < now - STALE_CLAIM,
        ),
    )
    result = session.exec(
        update(Dispatch)
        .where(col(Dispatch.id) == dispatch_id, claimable)
        .values(
            status=DispatchStatus.SUBMITTING,
            updated_at=now,
            submit_attempts=Dispatch.submit_attempts + 1,
        )
    )
    return bool(result.rowcount)


def build_input(session: Session, storage: Storage, dispatch: Dispatch) -> DispatchInput:
    outputs = session.exec(
        select(Output).where(Output.dispatch_id == dispatch.id).order_by(col(Output.position))
    ).all()
    reference_ids = {ref for output in outputs for ref in output.reference_ids}
    keys = dict(
        session.exec(
            select(Upload.id, Upload.storage_key).where(col(Upload.id).in_(reference_ids))
        ).all()
    )
    items = [
        WorkItem(
            output_id=output.id,
            prompt=output.prompt,
            reference_uris=[storage.uri(keys[ref]) for ref in output.reference_ids],
            params=ImageParams(seed=output.seed, **output.params),
            output_key=output_key(output),
        )
        for output in outputs
        if output.status not in (OutputStatus.SUCCEEDED, OutputStatus.BLOCKED)
    ]
    return DispatchInput(dispatch_id=dispatch.id, job_id=dispatch.job_id, items=items)


def _prepare(platform: Platform, dispatch_id: str) -> tuple[DispatchInput, str] | None:
    with session_scope(platform.engine) as session:
        if not claim(session, dispatch_id):
            return None
        dispatch = session.get(Dispatch, dispatch_id)
        assert dispatch is not None
        return build_input(session, platform.storage, dispatch), webhook_url(
            platform.settings.public_url, dispatch
        )


def _record_submitted(platform: Platform, dispatch_id: str, runpod_job_id: str) -> bool:
    """Record RunPod's job id; False if nobody wants that run any more (the dispatch failed
    meanwhile, e.g. its job was cancelled while /run was in flight), so it gets cancelled."""
    with session_scope(platform.engine) as session:
        dispatch = lock_dispatch(session, dispatch_id)
        if dispatch is None:
            return False
        if dispatch.status == DispatchStatus.FAILED:
            dispatch.runpod_job_id = dispatch.runpod_job_id or clip(runpod_job_id, 80)
            session.add(dispatch)
            return False
        dispatch.runpod_job_id = dispatch.runpod_job_id or clip(runpod_job_id, 80)
        if (
            dispatch.status == DispatchStatus.SUBMITTING
        ):  # the webhook may already have finalised it
            now = utcnow()
            dispatch.status = DispatchStatus.SUBMITTED
            dispatch.submitted_at = dispatch.updated_at = now
            session.exec(
                update(Output)
                .where(
                    col(Output.dispatch_id) == dispatch_id,
                    col(Output.status) == OutputStatus.PENDING,
                )
                .values(status=OutputStatus.RUNNING, updated_at=now)
            )
            session.exec(
                update(Job)
                .where(col(Job.id) == dispatch.job_id, col(Job.status) == JobStatus.QUEUED)
                .values(status=JobStatus.PROCESSING, updated_at=now)
            )
        session.add(dispatch)
        return True


def _record_send_failure(platform: Platform, dispatch_id: str, error: RunPodError) -> None:
    with session_scope(platform.engine) as session:
        dispatch = lock_dispatch(session, dispatch_id)
        if dispatch is None or dispatch.status != DispatchStatus.SUBMITTING:
            return
        give_up = dispatch.submit_attempts >= platform.settings.dispatch_submit_attempts
        log.warning(
            "dispatch %s not sent (attempt %d): %s", dispatch_id, dispatch.submit_attempts, error
        )
        if give_up:
            fail_dispatch(
                session, platform.settings, dispatch, f"could not submit to RunPod: {error}"
            )
        else:
            dispatch.status = DispatchStatus.PENDING
            dispatch.error = str(error)
            dispatch.updated_at = utcnow()
            session.add(dispatch)


async def send(platform: Platform, dispatch_id: str) -> None:
    prepared = await asyncio.to_thread(_prepare, platform, dispatch_id)
    if prepared is None:
        return
    dispatch_input, webhook = prepared
    settings = platform.settings
    policy = {
        "executionTimeout": settings.dispatch_execution_timeout_s * 1000,
        "ttl": settings.dispatch_ttl_s * 1000,
    }
    try:
        runpod_job_id = await platform.runpod.run(
            dispatch_input.model_dump(mode="json"), webhook, policy
        )
    except RunPodError as error:
        await asyncio.to_thread(_record_send_failure, platform, dispatch_id, error)
        return
    if not await asyncio.to_thread(_record_submitted, platform, dispatch_id, runpod_job_id):
        await cancel_quietly(platform, runpod_job_id)


async def cancel_quietly(platform: Platform, runpod_job_id: str) -> None:
    """Ask RunPod to cancel a job; a failure is only logged (the job may be finished)."""
    try:
        await platform.runpod.cancel(runpod_job_id)
    except RunPodError as exc:
        log.info("RunPod cancel of %s: %s", runpod_job_id, exc)


async def send_many(platform: Platform, dispatch_ids: list[str]) -> None:
    limit = asyncio.Semaphore(SEND_CONCURRENCY)

    async def send_one(dispatch_id: str) -> None:
        async with limit:
            await send(platform, dispatch_id)

    await asyncio.gather(*(send_one(dispatch_id) for dispatch_id in dispatch_ids))
