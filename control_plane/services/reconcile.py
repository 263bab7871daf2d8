"""The safety net: send what was never sent, and ask RunPod about what never reported back.

Webhooks are hints; `GET /status` is the authority. Every `reconcile_interval_s` each
control plane sends pending (or stale-claimed) dispatches, and polls submitted dispatches
that have been quiet for `webhook_grace_s`. A job RunPod no longer knows counts as lost.
"""

import asyncio
import logging
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import col, select

from control_plane.db import session_scope
from control_plane.models import Dispatch, DispatchStatus, utcnow
from control_plane.runpod_client import RunPodError
from control_plane.schemas import RunPodJobState
from control_plane.services import dispatch
from control_plane.services.finalise import apply_state
from control_plane.services.platform import Platform

log = logging.getLogger(__name__)
RUNPOD_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
BATCH = 200


def LOST(runpod_job_id: str) -> RunPodJobState:
    return RunPodJobState(
        id=runpod_job_id, status="FAILED", error="RunPod no longer knows this job (expired or lost)"
    )


def _due(platform: Platform) -> tuple[list[str], list[tuple[str, str]]]:
    now = utcnow()
    quiet_since = now - timedelta(seconds=platform.settings.webhook_grace_s)
    with session_scope(platform.engine) as session:
        to_send = session.exec(
            select(Dispatch.id)
            .where(
                sa.or_(
                    col(Dispatch.status) == DispatchStatus.PENDING,
                    sa.and_(
                        col(Dispatch.status) == DispatchStatus.SUBMITTING,
                        col(Dispatch.updated_at) < now - dispatch.STALE_CLAIM,
                    ),
                )
            )
            .order_by(col(Dispatch.created_at))
            .limit(BATCH)
        ).all()
        to_poll = session.exec(
            select(Dispatch.id, Dispatch.runpod_job_id)
            .where(
                col(Dispatch.status) == DispatchStatus.SUBMITTED,
                col(Dispatch.submitted_at) < quiet_since,
                sa.or_(
                    col(Dispatch.last_polled_at).is_(None),
                    col(Dispatch.last_polled_at) < quiet_since,
                ),
            )
            .order_by(col(Dispatch.submitted_at))
            .limit(BATCH)
        ).all()
    return list(to_send), [(d, r) for d, r in to_poll if r]


def _apply(platform: Platform, dispatch_id: str, state: RunPodJobState | None) -> list[str]:
    with session_scope(platform.engine) as session:
        if state is None or state.status not in RUNPOD_TERMINAL:
            row = session.get(Dispatch, dispatch_id)
            if row is not None:
                row.last_polled_at = utcnow()
                row.runpod_status = state.status if state else row.runpod_status
                session.add(row)
            return []
        return apply_state(session, platform.settings, platform.storage, dispatch_id, state)


async def poll(platform: Platform, dispatch_id: str, runpod_job_id: str) -> None:
    try:
        reply = await platform.runpod.status(runpod_job_id)
    except RunPodError as exc:
        log.warning("status of %s unavailable: %s", runpod_job_id, exc)
        return
    state = RunPodJobState.model_validate(reply) if reply is not None else LOST(runpod_job_id)
    retries = await asyncio.to_thread(_apply, platform, dispatch_id, state)
    await dispatch.send_many(platform, retries)


async def reconcile_once(platform: Platform) -> tuple[int, int]:
    """One pass; returns (dispatches sent or retried, dispatches polled)."""
    to_send, to_poll = await asyncio.to_thread(_due, platform)
    await dispatch.send_many(platform, to_send)
    await asyncio.gather(*(poll(platform, d, r) for d, r in to_poll))
    return len(to_send), len(to_poll)


async def reconcile_forever(platform: Platform) -> None:
    while True:
        try:
            await reconcile_once(platform)
        except Exception:
            log.exception("reconcile pass failed; trying again next interval")
        await asyncio.sleep(platform.settings.reconcile_interval_s)
