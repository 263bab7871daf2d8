"""The batch lane's control-plane side with RunPod mocked: a batch job's dispatch goes through
batch_submit, batch_poll and batch_collect tasks, each a RunPod job the sender sends and a
webhook ends; images a batch does not make go to the online lane; cancel cancels the batch."""

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select, update

from control_plane.lifecycle import poll_interval_s
from control_plane.models import Dispatch, Job, Output, utcnow
from control_plane.runpod.finisher import apply_report
from control_plane.runpod.poller import advance_batches
from control_plane.runpod.sender import send_due
from control_plane.runpod.wire import RunPodJobState, report_of
from shared.model_table import model_table
from tests.fakes.api import Api, finish_job, hook, succeeded_result
from tests.runpod.test_progress import post_progress
from tests.test_metrics import scrape


def submit_batch(api: Api, n: int, **config: Any) -> dict[str, Any]:
    group_id = api.group()
    images = api.upload_ids(group_id, n)
    response = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "p",
            "images": images,
            "config": {"model": "gemini-2.5-flash-image", "lane": "batch", **config},
        },
    )
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()["jobs"][0]
    return job


def dispatches(api: Api, job_id: str) -> list[Dispatch]:
    with api.session() as session:
        return list(
            session.exec(
                select(Dispatch).where(Dispatch.job_id == job_id).order_by(col(Dispatch.created_at))
            ).all()
        )


def the_batch(api: Api, job_id: str) -> Dispatch:
    [batch] = [d for d in dispatches(api, job_id) if d.task != "generate"]
    return batch


def batch_output(dispatch: Dispatch, task: str, state: str, **extra: Any) -> dict[str, Any]:
    batch = {"name": "batches/b1", "state": state, **extra}
    return {
        "status": "COMPLETED",
        "output": {"version": 4, "dispatch_id": dispatch.id, "task": task, "batch": batch},
    }


