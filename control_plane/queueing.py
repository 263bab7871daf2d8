"""Fair priority queueing: the order the sender hands dispatches to RunPod, the caps it
keeps, and where a job stands in that order.

- Paid users' dispatches go before free users' (work of no user, the implicit local user or
  the admin password, counts as paid).
- Within a tier users take turns, one dispatch per user per turn: a user's n-th queued
  dispatch has turn `in flight + n`, so a user holding many dispatches at RunPod waits while
  one holding none is served (a 4-image set is not stuck behind 1,250 dispatches of another
  user's 20,000 images). Within a turn, the user served least recently goes first (their
  last send, over their unfinished jobs), so turns rotate even when nobody holds anything.
- Caps on dispatches in flight at RunPod (claimed or submitted): per user by tier, and for
  the whole endpoint. A user at their cap is skipped; their work waits for a dispatch of
  theirs to end (ending a dispatch wakes the sender).

Everything is counted from the database, so every control-plane process agrees on it.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from control_plane.lifecycle import claimable
from control_plane.models import ACTIVE_JOB, Dispatch, DispatchStatus, Job, User, UserTier
from control_plane.settings import Settings

TIER_ORDER = {UserTier.PAID: 0, UserTier.FREE: 1}


@dataclass(frozen=True)
class Caps:
    """0: no cap."""

    in_flight: int
    per_user: dict[UserTier, int]

    @classmethod
    def of(cls, settings: Settings) -> "Caps":
        return cls(
            in_flight=settings.max_inflight_dispatches,
            per_user={
                UserTier.FREE: settings.max_inflight_per_user_free,
                UserTier.PAID: settings.max_inflight_per_user_paid,
            },
        )

    @property
    def any(self) -> bool:
        return bool(self.in_flight or any(self.per_user.values()))

    def room(self, tier: UserTier, in_flight: int) -> int | None:
        """How many more dispatches a user of `tier` with `in_flight` may send (None: any)."""
        cap = self.per_user[tier]
        return max(cap - in_flight, 0) if cap else None


@dataclass
class UserQueue:
    """One user's dispatches: waiting to be sent, and in flight at RunPod."""

    user_id: str | None
    tier: UserTier
    queued: int = 0
    in_flight: int = 0
    last_sent_at: datetime | None = None  # their latest send (unfinished jobs); None: none

    def order(self, turn: int) -> tuple[int, int, datetime, str]:
        """Where this user's dispatch of `turn` (1: their next) stands in the send order."""
        return (
            TIER_ORDER[self.tier],
            self.in_flight + turn,
            self.last_sent_at or datetime.min,
            self.user_id or "",
        )


@dataclass(frozen=True)
class Window:
    """When a dispatch counts as queued or in flight: a claim older than `stale_after` is
    queued again (its sender died, `lifecycle.claimable`)."""

    now: datetime
    stale_after: timedelta

    @property
    def queued(self) -> Any:
        return claimable(self.now, self.stale_after)

    @property
    def in_flight(self) -> Any:
        return sa.or_(
            col(Dispatch.status) == DispatchStatus.SUBMITTED,
            sa.and_(
                col(Dispatch.status) == DispatchStatus.SUBMITTING,
                col(Dispatch.updated_at) >= self.now - self.stale_after,
            ),
        )


# -- counting ---------------------------------------------------------------------------


def tiers(session: Session, user_ids: Iterable[str | None]) -> dict[str | None, UserTier]:
    """Each user's tier: no user (local, admin password) is paid; an unknown user free."""
    wanted = {user_id for user_id in user_ids if user_id is not None}
    found = dict(
        session.exec(select(User.id, User.tier).where(col(User.id).in_(wanted))).all()
        if wanted
        else []
    )
    return {
        None: UserTier.PAID,
        **{user_id: UserTier(found.get(user_id, UserTier.FREE)) for user_id in wanted},
    }


def in_flight_by_user(session: Session, window: Window) -> dict[str | None, int]:
    rows = session.exec(
        select(Job.user_id, func.count())
        .select_from(Dispatch)
        .join(Job, col(Job.id) == col(Dispatch.job_id))
        .where(window.in_flight)
        .group_by(col(Job.user_id))
    ).all()
    return dict(rows)


def last_sent(session: Session) -> dict[str | None, datetime]:
    """Each user's latest send to RunPod, over their unfinished jobs (the jobs' status index,
    then their dispatches)."""
    rows = session.exec(
        select(Job.user_id, func.max(Dispatch.submitted_at))
        .select_from(Job)
        .join(Dispatch, col(Dispatch.job_id) == col(Job.id))
        .where(col(Job.status).in_(ACTIVE_JOB), col(Dispatch.submitted_at).is_not(None))
        .group_by(col(Job.user_id))
    ).all()
    return {user_id: at for user_id, at in rows if at is not None}


