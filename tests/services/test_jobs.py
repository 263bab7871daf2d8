"""Jobs (control_plane/services/jobs.py) through the HTTP API: cancel, retry, listing."""

import httpx

from tests.fakes.api import RUNPOD, Api, completed_body, hook, submit_one_dispatch


def test_cancel_and_retry(api: Api) -> None:
    cancel_route = api.runpod.post(url__regex=rf"{RUNPOD}/cancel/.*").mock(
        return_value=httpx.Response(200, json={})
    )
    job_id, dispatch = submit_one_dispatch(api)
    cancelled = api.client.post(f"/api/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    api.drain()
    assert cancel_route.call_count == 1
    assert api.client.post(f"/api/jobs/{job_id}/cancel").status_code == 409
    late = hook(api, dispatch, completed_body(api, dispatch))  # a late webhook changes nothing
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
