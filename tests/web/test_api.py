"""The JSON API's own rules (control_plane/web/api/, web/deps.py, schemas.py): paging, ids at
the edge, times in UTC, files served so that browsers run nothing in them."""

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shared import layout
from tests.conftest import png_bytes
from tests.fakes.api import Api, completed_body, hook, submit_one_dispatch


def test_pages_beyond_any_database_are_refused(api: Api) -> None:
    for path in ("/api/groups", "/api/jobs"):
        huge = api.client.get(path, params={"page": 2**62})
        assert huge.status_code == 422, huge.text
        assert "page" in huge.json()["detail"]


def test_malformed_ids_are_refused_at_the_edge_alike_on_every_database(api: Api) -> None:
    """MariaDB's collations ignore trailing spaces, so a padded id would find the row there
    and not on SQLite; ids are checked at the edge, so both answer the same 404."""
    group_id = api.group()
    image_id = api.upload_ids(group_id, 1)[0]
    job = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": [image_id]},
    ).json()["jobs"][0]
    for path, what in (
        (f"/api/groups/{group_id} ", f"group {group_id} "),
        (f"/api/jobs/{job['id']} ", f"job {job['id']} "),
        (f"/api/uploads/{image_id} /file", f"upload {image_id} "),
        ("/api/outputs/out_NOT-AN-ID/file", "image out_NOT-AN-ID"),
        (f"/api/download/{group_id.upper()}", f"group {group_id.upper()}"),
    ):
        answer = api.client.get(path)
        assert answer.status_code == 404, path
        assert answer.json()["detail"] == f"{what} does not exist"
    padded_upload = api.upload(group_id + " ", [("a.png", png_bytes())])
    assert padded_upload.status_code == 404
    padded_submit = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id + " ", "mode": "automatic", "prompt": "p", "images": [image_id]},
    )
    assert padded_submit.status_code == 404
    webhook = api.client.post(
        "/api/webhook/runpod", params={"dispatch": "dsp_x'--", "token": "t"}, json={}
    )
    assert webhook.status_code == 401
    assert api.client.get(f"/api/groups/{group_id}").json()["counts"]["uploads"] == 1


def test_files_are_served_as_images_that_run_nothing(api: Api) -> None:
    """Whatever bytes a file holds, browsers neither sniff them into a page nor run them on
    this origin: every file and thumbnail carries nosniff and a sandboxing policy."""
    _, dispatch = submit_one_dispatch(api, n=1)
    body = completed_body(api, dispatch)
    [result] = body["output"]["results"]
    storage = api.platform.storage
    stem = storage.key_of(result["output_uri"]).removesuffix(".png")
    html = b"<html><script>alert(document.cookie)</script></html>"
    storage.put_bytes(storage.key_of(result["output_uri"]), html, content_type="image/png")
    storage.put_bytes(layout.thumbnail_key(stem), html, content_type="image/webp")
    result["thumbnail_uri"] = storage.uri(layout.thumbnail_key(stem))
    assert hook(api, dispatch, body).status_code == 200
    [image] = api.client.get(f"/api/jobs/{dispatch.job_id}").json()["images"]
    [upload_id] = image["reference_ids"]
    paths = [
        f"/api/outputs/{image['id']}/file",
        f"/api/outputs/{image['id']}/thumbnail",
        f"/api/uploads/{upload_id}/file",
        f"/api/uploads/{upload_id}/thumbnail",
    ]
    for path in paths:
        served = api.client.get(path)
        assert served.status_code == 200, path
        assert served.headers["x-content-type-options"] == "nosniff", path
        assert served.headers["content-security-policy"] == "sandbox", path
    assert api.client.get(paths[0]).headers["content-type"] == "image/png"


def _utc(value: str) -> datetime:
    assert value.endswith("Z"), value
    moment = datetime.fromisoformat(value)
    assert moment.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=5), value  # UTC, not local time
    return moment


@pytest.fixture
def new_york_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local zone is New York's (never UTC), restored afterwards: a naive time
    taken or shown as local time is then hours off."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    assert time.localtime().tm_gmtoff != 0
    yield
    monkeypatch.undo()
    time.tzset()


def test_every_time_in_an_answer_is_utc_with_a_z(new_york_time: None, api: Api) -> None:
    group = api.client.post("/api/groups", json={"name": "times"}).json()
    group_id = group["id"]
    uploaded = api.upload(group_id, [("a.png", png_bytes())]).json()["images"][0]
    job_id, dispatch = submit_one_dispatch(api, 1)
    assert hook(api, dispatch, completed_body(api, dispatch)).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed"
    listed_job = api.client.get("/api/jobs").json()["data"][0]
    listed_group = api.client.get("/api/groups").json()["data"][0]
    fetched_group = api.client.get(f"/api/groups/{group_id}").json()
    for answer in (group, listed_group, fetched_group):
        assert _utc(answer["created_at"]) <= _utc(answer["updated_at"])
    _utc(uploaded["created_at"])
    for answer in (job, listed_job):
        assert _utc(answer["created_at"]) <= _utc(answer["completed_at"])
        _utc(answer["updated_at"])
    assert api.client.get("/").status_code == 200  # the HTML pages still format these times
