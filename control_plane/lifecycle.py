"""Every status change of jobs, dispatches and outputs, and the event each one writes.

    job       queued → processing → completed | failed | cancelled   (a retry reopens it)
    dispatch  pending → submitting → submitted → completed | failed
              a batch's: … submitted → batched → pending (its next task) … → completed | failed
    output    pending → running → succeeded | failed | blocked      (a retry: failed → pending)

Rules kept here and nowhere else:
- Lock order: dispatch rows, then their job's row (`lock_dispatch`; a cancel locks the
  job's live dispatches before the job, `lock_job_and_live_dispatches`), so MySQL never
  deadlocks two writers. The job's lock serialises what moves its counters and status, so
  they come from a stable view; the dispatch's lock serialises what ends its outputs. A
  finaliser takes the job's lock last (`_count_on_job`): its outputs' UPDATE and events are
  written under the dispatch's lock alone, and the job's row, which every finaliser of the
  job queues on, is held for its counters' UPDATE and the commit. On SQLite, which has no
  row locks, the same calls take the database's write lock (`control_plane/db.py`
  `lock_row`). A dispatch's unfinished outputs change only under its lock, so a worker's
  results are checked against them under it (`plan_results`), contended only by another
  report of the same dispatch.
- A job's counts move with its outputs, in the transaction that moves them, under the job's
  lock, once per change, one way (`_move_counts`: one UPDATE of the job's row; a dispatch's
  outputs end in one UPDATE, their events in one insert), so finishing a dispatch costs the
  same in a job of 20 images or 20,000, and in a table of 1.5 M outputs; its status follows
  from them (`refresh_job`).
- A dispatch that ended is never changed again: webhooks can be lost, duplicated, delayed or
  early, and `/status` polls race them, so finishing twice is a no-op.
- The worker's progress (results posted while its dispatch runs, `apply_progress`) ends
  images, never their dispatch: an image keeps its first result, and RunPod's report ends
  the dispatch, applying only what is still unfinished.
- A failed dispatch is retried as a new dispatch (its own RunPod job and token) while its
  chunk's budget allows, then its unfinished outputs fail with the reason. A dispatch RunPod
  lost (never had, or no longer knows) is not the worker's failure: losses have their own
  budget (`dispatch_max_losses`), failures theirs (`dispatch_max_attempts`).
- A report that cannot be applied (finalising raises, or RunPod's answer cannot be read) is
  counted on its dispatch (`note_finish_failure`); after `dispatch_max_finish_failures` the
  dispatch fails instead. A claim whose sender stopped on the dispatch's last send fails it
  rather than sending once more (`claim`).
- New dispatches are only ever left `pending`; the sender is woken when the transaction that
  made them commits (`control_plane/runpod/sender.py` is the only caller of RunPod's `/run`),
  and when a dispatch ends: that frees room under the in-flight caps for waiting work.
- Each transition writes its event (`control_plane/events.py`) in the same transaction.
  Outputs write events when they end or are retried; their pending ↔ running moves follow
  their dispatch's events.

Functions here never commit: the caller's transaction holds the change and its events.
"""

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel, col, func, select, update

from control_plane.background import Service
from control_plane.db import (
    insert_many,
    lock_row,
    lock_rows,
    update_rows,
    wake_after_commit,
    write_loaded,
)
from control_plane.errors import Conflict, NotFound
from control_plane.events import emit, emit_many, event_row
from control_plane.models import (
    ACTIVE_JOB,
    DISPATCHES,
    JOBS,
    OUTPUTS,
    TERMINAL_DISPATCH,
    TERMINAL_OUTPUT,
    Dispatch,
    DispatchStatus,
    EventKind,
    Group,
    Job,
    JobMode,
    JobStatus,
    Lane,
    Output,
    OutputKind,
    OutputStatus,
    clip,
    utcnow,
)
from control_plane.results import Checked, ResultRejected, TextAnswer
from control_plane.results import check as check_result
from control_plane.schemas import BATCH_DEADLINE_S
from control_plane.services import pricing
from control_plane.settings import Settings
from shared.contract import BatchInfo, BatchState, DispatchTask, ItemResult, ResultStatus
from shared.ids import new_id, new_ids, new_token
from shared.storage import Storage

log = logging.getLogger(__name__)
UNFINISHED = (OutputStatus.PENDING, OutputStatus.RUNNING)
ENDED_JOB = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
SET_MODES = (JobMode.SEMI_AUTOMATIC, JobMode.VARIATION)  # sent as one dispatch, retries too
CANCELLED_BY_USER = "cancelled by user"
NO_RESULT = "the worker returned no result for this image"
RESULT_REJECTED = "worker result rejected"
OUTPUT_EVENT = {
    OutputStatus.SUCCEEDED: EventKind.OUTPUT_SUCCEEDED,
    OutputStatus.FAILED: EventKind.OUTPUT_FAILED,
    OutputStatus.BLOCKED: EventKind.OUTPUT_BLOCKED,
}


@dataclass(frozen=True)
class UnreadableResult:
    """A worker's result for `output_id` that does not match the contract: `reason` says how."""

    output_id: str
    reason: str


@dataclass(frozen=True)
class DispatchReport:
    """What became of a dispatch's RunPod job, in pixelfleet's terms: the worker's results,
    or why there are none (`control_plane/runpod/wire.py` reads RunPod's answers into it)."""

    runpod_job_id: str | None
    runpod_status: str | None
    results: list[ItemResult | UnreadableResult] | None
    failure: str = ""
    lost: bool = False  # RunPod lost the job: the loss budget applies, not the failure one
    delay_ms: int | None = None
    execution_ms: int | None = None
    # a batch_submit, batch_poll or batch_cancel task's answer (`results`: the items a submit
    # left out); None for generate and batch_collect, whose results are the images'
    batch_task: DispatchTask | None = None
    batch: BatchInfo | None = None


def _transition(dispatch: Dispatch, before: str | None, after: DispatchStatus) -> None:
    """Log one dispatch transition (one structured line with `PIXELFLEET_LOG_FORMAT=json`)."""
    log.info(
        "dispatch %s of job %s: %s → %s",
        dispatch.id,
        dispatch.job_id,
        before or "new",
        after,
        extra={
            "job_id": dispatch.job_id,
            "dispatch_id": dispatch.id,
            "from_status": before,
            "to_status": str(after),
        },
    )


# -- locks --------------------------------------------------------------------------------


