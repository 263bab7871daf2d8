"""The whole stack on real loopback sockets: the control plane, the local RunPod endpoint and
the worker handler inside it (offline provider unless told otherwise), sharing `settings`'
database and storage.

`run_stack(settings, **worker)` yields one `Stack` (use it as a generator, or wrap it in
`contextlib.contextmanager`); keyword arguments override the worker's settings; its `endpoint`
can be stopped and started again, losing its RunPod jobs as a restart does. The `stack`
fixture (registered for every test by tests/conftest.py) is `run_stack(settings)`.
`read_zip` downloads a group's ZIP (with a query), `check_zip_against_manifest` checks every
file in it and its metadata.jsonl, `read_jsonl` reads one of its JSON-lines files,
`load_imagefolder` unzips one and loads it with Hugging Face `datasets`.
"""

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
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


def read_zip(
    client: Stack | httpx.Client, group_id: str, **params: str | list[str]
) -> tuple[bytes, zipfile.ZipFile, list[dict[str, Any]]]:
    """The group's ZIP (`params`: its query) from a stack or a client (e.g. `api.client`),
    checked whole: its bytes, itself, its manifest."""
    http = client.http if isinstance(client, Stack) else client
    response = http.get(f"/api/download/{group_id}/zip", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert int(response.headers["content-length"]) == len(response.content)
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    return response.content, archive, read_jsonl(archive, "manifest.jsonl")


def read_jsonl(archive: zipfile.ZipFile, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in archive.read(name).decode().splitlines()]


def check_zip_against_manifest(archive: zipfile.ZipFile, manifest: list[dict[str, Any]]) -> None:
    """Every file in the ZIP is an image of the manifest or a reference one of its lines
    names (each once), every image's bytes are the ones described, and metadata.jsonl has
    one row per image file, agreeing with the manifest."""
    names = archive.namelist()
    assert len(names) == len(set(names))
    assert names[:2] == ["manifest.jsonl", "metadata.jsonl"]
    listed = {line["file"] for line in manifest if line["file"]}
    inputs = {
        path  # without inputs, reference_files are the references' ids
        for line in manifest
        for path in line["reference_files"]
        if path.startswith("inputs/")
    }
    assert set(names[2:]) == listed | inputs
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
    for path in inputs:
        Image.open(io.BytesIO(archive.read(path))).verify()
    check_metadata_against_manifest(read_jsonl(archive, "metadata.jsonl"), manifest)


def check_metadata_against_manifest(
    metadata: list[dict[str, Any]], manifest: list[dict[str, Any]]
) -> None:
    """One metadata row per image in the ZIP, in ZIP order, with the manifest's facts."""
    with_files = [line for line in manifest if line["file"]]
    assert [row["file_name"] for row in metadata] == [line["file"] for line in with_files]
    for row, line in zip(metadata, with_files, strict=True):
        assert row == {
            "file_name": line["file"],
            "prompt": line["prompt"],
            "negative_prompt": line["params"].get("negative_prompt"),
            "seed": line["seed"],
            "model": line["model"],
            "tags": line["tags"],
            "prompt_id": line["prompt_id"],
            "job_id": line["job_id"],
            "image_id": line["image_id"],
            "reference_files": line["reference_files"],
        }


def load_imagefolder(content: bytes, folder: Path) -> Any:
    """A downloaded ZIP unzipped into `folder` and loaded as its users will: with Hugging
    Face's `datasets.load_dataset("imagefolder", data_dir=folder, split="train")`."""
    datasets = pytest.importorskip("datasets", reason="datasets (in the dev extra) is missing")
    zipfile.ZipFile(io.BytesIO(content)).extractall(folder)
    cache = folder.with_name(folder.name + "-cache")  # not inside: it would be loaded too
    return datasets.load_dataset(
        "imagefolder", data_dir=str(folder), split="train", cache_dir=str(cache)
    )
