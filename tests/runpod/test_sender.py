"""The sender (control_plane/runpod/sender.py), the only `/run` caller, with the poller's
reconcile pass (control_plane/runpod/poller.py): an outage at RunPod, RunPod refusing for
good, a job cancelled while its `/run` is in flight, `/status` answers no column holds,
and the claim of a sender that died."""

import json
from datetime import timedelta

import httpx
import pytest
from sqlmodel import col, select

from control_plane.access import LOCAL
from control_plane.models import Dispatch, Output, Upload, utcnow
from control_plane.runpod.client import RunPodClient
from control_plane.runpod.poller import reconcile_once
from control_plane.runpod.sender import send_due
from control_plane.services import jobs
from tests.fakes.api import (
    RUNPOD,
    Api,
    dispatch_failed_events,
    finish_job,
    submit_one_dispatch,
    succeeded_result,
)


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
            assert jobs.cancel(session, job_id, LOCAL) == []  # nothing known to RunPod yet
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


def test_a_status_answer_with_values_no_column_holds_finishes_the_dispatch(api: Api) -> None:
    """The poller reads `/status` as the webhook reads its body: bad values fail their image
    and the dispatch finishes, instead of a DataError on every pass for ever."""
    from control_plane.runpod.poller import reconcile_once

    api.platform.settings.webhook_grace_s = 0
    job_id, dispatch = submit_one_dispatch(api)
    with api.session() as session:
        outputs = session.exec(select(Output).where(Output.dispatch_id == dispatch.id)).all()
    results = [succeeded_result(api, output) for output in outputs]
    results[0]["width"], results[1]["cost_usd"] = 2**31, float("nan")
    state = {
        "id": dispatch.runpod_job_id,
        "status": "COMPLETED",
        "delayTime": 2**40,
        "output": {"version": 2, "dispatch_id": dispatch.id, "results": results},
    }
    status_route = api.runpod.get(f"{RUNPOD}/status/{dispatch.runpod_job_id}").mock(
        return_value=httpx.Response(200, content=json.dumps(state).encode())
    )
    sent, polled = api.client.portal.call(reconcile_once, api.platform)  # type: ignore[union-attr]
    assert (sent, polled, status_route.call_count) == (0, 1, 1)
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["progress"]["succeeded"] == 1
    errors = {image["id"]: image["error"] for image in job["images"]}
    assert errors[results[0]["output_id"]] == (
        "worker result rejected: width is out of range (0 to 2147483647)"
    )
    assert errors[results[1]["output_id"]] == (
        "worker result rejected: cost_usd is not a price (0 to 1,000,000)"
    )
    with api.session() as session:
        stored_dispatch = session.get(Dispatch, dispatch.id)
        assert stored_dispatch is not None and stored_dispatch.status == "completed"
    api.client.portal.call(reconcile_once, api.platform)  # type: ignore[union-attr]
    assert status_route.call_count == 1  # finished: never asked again


@pytest.mark.parametrize(
    ("stale_claim_s", "threshold_s"),
    [
        (None, 3 * 1.0 + 0.75 + 1.5 + 30),  # /run's 3 attempts of 1 s, 2 backoffs, the margin
        (5.0, 5.0),  # PIXELFLEET_DISPATCH_STALE_CLAIM_S
    ],
)
def test_a_dead_senders_claim_is_taken_over_once_older_than_the_longest_run_call(
    api: Api, stale_claim_s: float | None, threshold_s: float
) -> None:
    """A sender that died between claim and record leaves its dispatch `submitting`. Another
    sender takes it over once the claim is older than any `/run` call can take (a younger one
    may still be waiting for RunPod's answer: taking it would run the chunk twice)."""
    settings = api.platform.settings
    settings.runpod_timeout_s, settings.dispatch_stale_claim_s = 1.0, stale_claim_s
    api.platform.runpod = RunPodClient(settings.runpod_endpoint_url, "rp-key", timeout_s=1.0)
    job_id, dispatch = _submit_and_die_after_claim(api)

    _age_claim(api, dispatch.id, threshold_s - 2)
    assert api.client.portal.call(send_due, api.platform) == 0  # type: ignore[union-attr]
    assert api.run_bodies == []
    _age_claim(api, dispatch.id, threshold_s + 2)
    assert api.client.portal.call(send_due, api.platform) == 1  # type: ignore[union-attr]
    assert [body["input"]["dispatch_id"] for body in api.run_bodies] == [dispatch.id]
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "processing"


