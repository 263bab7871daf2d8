"""The sender (control_plane/runpod/sender.py), the only `/run` caller, with the poller's
reconcile pass (control_plane/runpod/poller.py): an outage at RunPod, RunPod refusing for
good, and a job cancelled while its `/run` is in flight."""

import json

import httpx

from control_plane.models import Dispatch
from control_plane.services import jobs
from tests.fakes.api import RUNPOD, Api, submit_one_dispatch


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


def test_runpod_outage_leaves_dispatches_pending_until_the_reconciler_sends_them(api: Api) -> None:
    from control_plane.runpod.client import RunPodClient
    from control_plane.runpod.poller import reconcile_once

    settings = api.platform.settings
    api.platform.runpod = RunPodClient(settings.runpod_endpoint_url, "rp-key", backoff_s=0.001)
    healthy = api.run_route.side_effect
    api.run_route.mock(return_value=httpx.Response(503, text="busy"))
    job_id, dispatch = submit_one_dispatch(api)
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
    job_id, _ = submit_one_dispatch(api)
    api.client.portal.call(reconcile_once, api.platform)  # type: ignore[union-attr]
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert all(
        "could not submit to RunPod" in i["error"] and "401" in i["error"] for i in job["images"]
    )
