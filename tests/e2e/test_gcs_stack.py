"""End to end on GCS: the whole stack with `gs://` storage against gcp-storage-emulator.

The control plane and the worker (inside the local RunPod endpoint) both open
`gs://<fresh bucket>/pf` through `open_storage`, i.e. the way production does, with
STORAGE_EMULATOR_HOST pointing them at the in-process emulator. Nothing of ours is mocked;
the faults are real ones (a bucket that is deleted mid-job, a bucket that never existed).
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import google.oauth2.credentials
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from google.api_core.exceptions import NotFound
from google.cloud import storage
from google.cloud.storage import Blob
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from control_plane import cli
from control_plane.app import create_app
from control_plane.settings import Settings
from shared.images import extension_for
from shared.storage import StorageError
from shared.storage.gcs import DEFAULT_CACHE_CONTROL, GCSStorage
from tests.fakes.gcs_emulator import GCSEmulator, signing_client, verify_v4_signature
from tests.fakes.servers import reserve_socket, run_server
from tests.fakes.stack import Stack, check_zip_against_manifest, read_zip, run_stack

PREFIX = "pf"
MISSING_BUCKET = "pixelfleet-no-such-bucket"
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
gcs_stack = contextmanager(run_stack)


@pytest.fixture
def bucket(gcs_env: GCSEmulator) -> Iterator[str]:
    """A fresh bucket per test (the emulator lives for the whole session)."""
    name = f"pf-e2e-{uuid.uuid4().hex[:12]}"
    gcs_env.client.create_bucket(name)
    yield name
    with suppress(NotFound):
        gcs_env.client.bucket(name).delete(force=True)


@pytest.fixture
def gs_settings(settings: Settings, bucket: str) -> Settings:
    return settings.model_copy(update={"storage_url": f"gs://{bucket}/{PREFIX}"})


# -- helpers -------------------------------------------------------------------------------


def noise_png(seed: int, size: int = 64) -> bytes:
    """An incompressible PNG (~12 KB), so an inlined copy in a payload could not go unseen."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def upload_noise(http: httpx.Client | TestClient, group_id: str, n: int) -> list[dict[str, Any]]:
    files = [("files", (f"noise {i}.png", noise_png(i), "image/png")) for i in range(n)]
    response = http.post("/api/uploads", data={"group_id": group_id}, files=files)
    assert response.status_code == 201, response.text
    images: list[dict[str, Any]] = response.json()["images"]
    assert len(images) == n
    return images


def submit_automatic(stack: Stack, group_id: str, image_ids: list[str]) -> str:
    response = stack.http.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "the same scene, on film",
            "images": image_ids,
            "config": {"model": "gemini-3.1-flash-image", "image_size": "512"},
        },
    )
    assert response.status_code == 201, response.text
    job_id: str = response.json()["jobs"][0]["id"]
    return job_id


def blobs_under(emulator: GCSEmulator, bucket: str, prefix: str) -> dict[str, Blob]:
    return {blob.name: blob for blob in emulator.client.list_blobs(bucket, prefix=prefix)}


def check_object(blob: Blob, content_type: str, sha256: str | None = None) -> None:
    """Properties the store sets on every object; the sha256 is checked against the bytes."""
    assert blob.content_type == content_type, blob.name
    assert blob.cache_control == DEFAULT_CACHE_CONTROL, blob.name
    stored_sha = (blob.metadata or {}).get("sha256", "")
    assert SHA256_HEX.match(stored_sha), (blob.name, blob.metadata)
    if sha256 is not None:
        assert stored_sha == sha256, blob.name
    # Last: a download resets blob.cache_control (the emulator sends no Cache-Control).
    assert hashlib.sha256(blob.download_as_bytes()).hexdigest() == stored_sha, blob.name


