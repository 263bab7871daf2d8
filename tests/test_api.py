"""The HTTP API on SQLite and MariaDB, with RunPod's cloud API mocked (respx)."""

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import httpx
import pytest
import respx
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image
from sqlmodel import Session, select

from control_plane.app import create_app
from control_plane.models import Dispatch, Output, Upload
from control_plane.platform import Platform
from control_plane.services import jobs
from control_plane.settings import Settings
from tests.conftest import jpeg_bytes, png_bytes

RUNPOD = "https://api.runpod.ai/v2/ep-test"


@dataclass
class Api:
    client: TestClient
    platform: Platform
    runpod: respx.MockRouter
    run_route: respx.Route
    run_bodies: list[dict]

    def drain(self) -> None:
        self.client.portal.call(self.platform.drain)  # type: ignore[union-attr]

    def group(self, name: str = "dataset") -> str:
        response = self.client.post("/api/groups", json={"name": name})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def upload(self, group_id: str, files: list[tuple[str, bytes]]) -> httpx.Response:
        return self.client.post(
            "/api/uploads",
            data={"group_id": group_id},
            files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        )

    def upload_ids(self, group_id: str, n: int) -> list[str]:
        response = self.upload(group_id, [(f"img{i}.png", png_bytes(32 + i, 32)) for i in range(n)])
        assert response.status_code == 201, response.text
        return [image["id"] for image in response.json()["images"]]

    def session(self) -> Session:
        return Session(self.platform.engine)


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    settings = settings.model_copy(
        update={
            "runpod_base_url": "https://api.runpod.ai",
            "runpod_endpoint_id": "ep-test",
            "runpod_api_key": "rp-key",
            "reconcile_interval_s": 3600,
        }
    )
    ids = count(1)
    bodies: list[dict] = []

    def run(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer rp-key"
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"id": f"rp-{next(ids)}", "status": "IN_QUEUE"})

    with respx.mock(assert_all_called=False) as router:
        run_route = router.post(f"{RUNPOD}/run").mock(side_effect=run)
        with TestClient(create_app(settings, reconcile=False)) as client:
            yield Api(client, client.app.state.platform, router, run_route, bodies)  # type: ignore[attr-defined]


# Groups -----------------------------------------------------------------------------------
def test_groups_create_list_get(api: Api) -> None:
    first, second = api.group("first"), api.group("second")
    listing = api.client.get("/api/groups", params={"page": 1, "limit": 1}).json()
    assert listing["total"] == 2 and listing["limit"] == 1 and listing["page"] == 1
    assert [g["id"] for g in listing["data"]] == [second]  # newest first
    detail = api.client.get(f"/api/groups/{first}").json()
    assert detail["name"] == "first" and detail["counts"]["uploads"] == 0


def test_group_errors_are_clear(api: Api) -> None:
    missing = api.client.get("/api/groups/grp_nope")
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
    blank = api.client.post("/api/groups", json={"name": "   "})
    assert blank.status_code == 422 and "name" in blank.json()["detail"]