def poll_now(api: Api, job_id: str) -> None:
    """Make the job's waiting batches due, and take the batch lane's due steps."""
    with api.session() as session:
        session.exec(
            update(Dispatch)
            .where(col(Dispatch.job_id) == job_id, col(Dispatch.status) == "batched")
            .values(next_poll_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    api.client.portal.call(advance_batches, api.platform)  # type: ignore[union-attr]
    api.drain()


def test_a_batch_job_runs_submit_poll_collect_and_retries_failed_requests_online(
    api: Api,
) -> None:
    job = submit_batch(api, 4)
    assert job["lane"] == "batch"
    assert job["estimate_usd"] == pytest.approx(4 * 0.0195)  # the batch price, not 0.039
    api.drain()
    [submit_body] = api.run_bodies
    assert submit_body["input"]["task"] == "batch_submit"
    assert len(submit_body["input"]["items"]) == 4
    outputs = api.outputs(job["id"])
    dispatch = the_batch(api, job["id"])
    assert dispatch.status == "submitted" and dispatch.task == "batch_submit"

    left_out = {
        "output_id": outputs[3].id,
        "status": "failed",
        "provider": "gemini",
        "model": "gemini-2.5-flash-image",
        "error": "reference image unreadable",
    }
    body = batch_output(dispatch, "batch_submit", "pending", requests=3, pending=3)
    body["output"]["results"] = [left_out]
    assert hook(api, dispatch, body).status_code == 200
    waiting = the_batch(api, job["id"])
    assert waiting.status == "batched" and waiting.batch_name == "batches/b1"
    assert waiting.next_poll_at is not None and waiting.runpod_job_id == dispatch.runpod_job_id
    shown = api.client.get(f"/api/jobs/{job['id']}").json()
    assert shown["batch"]["state"] == "pending at Google"
    assert shown["batch"]["requests"] == 3 and shown["batch"]["batches"] == 1
    assert shown["progress"]["failed"] == 1  # the left-out image, with its reason
    assert api.outputs(job["id"])[3].error == "reference image unreadable"

    poll_now(api, job["id"])
    poll_body = api.run_bodies[-1]["input"]
    assert poll_body["task"] == "batch_poll" and poll_body["batch"] == "batches/b1"
    assert "items" not in poll_body or poll_body["items"] == []
    polling = the_batch(api, job["id"])
    assert polling.webhook_token != dispatch.webhook_token  # a new RunPod job, a new token
    # a late webhook of the submit is refused at the door
    assert hook(api, dispatch, body).status_code == 401
    running = batch_output(polling, "batch_poll", "running", requests=3, succeeded=1, pending=2)
    assert hook(api, polling, running).status_code == 200
    assert api.client.get(f"/api/jobs/{job['id']}").json()["batch"]["state"] == "running"

    poll_now(api, job["id"])
    polling = the_batch(api, job["id"])
    done = batch_output(polling, "batch_poll", "succeeded", requests=3, succeeded=2, failed=1)
    assert hook(api, polling, done).status_code == 200
    api.drain()
    collect = api.run_bodies[-1]["input"]
    assert collect["task"] == "batch_collect" and collect["batch"] == "batches/b1"
    assert [item["output_id"] for item in collect["items"]] == [o.id for o in outputs[:3]]
    assert api.client.get(f"/api/jobs/{job['id']}").json()["batch"]["state"] == "collecting"

    collecting = the_batch(api, job["id"])
    blocked = {**left_out, "output_id": outputs[1].id, "status": "blocked", "error": "SAFETY"}
    failed = {**left_out, "output_id": outputs[2].id, "error": "INTERNAL: try again"}
    results = [succeeded_result(api, outputs[0]), blocked, failed]
    collected = {
        "status": "COMPLETED",
        "output": {"version": 4, "dispatch_id": collecting.id, "results": results},
    }
    progressed = post_progress(api, collecting, [results[0], failed])  # stored as they come
    assert progressed.status_code == 200, progressed.text
    early = {o.id: o.status for o in api.outputs(job["id"])}
    assert early[outputs[0].id] == "succeeded"
    assert early[outputs[2].id] == "running"  # a failed request waits for the collect's end
    assert hook(api, collecting, collected).status_code == 200
    assert the_batch(api, job["id"]).status == "completed"
    ended = {o.id: o.status for o in api.outputs(job["id"])}
    retried_online = ended.pop(outputs[2].id)  # its request failed at Google: retried online,
    assert retried_online in ("pending", "running")  # queued, or sent by the woken sender
    assert ended == {
        outputs[0].id: "succeeded",
        outputs[1].id: "blocked",
        outputs[3].id: "failed",
    }
    api.drain()
    online = api.run_bodies[-1]["input"]
    assert online["task"] == "generate"
    assert [item["output_id"] for item in online["items"]] == [outputs[2].id]
    shown = api.client.get(f"/api/jobs/{job['id']}").json()
    assert shown["fallback"] == {"the image's request failed in the batch": 1}
    assert shown["batch"] is None
    assert shown["estimate_usd"] == pytest.approx(3 * 0.0195 + 0.039)  # retried: online price
    [retry] = [d for d in dispatches(api, job["id"]) if d.task == "generate"]
    retried = {
        "status": "COMPLETED",
        "output": {
            "version": 4,
            "dispatch_id": retry.id,
            "results": [succeeded_result(api, api.outputs(job["id"])[2])],
        },
    }
    assert hook(api, retry, retried).status_code == 200
    shown = api.client.get(f"/api/jobs/{job['id']}").json()
    assert shown["status"] == "completed"
    assert shown["progress"] | {"total": 0} == {
        "total": 0,
        "succeeded": 2,
        "failed": 1,
        "blocked": 1,
        "pending": 0,
    }


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ("expired", "the batch expired at Google"),
        ("failed", "the batch failed"),
        ("cancelled", "the batch was cancelled by Google"),
    ],
)
def test_a_batch_that_ends_without_results_sends_its_images_online(
    api: Api, state: str, reason: str
) -> None:
    api.platform.settings.dispatch_chunk_size = 2
    job = submit_batch(api, 3)
    api.drain()
    dispatch = the_batch(api, job["id"])  # one batch, however small online chunks are
    assert hook(api, dispatch, batch_output(dispatch, "batch_submit", "pending")).status_code == 200
    poll_now(api, job["id"])
    polling = the_batch(api, job["id"])
    assert hook(api, polling, batch_output(polling, "batch_poll", state)).status_code == 200
    ended = the_batch(api, job["id"])
    assert ended.status == "failed" and ended.error is not None and reason in ended.error
    api.drain()
    online = [body["input"] for body in api.run_bodies if body["input"]["task"] == "generate"]
    assert sorted(len(body["items"]) for body in online) == [1, 2]  # online-sized chunks
    shown = api.client.get(f"/api/jobs/{job['id']}").json()
    assert shown["fallback"] == {reason: 3}
    assert shown["estimate_usd"] == pytest.approx(3 * 0.039)  # online now, at its price
    assert {o.status for o in api.outputs(job["id"])} == {"running"}