def _submit_and_die_after_claim(api: Api) -> tuple[str, Dispatch]:
    """A dispatch whose sender claimed it and died before RunPod answered (the first send is
    refused, leaving it pending; the second sender's claim is written as `lifecycle.claim`
    writes it, and nothing more)."""
    healthy = api.run_route.side_effect
    api.run_route.mock(return_value=httpx.Response(400, text="refused once"))
    job_id, dispatch = submit_one_dispatch(api)
    api.run_route.mock(side_effect=healthy)
    with api.session() as session:
        pending = session.get(Dispatch, dispatch.id)
        assert pending is not None and pending.status == "pending"
        pending.status, pending.updated_at = "submitting", utcnow()
        pending.submit_attempts += 1
        session.add(pending)
        session.commit()
    return job_id, dispatch


def _age_claim(api: Api, dispatch_id: str, age_s: float) -> None:
    with api.session() as session:
        claimed = session.get(Dispatch, dispatch_id)
        assert claimed is not None and claimed.status == "submitting"
        claimed.updated_at = utcnow() - timedelta(seconds=age_s)
        session.add(claimed)
        session.commit()


def test_sends_that_never_reach_runpod_spend_the_loss_budget(api: Api) -> None:
    """An outage (no connection) is not the chunk's fault: after its `/run` attempts the
    dispatch is sent again as a new one while losses remain, whatever
    PIXELFLEET_DISPATCH_MAX_ATTEMPTS says; beyond PIXELFLEET_DISPATCH_MAX_LOSSES it fails."""
    settings = api.platform.settings
    settings.dispatch_submit_attempts, settings.dispatch_max_attempts = 1, 1
    settings.dispatch_max_losses = 2
    api.platform.runpod = RunPodClient(settings.runpod_endpoint_url, "rp-key", backoff_s=0.001)
    api.run_route.mock(side_effect=httpx.ConnectError("connection refused"))
    group_id = api.group()
    job_id = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "p",
            "images": api.upload_ids(group_id, 2),
        },
    ).json()["jobs"][0]["id"]
    api.drain()
    with api.session() as session:
        chain = session.exec(
            select(Dispatch).where(Dispatch.job_id == job_id).order_by(col(Dispatch.created_at))
        ).all()
    assert [(d.attempt, d.losses, d.status) for d in chain] == [
        (1, 0, "failed"),
        (1, 1, "failed"),
        (1, 2, "failed"),
    ]
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert all(
        image["error"].startswith("lost 3 times") and "could not submit to RunPod" in image["error"]
        for image in job["images"]
    )
    assert [event.data["lost"] for event in dispatch_failed_events(api, job_id)] == [True] * 3


def _reconcile(api: Api) -> None:
    api.client.portal.call(reconcile_once, api.platform)  # type: ignore[union-attr]


def test_a_run_answered_200_with_a_body_that_is_not_json_stops_at_the_send_budget(
    api: Api,
) -> None:
    """Each such send may be a RunPod job (and a bill): sent PIXELFLEET_DISPATCH_SUBMIT_ATTEMPTS
    times in all, then the dispatch fails; not a loss, since RunPod did answer."""
    settings = api.platform.settings
    settings.dispatch_submit_attempts, settings.dispatch_max_attempts = 2, 1
    api.run_route.mock(return_value=httpx.Response(200, text="<html>maintenance</html>"))
    job_id, dispatch = submit_one_dispatch(api)
    with api.session() as session:
        stored = session.get(Dispatch, dispatch.id)
        assert stored is not None and stored.status == "pending"
        assert "not JSON" in (stored.error or "")
    for _ in range(3):
        _reconcile(api)
    assert api.run_route.call_count == 2
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert all(
        "could not submit to RunPod" in i["error"] and "not JSON" in i["error"]
        for i in job["images"]
    )
    assert [event.data["lost"] for event in dispatch_failed_events(api, job_id)] == [False]


def test_an_unexpected_error_while_sending_releases_the_claim(api: Api) -> None:
    """Released at once and counted against the send budget, instead of a claim left to go
    stale and be taken over again and again."""
    settings = api.platform.settings
    settings.dispatch_submit_attempts, settings.dispatch_max_attempts = 2, 1
    api.run_route.mock(side_effect=RuntimeError("a bug while sending"))
    job_id, dispatch = submit_one_dispatch(api)
    with api.session() as session:
        stored = session.get(Dispatch, dispatch.id)
        assert stored is not None and (stored.status, stored.submit_attempts) == ("pending", 1)
        assert stored.error == "RuntimeError: a bug while sending"
    _reconcile(api)
    _reconcile(api)
    assert api.run_route.call_count == 2
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert all("RuntimeError: a bug while sending" in i["error"] for i in job["images"])