def user_queues(session: Session, window: Window) -> dict[str | None, UserQueue]:
    """Every user with dispatches queued or in flight."""
    queued = session.exec(
        select(Job.user_id, func.count())
        .select_from(Dispatch)
        .join(Job, col(Job.id) == col(Dispatch.job_id))
        .where(window.queued)
        .group_by(col(Job.user_id))
    ).all()
    in_flight = in_flight_by_user(session, window)
    sent = last_sent(session)
    tier_of = tiers(session, [*in_flight, *(row[0] for row in queued)])
    queues = {
        user_id: UserQueue(user_id, tier_of[user_id], 0, count, sent.get(user_id))
        for user_id, count in in_flight.items()
    }
    for user_id, count in queued:
        queue = queues.setdefault(
            user_id, UserQueue(user_id, tier_of[user_id], last_sent_at=sent.get(user_id))
        )
        queue.queued = count
    return queues


def position(queues: dict[str | None, UserQueue], user_id: str | None, turn: int) -> int:
    """How many dispatches the sender sends before `user_id`'s queued dispatch of `turn`
    (caps aside: a user at their cap is skipped, which only brings the others forward)."""
    me = queues[user_id]
    mine = me.order(turn)
    ahead = turn - 1
    for other in queues.values():
        if other is me:
            continue
        if TIER_ORDER[other.tier] != TIER_ORDER[me.tier]:
            ahead += other.queued if TIER_ORDER[other.tier] < TIER_ORDER[me.tier] else 0
            continue
        # their turns before mine, and mine too if they go first within a turn
        first_within_turn = other.order(mine[1] - other.in_flight) < mine
        turns = mine[1] - other.in_flight - (0 if first_within_turn else 1)
        ahead += min(max(turns, 0), other.queued)
    return ahead


def _turn_column() -> Any:
    """A dispatch's place in its user's own queue (1: their next), oldest first."""
    return (
        func.row_number()
        .over(
            partition_by=col(Job.user_id),
            order_by=(col(Dispatch.created_at), col(Dispatch.id)),
        )
        .label("turn")
    )


# -- the sender's plan ------------------------------------------------------------------


def plan(
    session: Session, settings: Settings, window: Window, before: datetime, limit: int
) -> list[str]:
    """The next at most `limit` dispatches to send, in the fair order, within the caps, but
    none released since `before` (the pass's start: a send that failed in this pass waits for
    the next one; work queued during the pass takes its turn in the pass's next round)."""
    if session.exec(select(Dispatch.id).where(window.queued).limit(1)).first() is None:
        return []  # nothing waits (a pass after a dispatch ended, mostly): one index probe
    caps = Caps.of(settings)
    in_flight = in_flight_by_user(session, window)
    if caps.in_flight:
        limit = min(limit, caps.in_flight - sum(in_flight.values()))
    if limit <= 0:
        return []
    ranked = (
        select(
            col(Dispatch.id).label("id"),
            col(Job.user_id).label("user_id"),
            _turn_column(),
        )
        .join(Job, col(Job.id) == col(Dispatch.job_id))
        .where(
            window.queued,
            sa.or_(col(Dispatch.updated_at) <= before, col(Dispatch.created_at) > before),
        )
        .subquery()
    )
    rows = session.exec(
        select(ranked.c.id, ranked.c.user_id, ranked.c.turn).where(ranked.c.turn <= limit)
    ).all()
    if not rows:
        return []
    tier_of = tiers(session, {user_id for _, user_id, _ in rows})
    sent = last_sent(session)
    queues = {
        user_id: UserQueue(
            user_id, tier_of[user_id], 0, in_flight.get(user_id, 0), sent.get(user_id)
        )
        for _, user_id, turn in rows
        if turn == 1
    }
    chosen = sorted(
        (queues[user_id].order(turn), dispatch_id)
        for dispatch_id, user_id, turn in rows
        if user_id in queues
        and _within(caps.room(queues[user_id].tier, queues[user_id].in_flight), turn)
    )
    return [dispatch_id for _, dispatch_id in chosen[:limit]]


def _within(room: int | None, turn: int) -> bool:
    return room is None or turn <= room


def has_room(session: Session, settings: Settings, window: Window, dispatch_id: str) -> bool:
    """Whether the caps leave room for one more dispatch now, for `dispatch_id`'s user (checked
    again as each dispatch is claimed: other processes may have sent meanwhile)."""
    caps = Caps.of(settings)
    if not caps.any:
        return True
    user_id = session.exec(
        select(Job.user_id)
        .join(Dispatch, col(Dispatch.job_id) == col(Job.id))
        .where(col(Dispatch.id) == dispatch_id)
    ).first()
    in_flight = in_flight_by_user(session, window)
    if caps.in_flight and sum(in_flight.values()) >= caps.in_flight:
        return False
    room = caps.room(tiers(session, [user_id])[user_id], in_flight.get(user_id, 0))
    return room is None or room > 0


