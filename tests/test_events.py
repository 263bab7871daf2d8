"""Domain events: written with the change that caused them, handed to each consumer once."""

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from control_plane.db import make_engine, session_scope
from control_plane.events import (
    GAP_SETTLE,
    MAX_FAILURES,
    Consumer,
    Relay,
    each_event,
    each_job_event,
    emit,
)
from control_plane.models import Event, EventCursor, EventKind, Group, Job, JobMode, utcnow
from tests.conftest import recorded_statements

pytestmark = pytest.mark.mysql


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _emit(engine: sa.Engine, *job_ids: str) -> None:
    with session_scope(engine) as session:
        for job_id in job_ids:
            emit(session, EventKind.JOB_QUEUED, job_id=job_id)


def _recorder(
    name: str, seen: list[str], fail: Callable[[Event], bool] = lambda _: False
) -> Consumer:
    """A consumer whose handling writes to the database (a group per event) and remembers."""

    def handle(session: Session, event: Event) -> None:
        if fail(event):
            raise RuntimeError(f"cannot handle {event.job_id}")
        session.add(Group(name=f"{name}:{event.job_id}"))
        seen.append(event.job_id or "")

    return Consumer(name, frozenset({EventKind.JOB_QUEUED}), each_event(handle))


def _groups(engine: sa.Engine, name: str) -> list[str]:
    with Session(engine) as session:
        rows = session.exec(select(Group.name).where(col(Group.name).startswith(name + ":")))
        return sorted(row.removeprefix(name + ":") for row in rows)


def test_committed_events_reach_each_consumer_once_in_order(engine: sa.Engine) -> None:
    _emit(engine, "a", "b")
    with pytest.raises(RuntimeError), session_scope(engine) as session:  # never committed
        emit(session, EventKind.JOB_QUEUED, job_id="rolled-back")
        raise RuntimeError("the change failed")
    _emit(engine, "c")
    first, second = [], []
    relay = Relay(engine)
    relay.subscribe(_recorder("first", first))
    relay.subscribe(_recorder("second", second))
    assert relay.run_pass() == 6
    assert first == second == ["a", "b", "c"]
    assert relay.run_pass() == 0  # nothing twice
    assert _groups(engine, "first") == ["a", "b", "c"]


def test_a_crash_between_commit_and_consumer_loses_nothing_and_repeats_nothing(
    engine: sa.Engine,
) -> None:
    _emit(engine, "a", "b")
    before, after = [], []
    relay = Relay(engine)
    relay.subscribe(_recorder("stage", before))
    relay.run_pass()
    _emit(engine, "c", "d")  # committed; the process dies before its relay runs
    restarted = Relay(engine)  # a new process: its cursor comes from the database
    restarted.subscribe(_recorder("stage", after))
    restarted.run_pass()
    assert before == ["a", "b"] and after == ["c", "d"]
    assert _groups(engine, "stage") == ["a", "b", "c", "d"]


def test_a_failing_handler_rolls_back_its_writes_and_is_retried(engine: sa.Engine) -> None:
    _emit(engine, "a", "b", "c")
    attempts: dict[str, int] = {}

    def fails_twice_on_b(event: Event) -> bool:
        attempts[event.job_id or ""] = attempts.get(event.job_id or "", 0) + 1
        return event.job_id == "b" and attempts["b"] <= 2

    relay = Relay(engine)
    relay.subscribe(_recorder("stage", [], fails_twice_on_b))
    relay.run_pass()  # the batch fails on b; one by one: a passes, b fails, c waits
    assert _groups(engine, "stage") == ["a"]
    with Session(engine) as session:
        cursor = session.get(EventCursor, "stage")
        assert cursor is not None and cursor.failures == 1
        assert "cannot handle b" in (cursor.last_error or "")
    relay.run_pass()
    assert _groups(engine, "stage") == ["a", "b", "c"]  # the failed batch's writes never stuck


def test_a_poison_event_is_skipped_after_repeated_failures(engine: sa.Engine) -> None:
    _emit(engine, "a", "poison", "c")
    relay = Relay(engine)
    relay.subscribe(_recorder("stage", [], lambda event: event.job_id == "poison"))
    healthy: list[str] = []
    relay.subscribe(_recorder("other", healthy))
    for _ in range(MAX_FAILURES):
        relay.run_pass()
    assert _groups(engine, "stage") == ["a"]
    relay.run_pass()
    assert _groups(engine, "stage") == ["a", "c"]
    assert healthy == ["a", "poison", "c"]  # one consumer's trouble holds no other back
    with Session(engine) as session:
        cursor = session.get(EventCursor, "stage")
        assert cursor is not None and "poison" in (cursor.last_error or "")