# Uploads ----------------------------------------------------------------------------------
def test_upload_accepts_images_and_rejects_bad_files(api: Api) -> None:
    group_id = api.group()
    webp = io.BytesIO()
    Image.new("RGB", (20, 10), "blue").save(webp, "WEBP")
    truncated = png_bytes(300, 300)[:200]
    response = api.upload(
        group_id,
        [
            ("a.png", png_bytes()),
            ("b.jpg", jpeg_bytes()),
            ("c.webp", webp.getvalue()),
            ("evil.png", b"#!/bin/sh\necho not an image\n"),
            ("empty.png", b""),
            ("cut.png", truncated),
            ("../../etc/passwd.png", png_bytes(10, 10)),
        ],
    )
    assert response.status_code == 201, response.text
    body = response.json()
    accepted = {image["filename"]: image for image in body["images"]}
    assert set(accepted) == {"a.png", "b.jpg", "c.webp", "passwd.png"}
    assert accepted["a.png"]["width"] == 64 and accepted["a.png"]["height"] == 48
    assert accepted["c.webp"]["content_type"] == "image/webp"
    reasons = {item["filename"]: item["reason"] for item in body["rejected"]}
    assert "not a PNG, JPEG or WebP" in reasons["evil.png"]
    assert "empty" in reasons["empty.png"]
    assert "truncated" in reasons["cut.png"] or "corrupt" in reasons["cut.png"]
    fetched = api.client.get(accepted["a.png"]["url"])
    assert fetched.status_code == 200 and fetched.content == png_bytes()
    thumb = api.client.get(accepted["a.png"]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.content[:4] == b"RIFF"
    with api.session() as session:
        keys = [u.storage_key for u in session.exec(select(Upload)).all()]
    assert all(key.startswith(f"groups/{group_id}/inputs/") for key in keys)
    stored = {info.key for info in api.platform.storage.list()}
    assert len(stored) == 8  # 4 images + 4 thumbnails: nothing from rejected files


def test_upload_accepts_camera_jpegs_with_extra_frames(api: Api) -> None:
    """Phones and cameras write MPO: a JPEG followed by more frames. It is a JPEG to everyone."""
    mpo = io.BytesIO()
    first, second = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (40, 30), "green")
    first.save(mpo, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(mpo.getvalue())).format == "MPO"
    response = api.upload(api.group(), [("camera.jpg", mpo.getvalue())])
    assert response.status_code == 201, response.text
    image = response.json()["images"][0]
    assert image["content_type"] == "image/jpeg" and (image["width"], image["height"]) == (40, 30)
    assert image["url"].endswith("/file")
    served = api.client.get(image["url"])
    assert served.headers["content-type"] == "image/jpeg" and served.content == mpo.getvalue()


@contextmanager
def _group_deleted_before(api: Api, table: str, group_id: str) -> Iterator[None]:
    """Another request deletes the group just before this one inserts into `table`."""
    engine, fired = api.platform.engine, []

    def delete_group_first(*args: object) -> None:
        if fired or not str(args[2]).startswith(f"INSERT INTO {table}"):
            return
        fired.append(table)
        other = sa.create_engine(api.platform.settings.database_url)
        with other.begin() as connection:
            for sql in (
                "DELETE FROM uploads WHERE group_id = :id",
                "DELETE FROM `groups` WHERE id = :id",
            ):
                connection.execute(sa.text(sql), {"id": group_id})
        other.dispose()

    sa.event.listen(engine, "before_cursor_execute", delete_group_first)
    try:
        yield
    finally:
        sa.event.remove(engine, "before_cursor_execute", delete_group_first)
    assert fired, f"nothing was inserted into {table}"


def test_a_group_deleted_during_upload_or_submit_is_409_and_leaves_nothing(api: Api) -> None:
    group_id = api.group()
    with _group_deleted_before(api, "uploads", group_id):
        response = api.upload(group_id, [("a.png", png_bytes()), ("b.png", png_bytes(50))])
    assert response.status_code == 409, response.text
    assert "was deleted meanwhile" in response.json()["detail"]
    assert list(api.platform.storage.list()) == []

    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    with _group_deleted_before(api, "jobs", group_id):
        submitted = api.client.post(
            "/api/jobs/submit",
            json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images},
        )
    assert submitted.status_code == 409, submitted.text
    assert api.client.get("/api/jobs").json()["total"] == 0
    assert api.run_bodies == []


