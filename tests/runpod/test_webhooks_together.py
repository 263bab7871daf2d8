"""RunPod's webhooks applied together (`webhook.receive` with several posts, as
`control_plane/batching.py` hands them over): each dispatch ends once, in one statement per
kind of write for all of them, a job's first image stamped once; what cannot go together is
applied alone, and a report that cannot be applied holds back none of the others."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from control_plane.errors import InvalidRequest, Unavailable
from control_plane.models import Dispatch, DispatchStatus, Event, EventKind, Job
from control_plane.runpod import webhook
from control_plane.settings import Settings
from tests.fakes.api import Api, completed_body, hook, poison_finalising


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # two images per dispatch: a job of 10 images is 5 dispatches, 5 webhooks
    return settings.model_copy(update={"dispatch_chunk_size": 2, "dispatch_chunk_max": 2})


def submit(api: Api, images: int) -> tuple[str, list[Dispatch]]:
    group_id = api.group()
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p"}
    job = api.client.post(
        "/api/jobs/submit", json=body | {"images": api.upload_ids(group_id, images)}
    ).json()["jobs"][0]
    api.drain()
    with api.session() as session:
        query = select(Dispatch).where(Dispatch.job_id == job["id"]).order_by(col(Dispatch.id))
        return job["id"], list(session.exec(query))


def post(dispatch: Dispatch, body: dict[str, Any]) -> webhook.Post:
    encoded = json.dumps({"id": dispatch.runpod_job_id, **body}).encode()
    return webhook.Post(dispatch.id, dispatch.webhook_token, encoded)


def receive(api: Api, posts: list[webhook.Post]) -> list[object]:
    with api.session() as session:
        platform = api.platform
        return list(webhook.receive(session, platform.settings, platform.storage, posts))


@pytest.fixture
def statements(api: Api) -> Iterator[list[str]]:
    """The SQL statements the platform's engine runs, as they start: an executemany once
    per row, as the driver runs it (MySQL's sends each UPDATE of one on its own)."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        _conn, _cursor, statement, parameters, _context, executemany = args
        seen.extend([statement] * (len(parameters) if executemany else 1))

    sa.event.listen(api.platform.engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(api.platform.engine, "before_cursor_execute", record)


def events_of(api: Api, job_id: str, kind: EventKind) -> list[Event]:
    with api.session() as session:
        query = select(Event).where(Event.job_id == job_id, Event.kind == kind)
        return list(session.exec(query))


def test_webhooks_applied_together_end_each_dispatch_once_in_one_statement(
    api: Api, statements: list[str]
) -> None:
    job_id, dispatches = submit(api, 10)
    first, *together, failing = dispatches
    assert hook(api, first, completed_body(api, first)).status_code == 200  # the first image
    bodies = [completed_body(api, dispatch) for dispatch in together]
    posts = [post(dispatch, body) for dispatch, body in zip(together, bodies, strict=True)]
    posts += [
        post(failing, {"status": "FAILED", "error": "worker crashed"}),
        posts[0],  # RunPod's re-send, among them
        post(together[1], {"status": "IN_PROGRESS"}),
        webhook.Post(together[2].id, together[2].webhook_token, b"{"),
    ]
    statements.clear()
    answers = receive(api, posts)
    accepted = {"status": "accepted"}
    assert answers[:5] == [accepted] * 5
    assert answers[5] == {"status": "ignored", "reason": "IN_PROGRESS is not a final state"}
    assert isinstance(answers[6], InvalidRequest)
    endings = [sql for sql in statements if sql.startswith("UPDATE outputs SET provider")]
    assert len(endings) == 1  # the three completed dispatches' six images, in one UPDATE
    ended = [sql for sql in statements if sql.startswith("UPDATE dispatches SET status")]
    assert len(ended) == 2  # the three completed dispatches in one UPDATE; the failed one
    with api.session() as session:
        statuses = {
            d.id: d.status for d in session.exec(select(Dispatch).where(Dispatch.job_id == job_id))
        }
        job = session.get(Job, job_id)
        assert job is not None and (job.succeeded, job.failed, job.total) == (8, 0, 10)
    assert [statuses[d.id] for d in together] == [DispatchStatus.COMPLETED] * 3
    assert statuses[failing.id] == DispatchStatus.FAILED
    assert len(statuses) == 6  # the failed dispatch's retry
    completed = events_of(api, job_id, EventKind.DISPATCH_COMPLETED)
    assert sorted(event.dispatch_id for event in completed) == sorted(
        d.id for d in [first, *together]
    )
    assert len(events_of(api, job_id, EventKind.OUTPUT_SUCCEEDED)) == 8


def test_a_report_that_cannot_be_applied_holds_back_none_of_those_applied_with_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, dispatches = submit(api, 6)
    first, poisoned, last = dispatches
    assert hook(api, first, completed_body(api, first)).status_code == 200
    poison_finalising(monkeypatch, poisoned.id)
    posts = [post(dispatch, completed_body(api, dispatch)) for dispatch in (poisoned, last)]
    answers = receive(api, posts)
    assert isinstance(answers[0], Unavailable) and answers[1] == {"status": "accepted"}
    with api.session() as session:
        held, ended = session.get(Dispatch, poisoned.id), session.get(Dispatch, last.id)
        assert held is not None and held.status == "submitted" and held.finish_failures == 1
        assert ended is not None and ended.status == "completed"
        job = session.get(Job, job_id)
        assert job is not None and job.succeeded == 4


def test_a_job_with_no_image_yet_gets_its_first_image_once(api: Api, statements: list[str]) -> None:
    """A job's first image is stamped under the job's lock, taken before anything is
    written, by webhooks applied together as by one alone: one first image."""
    job_id, dispatches = submit(api, 6)
    posts = [post(dispatch, completed_body(api, dispatch)) for dispatch in dispatches]
    statements.clear()
    assert receive(api, posts) == [{"status": "accepted"}] * 3
    endings = [sql for sql in statements if sql.startswith("UPDATE outputs SET provider")]
    assert len(endings) == 1  # together all the same
    succeeded = events_of(api, job_id, EventKind.OUTPUT_SUCCEEDED)
    assert len(succeeded) == 6
    firsts = [event for event in succeeded if event.data.get("first_image")]
    assert [event.dispatch_id for event in firsts] == [dispatches[0].id]
    shown = api.client.get(f"/api/jobs/{job_id}").json()
    assert shown["status"] == "completed" and shown["progress"]["succeeded"] == 6
    with api.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.first_image_at is not None
