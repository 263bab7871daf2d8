"""The `pixelfleet` command."""

import asyncio
import contextlib
import ctypes
import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import urlsplit

import sqlalchemy as sa
import typer
import uvicorn
from pydantic import ValidationError
from pydantic_settings import BaseSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

from client.cli import register as register_client_commands
from control_plane.admin_cli import register as register_admin_commands
from control_plane.db import migrate as run_migrations
from control_plane.settings import Settings
from shared.hosts import WILDCARD_HOSTS
from shared.logs import configure_logging
from shared.settings import describe_settings_error
from shared.storage import Storage, StorageError, open_storage

app = typer.Typer(help="pixelfleet: generate image datasets with AI.", no_args_is_help=True)

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

# Seconds a stopping server waits for open requests before it closes them.
GRACEFUL_SHUTDOWN_S = 5
# Seconds `up` waits for a child it asked to stop before it kills it.
CHILD_STOP_S = 20
RELAY_RESTART_S = 1.0  # after the relay process died, before it starts again …
RELAY_RESTART_MAX_S = 30.0  # … doubling while it dies at once, up to this


def _settings(kind: type[SettingsT]) -> SettingsT:
    """Settings of `kind` from the environment, or a plain message and exit code 2."""
    try:
        return kind()
    except ValidationError as exc:
        raise _configuration_error(describe_settings_error(exc)) from None


def _configuration_error(message: object) -> typer.Exit:
    return _cannot_start(f"configuration error: {message}")


def _cannot_start(message: str) -> typer.Exit:
    """Say why on stderr; the caller raises the returned exit (code 2) `from None`."""
    typer.echo(message, err=True)
    return typer.Exit(2)


def _check_port_free(host: str, port: int) -> None:
    """Exit with a plain message (code 2) when nothing could listen on `host:port`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _cannot_start(
                    f"port {port} is already in use (another pixelfleet up?); "
                    "stop it or choose another port"
                ) from None
            raise _cannot_start(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _storage(storage_url: str, signed_url_expiry_s: int = 3600) -> Storage:
    """The configured storage, checked (bucket exists, credentials work), or exit code 2."""
    try:
        return open_storage(storage_url, signed_url_expiry_s=signed_url_expiry_s)
    except StorageError as exc:
        raise _configuration_error(exc) from None


def _secrets(settings: Settings) -> list[str | None]:
    """What the control plane's logs must never show (see shared/logs.py)."""
    database_password = sa.engine.make_url(settings.database_url).password
    return [
        settings.api_password,
        settings.runpod_api_key,
        database_password,
        settings.webhook_secret,
        settings.wake_token,
    ]


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
    workers: Annotated[
        int, typer.Option(min=1, help="API processes on the one port (MySQL/MariaDB only)")
    ] = 1,
) -> None:
    """Run the control plane (HTTP API, webhook, reconciler)."""
    settings = _settings(Settings)
    sqlite = settings.database_url.startswith("sqlite")
    if workers > 1 and sqlite:
        raise _cannot_start(
            "--workers needs MySQL/MariaDB (PIXELFLEET_DATABASE_URL): SQLite lets one process "
            "write at a time, so more processes would only wait for each other"
        ) from None
    if settings.relay_process and sqlite:
        raise _cannot_start(
            "PIXELFLEET_RELAY_PROCESS needs MySQL/MariaDB (PIXELFLEET_DATABASE_URL): SQLite "
            "lets one process write at a time"
        ) from None
    _check_port_free(host, port)
    configure_logging(settings.log_level, _secrets(settings), settings.log_format)
    storage = _storage(settings.storage_url, settings.signed_url_expiry_s)
    from control_plane.app import check_signing, create_app

    try:
        check_signing(storage)
    except StorageError as exc:
        raise _configuration_error(exc) from None
    if migrate_first:
        run_migrations(settings.database_url)
    relay_apart = settings.relay_process if settings.relay_process is not None else not sqlite
    wake_token = secrets.token_urlsafe(24) if relay_apart else ""
    settings = settings.model_copy(
        update={"listen_host": host, "relay_process": relay_apart, "wake_token": wake_token}
    )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "proxy_headers": True,  # trusted from FORWARDED_ALLOW_IPS (default: loopback only)
        "log_level": settings.log_level.lower(),
        "log_config": None,
        "access_log": False,  # control_plane/web/requestlog.py writes one line per request
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
    }
    wake_url = f"http://{_reachable(host)}:{port}/api/internal/wake"
    with _RelayProcess(wake_url, wake_token) if relay_apart else contextlib.nullcontext():
        if workers == 1:
            uvicorn.run(create_app(settings, storage=storage), **options)
            return
        _share_among_workers(settings, workers)
        uvicorn.run("control_plane.cli:worker_app", factory=True, workers=workers, **options)