def test_upload_applies_exif_orientation(api: Api) -> None:
    group_id = api.group()
    image = Image.new("RGB", (40, 20), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    response = api.upload(group_id, [("phone.jpg", buffer.getvalue())])
    uploaded = response.json()["images"][0]
    assert (uploaded["width"], uploaded["height"]) == (20, 40)
    stored = Image.open(io.BytesIO(api.client.get(uploaded["url"]).content))
    assert stored.size == (20, 40)


def test_upload_limits_and_missing_group(api: Api) -> None:
    group_id = api.group()
    api.platform.settings.upload_max_file_bytes = 1000
    api.platform.settings.upload_max_pixels = 10_000
    too_big = api.upload(group_id, [("big.png", png_bytes(400, 400, (1, 2, 3)) + b"\0" * 2000)])
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
    api.platform.settings.upload_max_file_bytes = 20_000_000
    bomb = api.upload(group_id, [("bomb.png", png_bytes(200, 200))])
    assert bomb.status_code == 422 and "pixels" in bomb.json()["detail"]
    unknown = api.upload("grp_missing", [("a.png", png_bytes())])
    assert unknown.status_code == 404
    no_files = api.client.post("/api/uploads", data={"group_id": group_id})
    assert no_files.status_code == 422
    garbage = api.client.post(
        "/api/uploads",
        content=b"--xyz\r\nnot a part header\r\n",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert garbage.status_code == 422, garbage.text
    assert "could not read the multipart body" in garbage.json()["detail"]
    api.platform.settings.upload_max_files = 2
    too_many = api.upload(group_id, [(f"{i}.png", png_bytes()) for i in range(3)])
    assert too_many.status_code == 422 and "Too many files" in too_many.json()["detail"]
    assert list(api.platform.storage.list()) == []


# Submission -------------------------------------------------------------------------------
def test_submit_automatic_plans_one_output_per_image_in_chunks(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 40)
    response = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "make it blue",
            "images": images,
            "config": {"aspect_ratio": "16:9", "seed": 7},
        },
    )
    assert response.status_code == 201, response.text
    job = response.json()["jobs"][0]
    assert job["progress"] == {
        "total": 40,
        "succeeded": 0,
        "failed": 0,
        "blocked": 0,
        "pending": 40,
    }
    api.drain()
    assert len(api.run_bodies) == 3  # 16 + 16 + 8
    sent = [item for body in api.run_bodies for item in body["input"]["items"]]
    assert sorted(item["params"]["seed"] for item in sent) == list(range(7, 47))
    first = api.run_bodies[0]
    assert first["policy"] == {"executionTimeout": 600_000, "ttl": 86_400_000}
    assert "token=" in first["webhook"] and "dispatch=" in first["webhook"]
    assert all(uri.startswith("file://") for item in sent for uri in item["reference_uris"])
    assert len(json.dumps(first)) < 20_000  # URIs, never image bytes
    detail = api.client.get(f"/api/jobs/{job['id']}").json()
    assert detail["status"] == "processing"
    assert {image["status"] for image in detail["images"]} == {"running"}
    assert detail["images"][0]["prompt"] == "make it blue" and detail["images"][0]["seed"] == 7


def test_submit_semi_automatic_spreads_sets_over_items(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 3)
    response = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [
                {"images": images[:2], "prompt": "castle"},
                {"images": images[2:], "prompt": "forest"},
            ],
            "config": {"total_images": 40, "images_per_set": 4},
        },
    )
    assert response.status_code == 201, response.text
    jobs = response.json()["jobs"]
    assert len(jobs) == 10 and all(j["progress"]["total"] == 4 for j in jobs)
    assert [j["prompt"] for j in jobs] == ["castle", "forest"] * 5
    assert len({j["batch_id"] for j in jobs}) == 1
    api.drain()
    assert len(api.run_bodies) == 10  # one dispatch per set
    assert all(len(body["input"]["items"]) == 4 for body in api.run_bodies)
    listing = api.client.get(
        "/api/jobs", params={"group_id": group_id, "mode": "semi-automatic", "limit": 200}
    )
    assert listing.json()["total"] == 10


@pytest.mark.parametrize(
    ("change", "status", "needle"),
    [
        ({"config": {"aspect_ratio": "7:3"}}, 422, "aspect_ratio"),
        ({"config": {"model": "dall-e"}}, 422, "unknown model"),
        ({"config": {"image_size": "4K"}}, 422, "image_size"),
        ({"images": ["img_missing"]}, 422, "not uploads of group"),
        ({"prompt": ""}, 422, "prompt"),
        ({"group_id": "grp_missing"}, 404, "does not exist"),
        ({"mode": "manual"}, 422, "mode"),
        ({"unexpected": 1}, 422, "unexpected"),
    ],
)
def test_submit_rejects_bad_input_and_writes_nothing(
    api: Api, change: dict, status: int, needle: str
) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images, **change}
    response = api.client.post("/api/jobs/submit", json=body)
    assert response.status_code == status, response.text
    assert needle in response.json()["detail"]
    assert api.client.get("/api/jobs").json()["total"] == 0


