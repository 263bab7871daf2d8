"""The safety net: ask RunPod about dispatches that never reported back; and the batch
lane's clock (`advance_batches`), which queues the polls of Gemini batches and keeps their
jobs' deadlines.

Webhooks are hints; `GET /status` is the authority. Every `reconcile_interval_s` each control
plane polls submitted dispatches that have been quiet for `webhook_grace_s`. A job RunPod no
longer knows counts as lost (retried under the loss budget, not the attempt budget); an
answer that cannot be read counts against the dispatch's `dispatch_max_finish_failures`.
"""

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import col, select

from control_plane import lifecycle
from control_plane.errors import describe_validation
from control_plane.lifecycle import DispatchReport
from control_plane.metrics import RECONCILE_POLLS
from control_plane.models import Dispatch, DispatchStatus, utcnow
from control_plane.platform import Platform
from control_plane.runpod.client import RunPodError, UnreadableAnswer
from control_plane.runpod.finisher import apply_report, count_failure
from control_plane.runpod.sender import send_due
from control_plane.runpod.wire import RunPodJobState, lost, report_of

log = logging.getLogger(__name__)
BATCH = 200


async def poll_quiet(platform: Platform) -> int:
    """Poll every submitted dispatch quiet for `webhook_grace_s` (one pass); returns how many."""
    due = await asyncio.to_thread(_quiet, platform)
    await asyncio.gather(*(poll(platform, d, r) for d, r in due))
    return len(due)


async def reconcile_once(platform: Platform) -> tuple[int, int]:
    """One pass of both safety nets; returns (dispatches sent or retried, dispatches polled)."""
    sent = await send_due(platform)
    return sent, await poll_quiet(platform)


async def advance_batches(platform: Platform) -> int:
    """Take the due steps of the batch lane (one pass): queue the polls of batches waiting at
    Google, and send online the images of batches past their job's deadline
    (`lifecycle.advance_batch`); returns how many dispatches moved."""
    return await asyncio.to_thread(_advance_batches, platform)


def _advance_batches(platform: Platform) -> int:
    with platform.session() as session:
        due = lifecycle.due_batches(session, utcnow(), BATCH)
    moved = 0
    for dispatch_id in due:
        with platform.session_scope() as session:
            moved += lifecycle.advance_batch(session, platform.settings, dispatch_id)
    return moved


def _quiet(platform: Platform) -> list[tuple[str, str]]:
    quiet_since = utcnow() - timedelta(seconds=platform.settings.webhook_grace_s)
    with platform.session() as session:
        rows = session.exec(
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
    return [(dispatch_id, runpod_id) for dispatch_id, runpod_id in rows if runpod_id]


async def poll(platform: Platform, dispatch_id: str, runpod_job_id: str) -> None:
    try:
        reply = await platform.runpod.status(runpod_job_id)
    except UnreadableAnswer as exc:
        RECONCILE_POLLS.labels("unreadable").inc()
        await asyncio.to_thread(_unreadable, platform, dispatch_id, str(exc))
        return
    except RunPodError as exc:
        RECONCILE_POLLS.labels("unavailable").inc()
        log.warning("status of %s unavailable: %s", runpod_job_id, exc)
        return
    if reply is None:
        RECONCILE_POLLS.labels("lost").inc()
        await asyncio.to_thread(_finish, platform, dispatch_id, lambda: lost(runpod_job_id))
        return
    try:
        state = RunPodJobState.model_validate(reply)
    except ValidationError as exc:
        problems = describe_validation(exc.errors(include_url=False, include_input=False))
        RECONCILE_POLLS.labels("unreadable").inc()
        await asyncio.to_thread(_unreadable, platform, dispatch_id, problems)
        return
    RECONCILE_POLLS.labels("final" if state.final else "running").inc()
    if state.final:
        await asyncio.to_thread(_finish, platform, dispatch_id, lambda: report_of(state))
    else:
        await asyncio.to_thread(_note, platform, dispatch_id, state.status)


def _finish(platform: Platform, dispatch_id: str, read: Callable[[], DispatchReport]) -> None:
    with platform.session() as session:
        apply_report(session, platform.settings, platform.storage, dispatch_id, read)


def _unreadable(platform: Platform, dispatch_id: str, problem: str) -> None:
    """An answer of `/status` that cannot be read counts like a report that cannot be applied:
    after `dispatch_max_finish_failures` passes the dispatch fails, instead of every pass
    polling it for ever."""
    log.warning("RunPod's /status answer for dispatch %s is unreadable: %s", dispatch_id, problem)
    reason = f"RunPod's /status answer is unreadable: {problem}"
    with platform.session() as session:
        count_failure(session, platform.settings, dispatch_id, reason)
    _note(platform, dispatch_id, None)


def _note(platform: Platform, dispatch_id: str, runpod_status: str | None) -> None:
    with platform.session_scope() as session:
        lifecycle.note_polled(session, dispatch_id, runpod_status)
