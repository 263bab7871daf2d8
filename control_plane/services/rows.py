"""Reading one row by its id for a viewer: the one way every service answers "no such …".

Owned rows (those with a `user_id`) exist only for their owner and admins; images and
dispatches belong to their job's owner. Another user's row is answered exactly as a missing
one.
"""

from typing import TypeVar

from sqlmodel import Session, SQLModel, select

from control_plane.access import Viewer
from control_plane.errors import NotFound
from control_plane.models import Job
from shared.ids import is_id

RowT = TypeVar("RowT", bound=SQLModel)


def fetch(
    session: Session,
    model: type[RowT],
    row_id: str,
    noun: str,
    prefix: str = "",
    *,
    viewer: Viewer,
) -> RowT:
    """The `model` row with id `row_id` if `viewer` sees it, or NotFound ("{noun} {row_id}
    does not exist"); with `prefix`, an id not shaped like one is not looked up (it cannot
    exist)."""
    row = None if prefix and not is_id(prefix, row_id) else session.get(model, row_id)
    return visible(session, row, noun, row_id, viewer)


def visible(session: Session, row: RowT | None, noun: str, row_id: str, viewer: Viewer) -> RowT:
    """`row` (read by the caller, e.g. locked) if it exists and `viewer` sees it, else
    NotFound worded as for a missing one."""
    if row is None or not viewer.sees(owner_of(session, row)):
        raise NotFound(f"{noun} {row_id} does not exist")
    return row


def owner_of(session: Session, row: SQLModel) -> str | None:
    """The user a row belongs to: its own `user_id`, or its job's (images, dispatches)."""
    if hasattr(row, "user_id"):
        owner: str | None = row.user_id
        return owner
    job_id = getattr(row, "job_id", None)
    if job_id is None:
        raise TypeError(f"{type(row).__name__} rows have no owner")
    return session.exec(select(Job.user_id).where(Job.id == job_id)).first()