def test_semi_automatic_limits(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 4)
    uneven = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": images[:1], "prompt": "x"}],
            "config": {"total_images": 10, "images_per_set": 4},
        },
    )
    assert uneven.status_code == 422 and "multiple of images_per_set" in uneven.json()["detail"]
    too_many_refs = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": images, "prompt": "x"}],
            "config": {"model": "gemini-2.5-flash-image"},
        },
    )
    assert (
        too_many_refs.status_code == 422 and "at most 3 reference" in too_many_refs.json()["detail"]
    )
    unused_items = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": [image], "prompt": f"p{i}"} for i, image in enumerate(images)],
            "config": {"total_images": 8, "images_per_set": 4},
        },
    )
    assert unused_items.status_code == 422
    assert "4 items but only 2 set(s)" in unused_items.json()["detail"]
    assert api.client.get("/api/jobs").json()["total"] == 0


def test_ids_match_exactly_on_every_database(api: Api) -> None:
    """MySQL's default collations compare case-insensitively and ignore trailing spaces; the
    tables are binary, and what is found is used by its stored id (keys are built from it)."""
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    assert api.client.get(f"/api/groups/{group_id.upper()}").status_code == 404
    upper = api.upload(group_id.upper(), [("a.png", png_bytes())])
    assert upper.status_code == 404
    padded = api.upload(group_id + " ", [("a.png", png_bytes())])
    assert padded.status_code in (201, 404), padded.text  # MariaDB pads; SQLite does not
    if padded.status_code == 201:
        assert padded.json()["images"][0]["group_id"] == group_id
    submitted = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id + " ", "mode": "automatic", "prompt": "p", "images": images},
    )
    assert submitted.status_code in (201, 404), submitted.text
    if submitted.status_code == 201:
        assert submitted.json()["jobs"][0]["group_id"] == group_id
        api.drain()
        inputs = api.run_bodies[-1]["input"]["items"]
        assert all(item["output_key"].startswith(f"groups/{group_id}/") for item in inputs)
    wrong_case = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "p",
            "images": [images[0].upper()],
        },
    )
    assert wrong_case.status_code == 422 and "not uploads of group" in wrong_case.json()["detail"]


def test_pages_beyond_any_database_are_refused(api: Api) -> None:
    for path in ("/api/groups", "/api/jobs"):
        huge = api.client.get(path, params={"page": 2**62})
        assert huge.status_code == 422, huge.text
        assert "page" in huge.json()["detail"]


# Webhook ----------------------------------------------------------------------------------
def _submit_one_dispatch(api: Api, n: int = 3) -> tuple[str, Dispatch]:
    group_id = api.group()
    images = api.upload_ids(group_id, n)
    job = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "p",
            "images": images,
        },
    ).json()["jobs"][0]
    api.drain()
    with api.session() as session:
        dispatch = session.exec(select(Dispatch).where(Dispatch.job_id == job["id"])).one()
    return job["id"], dispatch


def _hook(api: Api, dispatch: Dispatch, body: dict, token: str | None = None) -> httpx.Response:
    return api.client.post(
        "/api/webhook/runpod",
        params={"dispatch": dispatch.id, "token": token or dispatch.webhook_token},
        json={"id": dispatch.runpod_job_id, "delayTime": 5, "executionTime": 9, **body},
    )


def _completed_body(api: Api, dispatch: Dispatch) -> dict:
    with api.session() as session:
        outputs = session.exec(select(Output).where(Output.dispatch_id == dispatch.id)).all()
    results = []
    for output in outputs:
        key = f"groups/{output.group_id}/outputs/{output.job_id}/{output.id}.png"
        stored = api.platform.storage.put_bytes(key, png_bytes(), content_type="image/png")
        results.append(
            {
                "output_id": output.id,
                "status": "succeeded",
                "provider": "offline",
                "model": output.model,
                "seed": output.seed,
                "output_uri": api.platform.storage.uri(key),
                "content_type": "image/png",
                "width": 64,
                "height": 48,
                "bytes": stored.size,
                "sha256": stored.sha256,
            }
        )
    return {
        "status": "COMPLETED",
        "output": {"version": 1, "dispatch_id": dispatch.id, "results": results},
    }


