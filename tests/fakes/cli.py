"""`pixelfleet up` as a child process on ports of the test's choosing, its output in a file."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx


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