def test_the_deadline_cancels_the_batch_and_sends_its_images_online(api: Api) -> None:
    job = submit_batch(api, 2, batch_deadline_s=600)
    api.drain()
    dispatch = the_batch(api, job["id"])
    assert hook(api, dispatch, batch_output(dispatch, "batch_submit", "pending")).status_code == 200
    with api.session() as session:
        session.exec(
            update(Job)
            .where(col(Job.id) == job["id"])
            .values(batch_deadline_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    api.client.portal.call(advance_batches, api.platform)  # type: ignore[union-attr]
    api.drain()
    tasks = [body["input"]["task"] for body in api.run_bodies]
    assert sorted(tasks[1:]) == ["batch_cancel", "generate"]
    cancel = next(b["input"] for b in api.run_bodies if b["input"]["task"] == "batch_cancel")
    assert cancel["batch"] == "batches/b1" and cancel.get("items", []) == []
    cancelling = the_batch(api, job["id"])
    assert cancelling.task == "batch_cancel" and cancelling.status == "submitted"
    assert hook(api, cancelling, batch_output(cancelling, "batch_cancel", "cancelled")).is_success
    ended = the_batch(api, job["id"])
    assert ended.status == "completed" and ended.batch_state == "cancelled"
    shown = api.client.get(f"/api/jobs/{job['id']}").json()
    assert shown["fallback"] == {"the batch was not done by the job's batch deadline": 2}
    assert shown["estimate_usd"] == pytest.approx(2 * 0.039)
    [online] = [d for d in dispatches(api, job["id"]) if d.task == "generate"]
    with api.session() as session:
        moved = session.exec(select(Output.dispatch_id).where(Output.job_id == job["id"])).all()
    assert set(moved) == {online.id}


def test_an_unsent_submit_past_the_deadline_goes_online(api: Api) -> None:
    send = api.run_route.side_effect
    refusing = [True]

    def run(request: httpx.Request) -> httpx.Response:
        if refusing[0]:
            return httpx.Response(400, json={"error": "endpoint paused"})
        return send(request)  # type: ignore[misc,operator]

    api.run_route.side_effect = run
    job = submit_batch(api, 2, batch_deadline_s=600)
    api.drain()
    assert the_batch(api, job["id"]).status == "pending"  # its send was refused
    with api.session() as session:
        session.exec(
            update(Job)
            .where(col(Job.id) == job["id"])
            .values(batch_deadline_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    refusing[0] = False
    api.client.portal.call(advance_batches, api.platform)  # type: ignore[union-attr]
    api.drain()
    tasks = [body["input"]["task"] for body in api.run_bodies]
    assert tasks == ["generate"]
    assert the_batch(api, job["id"]).status == "failed"  # the submit, never sent
    shown = api.client.get(f"/api/jobs/{job['id']}").json()
    assert shown["fallback"] == {"the batch was not done by the job's batch deadline": 2}
    assert shown["estimate_usd"] == pytest.approx(2 * 0.039)


def test_polls_back_off_while_a_batch_sits_unchanged_never_past_the_deadline(api: Api) -> None:
    settings = api.platform.settings
    assert (settings.batch_poll_s, settings.batch_poll_max_s) == (60, 900)
    assert [poll_interval_s(settings, quiet) for quiet in (0, 1, 3, 4, 10**6)] == [
        60,
        120,
        480,
        900,
        900,
    ]
    job = submit_batch(api, 2, batch_deadline_s=7200)
    api.drain()
    dispatch = the_batch(api, job["id"])
    pending = {"requests": 2, "pending": 2}
    submitted = batch_output(dispatch, "batch_submit", "pending", **pending)
    assert hook(api, dispatch, submitted).status_code == 200

    def next_poll_in() -> float:
        waiting = the_batch(api, job["id"])
        assert waiting.status == "batched" and waiting.next_poll_at is not None
        return (waiting.next_poll_at - utcnow()).total_seconds()

    def poll(state: str | None, **counts: int) -> float:
        poll_now(api, job["id"])
        polling = the_batch(api, job["id"])
        body = {"status": "FAILED", "error": "503 from Google"}
        if state is not None:
            body = batch_output(polling, "batch_poll", state, **counts)
        assert hook(api, polling, body).status_code == 200
        return next_poll_in()

    assert next_poll_in() == pytest.approx(60, abs=5)  # a new batch: the first poll soon
    unchanged = [poll("pending", **pending) for _ in range(5)]
    assert unchanged == [pytest.approx(s, abs=5) for s in (120, 240, 480, 900, 900)]
    running = {"requests": 2, "succeeded": 1, "pending": 1}
    assert poll("running", **running) == pytest.approx(60, abs=5)  # Google moved: soon again
    assert poll("running", **running) == pytest.approx(120, abs=5)
    assert poll(None) == pytest.approx(240, abs=5)  # a failed poll backs off too
    assert poll("running", **running) == pytest.approx(480, abs=5)
    shown = api.client.get(f"/api/jobs/{job['id']}").json()["batch"]
    assert shown["state"] == "running" and shown["next_poll_at"] is not None

    def deadline_in(seconds: float) -> None:
        with api.session() as session:
            session.exec(
                update(Job)
                .where(col(Job.id) == job["id"])
                .values(batch_deadline_at=utcnow() + timedelta(seconds=seconds))
            )
            session.commit()

    deadline_in(100)  # a last look batch_poll_s before the deadline, not 960 s on
    assert poll("running", **running) == pytest.approx(40, abs=5)
    deadline_in(30)  # past that last look: the deadline itself
    assert poll("running", **running) == pytest.approx(30, abs=5)


def test_a_failing_poll_is_tried_again_then_the_images_go_online(api: Api) -> None:
    job = submit_batch(api, 2)
    api.drain()
    dispatch = the_batch(api, job["id"])
    assert hook(api, dispatch, batch_output(dispatch, "batch_submit", "running")).is_success
    for _ in range(api.platform.settings.batch_max_step_failures):
        poll_now(api, job["id"])
        polling = the_batch(api, job["id"])
        assert polling.task == "batch_poll"
        assert hook(api, polling, {"status": "FAILED", "error": "503 from Google"}).is_success
    gave_up = the_batch(api, job["id"])
    assert gave_up.task == "batch_cancel"  # its batch may still run: cancelled
    shown = api.client.get(f"/api/jobs/{job['id']}").json()
    assert shown["fallback"] == {"the batch could not be polled": 2}


def test_cancelling_a_batch_job_cancels_its_batch(api: Api) -> None:
    job = submit_batch(api, 2)
    api.drain()
    dispatch = the_batch(api, job["id"])
    assert hook(api, dispatch, batch_output(dispatch, "batch_submit", "pending")).is_success
    cancelled = api.client.post(f"/api/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    api.drain()
    cancel = api.run_bodies[-1]["input"]
    assert cancel["task"] == "batch_cancel" and cancel["batch"] == "batches/b1"
    [step] = [d for d in dispatches(api, job["id"]) if d.task == "batch_cancel"]
    assert hook(api, step, batch_output(step, "batch_cancel", "cancelled")).is_success
    assert {d.status for d in dispatches(api, job["id"])} == {"completed", "failed"}
    assert {o.status for o in api.outputs(job["id"])} == {"failed"}


def test_a_submit_that_reports_after_its_job_was_cancelled_cancels_the_batch(api: Api) -> None:
    job = submit_batch(api, 2)
    api.drain()
    dispatch = the_batch(api, job["id"])
    assert api.client.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    assert hook(api, dispatch, batch_output(dispatch, "batch_submit", "pending")).is_success
    api.drain()
    assert api.run_bodies[-1]["input"]["task"] == "batch_cancel"


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"lane": "batch", "model": "no-batch-model"}, "has no batch price"),
        ({"lane": "slow"}, "lane"),
        ({"batch_deadline_s": 600}, "for the batch lane only"),
        ({"lane": "batch", "batch_deadline_s": 1}, "batch_deadline_s"),
        ({"lane": "batch", "batch_deadline_s": 10**6}, "batch_deadline_s"),
    ],
)
def test_the_lane_is_checked_at_submit(
    api: Api,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, Any],
    needle: str,
) -> None:
    table = {name: spec.model_dump() for name, spec in model_table().items()} | {
        "no-batch-model": {
            **model_table()["gemini-2.5-flash-image"].model_dump(),
            "batch_price_usd": None,
        }
    }
    models = tmp_path / "models.json"
    models.write_text(json.dumps(table))
    monkeypatch.setenv("PIXELFLEET_MODELS_FILE", str(models))
    model_table.cache_clear()
    try:
        group_id = api.group()
        images = api.upload_ids(group_id, 1)
        body = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images}
        response = api.client.post("/api/jobs/submit", json=body | {"config": config})
        assert response.status_code == 422, response.text
        assert needle in response.json()["detail"]
        assert api.client.get("/api/jobs").json()["data"] == []
        online = api.client.post(
            "/api/jobs/submit", json=body | {"config": {"model": "no-batch-model"}}
        )
        assert online.status_code == 201 and online.json()["jobs"][0]["lane"] == "online"
    finally:
        model_table.cache_clear()


