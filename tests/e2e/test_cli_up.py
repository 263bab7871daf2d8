"""`pixelfleet up` as a newcomer runs it: in an empty folder, then a job by HTTP, on loopback
or on every interface; its processes end with it, however it ends and whatever request is
open; and its logs keep secrets out."""

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import sqlalchemy as sa

from tests.conftest import png_bytes
from tests.fakes.cli import answers, start_up, wait_until_up
from tests.fakes.servers import free_port


def run_a_job(http: httpx.Client, deadline: float) -> tuple[str, dict]:
    """A group with two uploads and an automatic job over them, finished; (group id, job)."""
    group_id = http.post("/api/groups", json={"name": "first"}).json()["id"]
    files = [
        ("files", (f"{i}.png", png_bytes(40, 40, (i * 60, 0, 0)), "image/png")) for i in range(2)
    ]
    uploaded = http.post("/api/uploads", data={"group_id": group_id}, files=files).json()
    job_id = http.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "hello",
            "images": [image["id"] for image in uploaded["images"]],
        },
    ).json()["jobs"][0]["id"]
    while (job := http.get(f"/api/jobs/{job_id}").json())["status"] not in (
        "completed",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return group_id, job


def stop(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    child.wait(timeout=30)


def test_up_starts_everything_from_an_empty_folder(tmp_path: Path) -> None:
    api_port, endpoint_port = free_port(), free_port()
    log = tmp_path / "up.log"
    child = start_up(tmp_path, api_port, endpoint_port, log)
    try:
        wait_until_up(child, api_port, endpoint_port, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as http:
            group_id, job = run_a_job(http, time.monotonic() + 120)
            assert job["progress"]["succeeded"] == 2
            assert http.get(f"/api/download/{group_id}/zip").status_code == 200
        assert (tmp_path / "pixelfleet-data" / "pixelfleet.db").is_file()
        assert any(
            (tmp_path / "pixelfleet-data" / "storage" / "groups" / group_id / "outputs").rglob(
                "*.jpg"
            )
        )
    finally:
        stop(child)
    assert child.returncode == 0


def test_up_on_every_interface_runs_a_job(tmp_path: Path) -> None:
    """`--host 0.0.0.0`: the local endpoint posts its webhooks to loopback, which it allows;
    off loopback every request needs a key (no implicit local user)."""
    api_port, endpoint_port = free_port(), free_port()
    log = tmp_path / "up.log"
    child = start_up(tmp_path, api_port, endpoint_port, log, "--host", "0.0.0.0")
    try:
        wait_until_up(child, api_port, endpoint_port, log)
        base_url = f"http://127.0.0.1:{api_port}"
        assert httpx.get(f"{base_url}/api/groups").status_code == 401
        headers = {"Authorization": f"Bearer {make_key(tmp_path, 'ann')}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
            _, job = run_a_job(http, time.monotonic() + 120)
        assert job["progress"]["succeeded"] == 2, (job, log.read_text())
    finally:
        stop(child)
    assert child.returncode == 0, log.read_text()


def make_key(cwd: Path, name: str) -> str:
    """A user and a key made with the admin commands in `cwd` (its data dir)."""
    command = [sys.executable, "-m", "control_plane.cli"]
    subprocess.run([*command, "users", "add", name, "--tier", "free"], cwd=cwd, check=True)
    made = subprocess.run(
        [*command, "keys", "create", name], cwd=cwd, check=True, capture_output=True, text=True
    )
    return made.stdout.strip()


def trickle_upload(url: str, done: threading.Event) -> None:
    """A chunked upload that sends one byte a second until `done` (or the server hangs up)."""

    def body() -> Iterator[bytes]:
        yield (
            b'--slow\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        while not done.is_set():
            yield b"x"  # inside the file part, so the form is never complete
            time.sleep(1)

    headers = {"content-type": "multipart/form-data; boundary=slow"}
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, content=body(), headers=headers, timeout=60)


@pytest.mark.parametrize("ending", [signal.SIGKILL, signal.SIGTERM])
def test_up_ends_its_processes_while_a_request_is_open(
    tmp_path: Path, ending: signal.Signals
) -> None:
    """A slow upload does not keep the API alive: uvicorn cuts open requests after a few
    seconds once told to stop, whether by the kernel (`up` killed) or by `up` itself."""
    api_port, endpoint_port = free_port(), free_port()
    log = tmp_path / "up.log"
    child = start_up(tmp_path, api_port, endpoint_port, log)
    done = threading.Event()
    uploader = threading.Thread(
        target=trickle_upload, args=(f"http://127.0.0.1:{api_port}/api/uploads", done)
    )
    children: list[psutil.Process] = []
    try:
        wait_until_up(child, api_port, endpoint_port, log)
        children = psutil.Process(child.pid).children()
        assert len(children) == 2
        uploader.start()
        time.sleep(2)  # the request is open, its body arriving
        child.send_signal(ending)
        child.wait(timeout=15)
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"still running after up ended: {alive}; {log.read_text()}"
        if ending == signal.SIGTERM:  # the cut request is logged, `up` itself ends cleanly
            assert child.returncode == 0, log.read_text()
            assert "TimeoutExpired" not in log.read_text()
    finally:
        done.set()
        for process in children:
            if process.is_running():
                process.kill()
        if child.poll() is None:
            child.kill()
        uploader.join(timeout=30)


def test_killing_up_stops_its_processes_and_frees_its_ports(tmp_path: Path) -> None:
    """SIGKILL leaves `up` no chance to stop its children: the kernel must (Linux)."""
    api_port, endpoint_port = free_port(), free_port()
    log = tmp_path / "up.log"
    first = start_up(tmp_path, api_port, endpoint_port, log)
    children: list[psutil.Process] = []
    try:
        wait_until_up(first, api_port, endpoint_port, log)
        children = psutil.Process(first.pid).children()
        assert len(children) == 2
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"still running after up was killed: {alive}"
        assert not answers(f"http://127.0.0.1:{api_port}/healthz")
        assert not answers(f"http://127.0.0.1:{endpoint_port}/v2/local/health")

        second = start_up(tmp_path, api_port, endpoint_port, log)
        try:
            wait_until_up(second, api_port, endpoint_port, log)
        finally:
            stop(second)
        assert second.returncode == 0, log.read_text()
    finally:
        for process in children:
            if process.is_running():
                process.kill()


def test_logs_show_no_webhook_token_key_or_password(tmp_path: Path, database_url: str) -> None:
    """Every line both processes write at INFO, a whole job long: webhook URLs are in the
    API's access log and in the endpoint's httpx log, with their tokens masked."""
    secrets = {
        "PIXELFLEET_API_PASSWORD": "correct-horse-battery-staple",
        "PIXELFLEET_RUNPOD_API_KEY": "rp-secret-key-0123456789",
        "PIXELFLEET_ENDPOINT_API_KEY": "rp-secret-key-0123456789",
        "GEMINI_API_KEY": "AIza-gemini-secret-0123456789",
    }
    api_port, endpoint_port = free_port(), free_port()
    log = tmp_path / "up.log"
    child = start_up(
        tmp_path,
        api_port,
        endpoint_port,
        log,
        PIXELFLEET_LOG_LEVEL="INFO",
        PIXELFLEET_DATABASE_URL=database_url,
        PIXELFLEET_PROVIDER="offline",
        **secrets,
    )
    try:
        wait_until_up(child, api_port, endpoint_port, log)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {secrets['PIXELFLEET_API_PASSWORD']}"},
            timeout=30,
        ) as http:
            _, job = run_a_job(http, time.monotonic() + 120)
        assert job["progress"]["succeeded"] == 2
    finally:
        stop(child)
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        tokens = connection.exec_driver_sql("SELECT webhook_token FROM dispatches").scalars().all()
    engine.dispose()
    written = log.read_text()
    assert tokens
    for secret in [*tokens, *secrets.values()]:
        assert secret not in written
    masked = [line for line in written.splitlines() if "token=***" in line]
    assert any("uvicorn.access" in line and "/api/webhook/runpod" in line for line in masked)
    assert any("httpx" in line and "/api/webhook/runpod" in line for line in masked)
