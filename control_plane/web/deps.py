"""Typed dependencies for the routes of both front ends."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlmodel import Session

from control_plane.platform import Platform


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def get_session(platform: Annotated[Platform, Depends(get_platform)]) -> Iterator[Session]:
    with platform.session() as session:
        yield session


PlatformDep = Annotated[Platform, Depends(get_platform)]
PageNumber = Annotated[int, Query(ge=1, le=1_000_000, description="1-based page number")]
PageLimit = Annotated[int, Query(ge=1, le=200, description="items per page")]
SessionDep = Annotated[Session, Depends(get_session)]
