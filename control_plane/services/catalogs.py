"""Prompt catalogs: named lists of prompts, each with an id and tags, checked once when
created (a 422 names every entry at fault) and stored as checked."""

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy.orm import defer
from sqlmodel import Session, col, func, select

from control_plane.access import Viewer
from control_plane.errors import InvalidRequest, PayloadTooLarge
from control_plane.models import Catalog
from control_plane.schemas import CatalogCreate, CatalogDetail, CatalogPrompt, CatalogPublic
from control_plane.services.rows import fetch

SHAPE = '{"name": "…", "prompts": [{"id": "…", "tags": ["…"], "prompt": "…"}, …]}'
MAX_PROBLEMS = 20  # listed in one 422; the rest are counted
# The prompts are stored as one JSON value: MariaDB's default max_allowed_packet is 16 MiB.
MAX_STORED_BYTES = 12 * 2**20


def parse_catalog_json(raw: bytes, source: str) -> CatalogCreate:
    """The catalog in `raw` (JSON text), checked; `source` names it in the 422s."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise InvalidRequest(f"{source} is nested too deeply to be a catalog") from exc
    except ValueError as exc:  # not UTF-8, not JSON, or NaN/Infinity
        raise InvalidRequest(f"{source} is not valid JSON: {exc}") from exc
    return parse_catalog(data, source)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_catalog(data: object, source: str = "the catalog") -> CatalogCreate:
    """`data` checked as a catalog: every problem named by entry, ids unique."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"{source} must be a JSON object {SHAPE}, not {_kind(data)}")
    try:
        catalog = CatalogCreate.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(_problems(exc.errors(), data.get("prompts"))) from exc
    _check_unique_ids(catalog.prompts)
    return catalog


def _kind(data: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}
    return kinds.get(type(data), "a number")


def _problems(errors: Sequence[ErrorDetails], prompts: object) -> str:
    lines = [_problem(error, prompts) for error in errors]
    more = len(lines) - MAX_PROBLEMS
    return "; ".join(lines[:MAX_PROBLEMS]) + (f"; … and {more} more" if more > 0 else "")


def _problem(error: ErrorDetails, prompts: object) -> str:
    """One error as a person reads it: `prompts[3] (id 'm-04'): tags must not be empty`."""
    loc = list(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    where = ""
    if len(loc) >= 2 and loc[0] == "prompts" and isinstance(loc[1], int):
        where = _entry_label(loc[1], prompts) + ": "
        loc = loc[2:]
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    field = field.removeprefix(".")
    if not field:
        return where + message
    # Our own checks read on from the field ("tags must not be empty"), pydantic's after a colon.
    return f"{where}{field}{' ' if error['type'] == 'value_error' else ': '}{message}"


def _entry_label(index: int, prompts: object) -> str:
    label = f"prompts[{index}]"
    if isinstance(prompts, list) and index < len(prompts) and isinstance(prompts[index], dict):
        entry_id = prompts[index].get("id")
        if isinstance(entry_id, str):
            label += f" (id {_clip(entry_id)})"
    return label


def _clip(value: str, chars: int = 40) -> str:
    return repr(value if len(value) <= chars else value[:chars] + "…")


def _check_unique_ids(prompts: Sequence[CatalogPrompt]) -> None:
    """Ids unique ignoring case: they name files in the ZIP, and macOS and Windows unzip
    `M-01` and `m-01` to the same file."""
    first: dict[str, int] = {}
    problems = []
    for index, entry in enumerate(prompts):
        seen = first.setdefault(entry.id.casefold(), index)
        if seen != index:
            problems.append(
                f"prompts[{index}] (id {_clip(entry.id)}): id is already used by "
                f"prompts[{seen}] (id {_clip(prompts[seen].id)}); ids must be unique "
                "in a catalog, ignoring case"
            )
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise InvalidRequest(
            "; ".join(problems[:MAX_PROBLEMS]) + (f"; … and {more} more" if more > 0 else "")
        )


def create_catalog(session: Session, body: CatalogCreate, viewer: Viewer) -> Catalog:
    """Store a checked catalog of the viewer (committed)."""
    prompts = [entry.model_dump(exclude_none=True) for entry in body.prompts]
    stored = len(json.dumps(prompts))  # as the JSON column will serialise it
    if stored > MAX_STORED_BYTES:
        raise PayloadTooLarge(
            f"the catalog's prompts take {stored:,} bytes stored; the limit is "
            f"{MAX_STORED_BYTES:,} bytes: split it into several catalogs"
        )
    catalog = Catalog(
        user_id=viewer.user_id,
        name=body.name,
        prompts=prompts,
        prompt_count=len(prompts),
        tag_counts=dict(
            sorted(Counter(tag for entry in body.prompts for tag in entry.tags).items())
        ),
    )
    session.add(catalog)
    session.commit()
    return catalog


def get_catalog(session: Session, catalog_id: str, viewer: Viewer) -> Catalog:
    """The viewer's catalog, or NotFound (also for an id not shaped like a catalog's)."""
    return fetch(session, Catalog, catalog_id, "catalog", "cat", viewer=viewer)


def delete_catalog(session: Session, catalog_id: str, viewer: Viewer) -> None:
    """Delete the catalog; jobs made from it keep their prompts (their outputs carry them)."""
    session.delete(get_catalog(session, catalog_id, viewer))
    session.commit()


def page_of_catalogs(
    session: Session, page: int, limit: int, viewer: Viewer
) -> tuple[int, list[CatalogPublic]]:
    """The number of the viewer's catalogs, and page `page` (1-based) of them, newest first
    (their prompts are not read)."""
    owned = viewer.owned(col(Catalog.user_id))
    total = session.exec(select(func.count()).select_from(Catalog).where(*owned)).one()
    rows = session.exec(
        select(Catalog)
        .where(*owned)
        .options(defer(Catalog.prompts))  # type: ignore[arg-type]
        .order_by(col(Catalog.id).desc())
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return total, [catalog_public(catalog) for catalog in rows]


def catalog_public(catalog: Catalog) -> CatalogPublic:
    return CatalogPublic(
        id=catalog.id,
        name=catalog.name,
        prompt_count=catalog.prompt_count,
        tags=list(catalog.tag_counts),
        tag_counts=catalog.tag_counts,
        created_at=catalog.created_at,
    )


def catalog_detail(catalog: Catalog) -> CatalogDetail:
    return CatalogDetail(
        **catalog_public(catalog).model_dump(),
        prompts=[CatalogPrompt.model_validate(entry) for entry in catalog.prompts],
    )


def entries_tagged(catalog: Catalog, tag: str) -> list[dict[str, Any]]:
    """The catalog's entries carrying `tag`, in catalog order."""
    return [entry for entry in catalog.prompts if tag in entry["tags"]]
