"""`pixelfleet up` as a child process on ports of the test's choosing, its output in a file;
client commands run to their end (`pixelfleet`) or in the background (`start_pixelfleet`)."""

import contextlib
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import httpx
from typer.testing import CliRunner

from control_plane import cli


def start_up(
    cwd: Path, api_port: int, endpoint_port: int, log: Path, *options: str, **env: str
) -> subprocess.Popen[bytes]:
    """`pixelfleet up` in `cwd` (its data dir defaults there), stdout and stderr into `log`.

    `options` are more of `up`'s options (`--host`, …); `env` adds to (and overrides) the
    test's environment."""
    environment = {**os.environ, "PIXELFLEET_LOG_LEVEL": "WARNING", **env}
    if "PIXELFLEET_DATA_DIR" not in env:
        environment.pop("PIXELFLEET_DATA_DIR", None)
    command = [
        sys.executable,
        "-m",
        "control_plane.cli",
        "up",
        "--port",
        str(api_port),
        "--endpoint-port",
        str(endpoint_port),
        *options,
    ]
    with log.open("ab") as output:
        return subprocess.Popen(
            command, cwd=cwd, env=environment, stdout=output, stderr=subprocess.STDOUT
        )


def wait_until_up(
    child: subprocess.Popen[bytes], api_port: int, endpoint_port: int, log: Path
) -> None:
    """Until the API and the endpoint answer; fails with `up`'s output if it exits first."""
    deadline = time.monotonic() + 60
    while not (
        answers(f"http://127.0.0.1:{api_port}/healthz")
        and answers(f"http://127.0.0.1:{endpoint_port}/v2/local/health")
    ):
        assert child.poll() is None, f"pixelfleet up exited: {log.read_text()}"
        assert time.monotonic() < deadline, (
            f"pixelfleet up did not answer in 60 s: {log.read_text()}"
        )
        time.sleep(0.2)


def answers(url: str) -> bool:
    """Whether anything answers HTTP at `url` (any status)."""
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


ROOT = Path(__file__).resolve().parents[2]


def client_env(api_url: str, **env: str) -> dict[str, str]:
    """The environment of a client command: this checkout's code, the API at `api_url`, no
    password unless `env` sets one, and a wide terminal (messages are not wrapped)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    environment.pop("PIXELFLEET_API_PASSWORD", None)
    return {**environment, "PIXELFLEET_API_URL": api_url, **env}


def pixelfleet(
    *args: str, api_url: str, cwd: Path, stdin_text: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`pixelfleet ARGS` (a client command) run to its end, its output captured; `stdin_text`
    is typed in (else stdin is empty).

    It runs in this process, through the command's own entry point, with the environment and
    working folder a child process would have: a child process costs an interpreter's start-up
    and every import per command, which made the CLI tests the slowest of the suite.
    `start_pixelfleet` runs a real child process, for what only one can show (signals)."""
    environment: dict[str, str | None] = {
        "PIXELFLEET_API_PASSWORD": None,
        "COLUMNS": "200",
        "PIXELFLEET_API_URL": api_url,
        **env,
    }
    with contextlib.chdir(cwd):
        result = CliRunner().invoke(cli.app, list(args), input=stdin_text, env=environment)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(
        ["pixelfleet", *args], result.exit_code, result.stdout, stderr
    )


def start_pixelfleet(
    *args: str, api_url: str, cwd: Path, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    """`pixelfleet ARGS` started in the background, stdout into `log`, stderr into `log`.err."""
    with log.open("wb") as out, log.with_suffix(".err").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "control_plane.cli", *args],
            cwd=cwd,
            env=client_env(api_url, **env),
            stdout=out,
            stderr=err,
        )
