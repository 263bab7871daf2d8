"""Reading one row by its id: the one way every service answers "no such …"."""

from typing import TypeVar

from sqlmodel import Session, SQLModel

from control_plane.errors import NotFound
from shared.ids import is_id

RowT = TypeVar("RowT", bound=SQLModel)


def fetch(session: Session, model: type[RowT], row_id: str, noun: str, prefix: str = "") -> RowT:
    """The `model` row with id `row_id`, or NotFound ("{noun} {row_id} does not exist"); with
    `prefix`, an id not shaped like one is not looked up (it cannot exist)."""
    row = None if prefix and not is_id(prefix, row_id) else session.get(model, row_id)
    if row is None:
        raise NotFound(f"{noun} {row_id} does not exist")
    return row
