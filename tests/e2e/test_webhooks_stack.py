"""Webhooks to users' own URLs on the whole stack (control plane, local RunPod endpoint, offline
worker, real sockets): received by a real local HTTP server, signatures checked by an
independent implementation of Standard Webhooks (tests/fakes/receiver.py); retried across a
control-plane restart; a receiver that hangs holds up nothing else."""

import base64
import hashlib
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from control_plane.app import create_app
from control_plane.db import make_engine, session_scope
from control_plane.services import users
from control_plane.settings import Settings
from tests.fakes.receiver import HANG, Receiver, run_receiver, verify
from tests.fakes.servers import RestartableServer
from tests.fakes.stack import Stack
from worker.local_endpoint import build_endpoint_app_from_settings
from worker.settings import WorkerSettings

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_secret": SECRET, "webhook_retry_delays_s": "3"})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with run_receiver(hang_s=60) as receiver:
        yield receiver


def submit(http: httpx.Client, group_id: str, images: list[str], webhook: dict[str, Any]) -> str:
    body = {
        "group_id": group_id,
        "mode": "automatic",
        "prompt": "a watercolour",
        "images": images,
        "webhook": webhook,
    }
    answer = http.post("/api/jobs/submit", json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["jobs"][0]["id"])


def deliveries(http: httpx.Client, job_id: str, *, until: Any, timeout: float = 60) -> list[Any]:
    """The job's deliveries once `until(deliveries)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        found = http.get(f"/api/jobs/{job_id}/webhooks").json()["data"]
        if until(found):
            return list(found)
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def settled(found: list[Any]) -> bool:
    return bool(found) and all(delivery["status"] != "pending" for delivery in found)


def test_a_users_jobs_are_told_signed_with_the_users_secret(
    stack: Stack, receiver: Receiver
) -> None:
    with session_scope(make_engine(stack.settings.database_url)) as session:
        mina = users.add_user(session, "mina", users.UserTier.PAID)
        _, key = users.create_key(session, mina)
        own_secret = users.new_webhook_secret(session, mina)
    stack.http.headers["Authorization"] = f"Bearer {key}"
    group_id = stack.group()
    images = stack.upload(group_id, 3)
    events = ["image.succeeded", "job.completed"]
    watched = submit(stack.http, group_id, images, {"url": f"{receiver.url}/all", "events": events})
    default = submit(stack.http, group_id, images[:1], {"url": f"{receiver.url}/jobs"})
    stack.wait_for([watched, default])

    received = receiver.wait_for("/all", 4)
    [ended] = receiver.wait_for("/jobs", 1)
    for request in [*received, ended]:
        verify(own_secret, request.headers, request.body)
        with pytest.raises(AssertionError):
            verify(SECRET, request.headers, request.body)  # not the local user's secret
        assert request.headers["content-type"] == "application/json"
    assert sorted(r.json["type"] for r in received) == ["image.succeeded"] * 3 + ["job.completed"]
    assert ended.json["type"] == "job.completed"
    assert ended.json["data"]["job"]["id"] == default
    [job_end] = [r.json for r in received if r.json["type"] == "job.completed"]
    job = job_end["data"]["job"]
    assert job["id"] == watched and job["status"] == "completed"
    assert (job["total"], job["succeeded"], job["failed"], job["blocked"]) == (3, 3, 0, 0)

    images_of = stack.http.get(f"/api/jobs/{watched}").json()["images"]
    sha256 = {image["id"]: image["sha256"] for image in images_of}
    for request in received:
        image = request.json["data"].get("image")
        if image is None:
            continue
        assert image["status"] == "succeeded" and image["error"] is None
        assert image["url"].startswith(stack.settings.public_url)
        file = stack.http.get(image["url"], follow_redirects=True)
        assert file.status_code == 200
        assert hashlib.sha256(file.content).hexdigest() == sha256[image["id"]]
    listed = deliveries(stack.http, watched, until=lambda found: len(found) == 4 and settled(found))
    assert {(d["status"], d["attempts"]) for d in listed} == {("delivered", 1)}
    assert len(receiver.received) == 5  # each event once


@contextmanager
def restartable_stack(settings: Settings) -> Iterator[tuple[RestartableServer, httpx.Client]]:
    """The stack with a control plane that can be stopped and started again on the same
    database and port (a process restart), and a client of it."""
    worker = WorkerSettings(
        storage_url=settings.storage_url,
        provider="offline",
        worker_concurrency=16,
        worker_max_jobs=4,
        webhook_retry_delay_s=0.1,
    )
    with RestartableServer(lambda: build_endpoint_app_from_settings(worker)) as endpoint:
        control: list[Settings] = []
        api = RestartableServer(lambda: create_app(control[0]))
        control.append(
            settings.model_copy(update={"runpod_base_url": endpoint.url, "public_url": api.url})
        )
        with api, httpx.Client(base_url=api.url, timeout=60) as http:
            yield api, http


def test_a_refusing_receiver_gets_the_message_after_a_restart(
    settings: Settings, receiver: Receiver
) -> None:
    """Two refusals, the control plane restarted between them, then a 2xx: three attempts
    of one message (one webhook-id), each signed, delivered once."""
    receiver.script("/flaky", 500, 500)
    with restartable_stack(settings) as (api, http):
        stack = Stack(http, settings, api)
        group_id = stack.group()
        job_id = submit(http, group_id, stack.upload(group_id, 2), {"url": f"{receiver.url}/flaky"})
        stack.wait_for([job_id])
        tried_once = deliveries(http, job_id, until=lambda found: found and found[0]["attempts"])
        api.stop()  # the next attempt is due 3 s after the first
        assert len(receiver.at("/flaky")) == 1
        assert tried_once[0]["status"] == "pending" and tried_once[0]["last_status_code"] == 500
        time.sleep(0.5)
        api.start()
        attempts = receiver.wait_for("/flaky", 3)
        [delivered] = deliveries(http, job_id, until=settled)
    assert [request.status for request in attempts] == [500, 500, 204]
    assert {request.id for request in attempts} == {delivered["id"]}
    for request in attempts:
        verify(SECRET, request.headers, request.body)
        assert request.json["type"] == "job.completed"
    assert delivered["status"] == "delivered" and delivered["attempts"] == 3
    assert len(receiver.at("/flaky")) == 3


def test_a_hanging_receiver_holds_up_nothing_else(stack: Stack, receiver: Receiver) -> None:
    receiver.script("/hang", HANG)
    group_id = stack.group()
    images = stack.upload(group_id, 2)
    stuck = submit(stack.http, group_id, images[:1], {"url": f"{receiver.url}/hang"})
    stack.wait_for([stuck])
    deadline = time.monotonic() + 30
    while not receiver.at("/hang"):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    events = ["image.succeeded", "job.completed"]
    later = submit(stack.http, group_id, images, {"url": f"{receiver.url}/ok", "events": events})
    assert stack.wait_for([later])[0]["status"] == "completed"
    delivered = receiver.wait_for("/ok", 3)
    [hanging] = receiver.at("/hang")
    assert hanging.answered is None  # still held while the other job ran and was told
    assert all(request.status == 204 for request in delivered)
    [pending] = stack.http.get(f"/api/jobs/{stuck}/webhooks").json()["data"]
    assert pending["status"] == "pending" and pending["attempts"] == 0

    receiver.release()
    [done] = deliveries(stack.http, stuck, until=settled)
    assert done["status"] == "delivered" and done["attempts"] == 1
    assert len(receiver.at("/hang")) == 1
