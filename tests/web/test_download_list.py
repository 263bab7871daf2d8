"""GET /api/download/{group_id}: the group's finished images, streamed a batch at a time
(control_plane/services/archive.py finished_outputs), as a JSON array or JSON lines."""

import json

import pytest

from control_plane.services import archive
from tests.fakes.api import Api, finish_job

STATUSES = ["succeeded", "failed", "succeeded", "succeeded", "blocked", "succeeded", "succeeded"]


def submit(api: Api, group_id: str, images: list[str], prompt: str) -> str:
    body = {"group_id": group_id, "mode": "automatic", "prompt": prompt, "images": images}
    answer = api.client.post("/api/jobs/submit", json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["jobs"][0]["id"])


def test_the_list_streams_every_finished_image_once_in_job_and_position_order(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "FINISHED_BATCH", 2)  # several batches per job
    group_id = api.group()
    images = api.upload_ids(group_id, len(STATUSES))
    job_ids = sorted(submit(api, group_id, images, prompt) for prompt in ("a", "b"))
    for job_id in job_ids:
        finish_job(api, job_id, STATUSES)
    other_group = api.group("other")
    finish_job(api, submit(api, other_group, api.upload_ids(other_group, 1), "x"), ["succeeded"])

    expected = [
        (job_id, position)
        for job_id in job_ids
        for position, status in enumerate(STATUSES)
        if status == "succeeded"
    ]
    answer = api.client.get(f"/api/download/{group_id}")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    listed = answer.json()
    assert [(item["job_id"], item["position"]) for item in listed] == expected
    outputs = {o.id: o for job_id in job_ids for o in api.outputs(job_id)}
    for item in listed:
        assert item["url"] == f"http://testserver/api/outputs/{item['id']}/file"
        assert item["sha256"] == outputs[item["id"]].sha256

    lines = api.client.get(f"/api/download/{group_id}", headers={"Accept": "application/x-ndjson"})
    assert lines.headers["content-type"] == "application/x-ndjson"
    assert lines.text.endswith("\n")
    assert [json.loads(line) for line in lines.text.splitlines()] == listed


def test_a_group_without_finished_images_lists_nothing(api: Api) -> None:
    group_id = api.group()
    assert api.client.get(f"/api/download/{group_id}").json() == []
    empty = api.client.get(f"/api/download/{group_id}", headers={"Accept": "application/x-ndjson"})
    assert empty.status_code == 200 and empty.text == ""
    missing = api.client.get("/api/download/grp_01J0000000000000000000000Z")
    assert missing.status_code == 404