def lock_job(session: Session, job_id: str) -> Job:
    job = lock_row(session, Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def lock_dispatch(session: Session, dispatch_id: str) -> Dispatch | None:
    """Lock a dispatch's row, then its job's (the one lock order every writer uses)."""
    locked = lock_dispatch_and_job(session, dispatch_id)
    return locked[0] if locked else None


def lock_dispatch_and_job(session: Session, dispatch_id: str) -> tuple[Dispatch, Job] | None:
    """`lock_dispatch`, the job returned too: hold it while its counters are used (the session
    keeps unchanged rows only while something else refers to them). The job's counters are
    read and written under its lock: `lock_row` loads them fresh with it."""
    dispatch = lock_row(session, Dispatch, dispatch_id)
    if dispatch is None:
        return None
    job = lock_row(session, Job, dispatch.job_id)
    return (dispatch, job) if job is not None else None


def lock_job_and_live_dispatches(session: Session, job_id: str) -> tuple[Job, list[Dispatch]]:
    """Lock the job's dispatches that have not ended, then the job (the lock order), and
    return them: a finaliser holding one of them finishes first, and its dispatch is then
    seen ended. A batch's cancel is left out: it holds no image. Dispatches are made under
    the job's lock, so they are read again once it is held: one made meanwhile (a retry's)
    is locked out of order, which MySQL may answer with a deadlock, tried again."""
    if session.get_bind().dialect.name == "sqlite":
        lock_job(session, job_id)  # the database's write lock before anything is read
    live = (
        select(Dispatch)
        .where(
            col(Dispatch.job_id) == job_id,
            col(Dispatch.status).not_in(TERMINAL_DISPATCH),
            col(Dispatch.task) != DispatchTask.BATCH_CANCEL,
        )
        .order_by(col(Dispatch.id))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    session.exec(live).all()
    job = lock_job(session, job_id)
    return job, list(session.exec(live).all())


# -- creating work ------------------------------------------------------------------------


OutputRow = dict[str, Any]  # a new outputs row by column (`submissions.new_output` makes them)
# What a new row holds in the columns its maker leaves out.
_NEW_OUTPUT: dict[str, Any] = {column.name: None for column in OUTPUTS.columns} | {
    "status": OutputStatus.PENDING,
    "kind": OutputKind.IMAGE,
    "reference_ids": [],
    "params": {},
    "attempts": 0,
}
_NEW_DISPATCH: dict[str, Any] = {column.name: None for column in DISPATCHES.columns} | {
    "status": DispatchStatus.PENDING,
    "attempt": 1,
    "losses": 0,
    "submit_attempts": 0,
    "finish_failures": 0,
    "task": DispatchTask.GENERATE,
    "batch_failures": 0,
}
# Per image in a `/run` body and in the webhook echoing it, besides its prompts: ids, the
# output key, parameters, reference URIs, and the image's result (`dispatch_chunk`).
ITEM_BYTES = 1_024
REFERENCE_BYTES = 256
INSERT_BATCH = 2_000  # output rows per INSERT statement


def dispatch_chunk(
    settings: Settings, rows: Sequence[OutputRow | Output], lane: str | None = None
) -> int:
    """How many images each dispatch of a new job (not a set) carries: at least
    `dispatch_chunk_size`, more as the job grows so it fits in `dispatch_max_per_job`
    dispatches, but at most `dispatch_chunk_max` and what keeps a `/run` body (and the
    webhook echoing it) within `dispatch_max_body_bytes`. In the batch lane a dispatch is
    one Gemini batch, which nothing gains by being small: each carries that most."""
    spread = -(-len(rows) // settings.dispatch_max_per_job)
    fits = settings.dispatch_max_body_bytes // max(_item_bytes(rows), 1)
    cap = max(min(settings.dispatch_chunk_max, fits), 1)
    if lane == Lane.BATCH:
        return cap
    return min(max(settings.dispatch_chunk_size, spread), cap)


def _item_bytes(rows: Sequence[OutputRow | Output]) -> int:
    """The most bytes one of `rows` may take in a `/run` body (its prompts JSON-escaped)."""
    sized: dict[tuple[str, str, int], int] = {}
    for row in rows:
        prompt, negative, references = _sized_fields(row)
        key = (prompt, negative, references)
        if key not in sized:
            texts = len(json.dumps(prompt)) + len(json.dumps(negative))
            sized[key] = ITEM_BYTES + texts + REFERENCE_BYTES * references
    return max(sized.values(), default=ITEM_BYTES)


def _sized_fields(row: OutputRow | Output) -> tuple[str, str, int]:
    if isinstance(row, Output):
        row = {"prompt": row.prompt, "params": row.params, "reference_ids": row.reference_ids}
    negative = (row.get("params") or {}).get("negative_prompt") or ""
    return row["prompt"], str(negative), len(row.get("reference_ids") or [])


def add_job(
    session: Session, job: Job, outputs: Sequence[OutputRow | Output], chunk_size: int
) -> None:
    """Write a new job and its outputs (rows, or Output objects never added to a session),
    queued in dispatches of `chunk_size` outputs; the job belongs to its group's owner.

    Outputs and dispatches are inserted in bulk, a statement each, not an ORM object per
    row; a dry run (`pricing.estimate`) only prices them."""
    group = session.get(Group, job.group_id)
    if group is None:
        raise NotFound(f"group {job.group_id} does not exist")
    now = utcnow()
    job.user_id = group.user_id
    job.total, job.succeeded, job.failed, job.blocked = len(outputs), 0, 0, 0
    job.lane = Lane(job.config.get("lane") or Lane.ONLINE)
    if job.lane == Lane.BATCH:
        deadline_s = job.config.get("batch_deadline_s") or BATCH_DEADLINE_S
        job.batch_deadline_at = now + timedelta(seconds=deadline_s)
    job.estimate_usd = pricing.price_of_outputs((_priced(o) for o in outputs), job.lane)
    job.cost_usd = 0.0
    session.add(job)
    session.flush()  # the rows below reference it; no ORM relationships order the inserts
    emit(session, EventKind.JOB_QUEUED, job_id=job.id, total=len(outputs))
    task = DispatchTask.BATCH_SUBMIT if job.lane == Lane.BATCH else DispatchTask.GENERATE
    dispatch_ids = _new_dispatches(session, job.id, -(-len(outputs) // chunk_size), now, task)
    if pricing.is_dry_run(session):
        return
    for start in range(0, len(outputs), INSERT_BATCH):  # bounded memory, whatever the job
        some = outputs[start : start + INSERT_BATCH]
        batch = [
            _new_output_row(output, job.id, now, output_id)
            | {"dispatch_id": dispatch_ids[(start + index) // chunk_size]}
            for index, (output, output_id) in enumerate(
                zip(some, new_ids("out", len(some)), strict=True)
            )
        ]
        insert_many(session, OUTPUTS, batch)


def _priced(output: OutputRow | Output) -> tuple[str, str | None, str | None]:
    """What an output's price depends on: kind, model, image size."""
    if isinstance(output, Output):
        return output.kind, output.model, output.params.get("image_size")
    params = output.get("params") or {}
    return output.get("kind", OutputKind.IMAGE), output.get("model"), params.get("image_size")


def _new_output_row(
    output: OutputRow | Output, job_id: str, now: datetime, new_output_id: str
) -> OutputRow:
    """The whole row of a new output; its id `new_output_id` unless it has one."""
    given = (
        {column.name: getattr(output, column.name) for column in OUTPUTS.columns}
        if isinstance(output, Output)
        else output
    )
    fresh = {"id": new_output_id, "created_at": now, "updated_at": now}
    return {**_NEW_OUTPUT, **fresh, **given, "job_id": job_id}


def _queue(session: Session, job_id: str, outputs: Sequence[Output], chunk_size: int) -> None:
    """Queue `outputs` (rows of the session) again, in new dispatches of `chunk_size`."""
    dispatch_ids = _new_dispatches(session, job_id, -(-len(outputs) // chunk_size), utcnow())
    for index, output in enumerate(outputs):
        output.dispatch_id = dispatch_ids[index // chunk_size]
        session.add(output)


def _new_dispatches(
    session: Session,
    job_id: str,
    count: int,
    now: datetime,
    task: DispatchTask = DispatchTask.GENERATE,
) -> list[str]:
    """Insert `count` pending dispatches of the job in one statement (none in a dry run),
    each to run `task` first; their ids, in the order they are sent."""
    # A microsecond apart: the queue sends a user's dispatches by (created_at, id), and ids
    # made within one millisecond do not sort by creation.
    rows = [
        _NEW_DISPATCH
        | {
            "id": new_id("dsp"),
            "job_id": job_id,
            "task": task,
            "webhook_token": new_token(),
            "created_at": now + timedelta(microseconds=index),
            "updated_at": now + timedelta(microseconds=index),
        }
        for index in range(count)
    ]
    if rows and not pricing.is_dry_run(session):
        insert_many(session, DISPATCHES, rows)
    for row in rows:
        _log_queued(job_id, row["id"])
        emit(session, EventKind.DISPATCH_QUEUED, job_id=job_id, dispatch_id=row["id"], attempt=1)
    if rows:
        wake_after_commit(session, Service.SENDER)
    return [row["id"] for row in rows]


def _log_queued(job_id: str, dispatch_id: str) -> None:
    """`_transition`'s line for a dispatch made in bulk (no Dispatch object)."""
    log.info(
        "dispatch %s of job %s: %s → %s",
        dispatch_id,
        job_id,
        "new",
        DispatchStatus.PENDING,
        extra={
            "job_id": job_id,
            "dispatch_id": dispatch_id,
            "from_status": None,
            "to_status": str(DispatchStatus.PENDING),
        },
    )


def _new_dispatch(session: Session, job_id: str, attempt: int = 1, losses: int = 0) -> Dispatch:
    dispatch = Dispatch(job_id=job_id, attempt=attempt, losses=losses, webhook_token=new_token())
    session.add(dispatch)
    _transition(dispatch, None, DispatchStatus.PENDING)
    data: dict[str, Any] = {"attempt": attempt, **({"losses": losses} if losses else {})}
    emit(session, EventKind.DISPATCH_QUEUED, job_id=job_id, dispatch_id=dispatch.id, **data)
    wake_after_commit(session, Service.SENDER)
    return dispatch


# -- sending ------------------------------------------------------------------------------


def claimable(now: datetime, stale_after: timedelta) -> Any:
    """Dispatches a sender may take: pending ones, and claims older than `stale_after` (their
    sender died between claim and record, so the chunk is never stranded)."""
    return sa.or_(
        col(Dispatch.status) == DispatchStatus.PENDING,
        sa.and_(
            col(Dispatch.status) == DispatchStatus.SUBMITTING,
            col(Dispatch.updated_at) < now - stale_after,
        ),
    )


def claim(
    session: Session, settings: Settings, dispatch_id: str, stale_after: timedelta
) -> Dispatch | None:
    """pending → submitting, for one sender only; None if another sender has it, or if it was
    a stale claim on its last send (`_fail_spent_claim`)."""
    now = utcnow()
    if _fail_spent_claim(session, settings, dispatch_id, now - stale_after):
        return None
    result = session.exec(
        update(Dispatch)
        .where(col(Dispatch.id) == dispatch_id, claimable(now, stale_after))
        .values(
            status=DispatchStatus.SUBMITTING,
            updated_at=now,
            submit_attempts=Dispatch.submit_attempts + 1,
        )
    )
    if not result.rowcount:
        return None
    dispatch = session.get(Dispatch, dispatch_id, populate_existing=True)
    if dispatch is not None:
        _transition(dispatch, DispatchStatus.PENDING, DispatchStatus.SUBMITTING)
    return dispatch


def _fail_spent_claim(
    session: Session, settings: Settings, dispatch_id: str, stale_before: datetime
) -> bool:
    """A stale claim of a dispatch that has had all its `dispatch_submit_attempts`: its last
    send was never recorded nor released (RunPod may have taken it, and billed), so the
    dispatch fails instead of being sent once more. True when it did."""
    spent = (
        col(Dispatch.id) == dispatch_id,
        col(Dispatch.status) == DispatchStatus.SUBMITTING,
        col(Dispatch.updated_at) < stale_before,
        col(Dispatch.submit_attempts) >= settings.dispatch_submit_attempts,
    )
    if session.exec(select(Dispatch.id).where(*spent)).first() is None:  # no lock taken
        return False
    dispatch = lock_dispatch(session, dispatch_id)
    if dispatch is None or session.exec(select(Dispatch.id).where(*spent)).first() is None:
        return False
    reason = (
        f"could not submit to RunPod: {dispatch.submit_attempts} sends, the last one never "
        "recorded (its sender stopped)"
    )
    _fail_dispatch(session, settings, dispatch, reason)
    return True


def mark_submitted(
    session: Session, dispatch_id: str, runpod_job_id: str, token: str | None = None
) -> bool:
    """submitting → submitted, its outputs running, its job processing.

    False if nobody wants that RunPod job any more (the dispatch failed meanwhile, e.g. its
    job was cancelled while `/run` was in flight): the caller cancels it at RunPod. `token`
    is the webhook token the send carried: a batch dispatch whose token has changed since
    has moved on to its next task (the webhook of this one came first), which this RunPod
    job must not be taken for.
    """
    dispatch = lock_dispatch(session, dispatch_id)
    if dispatch is None:
        return False
    if token is not None and dispatch.webhook_token != token:
        return dispatch.status != DispatchStatus.FAILED
    dispatch.runpod_job_id = dispatch.runpod_job_id or clip(runpod_job_id, 80)
    session.add(dispatch)
    if dispatch.status == DispatchStatus.FAILED:
        return False
    if dispatch.status != DispatchStatus.SUBMITTING:  # the webhook may have finalised it
        return True
    now = utcnow()
    _transition(dispatch, dispatch.status, DispatchStatus.SUBMITTED)
    dispatch.status = DispatchStatus.SUBMITTED
    dispatch.submitted_at = dispatch.updated_at = now
    running = session.exec(
        update(Output)
        .where(col(Output.dispatch_id) == dispatch_id, col(Output.status) == OutputStatus.PENDING)
        .values(status=OutputStatus.RUNNING, updated_at=now)
    )
    emit(
        session,
        EventKind.DISPATCH_STARTED,
        job_id=dispatch.job_id,
        dispatch_id=dispatch.id,
        runpod_job_id=dispatch.runpod_job_id,
        images=running.rowcount,
        **({} if dispatch.task == DispatchTask.GENERATE else {"task": dispatch.task}),
    )
    started = session.exec(
        update(Job)
        .where(col(Job.id) == dispatch.job_id, col(Job.status) == JobStatus.QUEUED)
        .values(status=JobStatus.PROCESSING, updated_at=now)
    )
    if started.rowcount:
        emit(session, EventKind.JOB_STARTED, job_id=dispatch.job_id)
    return True


def release_claim(
    session: Session, settings: Settings, dispatch_id: str, error: str, *, lost: bool
) -> None:
    """A send that failed: back to pending for the next pass, or failed after
    `dispatch_submit_attempts` sends; `lost` when RunPod never took it (an outage, not a
    refusal), so the chunk's loss budget applies."""
    dispatch = lock_dispatch(session, dispatch_id)
    if dispatch is None or dispatch.status != DispatchStatus.SUBMITTING:
        return
    log.warning(
        "dispatch %s not sent (attempt %d): %s", dispatch_id, dispatch.submit_attempts, error
    )
    if dispatch.submit_attempts >= settings.dispatch_submit_attempts:
        reason = f"could not submit to RunPod: {error}"
        _fail_dispatch(session, settings, dispatch, reason, lost=lost)
        return
    _transition(dispatch, dispatch.status, DispatchStatus.PENDING)
    dispatch.status = DispatchStatus.PENDING
    dispatch.error = clip(error)
    dispatch.updated_at = utcnow()
    session.add(dispatch)


def drop_unsendable(session: Session, dispatch_id: str, reasons: dict[str, str]) -> None:
    """Images of a claimed dispatch that cannot be sent (output id → why: a reference image
    deleted since they were asked for) fail with their reason; the claim is released
    without spending a send, so the rest of the chunk goes at the next pass; a chunk left
    with nothing to send ends failed."""
    dispatch = lock_dispatch(session, dispatch_id)
    if dispatch is None or dispatch.status != DispatchStatus.SUBMITTING:
        return
    now = utcnow()
    for output_id, reason in reasons.items():
        _fail_outputs(
            session,
            (
                col(Output.id) == output_id,
                col(Output.dispatch_id) == dispatch_id,
                col(Output.status).in_(UNFINISHED),
            ),
            clip(reason) or "failed",
            now,
            "unsendable",
        )
    left = session.exec(
        select(func.count())
        .select_from(Output)
        .where(col(Output.dispatch_id) == dispatch_id, col(Output.status).in_(UNFINISHED))
    ).one()
    if left:
        _transition(dispatch, dispatch.status, DispatchStatus.PENDING)
        dispatch.status, dispatch.updated_at = DispatchStatus.PENDING, now
        dispatch.submit_attempts = max(dispatch.submit_attempts - 1, 0)
        session.add(dispatch)
        wake_after_commit(session, Service.SENDER)
    else:
        reason = "nothing left to send: " + next(iter(reasons.values()), "")
        _transition(dispatch, dispatch.status, DispatchStatus.FAILED)
        dispatch.status, dispatch.error = DispatchStatus.FAILED, clip(reason)
        dispatch.finished_at = dispatch.updated_at = now
        session.add(dispatch)
        emit(
            session,
            EventKind.DISPATCH_FAILED,
            job_id=dispatch.job_id,
            dispatch_id=dispatch.id,
            reason=dispatch.error,
            retry=False,
            lost=False,
            runpod_job_id=None,
        )
    refresh_job(session, dispatch.job_id)


def note_polled(session: Session, dispatch_id: str, runpod_status: str | None) -> None:
    """Remember that RunPod was asked about the dispatch and what it said (still running)."""
    dispatch = session.get(Dispatch, dispatch_id)
    if dispatch is not None:
        dispatch.last_polled_at = utcnow()
        dispatch.runpod_status = clip(runpod_status, 20) or dispatch.runpod_status
        session.add(dispatch)


# -- finishing ----------------------------------------------------------------------------


def finish_dispatch(
    session: Session, settings: Settings, storage: Storage, dispatch_id: str, report: DispatchReport
) -> None:
    """Apply what became of a dispatch's RunPod job, once (later reports change nothing).

    A completed dispatch's results are checked and its outputs and events written under its
    own lock; its job's lock is taken last (`_count_on_job`), for the counters, up to the
    caller's commit.
    """
    dispatch = lock_row(session, Dispatch, dispatch_id)
    if dispatch is None:
        return
    if dispatch.status in TERMINAL_DISPATCH:
        _cancel_late_batch(session, dispatch, report)
        return
    _note_report(dispatch, report)
    if dispatch.task != DispatchTask.GENERATE:
        job = lock_job(session, dispatch.job_id)
        _finish_batch_step(session, settings, storage, job, dispatch, report)
        return
    if report.results is None:
        lock_job(session, dispatch.job_id)
        _fail_dispatch(session, settings, dispatch, report.failure, lost=report.lost)
        return
    endings = _end_outputs(session, storage, dispatch, report.results)
    now = utcnow()
    _count_on_job(session, dispatch, endings, now, [_complete(session, dispatch, now)])


def finish_dispatches(
    session: Session, storage: Storage, reports: Mapping[str, DispatchReport]
) -> list[str]:
    """`finish_dispatch` for several reports at once, as far as they allow: the generate
    dispatches that completed with results end together, with one statement for what each
    would take alone (their rows locked, their outputs read, ended, their events written,
    their rows written) and one counters' UPDATE per job. Returns the ids of the others,
    for the caller to apply with `finish_dispatch`, each in a transaction of its own once
    this one commits: a failed or batch dispatch's report, one that ended already, and every
    report of a missing dispatch.

    Dispatches are locked in id order, as every writer of several takes them, then their
    jobs in id order: two batches never wait on each other in a circle."""
    completing = [
        dispatch
        for dispatch in lock_rows(session, Dispatch, sorted(reports))
        if dispatch.status not in TERMINAL_DISPATCH
        and dispatch.task == DispatchTask.GENERATE
        and reports[dispatch.id].results is not None
    ]
    unfinished = _unfinished_outputs(session, [dispatch.id for dispatch in completing])
    planned = {
        dispatch.id: _plan(storage, unfinished.get(dispatch.id, {}), results, True)
        for dispatch in completing
        if (results := reports[dispatch.id].results) is not None
    }
    now = utcnow()
    firsts = _first_images(session, completing, planned)
    with session.no_autoflush:
        endings = [ending for dispatch in completing for ending in planned[dispatch.id]]
        if endings:
            _write_endings(session, endings, now)
        events = []
        for dispatch in completing:
            _note_report(dispatch, reports[dispatch.id])
            first = firsts.get(dispatch.id)
            events += _ending_events(dispatch, planned[dispatch.id], now, first)
            events.append(_complete(session, dispatch, now))
        emit_many(session, events)
        write_loaded(session, completing)
    for job_id in sorted({dispatch.job_id for dispatch in completing}):
        ended = [e for d in completing if d.job_id == job_id for e in planned[d.id]]
        if _add_counts(session, job_id, ended, now):
            refresh_job(session, job_id)
    done = {dispatch.id for dispatch in completing}
    return [dispatch_id for dispatch_id in reports if dispatch_id not in done]


def _note_report(dispatch: Dispatch, report: DispatchReport) -> None:
    """What RunPod says of the dispatch's job, kept on its row (its id once known)."""
    dispatch.runpod_status = clip(report.runpod_status, 20)
    dispatch.delay_ms, dispatch.execution_ms = report.delay_ms, report.execution_ms
    if dispatch.task == DispatchTask.GENERATE:
        dispatch.runpod_job_id = dispatch.runpod_job_id or clip(report.runpod_job_id, 80)


def _complete(session: Session, dispatch: Dispatch, now: datetime) -> dict[str, Any]:
    """Mark a dispatch whose results are applied completed; its event, for the caller to
    write with its outputs'."""
    _transition(dispatch, dispatch.status, DispatchStatus.COMPLETED)
    dispatch.status = DispatchStatus.COMPLETED
    dispatch.finished_at = dispatch.updated_at = now
    session.add(dispatch)
    wake_after_commit(session, Service.SENDER)  # room under the in-flight caps
    completed = EventKind.DISPATCH_COMPLETED
    return event_row(completed, now, job_id=dispatch.job_id, dispatch_id=dispatch.id)


def apply_progress(
    session: Session, storage: Storage, dispatch_id: str, results: Sequence[ItemResult]
) -> bool:
    """Apply results the worker posted while the dispatch runs, WITHOUT ending it: each ends
    one of its unfinished outputs (an output already ended keeps its first result, so a
    re-run's or a repeated post's changes nothing); outputs not reported stay as they are.
    False (nothing changed) unless the dispatch is `submitted`: once it has ended, RunPod's
    report was the authority for its end (`finish_dispatch` applies only what is still
    unfinished); before RunPod's job is recorded, a send may still be retried, and must find
    its images unfinished. A batch collect's failed requests are left to its end, which
    sends them online (`_collected`)."""
    dispatch = lock_row(session, Dispatch, dispatch_id)
    if dispatch is None or dispatch.status != DispatchStatus.SUBMITTED:
        return False
    if dispatch.task == DispatchTask.BATCH_COLLECT:  # a failed request goes online at its end
        results = [r for r in results if r.status != ResultStatus.FAILED]
    endings = _end_outputs(session, storage, dispatch, results, fail_unreported=False)
    if endings:
        _count_on_job(session, dispatch, endings, utcnow(), [])
    return True


@dataclass(frozen=True)
class Ending:
    """How one unfinished output ends: the columns its result sets (status and error among
    them), the attempts and cost it adds."""

    output_id: str
    status: OutputStatus
    values: dict[str, Any]
    attempts: int = 0
    cost_usd: float = 0.0

    @property
    def error(self) -> str | None:
        error: str | None = self.values.get("error")
        return error


def plan_results(
    session: Session,
    storage: Storage,
    dispatch_id: str,
    results: Sequence[ItemResult | UnreadableResult],
    *,
    fail_unreported: bool = True,
) -> list[Ending]:
    """What becomes of the dispatch's unfinished outputs, in order: each result checked
    against the unfinished output it names (others are ignored, a repeated one counts once);
    with `fail_unreported`, outputs no result names fail with NO_RESULT. The caller holds
    the dispatch's lock, so they stay unfinished until it writes them (`_end_outputs`)."""
    outputs = _unfinished_outputs(session, [dispatch_id]).get(dispatch_id, {})
    return _plan(storage, outputs, results, fail_unreported)


def _unfinished_outputs(
    session: Session, dispatch_ids: Sequence[str]
) -> dict[str, dict[str, Checked]]:
    """The unfinished outputs of each of `dispatch_ids` (by id), in one query."""
    by_dispatch: dict[str, dict[str, Checked]] = {}
    query = sa.select(OUTPUTS.c.dispatch_id, *(OUTPUTS.c[name] for name in Checked._fields))
    condition = OUTPUTS.c.dispatch_id.in_(dispatch_ids), OUTPUTS.c.status.in_(UNFINISHED)
    for dispatch_id, *columns in session.execute(query.where(*condition)):
        output = Checked(*columns)
        by_dispatch.setdefault(dispatch_id, {})[output.id] = output
    return by_dispatch


def _plan(
    storage: Storage,
    outputs: dict[str, Checked],
    results: Sequence[ItemResult | UnreadableResult],
    fail_unreported: bool,
) -> list[Ending]:
    """`plan_results` for the unfinished `outputs` read (taken from as results name them)."""
    endings = []
    for result in results:
        output = outputs.pop(result.output_id, None)
        if output is not None:
            endings.append(_ending_of(storage, output, result))
    if fail_unreported:
        endings += [_failure(output_id, NO_RESULT) for output_id in outputs]
    return endings


def _apply_results(
    session: Session,
    storage: Storage,
    dispatch: Dispatch,
    results: Sequence[ItemResult | UnreadableResult],
    *,
    fail_unreported: bool = True,
) -> list[dict[str, Any]]:
    """`_end_outputs`, and the job's counters moved once; the caller holds the dispatch's and
    the job's locks (`lock_dispatch`). The ended outputs' events are returned for the caller
    to emit (with its own, in one insert)."""
    endings = _end_outputs(session, storage, dispatch, results, fail_unreported=fail_unreported)
    if not endings:
        return []
    _count_endings(session, dispatch.job_id, endings)
    return _ending_events(dispatch, endings, utcnow(), _first_success(session, endings, dispatch))


def _end_outputs(
    session: Session,
    storage: Storage,
    dispatch: Dispatch,
    results: Sequence[ItemResult | UnreadableResult],
    *,
    fail_unreported: bool = True,
) -> list[Ending]:
    """Each result for one of the dispatch's unfinished outputs (others are ignored), once,
    checked (`plan_results`) and written in one statement; the caller holds the dispatch's
    lock and counts the returned endings on the job. Changes made to loaded rows (the
    dispatch) are written at the caller's commit, once."""
    with session.no_autoflush:
        endings = plan_results(
            session, storage, dispatch.id, results, fail_unreported=fail_unreported
        )
        if endings:
            _write_endings(session, endings, utcnow())
        return endings


def _count_on_job(
    session: Session,
    dispatch: Dispatch,
    endings: Sequence[Ending],
    now: datetime,
    more_events: list[dict[str, Any]],
) -> None:
    """The ended outputs' events and `more_events` written in one insert, then the job's
    lock, its counters and its status: every finaliser of a job queues on the job's row, so
    it is locked last and held for the fewest statements (the dispatch is already locked):
    one UPDATE moves the counters as it takes the lock, with no Python work in between that
    another thread could hold the GIL through. Only a job with no image yet is locked
    before the events (the first of which says so), and loaded whole."""
    if _succeeded(endings) and _has_no_image_yet(session, dispatch.job_id):
        lock_job(session, dispatch.job_id)
        first = _first_success(session, endings, dispatch)
        emit_many(session, _ending_events(dispatch, endings, now, first) + more_events)
        _count_endings(session, dispatch.job_id, endings)
        refresh_job(session, dispatch.job_id)
        return
    emit_many(session, _ending_events(dispatch, endings, now, None) + more_events)
    if _add_counts(session, dispatch.job_id, endings, now):
        refresh_job(session, dispatch.job_id)


def _add_counts(session: Session, job_id: str, endings: Sequence[Ending], now: datetime) -> bool:
    """`_count_endings`, for a job not loaded in this session; whether its status no longer
    follows from its counters (it has just ended, or a retry reopened it: `refresh_job`
    settles it), read in one narrow query."""
    _count_endings(session, job_id, endings, now)
    row = (
        session.connection()
        .execute(
            sa.select(
                JOBS.c.status, JOBS.c.total, JOBS.c.succeeded, JOBS.c.failed, JOBS.c.blocked
            ).where(JOBS.c.id == job_id)
        )
        .first()
    )
    if row is None:
        return False
    finished = row.succeeded + row.failed + row.blocked == row.total
    return finished == (row.status in ACTIVE_JOB)


def _has_no_image_yet(session: Session, job_id: str) -> bool:
    """Whether the job had no succeeded image when last committed (read without a lock, and
    not again in this process once it had one: `first_image_at` is never unset)."""
    if job_id in _JOBS_WITH_AN_IMAGE:
        return False
    stamp = session.exec(select(Job.first_image_at).where(col(Job.id) == job_id)).first()
    if stamp is None:
        return True
    if len(_JOBS_WITH_AN_IMAGE) >= JOBS_WITH_AN_IMAGE_KEPT:
        _JOBS_WITH_AN_IMAGE.clear()
    _JOBS_WITH_AN_IMAGE.add(job_id)
    return False


JOBS_WITH_AN_IMAGE_KEPT = 10_000
_JOBS_WITH_AN_IMAGE: set[str] = set()  # jobs this process has seen with a committed image


def _ending_of(storage: Storage, output: Checked, result: ItemResult | UnreadableResult) -> Ending:
    """What the worker says of `output`, once checked (`control_plane/results.py`); a result
    that fails the check fails its image with the reason and sets nothing else."""
    try:
        if isinstance(result, UnreadableResult):
            raise ResultRejected(result.reason)
        files = check_result(result, output, storage)
    except ResultRejected as exc:
        return _failure(output.id, f"{RESULT_REJECTED}: {exc}")
    values: dict[str, Any] = {
        "provider": clip(result.provider, 40),
        "model": clip(result.model, 80),
        "model_version": clip(result.model_version, 80),
        "usage": result.usage,
        "cost_usd": result.cost_usd,
        "latency_ms": result.latency_ms,
    }
    if result.seed is not None:
        values["seed"] = result.seed
    if files is None:
        status, error = OutputStatus(result.status), result.error or result.status
    elif isinstance(files, TextAnswer):
        values["text"], status, error = files.text, OutputStatus.SUCCEEDED, None
    else:
        values |= {
            "storage_key": files.storage_key,
            "thumbnail_key": files.thumbnail_key,
            "content_type": result.content_type,
            "width": result.width,
            "height": result.height,
            "bytes": result.bytes,
            "sha256": result.sha256,
        }
        status, error = OutputStatus.SUCCEEDED, None
    values["status"], values["error"] = status, clip(error)
    return Ending(output.id, status, values, result.attempts, result.cost_usd or 0.0)


def _failure(output_id: str, reason: str) -> Ending:
    status = OutputStatus.FAILED
    return Ending(output_id, status, {"status": status, "error": clip(reason)})


def _write_endings(session: Session, endings: Sequence[Ending], now: datetime) -> None:
    """The outputs' endings, each column set to its output's value and kept where an
    output's result does not set it, in as few UPDATEs as `update_rows` takes."""
    update_rows(
        session.connection(),
        OUTPUTS,
        {ending.output_id: ending.values for ending in endings},
        shared={"completed_at": now, "updated_at": now},
        added={"attempts": {e.output_id: e.attempts for e in endings if e.attempts}},
    )
    _forget_loaded(session, Output, [ending.output_id for ending in endings])


def _forget_loaded(session: Session, model: type[SQLModel], ids: Sequence[str]) -> None:
    """Expire loaded copies of rows changed behind the session's back."""
    for row_id in ids:
        loaded = session.identity_map.get(sa.orm.util.identity_key(model, row_id))
        if loaded is not None:
            session.expire(loaded)


def _count_endings(
    session: Session, job_id: str, endings: Sequence[Ending], now: datetime | None = None
) -> None:
    """The job's counters moved once for all `endings`, their cost added once."""
    moved = Counter(ending.status for ending in endings)
    _move_counts(session, job_id, moved, sum(ending.cost_usd for ending in endings), now)


def _succeeded(endings: Sequence[Ending]) -> bool:
    return any(ending.status == OutputStatus.SUCCEEDED for ending in endings)


def _first_success(
    session: Session, endings: Sequence[Ending], dispatch: Dispatch
) -> Ending | None:
    """The first succeeded ending if it is the job's first image, which stamps the job's
    `first_image_at` (the caller holds the job's lock)."""
    first = next((e for e in endings if e.status == OutputStatus.SUCCEEDED), None)
    if first is None or not _first_image(session, dispatch.job_id, utcnow()):
        return None
    return first


def _first_images(
    session: Session, dispatches: Sequence[Dispatch], planned: Mapping[str, Sequence[Ending]]
) -> dict[str, Ending]:
    """For each job of `dispatches` with no image yet, its first: the first succeeded of
    their `planned` endings, stamped on the job under its lock, taken (in id order) before
    anything is written, as `_count_on_job` takes it for one dispatch. By dispatch id."""
    firsts = {}
    for job_id in sorted({dispatch.job_id for dispatch in dispatches}):
        of_job = [dispatch for dispatch in dispatches if dispatch.job_id == job_id]
        endings = [ending for dispatch in of_job for ending in planned[dispatch.id]]
        if not _succeeded(endings) or not _has_no_image_yet(session, job_id):
            continue
        lock_job(session, job_id)
        first = _first_success(session, endings, of_job[0])
        if first is not None:
            owner = next(d for d in of_job if any(e is first for e in planned[d.id]))
            firsts[owner.id] = first
    return firsts


def _ending_events(
    dispatch: Dispatch, endings: Sequence[Ending], now: datetime, first_image: Ending | None
) -> list[dict[str, Any]]:
    """One event per ended output; `first_image`'s says it was the job's first."""
    events = []
    for ending in endings:
        data: dict[str, Any] = {"error": ending.error} if ending.error else {}
        if ending is first_image:
            data["first_image"] = True
        kind = OUTPUT_EVENT[ending.status]
        ids = {"job_id": dispatch.job_id, "dispatch_id": dispatch.id}
        events.append(event_row(kind, now, **ids, output_id=ending.output_id, **data))
    return events


class FinishFailure(StrEnum):
    """What counting a report that could not be applied did (`note_finish_failure`)."""

    COUNTED = "counted"  # the next report tries again
    FAILED = "failed"  # the last one allowed: the dispatch failed with the error
    ALREADY_ENDED = "already ended"  # another report ended it meanwhile; nothing counted


def note_finish_failure(
    session: Session, settings: Settings, dispatch_id: str, reason: str
) -> FinishFailure:
    """Applying a report to the dispatch failed for `reason` (that transaction was rolled
    back): count it, and after `dispatch_max_finish_failures` fail the dispatch with it, so a
    report that can never be applied is not tried for ever."""
    dispatch = lock_dispatch(session, dispatch_id)
    if dispatch is None or dispatch.status in TERMINAL_DISPATCH:
        return FinishFailure.ALREADY_ENDED
    dispatch.finish_failures += 1
    if dispatch.finish_failures >= settings.dispatch_max_finish_failures:
        _fail_dispatch(session, settings, dispatch, reason)
        return FinishFailure.FAILED
    dispatch.error, dispatch.updated_at = clip(reason), utcnow()
    session.add(dispatch)
    return FinishFailure.COUNTED


def _fail_dispatch(
    session: Session, settings: Settings, dispatch: Dispatch, reason: str, *, lost: bool = False
) -> None:
    """Mark `dispatch` failed; retry its unfinished outputs in a new dispatch while its chunk's
    budget allows (a loss spends the loss budget, any other failure the attempt budget), else
    fail them with the reason."""
    now = utcnow()
    attempt, losses, within_budget = _next_try(settings, dispatch, lost)
    if lost and not within_budget:
        reason = f"lost {losses} times (more than PIXELFLEET_DISPATCH_MAX_LOSSES): {reason}"
    reason = clip(reason) or "failed"
    _transition(dispatch, dispatch.status, DispatchStatus.FAILED)
    dispatch.status, dispatch.error = DispatchStatus.FAILED, reason
    dispatch.finished_at = dispatch.updated_at = now
    session.add(dispatch)
    wake_after_commit(session, Service.SENDER)  # its retry, or room under the in-flight caps
    job = session.get(Job, dispatch.job_id)
    unfinished = col(Output.dispatch_id) == dispatch.id, col(Output.status).in_(UNFINISHED)
    retry = (
        within_budget
        and job is not None
        and job.status != JobStatus.CANCELLED
        and _any(session, unfinished)  # progress may have ended every image already
    )
    emit(
        session,
        EventKind.DISPATCH_FAILED,
        job_id=dispatch.job_id,
        dispatch_id=dispatch.id,
        reason=reason,
        retry=retry,
        lost=lost,
        runpod_job_id=dispatch.runpod_job_id,
    )
    if retry:
        log.warning(
            "dispatch %s %s (%s); retrying as attempt %d after %d losses",
            dispatch.id,
            "lost" if lost else "failed",
            reason,
            attempt,
            losses,
        )
        again = _new_dispatch(session, dispatch.job_id, attempt, losses)
        session.flush()
        session.exec(
            update(Output)
            .where(*unfinished)
            .values(dispatch_id=again.id, status=OutputStatus.PENDING, error=reason, updated_at=now)
        )
    else:
        log.warning("dispatch %s failed for good: %s", dispatch.id, reason)
        _fail_outputs(session, unfinished, reason, now, "lost" if lost else "dispatch_failed")
    cancel_batches(session, [dispatch])  # a batch dispatch's retry, if any, is online work
    refresh_job(session, dispatch.job_id)


def _any(session: Session, condition: Sequence[Any]) -> bool:
    """Whether any output matches `condition`."""
    return session.exec(select(Output.id).where(*condition).limit(1)).first() is not None


def _next_try(settings: Settings, dispatch: Dispatch, lost: bool) -> tuple[int, int, bool]:
    """The chunk's next try after `dispatch` (its attempt and losses so far), and whether the
    chunk's budget allows it."""
    if lost:
        losses = dispatch.losses + 1
        return dispatch.attempt, losses, losses <= settings.dispatch_max_losses
    attempt = dispatch.attempt + 1
    return attempt, dispatch.losses, attempt <= settings.dispatch_max_attempts


def _fail_outputs(
    session: Session, condition: Sequence[Any], reason: str, now: datetime, cause: str
) -> None:
    """Fail every output matching `condition`, with one event each (`cause`: what failed
    them, in one word: unsendable, lost, dispatch_failed, cancelled)."""
    ids = session.exec(select(Output.id, Output.job_id, Output.dispatch_id).where(*condition)).all()
    session.exec(
        update(Output)
        .where(*condition)
        .values(status=OutputStatus.FAILED, error=reason, completed_at=now, updated_at=now)
    )
    for job_id, failed in Counter(job_id for _, job_id, _ in ids).items():
        _move_counts(session, job_id, {OutputStatus.FAILED: failed})
    events = [
        event_row(
            EventKind.OUTPUT_FAILED,
            now,
            job_id=job_id,
            dispatch_id=dispatch_id,
            output_id=output_id,
            error=reason,
            cause=cause,
        )
        for output_id, job_id, dispatch_id in ids
    ]
    emit_many(session, events)


# -- a user's decisions -------------------------------------------------------------------


def cancel_job(session: Session, job_id: str) -> list[str]:
    """Stop a job: unfinished images fail as "cancelled". Returns the RunPod jobs that the
    RunPod canceller will cancel once this commits (it reads the dispatch_failed events)."""
    job, live = lock_job_and_live_dispatches(session, job_id)  # a batch's cancel goes on
    if job.status in ENDED_JOB:
        raise Conflict(f"job {job_id} is already {job.status}")
    now = utcnow()
    for dispatch in live:
        _transition(dispatch, dispatch.status, DispatchStatus.FAILED)
        dispatch.status, dispatch.error = DispatchStatus.FAILED, CANCELLED_BY_USER
        dispatch.finished_at = dispatch.updated_at = now
        session.add(dispatch)
        emit(
            session,
            EventKind.DISPATCH_FAILED,
            job_id=job_id,
            dispatch_id=dispatch.id,
            reason=CANCELLED_BY_USER,
            retry=False,
            lost=False,
            runpod_job_id=dispatch.runpod_job_id,
        )
    _fail_outputs(
        session,
        (col(Output.job_id) == job_id, col(Output.status).in_(UNFINISHED)),
        CANCELLED_BY_USER,
        now,
        "cancelled",
    )
    job.status, job.completed_at, job.error = JobStatus.CANCELLED, now, CANCELLED_BY_USER
    session.add(job)
    cancel_batches(session, live)
    wake_after_commit(session, Service.SENDER)  # room under the in-flight caps
    refresh_job(session, job_id)
    _emit_finished(session, job)
    return [d.runpod_job_id for d in live if d.runpod_job_id]


def retry_job(session: Session, settings: Settings, job_id: str) -> None:
    """Queue the job's failed images again (blocked ones stay blocked)."""
    job = lock_job(session, job_id)
    failed = session.exec(
        select(Output)
        .where(Output.job_id == job_id, col(Output.status) == OutputStatus.FAILED)
        .order_by(col(Output.position))
    ).all()
    if not failed:
        raise Conflict(f"job {job_id} has no failed images to retry")
    _move_counts(session, job_id, {OutputStatus.FAILED: -len(failed)})
    now = utcnow()
    for output in failed:
        output.status, output.error, output.completed_at = OutputStatus.PENDING, None, None
        output.updated_at = now
        emit(session, EventKind.OUTPUT_RETRIED, job_id=job_id, output_id=output.id)
    # a set stays one RunPod job; other modes are chunked as at submit
    chunk = len(failed) if job.mode in SET_MODES else dispatch_chunk(settings, failed)
    _queue(session, job_id, failed, chunk)
    job.status, job.completed_at, job.error = JobStatus.PROCESSING, None, None
    session.add(job)
    emit(session, EventKind.JOB_REOPENED, job_id=job_id, retried=len(failed))
    refresh_job(session, job_id)


# -- counting -----------------------------------------------------------------------------


def output_counts(session: Session, condition: Any) -> dict[str, int]:
    """How many outputs matching `condition` are in each status."""
    rows = session.exec(
        select(Output.status, func.count()).where(condition).group_by(col(Output.status))
    ).all()
    return dict(rows)


def _move_counts(
    session: Session,
    job_id: str,
    moved: Mapping[OutputStatus, int],
    cost_usd: float = 0.0,
    now: datetime | None = None,
) -> None:
    """Move the job's counters by `moved` and add `cost_usd` to its cost: the one way they
    change, one UPDATE of the job's row, which takes the job's lock if the caller does not
    hold it yet. What the session has pending is written first (in the lock order: a
    finaliser's dispatch before its job), and a loaded copy of the job is expired, so that
    it reads the new counts."""
    values: dict[str, Any] = {
        status.value: JOBS.c[status.value] + moved[status]
        for status in TERMINAL_OUTPUT
        if moved.get(status)
    }
    if cost_usd:
        values["cost_usd"] = sa.func.round(sa.func.coalesce(JOBS.c.cost_usd, 0.0) + cost_usd, 6)
    if not values:
        return
    values["updated_at"] = now or utcnow()
    session.flush()
    session.connection().execute(sa.update(JOBS).where(JOBS.c.id == job_id).values(values))
    _forget_loaded(session, Job, [job_id])


def _first_image(session: Session, job_id: str, now: datetime) -> bool:
    """Stamp the job's `first_image_at` unless it has one (the caller holds the job's lock);
    True when this was its first."""
    job = session.get(Job, job_id)
    if job is None or job.first_image_at is not None:
        return False
    job.first_image_at = now
    session.add(job)
    return True


def refresh_job(session: Session, job_id: str) -> None:
    """Settle a job's status from its counters; a job that ends here writes `job_finished`."""
    job = session.get(Job, job_id)
    if job is None:
        return
    now = utcnow()
    finished = job.succeeded + job.failed + job.blocked == job.total
    if finished and job.status in (JobStatus.QUEUED, JobStatus.PROCESSING):
        job.status = JobStatus.COMPLETED if job.succeeded else JobStatus.FAILED
        job.completed_at = job.completed_at or now
        job.error = None if job.succeeded else _first_error(session, job_id)
        _emit_finished(session, job)
    elif not finished and job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
        job.status, job.completed_at = JobStatus.PROCESSING, None  # a retry reopened it
    job.updated_at = now
    session.add(job)


def _emit_finished(session: Session, job: Job) -> None:
    emit(
        session,
        EventKind.JOB_FINISHED,
        job_id=job.id,
        status=job.status,
        succeeded=job.succeeded,
        failed=job.failed,
        blocked=job.blocked,
    )


def _first_error(session: Session, job_id: str) -> str | None:
    return session.exec(
        select(Output.error)
        .where(Output.job_id == job_id, sa.not_(col(Output.error).is_(None)))
        .order_by(col(Output.position))
        .limit(1)
    ).first()


# -- the batch lane -----------------------------------------------------------------------
#
# A batch job's dispatch is one Gemini batch, run as short RunPod jobs of the contract's
# batch tasks, each sent by the sender: submit → (batched ⇄ poll)… → collect → completed.
# Between tasks the dispatch waits `batched` (no RunPod job) until `next_poll_at`
# (`advance_batch`). Each task is a new RunPod job with a new webhook token, so a late
# report of an earlier task is refused at the door. The images stay `running` all along;
# collect ends them through `_apply_results`, as an online dispatch's results do. Images a
# batch does not make go to the online lane (`_to_online`): a batch that fails, expires,
# is cancelled by Google, or is not done by the job's deadline (then it is cancelled), and
# each request that failed in a collected batch; blocked images stay blocked.


class Fallback(StrEnum):
    """Why images of the batch lane went to the online lane (the job counts them by it)."""

    SUBMIT_FAILED = "the batch could not be submitted"
    POLL_FAILED = "the batch could not be polled"
    COLLECT_FAILED = "the batch's results could not be collected"
    BATCH_FAILED = "the batch failed"
    BATCH_CANCELLED = "the batch was cancelled by Google"
    BATCH_EXPIRED = "the batch expired at Google"
    DEADLINE = "the batch was not done by the job's batch deadline"
    REQUEST_FAILED = "the image's request failed in the batch"
    NO_RESULT = "the batch returned no result for the image"


ENDED_BATCH = {
    BatchState.FAILED: Fallback.BATCH_FAILED,
    BatchState.CANCELLED: Fallback.BATCH_CANCELLED,
    BatchState.EXPIRED: Fallback.BATCH_EXPIRED,
}
STEP_FAILED = {
    DispatchTask.BATCH_SUBMIT: Fallback.SUBMIT_FAILED,
    DispatchTask.BATCH_POLL: Fallback.POLL_FAILED,
    DispatchTask.BATCH_COLLECT: Fallback.COLLECT_FAILED,
}


def _finish_batch_step(
    session: Session,
    settings: Settings,
    storage: Storage,
    job: Job,
    dispatch: Dispatch,
    report: DispatchReport,
) -> None:
    """Apply the report of the dispatch's current batch task (the caller holds the locks)."""
    task = DispatchTask(dispatch.task)
    current = dispatch.runpod_job_id or report.runpod_job_id
    if (
        dispatch.status not in (DispatchStatus.SUBMITTING, DispatchStatus.SUBMITTED)
        or (report.runpod_job_id and report.runpod_job_id != current)
        or (report.batch_task is not None and report.batch_task != task)
    ):
        log.info("dispatch %s: a report of an earlier batch task ignored", dispatch.id)
        return
    dispatch.runpod_job_id = clip(current, 80)
    if report.results is None:
        _batch_task_failed(session, settings, job, dispatch, task, report)
        return
    dispatch.batch_failures = 0
    if task == DispatchTask.BATCH_COLLECT:
        _collected(session, settings, storage, job, dispatch, report.results)
        return
    moved = report.batch is not None and _note_batch(session, dispatch, report.batch)
    if task == DispatchTask.BATCH_CANCEL:
        _end_batch(session, dispatch, DispatchStatus.COMPLETED)
        return
    if report.results:  # the items the submit left out: failed, with their reason
        left_out = _apply_results(session, storage, dispatch, report.results, fail_unreported=False)
        emit_many(session, left_out)
    if report.batch is None:  # nothing was sent: the submit left every item out
        _to_online(session, settings, job, dispatch, {Fallback.NO_RESULT: None})
        _end_batch(session, dispatch, DispatchStatus.COMPLETED)
        return
    _after_state(session, settings, job, dispatch, report.batch.state, moved=moved)


def _after_state(
    session: Session,
    settings: Settings,
    job: Job,
    dispatch: Dispatch,
    state: BatchState,
    *,
    moved: bool,
) -> None:
    """The next step of a dispatch whose batch is in `state` (`moved`: its state or counts
    changed since the last look): wait and poll again, collect, or send its images online."""
    if state in ENDED_BATCH:
        _fall_back(session, settings, job, dispatch, ENDED_BATCH[state], cancel=False)
    elif state == BatchState.SUCCEEDED:
        _next_task(session, dispatch, DispatchTask.BATCH_COLLECT)
    elif _past_deadline(job):
        _fall_back(session, settings, job, dispatch, Fallback.DEADLINE, cancel=True)
    else:
        _wait(session, settings, job, dispatch, moved=moved)


def _past_deadline(job: Job) -> bool:
    return job.batch_deadline_at is not None and job.batch_deadline_at <= utcnow()


def _batch_task_failed(
    session: Session,
    settings: Settings,
    job: Job,
    dispatch: Dispatch,
    task: DispatchTask,
    report: DispatchReport,
) -> None:
    """A batch task's RunPod job failed or was lost: try it again (a submit finds the batch
    it may have created, by its display name), a poll at the next poll; after
    `batch_max_step_failures` in a row the images go online (a cancel just ends)."""
    dispatch.batch_failures += 1
    dispatch.error = clip(f"{task}: {report.failure}")
    log.warning("dispatch %s: %s failed: %s", dispatch.id, task, report.failure)
    if dispatch.batch_failures < settings.batch_max_step_failures:
        if task == DispatchTask.BATCH_POLL:
            _wait(session, settings, job, dispatch, moved=False)
        else:
            _next_task(session, dispatch, task)
        return
    if task == DispatchTask.BATCH_CANCEL:
        _end_batch(session, dispatch, DispatchStatus.FAILED, dispatch.error)
        return
    live = dispatch.batch_name is not None and task != DispatchTask.BATCH_COLLECT
    _fall_back(
        session, settings, job, dispatch, STEP_FAILED[task], cancel=live, detail=report.failure
    )


def _collected(
    session: Session,
    settings: Settings,
    storage: Storage,
    job: Job,
    dispatch: Dispatch,
    results: Sequence[ItemResult | UnreadableResult],
) -> None:
    """A collect's results end their images as an online dispatch's do, except a request
    that failed at Google: that image, and any the batch has no result for, go online."""
    failed = {
        result.output_id
        for result in results
        if isinstance(result, ItemResult) and result.status == ResultStatus.FAILED
    }
    kept = [result for result in results if result.output_id not in failed]
    emit_many(session, _apply_results(session, storage, dispatch, kept, fail_unreported=False))
    reasons = {Fallback.REQUEST_FAILED: failed, Fallback.NO_RESULT: None}
    _to_online(session, settings, job, dispatch, reasons)
    _end_batch(session, dispatch, DispatchStatus.COMPLETED)


def _note_batch(session: Session, dispatch: Dispatch, batch: BatchInfo) -> bool:
    """Record the batch as a batch task saw it, with its event; whether its state or counts
    moved since the last look."""
    seen = _batch_seen(dispatch)
    dispatch.batch_name = clip(batch.name, 200)
    dispatch.batch_state = batch.state
    dispatch.batch_requests, dispatch.batch_succeeded = batch.requests, batch.succeeded
    dispatch.batch_failed, dispatch.batch_pending = batch.failed, batch.pending
    data = batch.model_dump(mode="json", include={"name", "state", "requests", "succeeded"})
    data |= batch.model_dump(mode="json", include={"failed", "pending", "error"})
    emit(session, EventKind.DISPATCH_BATCH, job_id=dispatch.job_id, dispatch_id=dispatch.id, **data)
    return _batch_seen(dispatch) != seen


def _batch_seen(dispatch: Dispatch) -> tuple[object, ...]:
    return (
        dispatch.batch_state,
        dispatch.batch_requests,
        dispatch.batch_succeeded,
        dispatch.batch_failed,
        dispatch.batch_pending,
    )


def poll_interval_s(settings: Settings, quiet_polls: int) -> float:
    """Seconds from a poll to the next, for a batch that `quiet_polls` polls in a row saw
    unchanged: `batch_poll_s`, doubled for each of them, at most `batch_poll_max_s`."""
    ceiling = max(settings.batch_poll_s, settings.batch_poll_max_s)
    return min(ceiling, settings.batch_poll_s * 2.0 ** min(quiet_polls, 32))


def _wait(
    session: Session, settings: Settings, job: Job, dispatch: Dispatch, *, moved: bool
) -> None:
    """Wait for Google, with no RunPod job, until the next poll (`advance_batch`): sooner
    after the batch moved (`moved`), later the longer it sits unchanged (or its polls fail),
    but never past a last look `batch_poll_s` before the job's batch deadline (a batch done
    just in time is collected, not made again online), nor past the deadline itself."""
    now = utcnow()
    _transition(dispatch, dispatch.status, DispatchStatus.BATCHED)
    dispatch.status = DispatchStatus.BATCHED
    dispatch.batch_quiet_polls = 0 if moved else dispatch.batch_quiet_polls + 1
    interval = poll_interval_s(settings, dispatch.batch_quiet_polls)
    dispatch.next_poll_at = now + timedelta(seconds=interval)
    deadline = job.batch_deadline_at
    if deadline is not None:
        last_look = deadline - timedelta(seconds=settings.batch_poll_s)
        latest = last_look if now < last_look else deadline
        dispatch.next_poll_at = min(dispatch.next_poll_at, latest)
    dispatch.updated_at = now
    session.add(dispatch)
    wake_after_commit(session, Service.SENDER)  # room under the in-flight caps


def _next_task(session: Session, dispatch: Dispatch, task: DispatchTask) -> None:
    """Queue the dispatch's next batch task for the sender: a RunPod job of its own, with a
    new webhook token (an earlier task's late webhook is refused) and its own send budget."""
    now = utcnow()
    _transition(dispatch, dispatch.status, DispatchStatus.PENDING)
    dispatch.status, dispatch.task = DispatchStatus.PENDING, task
    dispatch.webhook_token = new_token()
    dispatch.runpod_job_id = dispatch.runpod_status = None
    dispatch.submit_attempts = dispatch.finish_failures = 0
    dispatch.next_poll_at = None
    dispatch.updated_at = now
    session.add(dispatch)
    emit(
        session,
        EventKind.DISPATCH_QUEUED,
        job_id=dispatch.job_id,
        dispatch_id=dispatch.id,
        attempt=dispatch.attempt,
        task=task,
    )
    wake_after_commit(session, Service.SENDER)


def _end_batch(
    session: Session, dispatch: Dispatch, status: DispatchStatus, reason: str | None = None
) -> None:
    """End a batch dispatch whose images have all ended or gone online."""
    now = utcnow()
    _transition(dispatch, dispatch.status, status)
    dispatch.status, dispatch.next_poll_at = status, None
    dispatch.finished_at = dispatch.updated_at = now
    if status == DispatchStatus.FAILED:
        dispatch.error = clip(reason) or "failed"
        emit(
            session,
            EventKind.DISPATCH_FAILED,
            job_id=dispatch.job_id,
            dispatch_id=dispatch.id,
            reason=dispatch.error,
            retry=False,
            lost=False,
            runpod_job_id=None,  # its RunPod jobs have ended; its batch is not a RunPod job
        )
    else:
        emit(session, EventKind.DISPATCH_COMPLETED, job_id=dispatch.job_id, dispatch_id=dispatch.id)
    session.add(dispatch)
    wake_after_commit(session, Service.SENDER)
    refresh_job(session, dispatch.job_id)


def _fall_back(
    session: Session,
    settings: Settings,
    job: Job,
    dispatch: Dispatch,
    reason: Fallback,
    *,
    cancel: bool,
    detail: str = "",
) -> None:
    """Send the dispatch's unfinished images online for `reason`; with `cancel`, its batch,
    still live at Google, is cancelled by the dispatch's next task, else the dispatch ends."""
    moved = _to_online(session, settings, job, dispatch, {reason: None})
    why = f"{reason}{f' ({detail})' if detail else ''}: {moved} image(s) sent to the online lane"
    dispatch.error = clip(why)
    if cancel and dispatch.batch_name:
        _next_task(session, dispatch, DispatchTask.BATCH_CANCEL)
    else:
        _end_batch(session, dispatch, DispatchStatus.FAILED, why)


def _to_online(
    session: Session,
    settings: Settings,
    job: Job,
    dispatch: Dispatch,
    reasons: dict[Fallback, set[str] | None],
) -> int:
    """Move the dispatch's unfinished images to new online dispatches (of
    `dispatch_chunk_size`, as online work is sent: a batch's hundreds of images then run on
    as many workers as a job's would), each image with the first of `reasons` that names it
    (None: all the rest) as its error while it waits; the job counts them by reason, and its
    estimate takes them at the online price. Returns how many moved."""
    priced = _unfinished_priced(session, dispatch.id)
    reason_of: dict[str, Fallback] = {}
    left = set(priced)
    for reason, named in reasons.items():
        ids = left if named is None else left & named
        reason_of |= dict.fromkeys(ids, reason)
        left -= ids
    if not reason_of:
        return 0
    moved, chunk, now = sorted(reason_of), settings.dispatch_chunk_size, utcnow()
    online_ids = _new_dispatches(session, dispatch.job_id, -(-len(moved) // chunk), now)
    batches: dict[tuple[str, Fallback], list[str]] = {}
    for index, output_id in enumerate(moved):
        batches.setdefault((online_ids[index // chunk], reason_of[output_id]), []).append(output_id)
    for (online_id, reason), output_ids in batches.items():
        for start in range(0, len(output_ids), INSERT_BATCH):
            session.exec(
                update(Output)
                .where(col(Output.id).in_(output_ids[start : start + INSERT_BATCH]))
                .values(
                    dispatch_id=online_id, status=OutputStatus.PENDING, error=reason, updated_at=now
                )
            )
    for reason in reasons:
        count = sum(1 for why in reason_of.values() if why == reason)
        if count:
            _count_fallback(session, job, reason, count)
            log.warning("dispatch %s: %d image(s) go online: %s", dispatch.id, count, reason)
            emit(
                session,
                EventKind.DISPATCH_BATCH,
                job_id=dispatch.job_id,
                dispatch_id=dispatch.id,
                fallback=str(reason),
                images=count,
                online_dispatch_ids=online_ids,
            )
    _estimate_online(session, job, [priced[output_id] for output_id in moved])
    return len(moved)


def _unfinished_priced(
    session: Session, dispatch_id: str
) -> dict[str, tuple[str, str | None, str | None]]:
    """The dispatch's unfinished outputs, each with what its price depends on (`_priced`)."""
    rows = session.exec(
        select(Output.id, Output.kind, Output.model, Output.params).where(
            col(Output.dispatch_id) == dispatch_id, col(Output.status).in_(UNFINISHED)
        )
    ).all()
    return {
        output_id: (kind, model, (params or {}).get("image_size"))
        for output_id, kind, model, params in rows
    }


def _estimate_online(
    session: Session, job: Job, priced: Sequence[tuple[str, str | None, str | None]]
) -> None:
    """The job's estimate takes outputs that went from the batch lane to the online one at
    the online price instead of the batch price (as the worker will cost them)."""
    online = pricing.price_of_outputs(priced, Lane.ONLINE)
    batch = pricing.price_of_outputs(priced, Lane.BATCH)
    if online != batch:
        job.estimate_usd = round(job.estimate_usd + online - batch, 6)
        session.add(job)


def due_batches(session: Session, now: datetime, limit: int) -> list[str]:
    """Batch dispatches whose next step is due: waiting ones due for a poll or past their
    job's deadline, and submits still unsent at their job's deadline."""
    rows = session.exec(
        select(Dispatch.id)
        .join(Job, col(Job.id) == col(Dispatch.job_id))
        .where(
            sa.or_(
                sa.and_(
                    col(Dispatch.status) == DispatchStatus.BATCHED,
                    sa.or_(col(Dispatch.next_poll_at) <= now, col(Job.batch_deadline_at) <= now),
                ),
                sa.and_(
                    col(Dispatch.status) == DispatchStatus.PENDING,
                    col(Dispatch.task) == DispatchTask.BATCH_SUBMIT,
                    col(Job.batch_deadline_at) <= now,
                ),
            )
        )
        .order_by(col(Dispatch.next_poll_at))
        .limit(limit)
    ).all()
    return list(rows)


def advance_batch(session: Session, settings: Settings, dispatch_id: str) -> bool:
    """Take a due batch dispatch's next step (`due_batches`): past its job's deadline its
    images go online (a waiting batch is cancelled; an unsent submit is never sent); else its
    poll is queued. False when it was not due any more."""
    locked = lock_dispatch_and_job(session, dispatch_id)
    if locked is None:
        return False
    dispatch, job = locked
    now, late = utcnow(), _past_deadline(job)
    if dispatch.status == DispatchStatus.BATCHED:
        if late:
            _fall_back(session, settings, job, dispatch, Fallback.DEADLINE, cancel=True)
        elif dispatch.next_poll_at is not None and dispatch.next_poll_at <= now:
            _next_task(session, dispatch, DispatchTask.BATCH_POLL)
        else:
            return False
        return True
    if dispatch.status == DispatchStatus.PENDING and dispatch.task == DispatchTask.BATCH_SUBMIT:
        if not late:
            return False
        _fall_back(session, settings, job, dispatch, Fallback.DEADLINE, cancel=False)
        return True
    return False


def _count_fallback(session: Session, job: Job, reason: Fallback, images: int) -> None:
    """The job counts `images` more that went online for `reason`."""
    if images:
        counts = dict(job.fallback or {})
        job.fallback = counts | {reason: counts.get(reason, 0) + images}
        session.add(job)


def _cancel_late_batch(session: Session, dispatch: Dispatch, report: DispatchReport) -> None:
    """A submit that reports a live batch after its dispatch ended (its job was cancelled
    while the submit ran): nobody wants that batch, so it is cancelled."""
    batch = report.batch
    if (
        report.batch_task == DispatchTask.BATCH_SUBMIT
        and batch is not None
        and not batch.state.ended
        and dispatch.batch_name is None
    ):
        dispatch.batch_name = clip(batch.name, 200)
        session.add(dispatch)
        _queue_cancel(session, dispatch.job_id, batch.name)


def cancel_batches(session: Session, dispatches: Sequence[Dispatch]) -> None:
    """Queue a batch_cancel task for each of `dispatches` whose Gemini batch may still run
    (their job was cancelled): a dispatch of its own, holding no image."""
    for dispatch in dispatches:
        state = dispatch.batch_state
        if dispatch.task == DispatchTask.BATCH_CANCEL:  # already cancelling it
            continue
        if dispatch.batch_name and (state is None or not BatchState(state).ended):
            _queue_cancel(session, dispatch.job_id, dispatch.batch_name)


def _queue_cancel(session: Session, job_id: str, batch_name: str) -> None:
    cancel = Dispatch(
        job_id=job_id,
        task=DispatchTask.BATCH_CANCEL,
        batch_name=batch_name,
        webhook_token=new_token(),
    )
    session.add(cancel)
    _transition(cancel, None, DispatchStatus.PENDING)
    emit(
        session,
        EventKind.DISPATCH_QUEUED,
        job_id=job_id,
        dispatch_id=cancel.id,
        attempt=1,
        task=DispatchTask.BATCH_CANCEL,
    )
    wake_after_commit(session, Service.SENDER)
