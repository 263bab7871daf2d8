"""Every transition writes its event in the transaction that made it, exactly once, and
moves the job's counters with it."""

import json
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from control_plane import lifecycle
from control_plane.db import is_transient
from control_plane.errors import Conflict, Unavailable
from control_plane.lifecycle import output_counts
from control_plane.models import Dispatch, Event, Job, Output
from control_plane.runpod import webhook
from control_plane.runpod.finisher import Outcome, apply_report
from control_plane.runpod.wire import RunPodJobState, report_of
from tests.fakes.api import Api, completed_body, hook, submit_one_dispatch

ENDED = ("succeeded", "failed", "blocked")


def _events(api: Api, after: int = 0) -> list[Event]:
    with api.session() as session:
        return list(
            session.exec(select(Event).where(col(Event.id) > after).order_by(col(Event.id))).all()
        )


def _kinds(events: list[Event]) -> list[str]:
    return [event.kind for event in events]


def test_a_jobs_path_writes_each_transition_once(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api)
    submitted = _events(api)
    assert _kinds(submitted) == ["job_queued", "dispatch_queued", "dispatch_started", "job_started"]
    assert submitted[0].data == {"total": 3} and submitted[2].dispatch_id == dispatch.id
    assert submitted[2].data["runpod_job_id"] == dispatch.runpod_job_id

    body = completed_body(api, dispatch)
    first, second, _ = body["output"]["results"]
    second.update(status="blocked", error="IMAGE_SAFETY", output_uri=None)
    del body["output"]["results"][2]  # the worker said nothing about the third image
    for _ in range(2):  # RunPod may deliver the webhook twice: the second changes nothing
        assert hook(api, dispatch, body).status_code == 200
    finished = _events(api, submitted[-1].id or 0)
    assert _kinds(finished) == [
        "output_succeeded",
        "output_blocked",
        "output_failed",
        "dispatch_completed",
        "job_finished",
    ]
    assert finished[0].output_id == first["output_id"]
    assert finished[0].data == {"first_image": True}  # the job's first image
    assert finished[1].data == {"error": "IMAGE_SAFETY"}
    assert "no result" in finished[2].data["error"]
    assert finished[-1].data == {"status": "completed", "succeeded": 1, "failed": 1, "blocked": 1}

    assert api.client.post(f"/api/jobs/{job_id}/retry").status_code == 200
    api.drain()
    retried = _events(api, finished[-1].id or 0)
    assert _kinds(retried) == [
        "output_retried",
        "dispatch_queued",
        "job_reopened",
        "dispatch_started",
    ]
    assert retried[0].output_id == finished[2].output_id

    assert api.client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    cancelled = _events(api, retried[-1].id or 0)
    assert _kinds(cancelled) == ["dispatch_failed", "output_failed", "job_finished"]
    assert cancelled[0].data["reason"] == "cancelled by user" and not cancelled[0].data["retry"]
    assert cancelled[0].data["lost"] is False
    assert cancelled[0].data["runpod_job_id"] == retried[-1].data["runpod_job_id"]
    assert cancelled[-1].data == {"status": "cancelled", "succeeded": 1, "failed": 1, "blocked": 1}


def test_a_failed_dispatch_is_retried_as_a_new_queued_dispatch(api: Api) -> None:
    _, dispatch = submit_one_dispatch(api)
    start = _events(api)[-1].id or 0
    assert hook(api, dispatch, {"status": "TIMED_OUT"}).status_code == 200
    api.drain()
    events = _events(api, start)
    assert _kinds(events) == ["dispatch_failed", "dispatch_queued", "dispatch_started"]
    assert events[0].data["retry"] is True and "timed the job out" in events[0].data["reason"]
    assert events[0].data["lost"] is False
    assert events[1].data == {"attempt": 2} and events[1].dispatch_id != dispatch.id


