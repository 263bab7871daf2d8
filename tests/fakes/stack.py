"""The whole stack on real loopback sockets: the control plane, the local RunPod endpoint and
the worker handler inside it (offline provider unless told otherwise), sharing `settings`'
database and storage.

`run_stack(settings, **worker)` yields one `Stack` (use it as a generator, or wrap it in
`contextlib.contextmanager`); keyword arguments override the worker's settings; its `endpoint`
can be stopped and started again, losing its RunPod jobs as a restart does. The `stack`
fixture (registered for every test by tests/conftest.py) is `run_stack(settings)`.
`read_zip` downloads a group's ZIP, `check_zip_against_manifest` checks every file in it.
"""

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from control_plane.app import create_app
from control_plane.settings import Settings
from tests.conftest import png_bytes
from tests.fakes.servers import RestartableServer, reserve_socket, run_server, url_of
from worker.local_endpoint import build_endpoint_app_from_settings
from worker.settings import WorkerSettings


@dataclass
class Stack:
    http: httpx.Client
    settings: Settings
    endpoint: RestartableServer

    def group(self) -> str:
        return self.http.post("/api/groups", json={"name": "e2e dataset"}).json()["id"]

    def upload(self, group_id: str, n: int, batch: int = 100) -> list[str]:
        """`n` different images (a group keeps one of each) uploaded `batch` at a time."""
        ids: list[str] = []
        for start in range(0, n, batch):
            files = [
                (
                    "files",
                    (
                        f"photo {i}.png",
                        png_bytes(48, 32, (i % 256, (i * 7) % 256, 90 + i // 256)),
                        "image/png",
                    ),
                )
                for i in range(start, min(n, start + batch))
            ]
            response = self.http.post("/api/uploads", data={"group_id": group_id}, files=files)
            assert response.status_code == 201, response.text
            ids += [image["id"] for image in response.json()["images"]]
        return ids

    def wait_for(self, job_ids: list[str], timeout: float = 120) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = [self.http.get(f"/api/jobs/{job_id}").json() for job_id in job_ids]
            if all(job["status"] in ("completed", "failed") for job in jobs):
                return jobs
            assert time.monotonic() < deadline, [job["progress"] for job in jobs]
            time.sleep(0.2)


def run_stack(settings: Settings, **worker: Any) -> Iterator[Stack]:
    defaults: dict[str, Any] = {
        "provider": "offline",
        "worker_concurrency": 16,
        "worker_max_jobs": 4,
        "webhook_retry_delay_s": 0.1,
    }
    worker_settings = WorkerSettings(storage_url=settings.storage_url, **{**defaults, **worker})
    api_socket = reserve_socket()
    with RestartableServer(lambda: build_endpoint_app_from_settings(worker_settings)) as endpoint:
        control = settings.model_copy(
            update={"runpod_base_url": endpoint.url, "public_url": url_of(api_socket)}
        )
        with (
            run_server(create_app(control), api_socket) as api_url,
            httpx.Client(base_url=api_url, timeout=60) as http,
        ):
            yield Stack(http, control, endpoint)


@pytest.fixture
def stack(settings: Settings) -> Iterator[Stack]:
    yield from run_stack(settings)


def read_zip(stack: Stack, group_id: str) -> tuple[bytes, zipfile.ZipFile, list[dict[str, Any]]]:
    response = stack.http.get(f"/api/download/{group_id}/zip")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert int(response.headers["content-length"]) == len(response.content)
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    manifest = [json.loads(line) for line in archive.read("manifest.jsonl").decode().splitlines()]
    return response.content, archive, manifest


def check_zip_against_manifest(archive: zipfile.ZipFile, manifest: list[dict[str, Any]]) -> None:
    names = set(archive.namelist()) - {"manifest.jsonl"}
    listed = {line["file"] for line in manifest if line["file"]}
    assert names == listed
    for line in manifest:
        if line["status"] != "succeeded":
            assert line["file"] is None and line["error"]
            continue
        data = archive.read(line["file"])
        assert hashlib.sha256(data).hexdigest() == line["sha256"]
        assert len(data) == line["bytes"]
        assert Image.open(io.BytesIO(data)).size == (line["width"], line["height"])
        assert line["provider"] == "offline" and line["model"] and line["seed"] is not None
        assert ".." not in line["file"] and not line["file"].startswith("/")
