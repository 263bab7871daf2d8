"""Request limits (control_plane/web/limits.py, web/forms.py, services/uploads.py,
services/submissions.py): bodies refused while they stream in, ids checked before any query,
and image decodes bounded, so no request can make the control plane spool, hold or decode
without bound."""

import asyncio
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.app import create_app
from control_plane.models import Dispatch
from control_plane.services.uploads import decode_gate
from control_plane.settings import Settings
from control_plane.web.forms import IN_MEMORY_BUDGET, read_form
from tests.conftest import png_bytes
from tests.fakes.api import Api, completed_body, hook, submit_one_dispatch
from tests.fakes.servers import free_port, run_server

MiB = 2**20
RSS_BOUND_MB = 600  # measured 487 MB (106 MB idle); 790-860 MB without the bound
BOUNDARY = "limits-test-boundary"


class CountingApp:
    """The app as served, counting the request-body bytes it pulled from the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.received = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[str, CountingApp, Settings]]:
    tight = settings.model_copy(update={"upload_max_request_bytes": 8 * MiB})
    counting = CountingApp(create_app(tight, reconcile=False))
    with run_server(counting) as url:
        yield url, counting, tight


def streamed_upload(group_id: str, total: int, chunk: int = MiB) -> Iterator[bytes]:
    """A multipart body of one file of `total` bytes, made as it is sent."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="group_id"\r\n\r\n{group_id}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="huge.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    zeros = bytes(chunk)
    for _ in range(total // chunk):
        yield zeros
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_a_300_mb_upload_is_refused_having_read_about_the_limit(
    served: tuple[str, CountingApp, Settings],
) -> None:
    url, counting, settings = served
    with httpx.Client(base_url=url, timeout=60) as http:
        group_id = http.post("/api/groups", json={"name": "big"}).json()["id"]
        counting.received = 0
        started = time.monotonic()
        for path in ("/api/uploads", f"/groups/{group_id}/uploads"):
            refused = http.post(
                path,
                content=streamed_upload(group_id, 300 * MiB),  # chunked: no Content-Length
                headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
            )
            assert refused.status_code == 413, refused.text[:500]
            assert "8,388,608 bytes" in refused.text
            assert counting.received <= 9 * MiB, counting.received
            counting.received = 0
        assert refused.headers["content-type"].startswith("text/html")  # the UI's page
        assert time.monotonic() - started < 30
        assert http.get(f"/api/groups/{group_id}").json()["counts"]["uploads"] == 0
    assert not list(Path(settings.storage_url).rglob("*.*"))


def test_a_declared_content_length_over_the_limit_is_refused_before_reading(
    served: tuple[str, CountingApp, Settings],
) -> None:
    url, counting, _ = served
    host, port = url.removeprefix("http://").split(":")
    for path, limit in (
        ("/api/uploads", "8,388,608"),
        ("/api/jobs/submit", "16,777,216"),
        ("/api/jobs/import", "16,777,216"),
    ):
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(300 * MiB))
        connection.endheaders()  # and no body: the answer must not wait for one
        answer = connection.getresponse()
        assert answer.status == 413
        assert limit in json.loads(answer.read())["detail"]
        connection.close()
    assert counting.received == 0