def test_each_image_gets_its_own_values_whether_shared_or_not(api: Api) -> None:
    """Finishing writes every image's columns in one UPDATE, binding a value its images
    share once: the images still end each with their own seed, file, attempts and error."""
    _, dispatch = submit_one_dispatch(api, n=4)
    body = completed_body(api, dispatch)
    results = body["output"]["results"]
    for index, result in enumerate(results):
        result.update(seed=100 + index, attempts=1 + index % 2, cost_usd=0.039, latency_ms=900)
    results[2].update(status="blocked", error="IMAGE_SAFETY", output_uri=None)
    assert hook(api, dispatch, body).status_code == 200
    rows = {output.id: output for output in api.outputs(dispatch.job_id)}
    for index, result in enumerate(results):
        row = rows[result["output_id"]]
        assert (row.seed, row.attempts, row.cost_usd) == (100 + index, 1 + index % 2, 0.039)
        assert row.latency_ms == 900 and row.model == result["model"]
        if index == 2:
            assert (row.status, row.error, row.storage_key) == ("blocked", "IMAGE_SAFETY", None)
        else:
            assert (row.status, row.error, row.sha256) == ("succeeded", None, result["sha256"])
            assert row.storage_key and row.storage_key in result["output_uri"]


def test_a_rejected_result_writes_output_failed_with_its_reason(api: Api) -> None:
    """A result that fails the check (control_plane/results.py) ends its image like any
    failure: one output_failed with the reason; its neighbours' results apply as usual."""
    _, dispatch = submit_one_dispatch(api, n=2)
    start = _events(api)[-1].id or 0
    body = completed_body(api, dispatch)
    first, second = body["output"]["results"]
    first["content_type"] = "text/html"
    second["width"] = "wide"
    third = {**first, "output_id": "out_someone_elses", "content_type": "image/png"}
    body["output"]["results"] += [third, {"status": "succeeded"}, 7]
    assert hook(api, dispatch, body).status_code == 200
    events = _events(api, start)
    assert _kinds(events) == [
        "output_failed",
        "output_failed",
        "dispatch_completed",
        "job_finished",
    ]
    assert [event.output_id for event in events[:2]] == [first["output_id"], second["output_id"]]
    assert events[0].data == {
        "error": "worker result rejected: content type 'text/html' is not PNG, JPEG or WebP"
    }
    assert "width: Input should be a valid integer" in events[1].data["error"]
    assert events[-1].data["status"] == "failed"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_job_counters_equal_a_recount_after_any_sequence_of_transitions(
    api: Api, seed: int
) -> None:
    """Counters move with each transition instead of being recounted: after random webhooks
    (partial, blocked, failed, timed out, duplicated), cancels and retries they still equal
    a recount of the outputs, and each job's status agrees with them."""
    chance = random.Random(seed)
    api.platform.settings.dispatch_chunk_size = 2
    group_id = api.group()
    images = api.upload_ids(group_id, 5)
    job_ids = [
        api.client.post(
            "/api/jobs/submit",
            json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images},
        ).json()["jobs"][0]["id"]
        for _ in range(3)
    ]
    api.drain()
    for _ in range(30):
        job_id = chance.choice(job_ids)
        action = chance.choice(["webhook", "webhook", "webhook", "duplicate", "cancel", "retry"])
        if action == "cancel":
            api.client.post(f"/api/jobs/{job_id}/cancel")
        elif action == "retry":
            api.client.post(f"/api/jobs/{job_id}/retry")
        else:
            _random_webhook(api, chance, job_id, duplicate=action == "duplicate")
        api.drain()
    with api.session() as session:
        for job_id in job_ids:
            job = session.get(Job, job_id)
            assert job is not None
            recount = output_counts(session, col(Output.job_id) == job_id)
            assert (job.succeeded, job.failed, job.blocked) == (
                recount.get("succeeded", 0),
                recount.get("failed", 0),
                recount.get("blocked", 0),
            ), job_id
            assert job.total == sum(recount.values()) == 5
            ended = job.succeeded + job.failed + job.blocked == job.total
            assert (job.status in ("completed", "failed", "cancelled")) == ended, job.status