def test_webhook_wrong_or_missing_token_is_401_and_changes_nothing(api: Api) -> None:
    job_id, dispatch = _submit_one_dispatch(api)
    assert _hook(api, dispatch, _completed_body(api, dispatch), token="guess").status_code == 401
    missing = api.client.post(
        "/api/webhook/runpod",
        params={"dispatch": dispatch.id},
        json={"id": "x", "status": "COMPLETED"},
    )
    assert missing.status_code == 401
    nothing = api.client.post("/api/webhook/runpod", json={"id": "x", "status": "COMPLETED"})
    assert nothing.status_code == 401
    wrong_and_junk = api.client.post(
        "/api/webhook/runpod", params={"dispatch": dispatch.id, "token": "guess"}, content=b"{"
    )
    assert wrong_and_junk.status_code == 401  # the token is checked before the body is read
    junk = _hook(api, dispatch, {"id": None, "status": "COMPLETED"})
    assert junk.status_code == 422 and "id" in junk.json()["detail"]
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "processing"
    assert api.client.get("/api/webhook/runpod").json() == {"status": "ok"}


def test_webhook_with_huge_error_and_fields_is_stored_clipped(api: Api) -> None:
    """MySQL TEXT holds 64 KB and VARCHARs their length: what RunPod or a worker sends is
    clipped, never a DataError that would leave the dispatch unfinished for ever."""
    job_id, dispatch = _submit_one_dispatch(api, n=2)
    body = _completed_body(api, dispatch)
    first, second = body["output"]["results"]
    first["model_version"] = "v" * 300
    second.update(status="failed", error="e" * 70_000)
    assert _hook(api, dispatch, body).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed"
    failed = next(image for image in job["images"] if image["status"] == "failed")
    assert len(failed["error"]) == 2_000 and failed["error"].endswith("…")

    job_id, dispatch = _submit_one_dispatch(api, n=1)
    huge = _hook(api, dispatch, {"status": "FAILED", "error": "x" * 70_000})
    assert huge.status_code == 200
    with api.session() as session:
        row = session.get(Dispatch, dispatch.id)
        assert row is not None and row.status == "failed" and len(row.error or "") == 2_000


def test_webhook_completed_is_idempotent(api: Api) -> None:
    job_id, dispatch = _submit_one_dispatch(api)
    body = _completed_body(api, dispatch)
    for _ in range(3):  # RunPod's retry policy can deliver the same webhook three times
        assert _hook(api, dispatch, body).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["progress"]["succeeded"] == 3
    assert all(image["attempts"] == 1 for image in job["images"])
    assert all(api.client.get(image["url"]).status_code == 200 for image in job["images"])


def test_webhook_failed_with_sdk_error_retries_then_fails_with_reason(api: Api) -> None:
    job_id, dispatch = _submit_one_dispatch(api)
    sdk_error = json.dumps(
        {
            "error_type": "<class 'RuntimeError'>",
            "error_message": "GPU on fire",
            "error_traceback": "Traceback ...",
            "hostname": "h",
            "worker_id": "w",
            "runpod_version": "1.12.0",
        }
    )
    assert _hook(api, dispatch, {"status": "FAILED", "error": sdk_error}).status_code == 200
    api.drain()
    assert len(api.run_bodies) == 2  # retried as a second dispatch (attempt 2 of 2)
    with api.session() as session:
        retry = session.exec(
            select(Dispatch).where(Dispatch.job_id == job_id, Dispatch.attempt == 2)
        ).one()
    assert _hook(api, retry, {"status": "FAILED", "error": sdk_error}).status_code == 200
    api.drain()
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["progress"]["failed"] == 3
    assert all("GPU on fire" in image["error"] for image in job["images"])
    assert len(api.run_bodies) == 2


def test_webhook_completed_without_output_is_a_failure(api: Api) -> None:
    api.platform.settings.dispatch_max_attempts = 1
    job_id, dispatch = _submit_one_dispatch(api)
    assert _hook(api, dispatch, {"status": "COMPLETED"}).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert "without output" in job["images"][0]["error"]


