"""Domain events: written with the change that caused them, read by consumers after commit.

This is the one hook for everything that reacts to the pipeline (workflow stages, analytics,
metrics, webhooks to users): subscribe a `Consumer` to the kinds it cares about, never add a
path of your own into `control_plane/lifecycle.py` or to RunPod.

- `emit` adds an event row in the caller's transaction, so an event exists exactly when the
  change it describes was committed, and wakes the relay once that commit happens.
- The relay hands each consumer the events after its cursor, in id order, and moves the cursor
  in the same transaction as the consumer's `handle`: what a handler writes to the database
  happens exactly once, even across crashes. Effects outside the database (an HTTP call) happen
  at least once, so such handlers must be idempotent.
- A handler that raises is retried on the next pass; after `MAX_FAILURES` on the same event it
  is skipped with an error in the log and in the cursor's `last_error`.
- Ids are handed out at insert but become visible at commit, so a transaction still open can
  leave a gap below a visible event; the relay waits `GAP_SETTLE` for it, then treats it as
  rolled back. Control-plane transactions commit within milliseconds of writing their events.
"""

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from control_plane.background import Service
from control_plane.db import Wake, in_batches, lock_row, session_scope, wake_after_commit
from control_plane.models import Event, EventCursor, EventKind, Job, clip, utcnow

log = logging.getLogger(__name__)
BATCH = 500
MAX_FAILURES = 5
GAP_SETTLE = timedelta(seconds=10)
HELD = "events_held"


def emit(
    session: Session,
    kind: EventKind,
    *,
    job_id: str | None = None,
    dispatch_id: str | None = None,
    output_id: str | None = None,
    **data: Any,
) -> None:
    """Record that `kind` happened, as part of the caller's transaction (or keep it back
    while `held`)."""
    event = Event(kind=kind, job_id=job_id, dispatch_id=dispatch_id, output_id=output_id, data=data)
    kept: list[Event] | None = session.info.get(HELD)
    if kept is not None:
        kept.append(event)
        return
    session.add(event)
    wake_after_commit(session, Service.RELAY)


