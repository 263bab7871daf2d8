"""Applying what RunPod reports about a dispatch (from the webhook or the poller), with a safety
net for reports that cannot be applied: when finalising raises, the failure is counted on the
dispatch in a fresh transaction, and after `dispatch_max_finish_failures` the dispatch fails
with the error, rather than failing every webhook and every poll for ever."""

import logging
from enum import StrEnum

from sqlmodel import Session

from control_plane import lifecycle
from control_plane.lifecycle import DispatchReport
from control_plane.settings import Settings
from shared.storage import Storage

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    APPLIED = "applied"  # or changed nothing: the dispatch had already ended
    FAILED = "failed"  # could not be applied, too often: the dispatch failed with the error
    TRY_AGAIN = "try again"  # could not be applied; counted, the next report tries again


def apply_report(
    session: Session, settings: Settings, storage: Storage, dispatch_id: str, report: DispatchReport
) -> Outcome:
    """Apply `report` to the dispatch and commit."""
    try:
        lifecycle.finish_dispatch(session, settings, storage, dispatch_id, report)
        session.commit()
        return Outcome.APPLIED
    except Exception as exc:  # unknown trouble: the safety net is the point
        session.rollback()
        log.exception("applying RunPod's report to dispatch %s failed", dispatch_id)
        error = f"{type(exc).__name__}: {exc}"
    ended = lifecycle.note_finish_failure(session, settings, dispatch_id, error)
    session.commit()
    return Outcome.FAILED if ended else Outcome.TRY_AGAIN
