"""RunPod's webhook (control_plane/runpod/webhook.py, routed by web/api/webhook.py): its
token, clipping what is stored, idempotence, failures and retries, partial results, reports
that cannot be applied."""

import json

import pytest
from sqlmodel import select

from control_plane.models import Dispatch
from tests.fakes.api import Api, completed_body, hook, poison_finalising, submit_one_dispatch


def test_webhook_wrong_or_missing_token_is_401_and_changes_nothing(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api)
    assert hook(api, dispatch, completed_body(api, dispatch), token="guess").status_code == 401
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
    junk = hook(api, dispatch, {"id": None, "status": "COMPLETED"})
    assert junk.status_code == 422 and "id" in junk.json()["detail"]
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "processing"
    assert api.client.get("/api/webhook/runpod").json() == {"status": "ok"}


def test_webhook_with_huge_error_and_fields_is_stored_clipped(api: Api) -> None:
    """MySQL TEXT holds 64 KB and VARCHARs their length: what RunPod or a worker sends is
    clipped, never a DataError that would leave the dispatch unfinished for ever."""
    job_id, dispatch = submit_one_dispatch(api, n=2)
    body = completed_body(api, dispatch)
    first, second = body["output"]["results"]
    first["model_version"] = "v" * 300
    second.update(status="failed", error="e" * 70_000)
    assert hook(api, dispatch, body).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed"
    failed = next(image for image in job["images"] if image["status"] == "failed")
    assert len(failed["error"]) == 2_000 and failed["error"].endswith("…")

    job_id, dispatch = submit_one_dispatch(api, n=1)
    huge = hook(api, dispatch, {"status": "FAILED", "error": "x" * 70_000})
    assert huge.status_code == 200
    with api.session() as session:
        row = session.get(Dispatch, dispatch.id)
        assert row is not None and row.status == "failed" and len(row.error or "") == 2_000


def test_webhook_completed_is_idempotent(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api)
    body = completed_body(api, dispatch)
    for _ in range(3):  # RunPod's retry policy can deliver the same webhook three times
        assert hook(api, dispatch, body).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["progress"]["succeeded"] == 3
    assert all(image["attempts"] == 1 for image in job["images"])
    assert all(api.client.get(image["url"]).status_code == 200 for image in job["images"])


def test_webhook_failed_with_sdk_error_retries_then_fails_with_reason(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api)
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
    assert hook(api, dispatch, {"status": "FAILED", "error": sdk_error}).status_code == 200
    api.drain()
    assert len(api.run_bodies) == 2  # retried as a second dispatch (attempt 2 of 2)
    with api.session() as session:
        retry = session.exec(
            select(Dispatch).where(Dispatch.job_id == job_id, Dispatch.attempt == 2)
        ).one()
    assert hook(api, retry, {"status": "FAILED", "error": sdk_error}).status_code == 200
    api.drain()
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["progress"]["failed"] == 3
    assert all("GPU on fire" in image["error"] for image in job["images"])
    assert len(api.run_bodies) == 2


def test_webhook_completed_without_output_is_a_failure(api: Api) -> None:
    api.platform.settings.dispatch_max_attempts = 1
    job_id, dispatch = submit_one_dispatch(api)
    assert hook(api, dispatch, {"status": "COMPLETED"}).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert "without output" in job["images"][0]["error"]


def test_webhook_for_partial_results_fails_the_silent_ones(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api)
    body = completed_body(api, dispatch)
    body["output"]["results"][0] = {
        **body["output"]["results"][0],
        "status": "blocked",
        "error": "IMAGE_SAFETY",
    }
    del body["output"]["results"][1]
    hook(api, dispatch, body)
    progress = api.client.get(f"/api/jobs/{job_id}").json()["progress"]
    assert progress == {"total": 3, "succeeded": 1, "failed": 1, "blocked": 1, "pending": 0}


def test_a_report_that_cannot_be_applied_fails_its_dispatch_after_n_tries(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finalising that raises is answered 503 (RunPod sends again) and counted; the third
    time the dispatch fails with the clipped error and is retried like any failed dispatch,
    and every later re-send of the poisoned report gets 200."""
    job_id, dispatch = submit_one_dispatch(api)
    poison_finalising(monkeypatch, dispatch.id)
    body = completed_body(api, dispatch)
    answers = [hook(api, dispatch, body) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [503, 503, 200, 200]
    assert answers[2].json()["status"] == "failed"
    with api.session() as session:
        row = session.get(Dispatch, dispatch.id)
        assert row is not None and row.status == "failed" and row.finish_failures == 3
        assert row.error is not None and len(row.error) <= 2_000
        assert row.error.startswith("could not apply RunPod's report: DataError")
    api.drain()
    assert len(api.run_bodies) == 2  # the chunk was sent again
    with api.session() as session:
        retry = session.exec(
            select(Dispatch).where(Dispatch.job_id == job_id, Dispatch.attempt == 2)
        ).one()
    assert hook(api, retry, completed_body(api, retry)).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["progress"]["succeeded"] == 3
