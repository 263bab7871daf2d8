"""Typed dependencies for the routes."""

from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request
from sqlmodel import Session

from control_plane.services.platform import Platform
from control_plane.settings import Settings


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def get_session(platform: Annotated[Platform, Depends(get_platform)]) -> Iterator[Session]:
    with Session(platform.engine, expire_on_commit=False) as session:
        yield session


def get_settings(platform: Annotated[Platform, Depends(get_platform)]) -> Settings:
    return platform.settings


R = TypeVar("R")


def commit_after(session: Session, operation: Callable[[], R]) -> R:
    """Run `operation`, then commit (blocking: call through run_in_threadpool)."""
    result = operation()
    session.commit()
    return result


PlatformDep = Annotated[Platform, Depends(get_platform)]
PageNumber = Annotated[int, Query(ge=1, le=1_000_000, description="1-based page number")]
PageLimit = Annotated[int, Query(ge=1, le=200, description="items per page")]
SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