def storage_gc(settings: Settings, emulator: GCSEmulator, *args: str) -> list[str]:
    """`pixelfleet storage gc --grace-hours 0 ARGS` as a user runs it; its output lines."""
    result = CliRunner().invoke(
        cli.app,
        ["storage", "gc", "--grace-hours", "0", *args],
        env={
            "PIXELFLEET_DATABASE_URL": settings.database_url,
            "PIXELFLEET_STORAGE_URL": settings.storage_url,
            "PIXELFLEET_DATA_DIR": str(settings.data_dir),
            "STORAGE_EMULATOR_HOST": emulator.url,
        },
    )
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def wait_for_status(stack: Stack, job_id: str, wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (status := stack.http.get(f"/api/jobs/{job_id}").json()["status"]) != wanted:
        assert time.monotonic() < deadline, f"job {job_id} stayed {status}, never {wanted}"
        time.sleep(0.05)


@dataclass
class WebhookTap:
    """Sits between the endpoint and the control plane: keeps every webhook body, passes it on.

    RunPod's webhook echoes the job's whole `input` as the endpoint stored it, so the tap
    sees exactly what was dispatched, and the control plane still gets every webhook.
    """

    target: str
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def relay(request: Request) -> Response:
            raw = await request.body()
            self.bodies.append(json.loads(raw))
            async with httpx.AsyncClient(base_url=self.target, timeout=30) as client:
                reply = await client.post(
                    f"{request.url.path}?{request.url.query}",
                    content=raw,
                    headers={"content-type": "application/json"},
                )
            return Response(reply.content, reply.status_code, media_type="application/json")

        return Starlette(routes=[Route("/api/webhook/runpod", relay, methods=["POST"])])


# -- the core flow -------------------------------------------------------------------------


def test_gcs_automatic_job_end_to_end(
    gs_settings: Settings, gcs_env: GCSEmulator, bucket: str
) -> None:
    """Upload → job → ZIP on GCS; objects laid out and labelled; RunPod sees only gs:// URIs;
    `storage gc` finds nothing to collect; deleting the job deletes its objects."""
    with gcs_stack(gs_settings) as stack:
        tap = WebhookTap(str(stack.http.base_url))
        with run_server(tap.app()) as tap_url:
            stack.settings.public_url = tap_url  # webhooks now pass through the tap
            group_id = stack.group()
            uploads = upload_noise(stack.http, group_id, 30)
            job_id = submit_automatic(stack, group_id, [upload["id"] for upload in uploads])
            [job] = stack.wait_for([job_id])
        assert job["status"] == "completed", job["error"]
        assert job["progress"]["succeeded"] == 30

        _, archive, manifest = read_zip(stack, group_id)
        assert len(manifest) == 30 and all(line["status"] == "succeeded" for line in manifest)
        check_zip_against_manifest(archive, manifest)

        group_root = f"{PREFIX}/groups/{group_id}"
        blobs = blobs_under(gcs_env, bucket, "")
        input_uris = check_layout(blobs, group_root, uploads, job)
        check_payloads(tap.bodies, job, input_uris, gs_settings, uploads)

        # Without signing credentials, image URLs are the control plane's own routes,
        # which read the object from the bucket.
        image = job["images"][0]
        assert image["url"].startswith(f"{stack.http.base_url}/api/outputs/")
        served = stack.http.get(image["url"])
        assert served.status_code == 200
        assert hashlib.sha256(served.content).hexdigest() == image["sha256"]
        assert served.headers["x-content-type-options"] == "nosniff"
        assert served.headers["content-security-policy"] == "sandbox"

        check_gc_and_delete(stack, gcs_env, bucket, group_root, job_id)


def check_layout(
    blobs: dict[str, Blob], group_root: str, uploads: list[dict[str, Any]], job: dict[str, Any]
) -> dict[str, str]:
    """Every object where it belongs, with its properties, and nothing else in the bucket.

    Returns each upload's gs:// URI by upload id.
    """
    remaining = dict(blobs)
    input_uris: dict[str, str] = {}
    for upload in uploads:
        name = f"{group_root}/inputs/{upload['id']}{extension_for(upload['content_type'])}"
        blob = remaining.pop(name)
        assert blob.size == upload["bytes"]
        check_object(blob, upload["content_type"], upload["sha256"])
        check_object(remaining.pop(f"{group_root}/inputs/{upload['id']}.thumb.webp"), "image/webp")
        input_uris[upload["id"]] = f"gs://{blob.bucket.name}/{name}"
    for image in job["images"]:
        base = run_base(remaining, f"{group_root}/outputs/{job['id']}/{image['id']}")
        blob = remaining.pop(base + extension_for(image["content_type"]))
        assert blob.size == image["bytes"]
        check_object(blob, image["content_type"], image["sha256"])
        check_object(remaining.pop(f"{base}.thumb.webp"), "image/webp")
    assert remaining == {}, f"unexpected objects: {sorted(remaining)}"
    return input_uris


def run_base(names: dict[str, Any], output_base: str) -> str:
    """The key (without extension) the worker's run wrote for an output: `{base}-{run tag}`."""
    [key] = [
        name
        for name in names
        if name.startswith(f"{output_base}-") and not name.endswith(".thumb.webp")
    ]
    return key.rsplit(".", 1)[0]


def check_payloads(
    bodies: list[dict[str, Any]],
    job: dict[str, Any],
    input_uris: dict[str, str],
    settings: Settings,
    uploads: list[dict[str, Any]],
) -> None:
    """What went through RunPod (input and output) names images by gs:// URI only."""
    smallest_image = min(upload["bytes"] for upload in uploads)
    assert smallest_image > 10_000  # so one inlined image (~14 KB as base64) could not hide
    chunks = -(-len(job["images"]) // settings.dispatch_chunk_size)
    assert len(bodies) == chunks and {body["status"] for body in bodies} == {"COMPLETED"}
    items = [item for body in bodies for item in body["input"]["items"]]
    results = [result for body in bodies for result in body["output"]["results"]]
    by_id = {image["id"]: image for image in job["images"]}
    assert sorted(item["output_id"] for item in items) == sorted(by_id)
    for item in items:
        image = by_id[item["output_id"]]
        assert item["reference_uris"] == [input_uris[ref] for ref in image["reference_ids"]]
        assert len(json.dumps(item)) < 1_000, item
    outputs_root = f"{settings.storage_url}/groups/{job['group_id']}/outputs/{job['id']}/"
    for result in results:
        assert result["output_uri"].startswith(outputs_root)
        assert result["thumbnail_uri"].startswith(outputs_root)
        assert len(json.dumps(result)) < 2_000, result
    for body in bodies:  # and besides the items and results, only a few ids and URLs
        listed = [*body["input"]["items"], *body["output"]["results"]]
        assert len(json.dumps(body)) < sum(len(json.dumps(x)) for x in listed) + 2_000


def check_gc_and_delete(
    stack: Stack, emulator: GCSEmulator, bucket: str, group_root: str, job_id: str
) -> None:
    settings = stack.settings
    assert storage_gc(settings, emulator)[-1].startswith("0 orphaned object(s), 0 bytes")

    # An object no row refers to (a worker's result that never arrived) is found and removed.
    stray = f"{group_root}/outputs/{job_id}/out_stray.jpg"
    emulator.client.bucket(bucket).blob(stray).upload_from_string(b"x" * 10)
    stray_key = stray.removeprefix(f"{PREFIX}/")
    found = storage_gc(settings, emulator)
    assert found[-1].startswith("1 orphaned object(s), 10 bytes")
    assert found[0].split() == ["orphan", "10", stray_key]
    assert storage_gc(settings, emulator, "--delete")[-1].startswith("1 orphaned object(s)")
    assert emulator.client.bucket(bucket).get_blob(stray) is None

    assert stack.http.delete(f"/api/jobs/{job_id}").status_code == 204
    assert stack.http.get(f"/api/jobs/{job_id}").status_code == 404
    assert blobs_under(emulator, bucket, f"{group_root}/outputs/") == {}
    assert len(blobs_under(emulator, bucket, f"{group_root}/inputs/")) == 60  # uploads stay
    assert storage_gc(settings, emulator)[-1].startswith("0 orphaned object(s)")


# -- faults --------------------------------------------------------------------------------


def test_outputs_that_cannot_be_written_fail_with_a_reason(
    gs_settings: Settings, gcs_env: GCSEmulator, bucket: str
) -> None:
    """A real write fault: the bucket is deleted while the job runs (an operator's
    `gcloud storage rm -r`, a Terraform mistake), so every upload gets GCS's 404.

    A text-only set makes the worker read nothing and only write, and the offline
    provider's latency holds every image in generation while the bucket goes: the fault
    hits exactly the writes. Each image must end `failed` with the storage error, never
    `succeeded` without a file; once the bucket is back, retrying the job succeeds.
    """
    with gcs_stack(gs_settings, offline_latency_ms=3000) as stack:
        group_id = stack.group()
        submitted = stack.http.post(
            "/api/jobs/submit",
            json={
                "group_id": group_id,
                "mode": "semi-automatic",
                "items": [{"prompt": "a lighthouse in a storm"}],
                "config": {
                    "total_images": 4,
                    "images_per_set": 4,
                    "model": "gemini-3.1-flash-image",
                    "image_size": "512",
                },
            },
        )
        assert submitted.status_code == 201, submitted.text
        [job_id] = [job["id"] for job in submitted.json()["jobs"]]
        wait_for_status(stack, job_id, "processing")  # RunPod has it; images are generating
        gcs_env.client.bucket(bucket).delete()  # empty: the set has no uploads
        assert stack.http.get(f"/api/jobs/{job_id}").json()["progress"]["pending"] == 4

        [job] = stack.wait_for([job_id])
        assert job["status"] == "failed"
        assert job["error"].startswith("could not store output:")
        outputs_root = f"groups/{group_id}/outputs/{job_id}/"
        for image in job["images"]:
            assert image["status"] == "failed"
            assert image["error"].startswith("could not store output:")
            assert outputs_root + image["id"] in image["error"]
            assert f"gs://{bucket}/{PREFIX}" in image["error"]
            assert (image["url"], image["sha256"], image["bytes"]) == (None, None, None)
        _, archive, manifest = read_zip(stack, group_id, status="all")
        assert [line["status"] for line in manifest] == ["failed"] * 4
        check_zip_against_manifest(archive, manifest)

        gcs_env.client.create_bucket(bucket)
        assert stack.http.post(f"/api/jobs/{job_id}/retry").status_code == 200
        [job] = stack.wait_for([job_id])
        assert job["status"] == "completed" and job["progress"]["succeeded"] == 4
        written = {blob.name: blob for blob in gcs_env.client.list_blobs(bucket, prefix=PREFIX)}
        for image in job["images"]:
            base = run_base(written, f"{PREFIX}/{outputs_root}{image['id']}")
            blob = written[base + extension_for(image["content_type"])]
            assert blob is not None and blob.metadata == {"sha256": image["sha256"]}
        _, archive, manifest = read_zip(stack, group_id)
        assert [line["status"] for line in manifest] == ["succeeded"] * 4
        check_zip_against_manifest(archive, manifest)


def test_control_plane_refuses_to_start_without_its_bucket(
    settings: Settings, gcs_env: GCSEmulator
) -> None:
    missing = settings.model_copy(update={"storage_url": f"gs://{MISSING_BUCKET}/{PREFIX}"})
    app = create_app(missing)
    with (
        pytest.raises(StorageError, match=rf"GCS bucket '{MISSING_BUCKET}' does not exist"),
        TestClient(app),
    ):
        pytest.fail("the app started without its bucket")


@pytest.mark.parametrize(
    "command",
    [["api", "--no-migrate", "--port", "{port}"], ["endpoint", "--port", "{port}"]],
    ids=["api", "endpoint"],
)
def test_cli_names_the_missing_bucket_and_exits_2(
    command: list[str], gcs_emulator: GCSEmulator, tmp_path: Path
) -> None:
    """`pixelfleet api` / `endpoint` with a missing bucket: one clean line, no traceback."""
    sock = reserve_socket()
    port = str(sock.getsockname()[1])
    sock.close()
    env = {
        **os.environ,
        "PIXELFLEET_STORAGE_URL": f"gs://{MISSING_BUCKET}/{PREFIX}",
        "PIXELFLEET_DATA_DIR": str(tmp_path),
        "PIXELFLEET_LOG_LEVEL": "WARNING",
        "STORAGE_EMULATOR_HOST": gcs_emulator.url,
    }
    for name in ("PIXELFLEET_GCS_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "control_plane.cli", *(a.format(port=port) for a in command)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        f"configuration error: GCS bucket '{MISSING_BUCKET}' does not exist"
    ), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# -- signed URLs ---------------------------------------------------------------------------


def test_api_answers_v4_signed_urls_the_bucket_serves(
    gs_settings: Settings,
    gcs_env: GCSEmulator,
    bucket: str,
    service_account_info: dict[str, str],
) -> None:
    """With signing credentials, image URLs in API answers are V4 signed URLs of the objects."""
    with gcs_stack(gs_settings) as stack:
        group_id = stack.group()
        job_id = submit_automatic(stack, group_id, stack.upload(group_id, 3))
        [anonymous] = stack.wait_for([job_id])
        assert anonymous["status"] == "completed"
        assert anonymous["images"][0]["url"].startswith(f"{stack.http.base_url}/api/outputs/")

    signing = GCSStorage(
        gs_settings.storage_url,
        client=signing_client(gcs_env, service_account_info),
        signed_url_expiry_s=900,
    )
    public_pem = public_key_pem(service_account_info)
    email = service_account_info["client_email"]
    object_root = f"{gcs_env.url}/{bucket}/{PREFIX}/groups/{group_id}"
    with TestClient(create_app(gs_settings, storage=signing, reconcile=False)) as client:
        job = client.get(f"/api/jobs/{job_id}").json()
        listing = client.get(f"/api/download/{group_id}").json()
        [upload] = upload_noise(client, group_id, 1)
        page_policy = client.get(f"/jobs/{job_id}").headers["content-security-policy"]

    # The job's page shows thumbnails from signed URLs: its policy allows their origin.
    assert f"img-src 'self' {gcs_env.url.rstrip('/')};" in page_policy

    assert [image["sha256"] for image in job["images"]] == [
        image["sha256"] for image in anonymous["images"]
    ]
    for image in job["images"]:
        base = image["url"].split("?", 1)[0].rsplit(".", 1)[0]  # the object URL, no extension
        assert base.startswith(f"{object_root}/outputs/{job_id}/{image['id']}-")
        data = fetch_signed(image["url"], base + extension_for(image["content_type"]), public_pem)
        assert hashlib.sha256(data).hexdigest() == image["sha256"]
        thumbnail = fetch_signed(image["thumbnail_url"], f"{base}.thumb.webp", public_pem)
        assert Image.open(io.BytesIO(thumbnail)).format == "WEBP"
        for url in (image["url"], image["thumbnail_url"]):
            assert verify_v4_signature(url, public_pem)["X-Goog-Credential"].startswith(email)
    assert [urlsplit(item["url"]).path for item in listing] == [
        urlsplit(image["url"]).path for image in job["images"]
    ]
    for item in listing:
        assert verify_v4_signature(item["url"], public_pem)["X-Goog-Expires"] == "900"

    base = f"{object_root}/inputs/{upload['id']}"
    data = fetch_signed(upload["url"], base + ".png", public_pem)
    assert data == noise_png(0)
    fetch_signed(upload["thumbnail_url"], f"{base}.thumb.webp", public_pem)

    # The file routes hand out no bytes either: they redirect to a fresh signed URL.
    with TestClient(create_app(gs_settings, storage=signing, reconcile=False)) as client:
        for image in job["images"]:
            routed = client.get(f"/api/outputs/{image['id']}/file", follow_redirects=False)
            assert routed.status_code == 302 and routed.content == b""
            assert urlsplit(routed.headers["location"]).path == urlsplit(image["url"]).path
            verify_v4_signature(routed.headers["location"], public_pem)


def test_api_refuses_credentials_that_cannot_sign(
    gs_settings: Settings, gcs_env: GCSEmulator
) -> None:
    """A user's `gcloud auth application-default login` can read and write but not sign URLs:
    every answer with images would fail, so the API refuses to start, saying why."""
    user = google.oauth2.credentials.Credentials(token="user-token")
    client = storage.Client(
        project="test", credentials=user, client_options={"api_endpoint": gcs_env.url}
    )
    store = GCSStorage(gs_settings.storage_url, client=client)  # reading and listing work
    with (
        pytest.raises(StorageError, match="cannot sign URLs"),
        TestClient(create_app(gs_settings, storage=store, reconcile=False)),
    ):
        pass


def test_an_abandoned_zip_download_stops_reading_ahead(gs_settings: Settings) -> None:
    """The client goes away mid-ZIP: the storage read-ahead stops then, not whenever the
    garbage collector happens to find the abandoned stream."""
    with gcs_stack(gs_settings) as stack:
        group_id = stack.group()
        uploads = upload_noise(stack.http, group_id, 24)
        job_id = submit_automatic(stack, group_id, [upload["id"] for upload in uploads])
        assert stack.wait_for([job_id])[0]["status"] == "completed"
        gc.disable()  # what the fix must not rely on
        try:
            with stack.http.stream("GET", f"/api/download/{group_id}/zip") as reply:
                assert reply.status_code == 200
                next(reply.iter_raw(64 * 1024))
                assert prefetch_threads() > 0
            deadline = time.monotonic() + 10
            while prefetch_threads() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert prefetch_threads() == 0
        finally:
            gc.enable()


def prefetch_threads() -> int:
    return sum(thread.name.startswith("gcs-prefetch") for thread in threading.enumerate())


def public_key_pem(info: dict[str, str]) -> bytes:
    key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fetch_signed(url: str | None, object_url: str, public_pem: bytes) -> bytes:
    """Check `url` is a valid V4 signature for `object_url` and fetch it from the emulator."""
    assert url is not None and url.startswith(object_url + "?"), (url, object_url)
    params = verify_v4_signature(url, public_pem)
    assert params["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert params["X-Goog-Expires"] == "900"
    reply = httpx.get(url)
    assert reply.status_code == 200, reply.text
    return reply.content