# -- where jobs stand -------------------------------------------------------------------


def job_positions(session: Session, window: Window, jobs: Sequence[Job]) -> dict[str, int]:
    """`queue_position` of each job with dispatches queued: how many dispatches the sender
    sends before the job's next one."""
    active = [job for job in jobs if job.status in ACTIVE_JOB]
    if not active:
        return {}
    queues: dict[str | None, UserQueue] | None = None
    positions = {}
    for job in active:
        turn = _next_turn(session, window, job)
        if turn is None:
            continue
        queues = queues if queues is not None else user_queues(session, window)
        if job.user_id in queues:
            positions[job.id] = position(queues, job.user_id, turn)
    return positions


def _next_turn(session: Session, window: Window, job: Job) -> int | None:
    """The turn of the job's next queued dispatch in its user's queue; None: none queued."""
    first = session.exec(
        select(Dispatch.id, Dispatch.created_at)
        .where(col(Dispatch.job_id) == job.id, window.queued)
        .order_by(col(Dispatch.created_at), col(Dispatch.id))
        .limit(1)
    ).first()
    if first is None:
        return None
    dispatch_id, created_at = first
    owner = col(Job.user_id).is_(None) if job.user_id is None else col(Job.user_id) == job.user_id
    earlier = session.exec(
        select(func.count())
        .select_from(Dispatch)
        .join(Job, col(Job.id) == col(Dispatch.job_id))
        .where(
            owner,
            window.queued,
            sa.or_(
                col(Dispatch.created_at) < created_at,
                sa.and_(col(Dispatch.created_at) == created_at, col(Dispatch.id) < dispatch_id),
            ),
        )
    ).one()
    return earlier + 1


@dataclass(frozen=True)
class JobQueue:
    job_id: str
    user_id: str | None
    queued: int
    in_flight: int
    queue_position: int | None


def jobs_in_queue(
    session: Session, window: Window, queues: dict[str | None, UserQueue], user_id: Any
) -> list[JobQueue]:
    """Every job with dispatches queued or in flight (of `user_id` only, unless it is
    `ALL_USERS`), next to be sent first."""
    ranked = (
        select(
            col(Dispatch.job_id).label("job_id"), col(Job.user_id).label("user_id"), _turn_column()
        )
        .join(Job, col(Job.id) == col(Dispatch.job_id))
        .where(window.queued)
        .subquery()
    )
    mine = [] if user_id is ALL_USERS else [_owner(ranked.c.user_id, user_id)]
    queued = session.exec(
        select(ranked.c.job_id, ranked.c.user_id, func.count(), func.min(ranked.c.turn))
        .where(*mine)
        .group_by(ranked.c.job_id, ranked.c.user_id)
    ).all()
    flying_mine = [] if user_id is ALL_USERS else [_owner(col(Job.user_id), user_id)]
    flying = session.exec(
        select(Dispatch.job_id, Job.user_id, func.count())
        .join(Job, col(Job.id) == col(Dispatch.job_id))
        .where(window.in_flight, *flying_mine)
        .group_by(col(Dispatch.job_id), col(Job.user_id))
    ).all()
    positions = {job_id: position(queues, owner, turn) for job_id, owner, _, turn in queued}
    owners = {job_id: owner for job_id, owner, *_ in (*queued, *flying)}
    waiting = {job_id: count for job_id, _, count, _ in queued}
    sent = {job_id: count for job_id, _, count in flying}
    listed = [
        JobQueue(job_id, owner, waiting.get(job_id, 0), sent.get(job_id, 0), positions.get(job_id))
        for job_id, owner in owners.items()
    ]
    return sorted(listed, key=lambda j: (j.queue_position is None, j.queue_position or 0, j.job_id))


ALL_USERS = object()


def _owner(column: Any, user_id: str | None) -> Any:
    return column.is_(None) if user_id is None else column == user_id


def queue_state(
    session: Session, window: Window, user_id: Any = ALL_USERS
) -> tuple[dict[str | None, UserQueue], list[UserQueue], list[JobQueue]]:
    """Every user's queue (positions count everyone's work), the users shown (`user_id`
    only, unless `ALL_USERS`) in send order, and their jobs in the queue."""
    queues = user_queues(session, window)
    shown = [q for q in queues.values() if user_id is ALL_USERS or q.user_id == user_id]
    shown.sort(key=lambda q: q.order(1))
    return queues, shown, jobs_in_queue(session, window, queues, user_id)


def names(session: Session, user_ids: Iterable[str | None]) -> dict[str | None, str]:
    """Users' names; no user is "local" (the implicit local user or the admin password)."""
    wanted = {user_id for user_id in user_ids if user_id is not None}
    rows = session.exec(select(User.id, User.name).where(col(User.id).in_(wanted))).all()
    return {None: "local", **dict(rows)} if wanted else {None: "local"}