def test_the_estimate_of_the_batch_lane_is_at_the_batch_price(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 10)
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images}
    online = api.client.post("/api/jobs/estimate", json=body).json()
    batch = api.client.post("/api/jobs/estimate", json=body | {"config": {"lane": "batch"}}).json()
    assert online["cost_usd"] > 0
    assert batch["cost_usd"] == pytest.approx(online["cost_usd"] / 2)


def test_a_poll_runpod_never_takes_fails_to_online_work_and_cancels_the_batch(api: Api) -> None:
    job = submit_batch(api, 2)
    api.drain()
    dispatch = the_batch(api, job["id"])
    assert hook(api, dispatch, batch_output(dispatch, "batch_submit", "pending")).is_success
    send = api.run_route.side_effect

    def run(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["input"]["task"] == "batch_poll":
            return httpx.Response(400, json={"error": "endpoint paused"})
        return send(request)  # type: ignore[misc,operator]

    api.run_route.side_effect = run
    poll_now(api, job["id"])
    for _ in range(api.platform.settings.dispatch_submit_attempts - 1):
        api.client.portal.call(send_due, api.platform)  # type: ignore[union-attr]
    [failed] = [d for d in dispatches(api, job["id"]) if d.id == dispatch.id]
    assert failed.status == "failed" and "could not submit" in (failed.error or "")
    api.client.portal.call(send_due, api.platform)  # type: ignore[union-attr]
    api.drain()  # a send the commit woke may still be recording its RunPod job
    tasks = sorted(body["input"]["task"] for body in api.run_bodies[1:])
    assert tasks == ["batch_cancel", "generate"]
    assert {o.status for o in api.outputs(job["id"])} == {"running"}


def test_cancelling_a_job_lets_a_batch_cancel_under_way_finish(api: Api) -> None:
    job = submit_batch(api, 2, batch_deadline_s=600)
    api.drain()
    dispatch = the_batch(api, job["id"])
    assert hook(api, dispatch, batch_output(dispatch, "batch_submit", "pending")).is_success
    with api.session() as session:
        session.exec(
            update(Job)
            .where(col(Job.id) == job["id"])
            .values(batch_deadline_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    api.client.portal.call(advance_batches, api.platform)  # type: ignore[union-attr]
    api.drain()
    assert api.client.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    cancelling = the_batch(api, job["id"])
    assert cancelling.task == "batch_cancel" and cancelling.status == "submitted"
    assert hook(api, cancelling, batch_output(cancelling, "batch_cancel", "cancelled")).is_success
    assert the_batch(api, job["id"]).status == "completed"
    assert api.client.get(f"/api/jobs/{job['id']}").json()["status"] == "cancelled"


def test_a_batch_task_whose_webhook_beats_its_run_answer_is_not_mistaken_for_the_next(
    api: Api,
) -> None:
    """RunPod's webhook may arrive before `/run` has answered: the poll's report moves the
    dispatch on to its collect, and the poll's late `/run` answer is not recorded as the
    collect's RunPod job."""
    job = submit_batch(api, 2)
    api.drain()
    dispatch = the_batch(api, job["id"])
    assert hook(api, dispatch, batch_output(dispatch, "batch_submit", "pending")).is_success
    send = api.run_route.side_effect

    def run(request: httpx.Request) -> httpx.Response:
        response: httpx.Response = send(request)  # type: ignore[misc,operator]
        body = json.loads(request.content)
        if body["input"]["task"] == "batch_poll":
            done = batch_output(dispatch, "batch_poll", "succeeded")
            state = RunPodJobState(id=response.json()["id"], **done)
            with api.session() as session:
                apply_report(
                    session, api.platform.settings, api.platform.storage, dispatch.id,
                    lambda: report_of(state),
                )  # fmt: skip
        return response

    api.run_route.side_effect = run
    poll_now(api, job["id"])
    api.client.portal.call(send_due, api.platform)  # type: ignore[union-attr]
    tasks = [body["input"]["task"] for body in api.run_bodies]
    assert tasks == ["batch_submit", "batch_poll", "batch_collect"]
    collecting = the_batch(api, job["id"])
    assert collecting.task == "batch_collect" and collecting.status == "submitted"
    assert collecting.runpod_job_id == "rp-3"  # the collect's own RunPod job
    outputs = api.outputs(job["id"])
    results = [succeeded_result(api, output) for output in outputs]
    collected = {
        "status": "COMPLETED",
        "output": {"version": 4, "dispatch_id": collecting.id, "results": results},
    }
    assert hook(api, collecting, collected).is_success
    assert api.client.get(f"/api/jobs/{job['id']}").json()["status"] == "completed"


def test_usage_splits_images_and_spend_by_lane(api: Api) -> None:
    job = submit_batch(api, 2)
    api.drain()
    dispatch = the_batch(api, job["id"])
    assert hook(api, dispatch, batch_output(dispatch, "batch_submit", "succeeded")).is_success
    api.drain()
    collecting = the_batch(api, job["id"])
    results = [succeeded_result(api, o) | {"cost_usd": 0.0195} for o in api.outputs(job["id"])]
    collected = {
        "status": "COMPLETED",
        "output": {"version": 4, "dispatch_id": collecting.id, "results": results},
    }
    assert hook(api, collecting, collected).is_success
    group_id = api.group("online")
    online = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id, "mode": "automatic", "prompt": "p",
              "images": api.upload_ids(group_id, 1)},
    ).json()["jobs"][0]  # fmt: skip
    finish_job(api, online["id"], ["succeeded"])
    usage = api.client.get("/api/usage", params={"group_by": "lane"})
    assert usage.status_code == 200, usage.text
    by_lane = {b["key"]: (b["images"], b["cost_usd"]) for b in usage.json()["buckets"]}
    assert by_lane == {"batch": (2, pytest.approx(0.039)), "online": (1, 0.0)}
    api.drain()
    metrics = scrape(api)
    assert metrics[("pixelfleet_spend_by_lane_usd", (("lane", "batch"),))] == pytest.approx(0.039)
    assert metrics[("pixelfleet_spend_by_lane_usd", (("lane", "online"),))] == 0