def test_json_and_form_bodies_over_a_mebibyte_are_refused(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    big = {"name": "n" * 2 * MiB}
    declared = api.client.post("/api/groups", json=big)
    assert declared.status_code == 413
    assert declared.json()["detail"] == (
        "request body too large: the limit for this request is 1,048,576 bytes (1.0 MiB)"
    )
    chunked = api.client.post(
        "/api/groups",
        content=iter([json.dumps(big).encode()]),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413 and "1,048,576 bytes" in chunked.json()["detail"]
    huge = {"group_id": group_id, "mode": "automatic", "prompt": "p" * 17 * MiB, "images": images}
    submitted = api.client.post("/api/jobs/submit", json=huge)
    assert submitted.status_code == 413
    assert submitted.json()["detail"] == (
        "request body too large: the limit for a submission is 16,777,216 bytes (16.0 MiB)"
    )
    page = api.client.post("/groups", data={"name": "n" * 2 * MiB})
    assert page.status_code == 413 and "1,048,576 bytes" in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert api.client.get("/api/jobs").json()["data"] == []
    assert api.client.get("/api/groups").json()["total"] == 1


def test_a_submission_as_large_as_its_schema_allows_is_accepted(api: Api) -> None:
    """500 sets with prompts of 4,000 characters: a 2 MB body, well within the schema."""
    group_id = api.group()
    [image] = api.upload_ids(group_id, 1)
    items = [{"images": [image], "prompt": f"{n} " + "p" * 4_000} for n in range(500)]
    body = {
        "group_id": group_id,
        "mode": "semi-automatic",
        "items": items,
        "config": {"total_images": 500, "images_per_set": 1},
    }
    assert len(json.dumps(body)) > 2 * 1_000_000
    submitted = api.client.post("/api/jobs/submit", json=body)
    assert submitted.status_code == 201, submitted.text[:300]
    assert len(submitted.json()["jobs"]) == 500


def test_webhook_bodies_over_12_mib_are_refused(api: Api) -> None:
    """Content-Length is checked first (before the token: no database work for it); a body
    without one is read up to the limit, before the token is checked with the others of its
    batch: past the limit it is refused whatever its token."""
    job_id, dispatch = submit_one_dispatch(api)
    padded = {**completed_body(api, dispatch), "padding": "x" * 13 * MiB}
    refused = hook(api, dispatch, padded)
    assert refused.status_code == 413
    assert "the limit for a webhook is 12,582,912 bytes (12.0 MiB)" in refused.json()["detail"]
    assert hook(api, dispatch, padded, token="wrong").status_code == 413
    params = {"dispatch": dispatch.id, "token": dispatch.webhook_token}
    streamed = json.dumps(padded).encode()
    chunked = api.client.post("/api/webhook/runpod", params=params, content=iter([streamed]))
    assert chunked.status_code == 413
    wrong = api.client.post(
        "/api/webhook/runpod", params={**params, "token": "wrong"}, content=iter([streamed])
    )
    assert wrong.status_code == 413
    small = json.dumps(completed_body(api, dispatch)).encode()
    wrong = api.client.post(
        "/api/webhook/runpod", params={**params, "token": "wrong"}, content=iter([small])
    )
    assert wrong.status_code == 401
    with api.session() as session:
        assert session.get(Dispatch, dispatch.id).status == "submitted"  # type: ignore[union-attr]
    assert hook(api, dispatch, completed_body(api, dispatch)).status_code == 200
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "completed"


def test_a_file_over_the_per_file_limit_is_not_spooled_past_it(api: Api) -> None:
    api.platform.settings.upload_max_file_bytes = MiB
    form = _read_upload_form(api, streamed_upload("grp_x", 50 * MiB))
    upload = form["files"]
    assert not isinstance(upload, str)
    assert upload.size == 50 * MiB  # its true size, so it is rejected by size as before
    upload.file.seek(0, io.SEEK_END)
    assert upload.file.tell() == MiB + 1


def _read_upload_form(api: Api, chunks: Iterator[bytes]) -> FormData:
    """`web/forms.read_form` over an upload request whose body arrives as `chunks`."""

    async def receive() -> Message:
        body = next(chunks, None)
        return {"type": "http.request", "body": body or b"", "more_body": body is not None}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/uploads",
        "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())],
    }
    return asyncio.run(read_form(Request(scope, receive), api.platform))


def test_many_small_files_are_not_all_held_in_memory(api: Api) -> None:
    """Starlette keeps each file under 1 MiB in memory; past IN_MEMORY_BUDGET of files in one
    request, the rest go straight to disk (thousands of small files never take gigabytes)."""
    count, size = 80, 900_000
    parts = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; '
        f'filename="f{n}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + b"x" * size
        + b"\r\n"
        for n in range(count)
    )
    form = _read_upload_form(api, iter([parts, f"--{BOUNDARY}--\r\n".encode()]))
    files = [item for item in form.getlist("files") if not isinstance(item, str)]
    assert len(files) == count and all(upload.size == size for upload in files)
    in_memory = sum(upload.size or 0 for upload in files if not upload.file._rolled)  # type: ignore[attr-defined]
    assert in_memory <= IN_MEMORY_BUDGET + size
    assert sum(1 for upload in files if upload.file._rolled) >= count // 2  # type: ignore[attr-defined]


