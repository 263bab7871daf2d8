"""What users have spent: the month's spend against a user's cap, and usage by bucket.

Spend is read from the outputs' actual costs (`Output.cost_usd`, reported by the worker)
by the time they ended, plus, for a cap, what is still in flight: each unfinished job's
unfinished images at their estimated price.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlmodel import Session, col, select

from control_plane.access import Viewer
from control_plane.db import lock_row
from control_plane.errors import InvalidRequest, PaymentRequired
from control_plane.models import (
    ACTIVE_JOB,
    TERMINAL_OUTPUT,
    Group,
    Job,
    Output,
    OutputStatus,
    User,
    utcnow,
)
from control_plane.schemas import Estimate, Usage, UsageBucket

GroupBy = Literal["day", "model", "user", "group", "lane"]
MAX_RANGE_DAYS = 366


@dataclass(frozen=True)
class Spend:
    actual_usd: float  # outputs that ended this month
    in_flight_usd: float  # unfinished images at their estimated price

    @property
    def total_usd(self) -> float:
        return self.actual_usd + self.in_flight_usd


def month_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, 1)


def next_month(start: datetime) -> datetime:
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1)


def lock_capped_owner(session: Session, group_id: str) -> User | None:
    """The owner of group `group_id` when they have a spend cap, their row locked until the
    transaction ends (so two submissions of theirs check and write one after the other), else
    None."""
    owner_id = session.exec(select(Group.user_id).where(col(Group.id) == group_id)).first()
    if owner_id is None:
        return None
    capped = col(User.id) == owner_id, sa.not_(col(User.monthly_cap_usd).is_(None))
    if session.exec(select(User.id).where(*capped)).first() is None:
        return None
    user = lock_row(session, User, owner_id)
    return user if user is not None and user.monthly_cap_usd is not None else None


def month_spend(session: Session, user_id: str, now: datetime | None = None) -> Spend:
    """User `user_id`'s spend in the current UTC month: actual and in flight."""
    start = month_start(now or utcnow())
    actual = session.exec(
        select(sa.func.coalesce(sa.func.sum(col(Output.cost_usd)), 0.0))
        .select_from(Job)
        .join(Output, col(Output.job_id) == col(Job.id))
        .where(
            col(Job.user_id) == user_id,
            col(Job.updated_at) >= start,  # a job whose output ended since then was touched
            col(Output.completed_at) >= start,
            col(Output.completed_at) < next_month(start),
        )
    ).one()
    unfinished = col(Job.total) - col(Job.succeeded) - col(Job.failed) - col(Job.blocked)
    in_flight = session.exec(
        select(
            sa.func.coalesce(
                sa.func.sum(col(Job.estimate_usd) * unfinished / sa.func.nullif(col(Job.total), 0)),
                0.0,
            )
        ).where(col(Job.user_id) == user_id, col(Job.status).in_(ACTIVE_JOB))
    ).one()
    return Spend(actual_usd=float(actual or 0), in_flight_usd=float(in_flight or 0))


def check_cap(user: User, spend: Spend, estimate: Estimate) -> None:
    """402 when `estimate` would take the user's month over their cap."""
    cap = user.monthly_cap_usd
    if cap is None or estimate.cost_usd <= 0:
        return
    if spend.total_usd + estimate.cost_usd > cap + 1e-9:
        raise PaymentRequired(
            f"this submission's {estimate.images:,} images cost about ${estimate.cost_usd:,.2f}; "
            f"you have spent ${spend.total_usd:,.2f} of your ${cap:,.2f} monthly cap, "
            f"${spend.in_flight_usd:,.2f} of it in flight; nothing was submitted"
        )


# -- usage --------------------------------------------------------------------------------


def usage_range(start: date | None, end: date | None, today: date) -> tuple[date, date]:
    """The range asked for, by default this month (both days included)."""
    first = start or today.replace(day=1)
    last = end or (next_month(datetime(first.year, first.month, 1)).date() - timedelta(days=1))
    if last < first:
        raise InvalidRequest(f"to ({last}) is before from ({first})")
    if (last - first).days >= MAX_RANGE_DAYS:
        raise InvalidRequest(f"a range of at most {MAX_RANGE_DAYS} days, please")
    return first, last


def usage(session: Session, viewer: Viewer, start: date, end: date, group_by: GroupBy) -> Usage:
    """Outputs that ended from `start` to `end` (UTC days, both included), in buckets; the
    viewer's own unless they are an admin."""
    since = datetime(start.year, start.month, start.day)
    until = datetime(end.year, end.month, end.day) + timedelta(days=1)
    key = _bucket_key(group_by)
    succeeded = sa.func.sum(sa.case((col(Output.status) == OutputStatus.SUCCEEDED, 1), else_=0))
    rows = session.exec(
        select(key, sa.func.count(), succeeded, sa.func.sum(col(Output.cost_usd)))
        .select_from(Job)
        .join(Output, col(Output.job_id) == col(Job.id))
        .where(
            *viewer.owned(col(Job.user_id)),
            col(Job.updated_at) >= since,
            col(Output.completed_at) >= since,
            col(Output.completed_at) < until,
            col(Output.status).in_(TERMINAL_OUTPUT),
        )
        .group_by(key)
    ).all()
    buckets = sorted(
        (
            UsageBucket(
                key=_key_text(value),
                images=int(count),
                succeeded=int(ok or 0),
                cost_usd=round(float(cost or 0), 6),
            )
            for value, count, ok, cost in rows
        ),
        key=lambda bucket: bucket.key or "",
    )
    _name_buckets(session, buckets, group_by)
    return Usage(
        start=start.isoformat(),
        end=end.isoformat(),
        group_by=group_by,
        images=sum(bucket.images for bucket in buckets),
        cost_usd=round(sum(bucket.cost_usd for bucket in buckets), 6),
        buckets=buckets,
    )


def _bucket_key(group_by: GroupBy) -> Any:
    if group_by == "day":
        return sa.func.date(col(Output.completed_at))
    if group_by == "model":
        return col(Output.model)
    if group_by == "user":
        return col(Job.user_id)
    if group_by == "lane":  # the job's lane (its images that fell back online included)
        return col(Job.lane)
    return col(Job.group_id)


def _key_text(value: Any) -> str | None:
    if isinstance(value, date):
        return value.isoformat()
    return None if value is None else str(value)


def _name_buckets(session: Session, buckets: list[UsageBucket], group_by: GroupBy) -> None:
    """Users' and groups' names (a deleted group's bucket keeps its id only); the implicit
    local user (no user id) is `local`."""
    table: Any = {"user": User, "group": Group}.get(group_by)
    if table is None:
        return
    ids = [bucket.key for bucket in buckets if bucket.key is not None]
    names = dict(session.exec(select(table.id, table.name).where(col(table.id).in_(ids))).all())
    for bucket in buckets:
        if bucket.key is None and group_by == "user":
            bucket.name = "local"
        elif bucket.key is not None:
            bucket.name = names.get(bucket.key)
