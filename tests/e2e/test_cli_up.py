"""`pixelfleet up` as a newcomer runs it: in an empty folder, then a job by HTTP."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import png_bytes
from tests.fakes.servers import free_port


def test_up_starts_everything_from_an_empty_folder(tmp_path: Path) -> None:
    api_port, endpoint_port = free_port(), free_port()
    env = {**os.environ, "PIXELFLEET_LOG_LEVEL": "WARNING"}
    env.pop("PIXELFLEET_DATA_DIR", None)
    command = [
        sys.executable,
        "-m",
        "control_plane.cli",
        "up",
        "--port",
        str(api_port),
        "--endpoint-port",
        str(endpoint_port),
    ]
    child = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if child.poll() is not None:
                pytest.fail(
                    f"pixelfleet up exited: {child.stdout.read().decode() if child.stdout else ''}"
                )
            assert time.monotonic() < deadline, "pixelfleet up did not answer in 60 s"
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=30) as http:
            group_id = http.post("/api/groups", json={"name": "first"}).json()["id"]
            files = [
                ("files", (f"{i}.png", png_bytes(40, 40, (i * 60, 0, 0)), "image/png"))
                for i in range(2)
            ]
            images = [
                i["id"]
                for i in http.post("/api/uploads", data={"group_id": group_id}, files=files).json()[
                    "images"
                ]
            ]
            job_id = http.post(
                "/api/jobs/submit",
                json={
                    "group_id": group_id,
                    "mode": "automatic",
                    "prompt": "hello",
                    "images": images,
                },
            ).json()["jobs"][0]["id"]
            while (job := http.get(f"/api/jobs/{job_id}").json())["status"] not in (
                "completed",
                "failed",
            ):
                assert time.monotonic() < deadline + 60
                time.sleep(0.2)
            assert job["progress"]["succeeded"] == 2
            assert http.get(f"/api/download/{group_id}/zip").status_code == 200
        assert (tmp_path / "pixelfleet-data" / "pixelfleet.db").is_file()
        assert any(
            (tmp_path / "pixelfleet-data" / "storage" / "groups" / group_id / "outputs").rglob(
                "*.jpg"
            )
        )
    finally:
        child.terminate()
        child.wait(timeout=30)
    assert child.returncode == 0