def worker_app() -> "FastAPI":
    """The app of one of `pixelfleet api --workers N`'s processes (uvicorn's factory)."""
    from control_plane.app import create_app

    settings = Settings()
    configure_logging(settings.log_level, _secrets(settings), settings.log_format)
    return create_app(settings)


def _share_among_workers(settings: Settings, workers: int) -> None:
    """What each of `workers` API processes reads from the environment: the address they
    listen on, and their share of the `/run` rate (each process paces its own calls)."""
    os.environ["PIXELFLEET_LISTEN_HOST"] = settings.listen_host
    os.environ["PIXELFLEET_RUN_RATE_PER_S"] = str(settings.run_rate_per_s / workers)
    os.environ["PIXELFLEET_RELAY_PROCESS"] = str(settings.relay_process).lower()
    os.environ["PIXELFLEET_WAKE_TOKEN"] = settings.wake_token


class _RelayProcess:
    """`pixelfleet relay` beside `pixelfleet api`, for as long as the block runs: started
    again should it die; stopped when the block ends (Ctrl-C), or by the kernel when the
    API's process ends otherwise (SIGTERM, which uvicorn raises again once it has shut down;
    SIGKILL) on Linux. In a session of its own, so that a terminal's Ctrl-C reaches the API
    only, which stops it."""

    def __init__(self, wake_url: str, wake_token: str) -> None:
        self.command = [sys.executable, "-m", "control_plane.cli", "relay", "--wake-url", wake_url]
        self.env = {**os.environ, "PIXELFLEET_WAKE_TOKEN": wake_token}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        # the thread that starts the child outlives it: the kernel's death signal follows
        # the thread that forked, not the process
        self._thread = threading.Thread(target=self._keep_running, name="relay", daemon=True)

    def __enter__(self) -> "_RelayProcess":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._stopping.set()
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
            _stop_or_kill(child)
        self._thread.join(timeout=CHILD_STOP_S)

    def _keep_running(self) -> None:
        die_with_parent = _die_with_parent()
        delay = RELAY_RESTART_S
        while True:
            with self._lock:
                if self._stopping.is_set():
                    return
                self._child = subprocess.Popen(
                    self.command, env=self.env, preexec_fn=die_with_parent, start_new_session=True
                )
            started = time.monotonic()
            code = self._child.wait()
            if time.monotonic() - started > RELAY_RESTART_MAX_S:  # it had been running
                delay = RELAY_RESTART_S
            if self._stopping.is_set():
                return
            typer.echo(f"the relay process exited ({code}); starting it in {delay:g} s", err=True)
            if self._stopping.wait(delay):
                return
            delay = min(2 * delay, RELAY_RESTART_MAX_S)  # one that cannot start: less often


@app.command()
def relay(
    wake_url: Annotated[
        str, typer.Option(help="the API's /api/internal/wake: its services' wakes go there")
    ] = "",
) -> None:
    """Run the event relay (analytics, users' webhooks, pipeline stages) in a process of its
    own: `pixelfleet api` starts one on MySQL/MariaDB."""
    settings = _settings(Settings)
    configure_logging(settings.log_level, _secrets(settings), settings.log_format)
    storage = _storage(settings.storage_url, settings.signed_url_expiry_s)
    from control_plane.relaying import run_relay

    asyncio.run(run_relay(settings, storage, wake_url))


