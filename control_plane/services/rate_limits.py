"""Per-user submission limits: `PIXELFLEET_SUBMIT_RATE_PER_MIN_FREE` / `_PAID` submissions in
any sliding minute, counted from the database (the jobs a user's submissions made, one per
batch), so every control-plane process counts the same. Admins, the implicit local user and
the admin password are not limited.

Two submissions at the same instant may both pass the last free slot: the limit holds to
within the requests one user has in flight at once.
"""

import math
from datetime import UTC, timedelta

from sqlmodel import Session, col, func, select

from control_plane.access import Viewer
from control_plane.errors import RateLimited
from control_plane.models import Job, UserTier, utcnow
from control_plane.settings import Settings
from shared.ids import first_id_at

WINDOW = timedelta(minutes=1)


def submissions_per_minute(settings: Settings, tier: UserTier) -> int:
    """The limit of a user of `tier` (0: none)."""
    if tier == UserTier.PAID:
        return settings.submit_rate_per_min_paid
    return settings.submit_rate_per_min_free


def check_submission_rate(session: Session, settings: Settings, viewer: Viewer) -> None:
    """RateLimited (429, with when to try again) if the viewer has made their limit of
    submissions within the last minute."""
    limit = submissions_per_minute(settings, viewer.tier)
    if viewer.is_admin or viewer.user_id is None or not limit:
        return
    now = utcnow()
    since = now - WINDOW
    floor = first_id_at("job", math.floor(since.replace(tzinfo=UTC).timestamp() * 1000))
    made = session.exec(
        select(func.min(Job.created_at))
        .where(
            col(Job.user_id) == viewer.user_id,
            col(Job.id) >= floor,  # the (user_id, id) index: only the last minute's jobs
            col(Job.created_at) >= since,
        )
        .group_by(col(Job.batch_id))
        .order_by(func.min(Job.created_at))
    ).all()
    if len(made) < limit:
        return
    frees_at = made[len(made) - limit] + WINDOW  # when the window drops below the limit
    wait_s = max((frees_at - now).total_seconds(), 1.0)
    raise RateLimited(
        f"{viewer.tier} users may make {limit} submissions a minute; try again in "
        f"{math.ceil(wait_s)} s",
        wait_s,
    )