def test_webhook_for_partial_results_fails_the_silent_ones(api: Api) -> None:
    job_id, dispatch = _submit_one_dispatch(api)
    body = _completed_body(api, dispatch)
    body["output"]["results"][0] = {
        **body["output"]["results"][0],
        "status": "blocked",
        "error": "IMAGE_SAFETY",
    }
    del body["output"]["results"][1]
    _hook(api, dispatch, body)
    progress = api.client.get(f"/api/jobs/{job_id}").json()["progress"]
    assert progress == {"total": 3, "succeeded": 1, "failed": 1, "blocked": 1, "pending": 0}


def test_cancel_while_run_is_in_flight_cancels_that_runpod_job(api: Api) -> None:
    """A job cancelled between the claim and RunPod's answer to /run: that RunPod job is
    nobody's any more, so it is cancelled rather than left running (and billing)."""
    cancel_route = api.runpod.post(url__regex=rf"{RUNPOD}/cancel/.*").mock(
        return_value=httpx.Response(200, json={})
    )
    group_id = api.group()
    images = api.upload_ids(group_id, 2)

    def run_while_cancelled(request: httpx.Request) -> httpx.Response:
        job_id = json.loads(request.content)["input"]["job_id"]
        with api.session() as session:  # the user's cancel lands while /run is in flight
            assert jobs.cancel(session, job_id) == []  # nothing known to RunPod yet
            session.commit()
        return httpx.Response(200, json={"id": "rp-orphan", "status": "IN_QUEUE"})

    api.run_route.mock(side_effect=run_while_cancelled)
    submitted = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images},
    )
    assert submitted.status_code == 201
    api.drain()
    assert cancel_route.call_count == 1
    assert cancel_route.calls.last.request.url.path.endswith("/cancel/rp-orphan")
    job = api.client.get(f"/api/jobs/{submitted.json()['jobs'][0]['id']}").json()
    assert job["status"] == "cancelled" and job["progress"]["failed"] == 2