def _random_webhook(api: Api, chance: random.Random, job_id: str, *, duplicate: bool) -> None:
    with api.session() as session:
        dispatches = session.exec(select(Dispatch).where(Dispatch.job_id == job_id)).all()
    wanted = [d for d in dispatches if (d.status == "completed") == duplicate]
    if not wanted:
        return
    dispatch = chance.choice(wanted)
    body = completed_body(api, dispatch)
    results = body["output"]["results"]
    for result in results:
        outcome = chance.choice(["succeeded", "succeeded", "failed", "blocked"])
        if outcome != "succeeded":
            result.update(status=outcome, error=outcome, output_uri=None)
    if results and chance.random() < 0.3:
        results.pop()  # the worker said nothing about one image
    if chance.random() < 0.2:
        body = {"status": chance.choice(["FAILED", "TIMED_OUT"]), "error": "boom"}
    assert hook(api, dispatch, body).status_code == 200


@pytest.mark.parametrize("seed", [1, 2])
def test_racing_finishers_cancels_and_retries_keep_counters_equal_to_a_recount(
    api: Api, seed: int
) -> None:
    """Every dispatch's webhook arrives three times at once, alone and in two batches of all
    of them, racing each other, the sender, a cancel and a retry (8 threads, sessions of
    their own): each image still ends once per try (one event each), and the counters equal
    a recount."""
    chance = random.Random(seed)
    api.runpod.post(url__regex=r".*/cancel/.*").mock(return_value=httpx.Response(200, json={}))
    api.platform.settings.dispatch_chunk_size = 2
    job_id = api.automatic_job(12)
    api.drain()
    with api.session() as session:
        dispatches = session.exec(select(Dispatch).where(Dispatch.job_id == job_id)).all()
    tasks: list[Callable[[], object]] = []
    posts = []
    for dispatch in dispatches:
        body = json.dumps(_random_outcomes(api, chance, dispatch)).encode()
        posts.append(webhook.Post(dispatch.id, dispatch.webhook_token, body))
        tasks.append(partial(_receive, api, posts[-1:]))
    tasks += [partial(_receive, api, posts)] * 2  # all of them, applied together
    tasks += [partial(_decide, api, lifecycle.cancel_job, job_id)]
    tasks += [
        partial(_decide, api, partial(lifecycle.retry_job, settings=api.platform.settings), job_id)
    ]
    chance.shuffle(tasks)
    with ThreadPoolExecutor(8) as pool:
        for done in [pool.submit(task) for task in tasks]:
            done.result()
    api.drain()
    with api.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        recount = output_counts(session, col(Output.job_id) == job_id)
        counters = {"succeeded": job.succeeded, "failed": job.failed, "blocked": job.blocked}
        assert counters == {status: recount.get(status, 0) for status in counters}
        ended = job.succeeded + job.failed + job.blocked == job.total == 12
        assert (job.status in ("completed", "failed", "cancelled")) == ended, job.status
        for output in session.exec(select(Output).where(Output.job_id == job_id)):
            kinds = session.exec(select(Event.kind).where(Event.output_id == output.id)).all()
            ends = sum(
                kind in ("output_succeeded", "output_failed", "output_blocked") for kind in kinds
            )
            tries_ended = kinds.count("output_retried") + (output.status in ENDED)
            assert ends == tries_ended, (output.status, kinds)


def _random_outcomes(api: Api, chance: random.Random, dispatch: Dispatch) -> dict:
    body = completed_body(api, dispatch)
    for result in body["output"]["results"]:
        outcome = chance.choice(["succeeded", "succeeded", "failed", "blocked"])
        if outcome != "succeeded":
            result.update(status=outcome, error=outcome, output_uri=None)
    return {"id": dispatch.runpod_job_id, **body}