def test_a_gap_waits_for_its_transaction_then_counts_as_rolled_back(engine: sa.Engine) -> None:
    """Ids are handed out at insert: a transaction still open leaves a gap below events that
    are already visible. The relay waits for it, and after GAP_SETTLE treats it as gone."""
    _emit(engine, "a")
    with Session(engine) as session:
        last = session.exec(select(sa.func.max(Event.id))).one()
    with session_scope(engine) as session:  # id last+1 is held by a transaction not visible
        session.add(Event(id=last + 2, kind=EventKind.JOB_QUEUED, job_id="after-gap"))
    seen: list[str] = []
    relay = Relay(engine)
    relay.subscribe(_recorder("stage", seen))
    relay.run_pass()
    assert seen == ["a"]
    with session_scope(engine) as session:
        event = session.get(Event, last + 2)
        assert event is not None
        event.created_at = utcnow() - GAP_SETTLE - timedelta(seconds=1)
        session.add(event)
    relay.run_pass()
    assert seen == ["a", "after-gap"]


def test_consumers_get_only_their_kinds_and_names_are_unique(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        emit(session, EventKind.JOB_STARTED, job_id="x")
        emit(session, EventKind.JOB_QUEUED, job_id="y")
    seen: list[str] = []
    relay = Relay(engine)
    relay.subscribe(_recorder("stage", seen))
    with pytest.raises(ValueError, match="already subscribed"):
        relay.subscribe(_recorder("stage", []))
    relay.run_pass()
    assert seen == ["y"]
    with Session(engine) as session:
        cursor = session.get(EventCursor, "stage")
        assert (
            cursor is not None
            and cursor.position == session.exec(select(sa.func.max(Event.id))).one()
        )  # passed over the event it does not want, too


def test_relays_of_several_processes_hand_each_event_over_once(engine: sa.Engine) -> None:
    """Every API process runs a relay (`pixelfleet api --workers N`): four relays racing over
    one consumer's cursor while events keep coming still write each event's effect once."""
    relays = []
    for _ in range(4):
        relay = Relay(engine)
        relay.subscribe(_recorder("stage", []))
        relays.append(relay)
    emitted = [f"e{i:02}" for i in range(40)]
    done = threading.Event()

    def keep_emitting() -> None:
        for start in range(0, len(emitted), 4):
            _emit(engine, *emitted[start : start + 4])
        done.set()

    def keep_relaying(relay: Relay) -> None:
        while not done.is_set() or relay.run_pass():
            pass

    with ThreadPoolExecutor(5) as pool:
        running = [pool.submit(keep_emitting)] + [pool.submit(keep_relaying, r) for r in relays]
        for task in running:
            task.result()
    relays[0].run_pass()
    assert _groups(engine, "stage") == emitted


def test_consumers_at_one_cursor_read_the_events_after_it_once(engine: sa.Engine) -> None:
    _emit(engine, "a", "b", "c")
    seen: dict[str, list[str]] = {name: [] for name in ("one", "two", "three")}
    relay = Relay(engine)
    for name, handled in seen.items():
        relay.subscribe(_recorder(name, handled))
    relay.run_pass()  # the cursors are made at the first pass: read the events once more
    _emit(engine, "d", "e")
    with recorded_statements(engine) as statements:
        assert relay.run_pass() == 6
    assert all(handled == ["a", "b", "c", "d", "e"] for handled in seen.values())
    reads = [s for s in statements if s.startswith("SELECT") and " FROM events " in s]
    assert len(reads) == 1, reads


def test_a_job_event_handler_gets_each_event_s_job_read_once_per_batch(
    engine: sa.Engine,
) -> None:
    """`each_job_event` reads a batch's jobs in one query and hands each event its job; an
    event of no job, or of a job that no longer exists, is passed over."""
    with session_scope(engine) as session:
        group = Group(name="jobs of events")
        session.add(group)
        session.flush()
        jobs = [
            Job(group_id=group.id, batch_id="b", mode=JobMode.AUTOMATIC, prompt=f"job {index}")
            for index in range(12)
        ]
        session.add_all(jobs)
        session.flush()
        job_ids = [job.id for job in jobs]
        for job_id in [*job_ids[:6], "job_gone", *job_ids[6:]]:
            emit(session, EventKind.JOB_QUEUED, job_id=job_id)
        emit(session, EventKind.JOB_QUEUED)
    seen: list[tuple[str | None, str]] = []

    def handle(session: Session, event: Event, job: Job) -> None:
        seen.append((event.job_id, job.prompt))

    relay = Relay(engine)
    relay.subscribe(Consumer("jobs", frozenset({EventKind.JOB_QUEUED}), each_job_event(handle)))
    with recorded_statements(engine) as statements:
        assert relay.run_pass() == 14
    assert seen == [(job_id, f"job {index}") for index, job_id in enumerate(job_ids)]
    job_reads = [s for s in statements if " FROM jobs " in s]
    assert len(job_reads) == 1, job_reads