@app.command()
def endpoint(host: str = "127.0.0.1", port: int = 8001) -> None:
    """Run the local RunPod-compatible endpoint with the worker's handler in it."""
    from worker.local_endpoint import build_endpoint_app_from_settings
    from worker.settings import WorkerSettings

    settings = _settings(WorkerSettings)
    _check_port_free(host, port)
    configure_logging(settings.log_level, settings.secrets(), settings.log_format)
    try:  # the handler opens (and checks) its storage here
        endpoint_app = build_endpoint_app_from_settings(settings)
    except StorageError as exc:
        raise _configuration_error(exc) from None
    uvicorn.run(
        endpoint_app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
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
    _check_port_free(host, port)
    _check_port_free("127.0.0.1", endpoint_port)
    run_migrations(settings.database_url)
    env = _children_env(host, port, endpoint_port)
    command = [sys.executable, "-m", "control_plane.cli"]
    die_with_parent = _die_with_parent()
    children = [
        subprocess.Popen(
            [*command, "endpoint", "--host", "127.0.0.1", "--port", str(endpoint_port)],
            env=env,
            preexec_fn=die_with_parent,
        ),
        subprocess.Popen(
            [*command, "api", "--host", host, "--port", str(port), "--no-migrate"],
            env=env,
            preexec_fn=die_with_parent,
        ),
    ]
    typer.echo(
        f"pixelfleet is up: UI http://{host}:{port}/, API http://{host}:{port}/docs, "
        f"endpoint http://127.0.0.1:{endpoint_port}"
    )
    _supervise(children)


def _children_env(host: str, port: int, endpoint_port: int) -> dict[str, str]:
    """The environment of `up`'s children: the API's public URL (loopback when `host` is a
    wildcard), the local endpoint as RunPod, and that URL's host among the endpoint's
    allowed webhook hosts (it refuses any other host but loopback)."""
    public_url = os.environ.get("PIXELFLEET_PUBLIC_URL", f"http://{_reachable(host)}:{port}")
    webhook_hosts = os.environ.get("PIXELFLEET_ENDPOINT_ALLOW_WEBHOOK_HOSTS", "")
    public_host = urlsplit(public_url).hostname or ""
    return {
        **os.environ,
        "PIXELFLEET_PUBLIC_URL": public_url,
        "PIXELFLEET_RUNPOD_BASE_URL": os.environ.get(
            "PIXELFLEET_RUNPOD_BASE_URL", f"http://127.0.0.1:{endpoint_port}"
        ),
        "PIXELFLEET_ENDPOINT_ALLOW_WEBHOOK_HOSTS": ",".join(
            name for name in (webhook_hosts, public_host) if name
        ),
    }


def _reachable(host: str) -> str:
    """The address a process on this machine reaches a server bound to `host` at, for a URL
    (loopback for a wildcard address)."""
    reachable = "127.0.0.1" if host in WILDCARD_HOSTS else host
    return f"[{reachable}]" if ":" in reachable else reachable


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, what a child runs before it starts so that the kernel sends it SIGTERM when
    `up` dies, even by SIGKILL (which `up` cannot catch to stop its children itself).

    Elsewhere None: there a killed `up` leaves its children running, and the next `up` says
    that their ports are in use.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork, not in the child
    parent = os.getpid()

    def set_death_signal() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # `up` died before the signal was armed
            os._exit(1)

    return set_death_signal


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
        _stop_or_kill(child)
    if crashed and not stopping:
        typer.echo(
            f"a pixelfleet process exited with code {crashed[0]}; stopped the rest", err=True
        )
        raise typer.Exit(1)


def _stop_or_kill(child: subprocess.Popen[bytes]) -> None:
    """Wait for a child asked to stop; kill it when it takes longer than CHILD_STOP_S."""
    try:
        child.wait(timeout=CHILD_STOP_S)
    except subprocess.TimeoutExpired:
        typer.echo(f"a pixelfleet process (pid {child.pid}) did not stop; killed it", err=True)
        child.kill()
        child.wait()


register_client_commands(app)  # generate, jobs, download: a client of a running control plane
register_admin_commands(app)  # users, keys: on the control plane's own database

if __name__ == "__main__":
    app()
