"""The `pixelfleet` command (control_plane/cli.py): configuration errors and taken ports are
one clear message; a child of `up` that does not stop is killed.

The whole stack under `pixelfleet up` is tests/e2e/test_cli_up.py."""

import os
import signal
import socket
import subprocess
import sys
import time
from itertools import chain
from pathlib import Path

import pytest
import typer

from control_plane import cli
from tests.fakes.servers import free_port


def test_production_refuses_unsafe_defaults(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PIXELFLEET_ENVIRONMENT": "production",
        "PIXELFLEET_DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "control_plane.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to start in production" in result.stderr
    assert "PIXELFLEET_DATABASE_URL is SQLite" in result.stderr
    assert "PIXELFLEET_RUNPOD_API_KEY" in result.stderr


@pytest.mark.parametrize("command", ["endpoint", "up"])
def test_bad_worker_settings_are_a_message_not_a_traceback(tmp_path: Path, command: str) -> None:
    env = {
        **os.environ,
        "PIXELFLEET_DATA_DIR": str(tmp_path),
        "PIXELFLEET_WORKER_CONCURRENCY": "many",
    }
    result = subprocess.run(
        [sys.executable, "-m", "control_plane.cli", command, "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("configuration error:")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "taken"),
    [("up", "--port"), ("up", "--endpoint-port"), ("api", "--port"), ("endpoint", "--port")],
)
def test_a_taken_port_is_a_message_not_a_traceback(
    tmp_path: Path, command: str, taken: str
) -> None:
    with socket.socket() as holder:  # what another `pixelfleet up` would hold
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"--port": str(free_port()), "--endpoint-port": str(free_port()), taken: str(port)}
        if command != "up":
            del ports["--endpoint-port"]
        result = subprocess.run(
            [sys.executable, "-m", "control_plane.cli", command, *chain(*ports.items())],
            env={**os.environ, "PIXELFLEET_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"port {port} is already in use (another pixelfleet up?)")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pixelfleet.db").exists()  # refused before migrating


def test_up_kills_a_child_that_does_not_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """One child exits; the other ignores SIGTERM: `up` kills it rather than wait forever."""
    monkeypatch.setattr(cli, "CHILD_STOP_S", 1)
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # leave pytest's SIGTERM alone
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert stubborn.stdout and stubborn.stdout.readline() == b"ready\n"
        finished = subprocess.Popen([sys.executable, "-c", "pass"])
        started = time.monotonic()
        with pytest.raises(typer.Exit):  # a child ended by itself: `up` exits 1
            cli._supervise([stubborn, finished])
        assert stubborn.returncode == -signal.SIGKILL
        assert time.monotonic() - started < 10
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
        stubborn.wait()
        if stubborn.stdout:
            stubborn.stdout.close()
