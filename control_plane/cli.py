"""The `pixelfleet` command."""

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Annotated, TypeVar

import typer
import uvicorn
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from control_plane.db import migrate as run_migrations
from control_plane.settings import Settings
from shared.settings import describe_settings_error
from shared.storage import Storage, StorageError, open_storage

app = typer.Typer(help="pixelfleet: generate image datasets with AI.", no_args_is_help=True)

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def _settings(kind: type[SettingsT]) -> SettingsT:
    """Settings of `kind` from the environment, or a plain message and exit code 2."""
    try:
        return kind()
    except ValidationError as exc:
        raise _configuration_error(describe_settings_error(exc)) from None


def _configuration_error(message: object) -> typer.Exit:
    typer.echo(f"configuration error: {message}", err=True)
    return typer.Exit(2)


def _storage(storage_url: str, signed_url_expiry_s: int = 3600) -> Storage:
    """The configured storage, checked (bucket exists, credentials work), or exit code 2."""
    try:
        return open_storage(storage_url, signed_url_expiry_s=signed_url_expiry_s)
    except StorageError as exc:
        raise _configuration_error(exc) from None


def _logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (Alembic)."""
    settings = _settings(Settings)
    run_migrations(settings.database_url)
    typer.echo(f"database at head: {settings.database_url.split('@')[-1]}")


@app.command()
def api(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: int = 8000,
    migrate_first: Annotated[bool, typer.Option("--migrate/--no-migrate")] = True,
) -> None:
    """Run the control plane (HTTP API, webhook, reconciler)."""
    settings = _settings(Settings)
    _logging(settings.log_level)
    storage = _storage(settings.storage_url, settings.signed_url_expiry_s)
    from control_plane.app import check_signing, create_app

    try:
        check_signing(storage)
    except StorageError as exc:
        raise _configuration_error(exc) from None
    if migrate_first:
        run_migrations(settings.database_url)
    uvicorn.run(
        create_app(settings, storage=storage),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
    )


@app.command()
def endpoint(host: str = "127.0.0.1", port: int = 8001) -> None:
    """Run the local RunPod-compatible endpoint with the worker's handler in it."""
    from worker.local_endpoint import build_endpoint_app_from_settings
    from worker.settings import WorkerSettings

    settings = _settings(WorkerSettings)
    _logging(settings.log_level)
    try:  # the handler opens (and checks) its storage here
        endpoint_app = build_endpoint_app_from_settings(settings)
    except StorageError as exc:
        raise _configuration_error(exc) from None
    uvicorn.run(
        endpoint_app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
    )


@app.command()
def worker() -> None:
    """Run the RunPod serverless worker (what the worker image runs on RunPod)."""
    from worker.main import main

    main()


storage_app = typer.Typer(help="Storage maintenance.", no_args_is_help=True)
app.add_typer(storage_app, name="storage")


@storage_app.command("gc")
def storage_gc(
    delete: Annotated[
        bool, typer.Option("--delete", help="delete them; without it, only list")
    ] = False,
    grace_hours: Annotated[
        float | None, typer.Option(help="ignore objects younger than this (default: settings)")
    ] = None,
) -> None:
    """List (or --delete) stored objects that no database row refers to."""
    from sqlmodel import Session

    from control_plane.db import make_engine
    from control_plane.services.cleanup import find_orphans

    settings = _settings(Settings)
    grace_s = settings.storage_gc_grace_s if grace_hours is None else grace_hours * 3600
    storage = _storage(settings.storage_url)
    with Session(make_engine(settings.database_url)) as session:
        orphans = list(find_orphans(session, storage, grace_s))
    for info in orphans:
        typer.echo(f"{'deleting' if delete else 'orphan'}  {info.size:>12}  {info.key}")
        if delete:
            storage.delete(info.key)
    total = sum(info.size for info in orphans)
    verb = "deleted" if delete else "found (dry run; --delete to remove)"
    typer.echo(f"{len(orphans)} orphaned object(s), {total:,} bytes, {verb}")


@app.command()
def up(
    host: str = "127.0.0.1",
    port: int = 8000,
    endpoint_port: int = 8001,
) -> None:
    """Start everything on one machine: migrations, the local endpoint, and the API."""
    from worker.settings import WorkerSettings

    settings = _settings(Settings)
    _settings(WorkerSettings)  # refuse bad worker settings before starting anything
    run_migrations(settings.database_url)
    env = {
        **os.environ,
        "PIXELFLEET_PUBLIC_URL": os.environ.get("PIXELFLEET_PUBLIC_URL", f"http://{host}:{port}"),
        "PIXELFLEET_RUNPOD_BASE_URL": os.environ.get(
            "PIXELFLEET_RUNPOD_BASE_URL", f"http://127.0.0.1:{endpoint_port}"
        ),
    }
    command = [sys.executable, "-m", "control_plane.cli"]
    children = [
        subprocess.Popen(
            [*command, "endpoint", "--host", "127.0.0.1", "--port", str(endpoint_port)], env=env
        ),
        subprocess.Popen(
            [*command, "api", "--host", host, "--port", str(port), "--no-migrate"], env=env
        ),
    ]
    typer.echo(
        f"pixelfleet is up: UI http://{host}:{port}/, API http://{host}:{port}/docs, "
        f"endpoint http://127.0.0.1:{endpoint_port}"
    )
    _supervise(children)


def _supervise(children: list[subprocess.Popen[bytes]]) -> None:
    """Wait until asked to stop (Ctrl-C, SIGTERM) or a child dies; then stop them all."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
    except KeyboardInterrupt:
        stopping = True
    crashed = [child.returncode for child in children if child.poll() is not None]
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        child.wait(timeout=20)
    if crashed and not stopping:
        typer.echo(
            f"a pixelfleet process exited with code {crashed[0]}; stopped the rest", err=True
        )
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