def test_a_stale_claim_on_the_last_send_fails_the_dispatch_instead_of_sending_it_again(
    api: Api,
) -> None:
    """Its sender stopped before recording RunPod's answer, on the dispatch's last allowed
    send: taking it over would send past PIXELFLEET_DISPATCH_SUBMIT_ATTEMPTS."""
    settings = api.platform.settings
    settings.dispatch_submit_attempts, settings.dispatch_max_attempts = 2, 1
    settings.dispatch_stale_claim_s = 5.0
    job_id, dispatch = _submit_and_die_after_claim(api)  # send 1 refused, send 2 never recorded
    _age_claim(api, dispatch.id, 10.0)
    assert api.client.portal.call(send_due, api.platform) == 1  # type: ignore[union-attr]
    assert api.run_bodies == [] and api.run_route.call_count == 1
    with api.session() as session:
        stored = session.get(Dispatch, dispatch.id)
        assert stored is not None and (stored.status, stored.submit_attempts) == ("failed", 2)
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert all(
        "could not submit to RunPod" in i["error"] and "never recorded" in i["error"]
        for i in job["images"]
    )
    assert [event.data["lost"] for event in dispatch_failed_events(api, job_id)] == [False]


def _succeeded_image(api: Api, group_id: str) -> tuple[str, str]:
    """A finished automatic job of the group with one succeeded image: (job id, image id)."""
    [upload] = api.upload_ids(group_id, 1)
    job_id = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id, "mode": "automatic", "prompt": "base", "images": [upload]},
    ).json()["jobs"][0]["id"]
    finish_job(api, job_id, ["succeeded"])
    [image] = api.client.get(f"/api/jobs/{job_id}").json()["images"]
    return job_id, image["id"]


def test_an_image_as_reference_is_sent_as_its_storage_uri(api: Api) -> None:
    group_id = api.group()
    _, image_id = _succeeded_image(api, group_id)
    answer = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": [image_id]},
    )
    assert answer.status_code == 201, answer.text
    api.drain()
    with api.session() as session:
        output = session.get(Output, image_id)
        assert output is not None and output.storage_key
    [item] = api.run_bodies[-1]["input"]["items"]
    assert item["reference_uris"] == [api.platform.storage.uri(output.storage_key)]


def test_a_reference_deleted_before_its_send_fails_only_the_images_needing_it(api: Api) -> None:
    """The sender neither crashes nor loops on a reference deleted after the images were asked
    for: those images fail naming it; the rest of the dispatch is sent, without spending a
    send of its budget; a dispatch left with nothing to send ends failed."""
    settings = api.platform.settings
    api.platform.runpod = RunPodClient(settings.runpod_endpoint_url, "rp-key", backoff_s=0.001)
    group_id = api.group()
    parent_job, image_id = _succeeded_image(api, group_id)
    [upload] = api.upload_ids(group_id, 1)
    healthy = api.run_route.side_effect
    api.run_route.mock(return_value=httpx.Response(503, text="busy"))
    submitted = [
        api.client.post(
            "/api/jobs/submit",
            json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images},
        ).json()["jobs"][0]["id"]
        for images in ([image_id, upload], [image_id])
    ]
    api.drain()
    attempts = _dispatch_of(api, submitted[0]).submit_attempts  # the outage's
    assert api.client.delete(f"/api/jobs/{parent_job}").status_code == 204
    api.run_route.mock(side_effect=healthy)
    sent_before = len(api.run_bodies)
    api.client.portal.call(reconcile_once, api.platform)  # type: ignore[union-attr]
    api.drain()
    assert len(api.run_bodies) == sent_before + 1
    [item] = api.run_bodies[-1]["input"]["items"]
    assert item["reference_uris"] == [api.platform.storage.uri(_upload_key(api, upload))]
    mixed, alone = (api.client.get(f"/api/jobs/{job_id}").json() for job_id in submitted)
    gone = f"reference image(s) {image_id} no longer exist (deleted after this image was asked for)"
    assert [(i["status"], i["error"]) for i in mixed["images"]] == [
        ("failed", gone),
        ("running", None),
    ]
    assert mixed["status"] == "processing"
    assert alone["status"] == "failed" and alone["images"][0]["error"] == gone
    sent = _dispatch_of(api, mixed["id"])
    assert sent.status == "submitted" and sent.submit_attempts == attempts + 1
    ended = _dispatch_of(api, alone["id"])
    assert ended.status == "failed" and gone in (ended.error or "")
    assert [e.data["reason"] for e in dispatch_failed_events(api, alone["id"])] == [
        f"nothing left to send: {gone}"
    ]


def _dispatch_of(api: Api, job_id: str) -> Dispatch:
    with api.session() as session:
        return session.exec(select(Dispatch).where(Dispatch.job_id == job_id)).one()


def _upload_key(api: Api, upload_id: str) -> str:
    with api.session() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None
        return upload.storage_key
