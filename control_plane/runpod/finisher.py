"""Applying what RunPod reports about a dispatch (from the webhook or the poller), with a safety
net for reports that cannot be applied: when reading or finalising the report raises, the
failure is counted on the dispatch in a fresh transaction, and after
`dispatch_max_finish_failures` the dispatch fails with the error, rather than failing every
webhook and every poll for ever. A passing database trouble (a lock, a deadlock, a lost
connection) is not counted: the report is simply tried again."""

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum

from sqlmodel import Session

from control_plane import lifecycle
from control_plane.db import is_transient
from control_plane.lifecycle import DispatchReport, FinishFailure
from control_plane.settings import Settings
from shared.storage import Storage

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    APPLIED = "applied"  # or changed nothing: the dispatch had already ended
    FAILED = "failed"  # could not be applied, too often: the dispatch failed with the error
    TRY_AGAIN = "try again"  # could not be applied yet; the next report tries again


OUTCOME_OF = {
    FinishFailure.COUNTED: Outcome.TRY_AGAIN,
    FinishFailure.FAILED: Outcome.FAILED,
    FinishFailure.ALREADY_ENDED: Outcome.APPLIED,
}


def apply_report(
    session: Session,
    settings: Settings,
    storage: Storage,
    dispatch_id: str,
    read: Callable[[], DispatchReport],
) -> Outcome:
    """Apply the report `read` gives (read inside the safety net) to the dispatch and commit."""
    try:
        lifecycle.finish_dispatch(session, settings, storage, dispatch_id, read())
        session.commit()
        return Outcome.APPLIED
    except Exception as exc:  # unknown trouble: the safety net is the point
        session.rollback()
        if is_transient(exc):
            log.warning("applying RunPod's report to dispatch %s: try again (%s)", dispatch_id, exc)
            return Outcome.TRY_AGAIN
        log.exception("applying RunPod's report to dispatch %s failed", dispatch_id)
        reason = f"could not apply RunPod's report: {type(exc).__name__}: {exc}"
    return count_failure(session, settings, dispatch_id, reason)


def apply_reports(
    session: Session, settings: Settings, storage: Storage, reports: Mapping[str, DispatchReport]
) -> dict[str, Outcome]:
    """Apply several dispatches' reports, as many as can be together in one transaction
    (`lifecycle.finish_dispatches`), the rest with `apply_report` one by one; the outcome of
    each. Should the joint transaction fail, each report is applied alone, so that one that
    cannot be applied is counted on its own dispatch and holds back no other."""
    alone: Sequence[str] = list(reports)
    if len(reports) > 1:
        try:
            alone = lifecycle.finish_dispatches(session, storage, reports)
            session.commit()
        except Exception as exc:  # the reports are applied one by one instead
            session.rollback()
            log.warning("applying %d reports together failed (%s): one by one", len(reports), exc)
            alone = list(reports)
    outcomes = dict.fromkeys(reports, Outcome.APPLIED)
    for dispatch_id in alone:
        read = functools.partial(reports.__getitem__, dispatch_id)
        outcomes[dispatch_id] = apply_report(session, settings, storage, dispatch_id, read)
    return outcomes


def count_failure(session: Session, settings: Settings, dispatch_id: str, reason: str) -> Outcome:
    """Count a report of the dispatch that could not be applied, for `reason`, and commit."""
    counted = lifecycle.note_finish_failure(session, settings, dispatch_id, reason)
    session.commit()
    return OUTCOME_OF[counted]