def _receive(api: Api, posts: list[webhook.Post]) -> None:
    """Webhooks as the route applies them (together), each sent again while it is answered
    503 (as RunPod does)."""
    platform = api.platform
    for _ in range(100):
        with platform.session() as session:
            answers = webhook.receive(session, platform.settings, platform.storage, posts)
        posts = [
            post
            for post, answer in zip(posts, answers, strict=True)
            if isinstance(answer, Unavailable)
        ]
        if not posts:
            return
    raise AssertionError(f"webhooks never applied: {[post.dispatch_id for post in posts]}")


def _decide(api: Api, decision: Callable[..., object], job_id: str) -> None:
    """A user's cancel or retry, tried again after a passing database error; refused
    (Conflict) when the job's state no longer allows it."""
    while True:
        try:
            with api.platform.session_scope() as session:
                decision(session, job_id=job_id)
            return
        except Conflict:
            return
        except Exception as exc:
            if not is_transient(exc):
                raise


def test_finishing_a_dispatch_of_16_images_takes_the_statements_one_of_2_takes(api: Api) -> None:
    """Finalising writes a dispatch's outputs, their events and the job's counters in a fixed
    number of statements, whatever the number of images (not one per image)."""
    statements = {images: _statements_finishing(api, images) for images in (2, 16)}
    assert statements[2] == statements[16]
    assert sum(s.startswith("UPDATE outputs") for s in statements[16]) == 1


def test_a_finaliser_locks_the_job_last_and_holds_it_for_its_counters_only(api: Api) -> None:
    """Every finaliser of a job queues on the job's row: it is locked after the dispatch's
    outputs and events are written (under the dispatch's lock), by the UPDATE that moves
    its counters, and only a read of them follows before the commit."""
    api.platform.settings.dispatch_chunk_size = 2
    job_id = api.automatic_job(6)
    api.drain()
    with api.session() as session:
        first, second, _third = session.exec(  # the second does not end the job
            select(Dispatch).where(Dispatch.job_id == job_id).order_by(col(Dispatch.id))
        ).all()
    assert hook(api, first, completed_body(api, first)).status_code == 200  # the job's first image
    statements = _statements_finishing(api, dispatch=second, words=None)
    locks = [  # what locks the job's row: a locking read of it, or a write to it
        index
        for index, statement in enumerate(statements)
        if statement.startswith("UPDATE jobs")
        or (" FROM jobs " in statement and statement.endswith("FOR UPDATE"))
    ]
    assert len(locks) == 1, statements  # the counters' UPDATE takes the lock
    before, after = statements[: locks[0]], statements[locks[0] + 1 :]
    assert any(s.startswith("UPDATE outputs") for s in before)
    assert any(s.startswith("INSERT INTO events") for s in before)
    assert any(s.startswith("UPDATE dispatches") for s in before)
    assert all(s.startswith("SELECT") for s in after), after  # then the commit


def _statements_finishing(
    api: Api, images: int = 0, *, dispatch: Dispatch | None = None, words: int | None = 3
) -> list[str]:
    """The first `words` words (all with None) of each statement that applying a COMPLETED
    report of `dispatch` (by default, of a new dispatch of `images` images) sends."""
    if dispatch is None:
        _, dispatch = submit_one_dispatch(api, n=images)
    body = {"id": dispatch.runpod_job_id, **completed_body(api, dispatch)}
    report = report_of(RunPodJobState.model_validate(body))
    seen: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(" ".join(statement.split()[:words]))

    platform = api.platform
    with platform.session() as session:
        sa.event.listen(session.connection(), "before_cursor_execute", note)
        outcome = apply_report(
            session, platform.settings, platform.storage, dispatch.id, lambda: report
        )
    assert outcome is Outcome.APPLIED
    return seen
