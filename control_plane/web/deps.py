"""Typed dependencies for the routes of both front ends."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlmodel import Session

from control_plane.access import Viewer
from control_plane.errors import NotFound
from control_plane.platform import Platform
from control_plane.services import rate_limits
from shared.ids import is_id


async def get_platform(request: Request) -> Platform:
    """The app's platform (async: a plain read, which FastAPI need not hand to a thread)."""
    platform: Platform = request.app.state.platform
    return platform


def get_session(platform: Annotated[Platform, Depends(get_platform)]) -> Iterator[Session]:
    with platform.session() as session:
        yield session


def get_viewer(request: Request) -> Viewer:
    """Who the request acts for (found by `control_plane/web/auth.py`)."""
    viewer: Viewer = request.state.viewer
    return viewer


PlatformDep = Annotated[Platform, Depends(get_platform)]
ViewerDep = Annotated[Viewer, Depends(get_viewer)]
PageNumber = Annotated[int, Query(ge=1, le=1_000_000, description="1-based page number")]
PageLimit = Annotated[int, Query(ge=1, le=200, description="items per page")]
SessionDep = Annotated[Session, Depends(get_session)]


def _known_shape(value: str, prefix: str, what: str) -> str:
    """`value` if it is shaped like an id of `prefix`, else the answer an unknown id gets."""
    if not is_id(prefix, value):
        raise NotFound(f"{what} {value} does not exist")
    return value


def group_id_of(group_id: str) -> str:
    return _known_shape(group_id, "grp", "group")


def job_id_of(job_id: str) -> str:
    return _known_shape(job_id, "job", "job")


def upload_id_of(upload_id: str) -> str:
    return _known_shape(upload_id, "img", "upload")


def output_id_of(output_id: str) -> str:
    return _known_shape(output_id, "out", "image")


def catalog_id_of(catalog_id: str) -> str:
    return _known_shape(catalog_id, "cat", "catalog")


def persona_id_of(persona_id: str) -> str:
    return _known_shape(persona_id, "per", "persona")


def preset_id_of(preset_id: str) -> str:
    return _known_shape(preset_id, "pre", "preset")


# Ids in paths, checked at the edge: a malformed one is a 404 before any query runs.
GroupId = Annotated[str, Depends(group_id_of)]
JobId = Annotated[str, Depends(job_id_of)]
UploadId = Annotated[str, Depends(upload_id_of)]
OutputId = Annotated[str, Depends(output_id_of)]
CatalogId = Annotated[str, Depends(catalog_id_of)]
PersonaId = Annotated[str, Depends(persona_id_of)]
PresetId = Annotated[str, Depends(preset_id_of)]


def character_id_of(character_id: str) -> str:
    return _known_shape(character_id, "chr", "character")


CharacterId = Annotated[str, Depends(character_id_of)]


def limit_submissions(platform: PlatformDep, session: SessionDep, viewer: ViewerDep) -> None:
    """429 with Retry-After once the viewer has made their submissions of the last minute."""
    rate_limits.check_submission_rate(session, platform.settings, viewer)


# On every route that makes jobs (or queues images again): `dependencies=SUBMISSION`.
SUBMISSION = [Depends(limit_submissions)]


def batch_id_of(batch_id: str) -> str:
    return _known_shape(batch_id, "bat", "batch")


BatchId = Annotated[str, Depends(batch_id_of)]