def test_cancel_and_retry(api: Api) -> None:
    cancel_route = api.runpod.post(url__regex=rf"{RUNPOD}/cancel/.*").mock(
        return_value=httpx.Response(200, json={})
    )
    job_id, dispatch = _submit_one_dispatch(api)
    cancelled = api.client.post(f"/api/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    api.drain()
    assert cancel_route.call_count == 1
    assert api.client.post(f"/api/jobs/{job_id}/cancel").status_code == 409
    late = _hook(api, dispatch, _completed_body(api, dispatch))  # a late webhook changes nothing
    assert late.status_code == 200
    assert api.client.get(f"/api/jobs/{job_id}").json()["progress"]["failed"] == 3
    retried = api.client.post(f"/api/jobs/{job_id}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "processing"
    api.drain()
    assert len(api.run_bodies) == 2


def test_jobs_listing_filters_and_pages(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    for prompt in ("a", "b", "c"):
        api.client.post(
            "/api/jobs/submit",
            json={"group_id": group_id, "mode": "automatic", "prompt": prompt, "images": images},
        )
    page = api.client.get("/api/jobs", params={"limit": 2, "page": 2}).json()
    assert page["total"] == 3 and [j["prompt"] for j in page["data"]] == ["a"]
    assert api.client.get("/api/jobs", params={"status": "completed"}).json()["total"] == 0
    assert api.client.get("/api/jobs", params={"status": "bogus"}).status_code == 422
    assert api.client.get("/api/jobs/job_missing").status_code == 404


# Deleting and orphans ---------------------------------------------------------------------
def test_delete_job_and_group_remove_rows_and_objects(api: Api) -> None:
    job_id, dispatch = _submit_one_dispatch(api)
    group_id = api.client.get(f"/api/jobs/{job_id}").json()["group_id"]
    busy = api.client.delete(f"/api/jobs/{job_id}")
    assert busy.status_code == 409 and "cancel them first" in busy.json()["detail"]
    _hook(api, dispatch, _completed_body(api, dispatch))
    outputs_prefix = f"groups/{group_id}/outputs/{job_id}/"
    assert len(list(api.platform.storage.list(outputs_prefix))) == 3
    assert api.client.delete(f"/api/jobs/{job_id}").status_code == 204
    assert api.client.get(f"/api/jobs/{job_id}").status_code == 404
    assert list(api.platform.storage.list(outputs_prefix)) == []
    assert len(list(api.platform.storage.list(f"groups/{group_id}/inputs/"))) == 6  # uploads stay
    assert api.client.delete(f"/api/groups/{group_id}").status_code == 204
    assert api.client.get(f"/api/groups/{group_id}").status_code == 404
    assert list(api.platform.storage.list(f"groups/{group_id}/")) == []
    assert api.client.delete(f"/api/groups/{group_id}").status_code == 404


def test_storage_gc_finds_only_old_unreferenced_objects(api: Api, settings: Settings) -> None:
    from typer.testing import CliRunner

    from control_plane.cli import app as cli

    group_id = api.group()
    api.upload_ids(group_id, 2)
    storage = api.platform.storage
    storage.put_bytes(
        f"groups/{group_id}/outputs/job_gone/out_x.png", png_bytes(), content_type="image/png"
    )
    crashed_write = Path(settings.storage_url) / "groups" / group_id / "inputs" / ".tmp-k3j2h1"
    crashed_write.write_bytes(b"half an image")  # what a process killed mid-write leaves
    env = {
        "PIXELFLEET_DATABASE_URL": settings.database_url,
        "PIXELFLEET_STORAGE_URL": settings.storage_url,
    }
    runner = CliRunner()
    young = runner.invoke(cli, ["storage", "gc"], env=env)
    assert (
        young.exit_code == 0 and "0 orphaned object(s)" in young.output
    )  # within the grace period
    dry = runner.invoke(cli, ["storage", "gc", "--grace-hours", "0"], env=env)
    assert dry.exit_code == 0 and "2 orphaned object(s)" in dry.output and "out_x.png" in dry.output
    assert ".tmp-k3j2h1" in dry.output
    assert storage.exists(
        f"groups/{group_id}/outputs/job_gone/out_x.png"
    )  # dry run deletes nothing
    wet = runner.invoke(cli, ["storage", "gc", "--grace-hours", "0", "--delete"], env=env)
    assert wet.exit_code == 0 and "deleted" in wet.output
    assert not storage.exists(f"groups/{group_id}/outputs/job_gone/out_x.png")
    assert not crashed_write.exists()
    assert len(list(storage.list(f"groups/{group_id}/inputs/"))) == 4  # referenced objects stay


# Reconciliation ---------------------------------------------------------------------------
def test_runpod_outage_leaves_dispatches_pending_until_the_reconciler_sends_them(api: Api) -> None:
    from control_plane.runpod.client import RunPodClient
    from control_plane.runpod.poller import reconcile_once

    settings = api.platform.settings
    api.platform.runpod = RunPodClient(settings.runpod_endpoint_url, "rp-key", backoff_s=0.001)
    healthy = api.run_route.side_effect
    api.run_route.mock(return_value=httpx.Response(503, text="busy"))
    job_id, dispatch = _submit_one_dispatch(api)
    assert api.run_route.call_count == 3  # the client's own retries, then it gives up for now
    with api.session() as session:
        stored = session.get(Dispatch, dispatch.id)
        assert stored is not None and stored.status == "pending" and "503" in (stored.error or "")
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "queued"

    api.run_route.mock(side_effect=healthy)  # RunPod is back
    sent, polled = api.client.portal.call(reconcile_once, api.platform)  # type: ignore[union-attr]
    assert (sent, polled) == (1, 0)
    assert len(api.run_bodies) == 1
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "processing"


def test_runpod_refusing_for_good_fails_the_images_with_the_reason(api: Api) -> None:
    from control_plane.runpod.client import RunPodClient
    from control_plane.runpod.poller import reconcile_once

    settings = api.platform.settings
    settings.dispatch_submit_attempts, settings.dispatch_max_attempts = 2, 1
    api.platform.runpod = RunPodClient(settings.runpod_endpoint_url, "rp-key", backoff_s=0.001)
    api.run_route.mock(return_value=httpx.Response(401, text="bad api key"))
    job_id, _ = _submit_one_dispatch(api)
    api.client.portal.call(reconcile_once, api.platform)  # type: ignore[union-attr]
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert all(
        "could not submit to RunPod" in i["error"] and "401" in i["error"] for i in job["images"]
    )