def test_malformed_image_ids_are_refused_before_any_query(api: Api) -> None:
    """A request full of long or malformed ids once made MariaDB drop the connection (500)."""
    group_id = api.group()
    real = api.upload_ids(group_id, 1)
    cases = [
        ([f"img_{i:036d}" for i in range(19_000)], "19000 image id(s)"),  # well-sized, wrong
        ([f"img_{i:04d}" + "x" * 1_000 for i in range(900)], "900 image id(s)"),  # long
        ([*real, real[0].upper(), " " + real[0]], "2 image id(s)"),
    ]
    for images, count in cases:
        started = time.monotonic()
        answer = api.client.post(
            "/api/jobs/submit",
            json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images},
        )
        assert answer.status_code == 422, answer.text[:300]
        detail = answer.json()["detail"]
        assert detail.startswith(
            f"{count} are not uploads or images of group {group_id}: not shaped"
        )
        assert len(detail) < 1_000 and detail.endswith("…") == (len(images) > 10)
        assert time.monotonic() - started < 5
    many_items = [{"images": ["x"] * 50, "prompt": "p"} for _ in range(1_000)]  # 50,000 ids
    semi = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": many_items,
            "config": {"total_images": 4_000, "images_per_set": 4},
        },
    )
    assert semi.status_code == 422 and "at most 3 reference images" in semi.json()["detail"]
    twenty_mb = {"group_id": group_id, "mode": "automatic", "prompt": "p"}
    twenty_mb["images"] = ["img_" + "x" * 1_000] * 20_000  # type: ignore[assignment]
    huge = api.client.post("/api/jobs/submit", json=twenty_mb)
    assert huge.status_code == 413
    assert api.client.get("/api/jobs").json()["data"] == []


def test_concurrent_uploads_decode_one_at_a_time_with_one_slot(settings: Settings) -> None:
    """With four slots the same uploads do decode side by side, so one slot is what holds
    them to one at a time."""
    big = png_bytes(3000, 3000, (10, 20, 30))
    decode_gate.cache_clear()
    peaks = {}
    for slots in (1, 4):
        gated = settings.model_copy(update={"upload_decode_concurrency": slots})
        with run_server(create_app(gated, reconcile=False)) as url:
            group_id = httpx.post(f"{url}/api/groups", json={"name": "g"}).json()["id"]
            start = threading.Barrier(4)

            def upload(
                i: int, url: str = url, group_id: str = group_id, start: threading.Barrier = start
            ) -> int:
                start.wait()
                files = [("files", (f"{i}.png", big, "image/png"))]
                answer = httpx.post(
                    f"{url}/api/uploads", data={"group_id": group_id}, files=files, timeout=60
                )
                return answer.status_code

            with ThreadPoolExecutor(4) as pool:
                assert list(pool.map(upload, range(4))) == [201] * 4
        peaks[slots] = decode_gate(slots).peak
    assert peaks[1] == 1 and peaks[4] >= 2, peaks


@pytest.fixture(scope="module")
def photo_45_mp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 45 MP PNG, small on disk (one colour) but 135 MB once decoded."""
    path = tmp_path_factory.mktemp("photos") / "45mp.png"
    Image.new("RGB", (7_750, 5_800), (90, 120, 150)).save(path, "PNG", compress_level=1)
    return path


def serve_in_a_process(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PIXELFLEET_DATABASE_URL": settings.database_url,
        "PIXELFLEET_STORAGE_URL": settings.storage_url,
        "PIXELFLEET_DATA_DIR": str(settings.data_dir),
        "PIXELFLEET_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "control_plane.cli", "api", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_parallel_large_uploads_stay_within_a_memory_bound(
    settings: Settings, photo_45_mp: Path
) -> None:
    """Four 45 MP uploads at once under default settings: the server's peak RSS stays under
    RSS_BOUND_MB (README, "Uploads"); without the decode bound it reached about 860 MB."""
    port = free_port()
    server = serve_in_a_process(settings, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(server, url)
        group_id = httpx.post(f"{url}/api/groups", json={"name": "photos"}).json()["id"]
        body = photo_45_mp.read_bytes()

        def upload(i: int) -> int:
            files = [("files", (f"{i}.png", body, "image/png"))]
            answer = httpx.post(
                f"{url}/api/uploads", data={"group_id": group_id}, files=files, timeout=120
            )
            return answer.status_code

        with peak_rss(server.pid) as peak, ThreadPoolExecutor(4) as pool:
            assert list(pool.map(upload, range(4))) == [201] * 4
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert peak[0] < RSS_BOUND_MB * 1e6, f"peak RSS {peak[0] / 1e6:.0f} MB"


@contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    """The highest RSS of process `pid` while the block runs, sampled every 5 ms."""
    process = psutil.Process(pid)
    peak = [process.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


def wait_until_up(server: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.poll() is not None:
            pytest.fail(f"the API exited: {server.stderr.read().decode() if server.stderr else ''}")
        time.sleep(0.1)
    pytest.fail("the API did not answer in 60 s")