def event_row(
    kind: EventKind,
    now: datetime,
    *,
    job_id: str | None = None,
    dispatch_id: str | None = None,
    output_id: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    """An event's columns as plain values, for `emit_many`."""
    return {
        "kind": kind,
        "job_id": job_id,
        "dispatch_id": dispatch_id,
        "output_id": output_id,
        "data": data,
        "created_at": now,
    }


def emit_many(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Record several events at once, as one multi-row insert in the caller's transaction (a
    dispatch's output events); ids follow the order of `rows`, each an event's columns as
    plain values (`event_row`): a thousand Event objects cost more than their insert."""
    if not rows:
        return
    kept: list[Event] | None = session.info.get(HELD)
    if kept is not None:
        kept.extend(Event(**row) for row in rows)
        return
    if any(isinstance(pending, Event) for pending in session.new):
        session.flush()  # events emitted earlier get their (lower) ids first
    with session.no_autoflush:  # other changes are the caller's to write, once, at commit
        session.execute(sa.insert(Event.__table__), list(rows))  # type: ignore[attr-defined]
    wake_after_commit(session, Service.RELAY)


def with_jobs(session: Session, events: Sequence[Event]) -> list[tuple[Event, Job]]:
    """Each of `events` with its job, in order, the jobs read in one query (per thousand); an
    event of no job, or of a job deleted since, is left out."""
    job_ids = sorted({event.job_id for event in events if event.job_id})
    jobs = {
        job.id: job
        for batch in in_batches(job_ids)
        for job in session.exec(select(Job).where(col(Job.id).in_(batch))).all()
    }
    return [(event, job) for event in events if (job := jobs.get(event.job_id or "")) is not None]


@contextmanager
def held(session: Session) -> Iterator[list[Event]]:
    """Events emitted inside are kept back in the list yielded, in order, for the caller to
    `release` once it knows the transaction will commit: a transaction that may yet be
    rolled back (a submission planned before its cost is checked) hands out no event ids,
    so it leaves the relay no gap to wait for (MySQL's ids are not given back)."""
    kept: list[Event] = []
    session.info[HELD] = kept
    try:
        yield kept
    finally:
        session.info.pop(HELD, None)


def release(session: Session, events: Sequence[Event]) -> None:
    """Write events kept back by `held` in the caller's transaction."""
    session.add_all(events)
    if events:
        wake_after_commit(session, Service.RELAY)


Handler = Callable[[Session, Sequence[Event]], None]


@dataclass(frozen=True)
class Consumer:
    """Something that reacts to events: `handle(session, events)` gets a batch's events of
    `kinds`, in id order, in the transaction that moves this consumer's cursor past them
    (`each_event` and `each_job_event` make one of a handler of single events)."""

    name: str
    kinds: frozenset[EventKind]
    handle: Handler


def each_event(handle: Callable[[Session, Event], None]) -> Handler:
    """A batch handler calling `handle` for each event."""

    def handle_each(session: Session, events: Sequence[Event]) -> None:
        for event in events:
            handle(session, event)

    return handle_each


def each_job_event(handle: Callable[[Session, Event, Job], None]) -> Handler:
    """A batch handler calling `handle` for each event with the event's job (`with_jobs`)."""

    def handle_each(session: Session, events: Sequence[Event]) -> None:
        for event, job in with_jobs(session, events):
            handle(session, event, job)

    return handle_each


class Relay:
    """Feeds committed events to the subscribed consumers, each at its own pace."""

    def __init__(self, engine: sa.Engine, wake: Wake | None = None) -> None:
        self.engine = engine
        self.wake = wake
        self.consumers: list[Consumer] = []
        self._cursors_made: set[str] = set()

    def subscribe(self, consumer: Consumer) -> None:
        if any(known.name == consumer.name for known in self.consumers):
            raise ValueError(f"a consumer named {consumer.name!r} is already subscribed")
        self.consumers.append(consumer)

    def run_pass(self) -> int:
        """Hand every consumer what it has not seen yet (blocking); returns events passed.
        Consumers usually stand at the same cursor: the events after it are read once."""
        read: dict[int, list[Event]] = {}
        return sum(self._catch_up(consumer, read) for consumer in self.consumers)

    def _catch_up(self, consumer: Consumer, read: dict[int, list[Event]]) -> int:
        if consumer.name not in self._cursors_made:
            _ensure_cursor(self.engine, consumer.name)
            self._cursors_made.add(consumer.name)
        passed = 0
        while True:
            start, events = self._next_events(consumer.name, read)
            if not events:
                return passed
            moved = self._handle_batch(consumer, start, events)
            passed += moved
            if moved < len(events) or len(events) < BATCH:
                return passed

    def _next_events(self, name: str, read: dict[int, list[Event]]) -> tuple[int, list[Event]]:
        """The consumer's cursor and the settled events after it (`read` this pass, by
        cursor, or read now and kept there)."""
        with session_scope(self.engine) as session:
            cursor = session.get(EventCursor, name)
            start = cursor.position if cursor else 0
            if start not in read:
                rows = session.exec(
                    select(Event).where(col(Event.id) > start).order_by(col(Event.id)).limit(BATCH)
                ).all()
                read[start] = list(_settled(rows, start, utcnow()))
        return start, read[start]

    def _handle_batch(self, consumer: Consumer, start: int, events: list[Event]) -> int:
        """All of `events` in one transaction; on a failure, one by one up to the bad one."""
        try:
            with session_scope(self.engine, self.wake) as session:
                if not _move_cursor(session, consumer, start, events):
                    return 0
        except Exception:
            log.warning("consumer %s: batch failed; handling one by one", consumer.name)
            return self._handle_one_by_one(consumer, start, events)
        return len(events)

    def _handle_one_by_one(self, consumer: Consumer, start: int, events: list[Event]) -> int:
        for done, event in enumerate(events):
            try:
                with session_scope(self.engine, self.wake) as session:
                    if not _move_cursor(session, consumer, start, [event]):
                        return done
            except Exception as exc:
                _record_failure(self.engine, consumer.name, start, event, exc)
                return done
            start = event.id or start
        return len(events)


def _settled(rows: Sequence[Event], start: int, now: datetime) -> Iterator[Event]:
    """`rows` up to the first gap that may still be filled by a transaction not yet committed."""
    expected = start + 1
    for event in rows:
        assert event.id is not None
        if event.id != expected and event.created_at > now - GAP_SETTLE:
            return
        yield event
        expected = event.id + 1


def _ensure_cursor(engine: sa.Engine, name: str) -> None:
    with session_scope(engine) as session:
        if session.get(EventCursor, name) is not None:
            return
    try:
        with session_scope(engine) as session:
            session.add(EventCursor(consumer=name))
    except sa.exc.IntegrityError:
        pass  # another process created it first


def _lock_cursor(session: Session, name: str, start: int) -> EventCursor | None:
    """The consumer's cursor, locked, if it is still at `start` (else another process moved
    it meanwhile, and this pass stops)."""
    cursor = lock_row(session, EventCursor, name)
    return cursor if cursor is not None and cursor.position == start else None


def _move_cursor(session: Session, consumer: Consumer, start: int, events: list[Event]) -> bool:
    cursor = _lock_cursor(session, consumer.name, start)
    if cursor is None:
        return False
    wanted = [event for event in events if event.kind in consumer.kinds]
    if wanted:
        consumer.handle(session, wanted)
    cursor.position = events[-1].id or start
    cursor.failures, cursor.updated_at = 0, utcnow()
    session.add(cursor)
    return True


def _record_failure(engine: sa.Engine, name: str, start: int, event: Event, exc: Exception) -> None:
    with session_scope(engine) as session:
        cursor = _lock_cursor(session, name, start)
        if cursor is None:
            return
        cursor.failures += 1
        cursor.last_error = clip(f"event {event.id} ({event.kind}): {type(exc).__name__}: {exc}")
        cursor.updated_at = utcnow()
        if cursor.failures >= MAX_FAILURES:
            log.error(
                "consumer %s skips event %s after %d failures: %s",
                name,
                event.id,
                cursor.failures,
                cursor.last_error,
                exc_info=exc,
            )
            cursor.position, cursor.failures = event.id or start, 0
        else:
            log.warning("consumer %s failed on event %s: %s", name, event.id, cursor.last_error)
        session.add(cursor)
