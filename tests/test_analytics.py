"""The analytics event log (`control_plane/services/analytics.py`) and `GET /api/events`, and
each job's `success_rate` and `first_image_s`."""

import dataclasses
from collections import Counter
from typing import Any

from sqlmodel import Session, col, func, select

from control_plane.events import Relay
from control_plane.models import AnalyticsEvent, UserTier
from control_plane.services import users
from control_plane.services.analytics import analytics_consumer
from tests.conftest import png_bytes, recorded_statements
from tests.fakes.api import Api, finish_job

PACK = ["succeeded", "succeeded", "failed", "blocked", "succeeded"]


def events(api: Api, headers: dict[str, str] | None = None, **params: Any) -> list[dict]:
    """Every event the caller sees (`params` filter), read page by page."""
    seen: list[dict] = []
    after: str | None = None
    while True:
        query = {**params, **({"after": after} if after else {})}
        answer = api.client.get("/api/events", params=query, headers=headers)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        seen.extend(page["data"])
        after = page["next"]
        if after is None:
            return seen


def finished_pack(api: Api, statuses: list[str]) -> dict[str, Any]:
    """A character pack of `statuses` (one per image), reported and applied."""
    references = api.upload_ids(api.group(), 1)
    character = api.client.post(
        "/api/characters", json={"name": "Mina", "references": references, "seed": 7}
    ).json()
    created = api.client.post(f"/api/characters/{character['id']}/packs", json={"size": 5})
    assert created.status_code == 201, created.text
    job = created.json()["jobs"][0]
    finish_job(api, job["id"], statuses)
    api.drain()
    return {"job": job, "character_id": character["id"]}


def test_a_pack_with_successes_failures_and_blocks_writes_the_seeds_events(api: Api) -> None:
    made = finished_pack(api, PACK)
    job_id = made["job"]["id"]
    log = events(api, job_id=job_id)
    assert Counter(e["type"] for e in log) == {
        "generation_queued": 1,
        "generation_started": 1,
        "generation_completed": 3,
        "image_stored": 3,
        "generation_failed": 2,
        "job_finished": 1,
        "pack_completed": 1,
    }
    assert [e["id"] for e in log] == sorted(e["id"] for e in log)
    assert all(e["job_id"] == job_id and e["user_id"] is None for e in log)
    by_type = {e["type"]: e for e in log}
    queued = by_type["generation_queued"]["data"]
    assert queued["image_count"] == 5 and queued["character_id"] == made["character_id"]
    assert by_type["generation_started"]["data"]["image_count"] == 5
    assert by_type["generation_started"]["data"]["model"] == "gemini-2.5-flash-image"

    completed = [e for e in log if e["type"] == "generation_completed"]
    assert all(e["output_id"] and e["data"]["model"] == "m" for e in completed)
    firsts = [e for e in completed if "time_to_first_image_ms" in e["data"]]
    assert len(firsts) == 1 and firsts[0]["data"]["time_to_first_image_ms"] >= 0
    stored = [e for e in log if e["type"] == "image_stored"]
    assert {e["output_id"] for e in stored} == {e["output_id"] for e in completed}
    assert all(e["data"]["size_bytes"] > 0 for e in stored)
    images = api.client.get(f"/api/jobs/{job_id}/images").json()["images"]
    shown_images = {image["id"]: image for image in images}
    for entry in completed:
        image = shown_images[entry["output_id"]]
        assert image["latency_ms"] is not None  # no price for model "m": no cost
        assert entry["data"]["duration_ms"] == image["latency_ms"]
        assert entry["data"].get("cost_usd") == image["cost_usd"]
    for entry in stored:
        image = shown_images[entry["output_id"]]
        assert entry["data"]["size_bytes"] == image["bytes"]
        assert entry["data"]["content_type"] == image["content_type"] == "image/png"
    failed = sorted(e["data"]["error_type"] for e in log if e["type"] == "generation_failed")
    assert failed == ["blocked", "generation_error"]

    pack = by_type["pack_completed"]["data"]
    assert pack["image_count"] == 5 and pack["total_duration_ms"] >= 0
    assert (pack["succeeded"], pack["failed"], pack["blocked"]) == (3, 1, 1)
    assert pack["status"] == "completed" and pack["success_rate"] == 0.6
    assert by_type["job_finished"]["data"] == pack

    shown = api.client.get(f"/api/jobs/{job_id}").json()
    assert shown["success_rate"] == 0.6
    assert shown["first_image_s"] is not None and shown["first_image_s"] >= 0


def test_success_rate_and_first_image_wait_for_the_first_ended_image(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images}
    job = api.client.post("/api/jobs/submit", json=body).json()["jobs"][0]
    assert (job["success_rate"], job["first_image_s"]) == (None, None)

    finish_job(api, job["id"], ["failed", "failed"])
    shown = api.client.get(f"/api/jobs/{job['id']}").json()
    assert (shown["success_rate"], shown["first_image_s"]) == (0.0, None)
    api.drain()
    finished = events(api, job_id=job["id"], type="job_finished")
    assert [e["data"]["status"] for e in finished] == ["failed"]

    assert api.client.post(f"/api/jobs/{job['id']}/retry").status_code == 200
    finish_job(api, job["id"], ["succeeded", "succeeded"])
    shown = api.client.get(f"/api/jobs/{job['id']}").json()
    assert shown["success_rate"] == 1.0 and shown["first_image_s"] >= 0
    api.drain()
    queued = events(api, job_id=job["id"], type="generation_queued")
    assert [(e["data"]["image_count"], e["data"].get("retry")) for e in queued] == [
        (2, None),
        (2, True),
    ]


def test_a_cancelled_job_logs_its_images_as_cancelled(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 2)
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images}
    job = api.client.post("/api/jobs/submit", json=body).json()["jobs"][0]
    api.drain()
    assert api.client.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    api.drain()
    failed = events(api, job_id=job["id"], type="generation_failed")
    assert [e["data"]["error_type"] for e in failed] == ["cancelled", "cancelled"]
    (finished,) = events(api, job_id=job["id"], type="job_finished")
    assert finished["data"]["status"] == "cancelled" and finished["data"]["success_rate"] == 0.0


def _key(api: Api, name: str, *, admin: bool = False) -> dict[str, str]:
    with api.platform.session_scope() as session:
        user = users.add_user(session, name, UserTier.FREE, admin=admin)
        _, secret = users.create_key(session, user)
    return {"Authorization": f"Bearer {secret}"}


def _job_of(api: Api, headers: dict[str, str], statuses: list[str]) -> str:
    group = api.client.post("/api/groups", json={"name": "mine"}, headers=headers).json()["id"]
    uploaded = api.client.post(
        "/api/uploads",
        data={"group_id": group},
        files=[
            ("files", (f"{i}.png", png_bytes(30 + i, 30), "image/png"))
            for i in range(len(statuses))
        ],
        headers=headers,
    )
    images = [image["id"] for image in uploaded.json()["images"]]
    body = {"group_id": group, "mode": "automatic", "prompt": "p", "images": images}
    submitted = api.client.post("/api/jobs/submit", json=body, headers=headers)
    assert submitted.status_code == 201, submitted.text
    job_id: str = submitted.json()["jobs"][0]["id"]
    finish_job(api, job_id, statuses)
    api.drain()
    return job_id


def test_events_are_owned_and_read_by_cursor(api: Api) -> None:
    alice, bob = _key(api, "alice"), _key(api, "bob")
    admin = _key(api, "root", admin=True)
    alice_job = _job_of(api, alice, ["succeeded", "failed", "blocked"])
    bob_job = _job_of(api, bob, ["succeeded"])

    everything = events(api, admin, limit=1)  # one a page: every cursor is followed
    assert {e["job_id"] for e in everything} == {alice_job, bob_job}
    assert len({e["id"] for e in everything}) == len(everything)
    mine = events(api, alice, limit=2)
    assert mine and {e["job_id"] for e in mine} == {alice_job}
    assert mine == [e for e in everything if e["job_id"] == alice_job]
    assert {e["job_id"] for e in events(api, bob)} == {bob_job}

    # another user's job does not exist for this one; filters narrow
    assert (
        api.client.get("/api/events", params={"job_id": alice_job}, headers=bob).status_code == 404
    )
    stored = events(api, admin, type="image_stored")
    assert {e["job_id"] for e in stored} == {alice_job, bob_job} and len(stored) == 2
    first_page = api.client.get("/api/events", params={"limit": 2}, headers=alice).json()
    rest = api.client.get(
        "/api/events", params={"after": first_page["next"]}, headers=alice
    ).json()["data"]
    assert first_page["data"] + rest == mine

    unknown = api.client.get("/api/events", params={"type": "nope"}, headers=alice)
    assert unknown.status_code == 422
    assert "generation_queued" in unknown.json()["detail"]
    assert "pack_completed" in unknown.json()["detail"]
    bad_cursor = api.client.get("/api/events", params={"after": "x1"}, headers=alice)
    assert bad_cursor.status_code == 422
    assert api.client.get("/api/events").status_code == 401  # users exist: a key is needed


def test_a_batch_of_image_events_reads_its_jobs_and_outputs_once(api: Api) -> None:
    """Logging a job's image events reads their job and outputs in one query each per batch,
    not one per event (a 20,000-image job makes 20,000 of them)."""
    group_id = api.group()
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p"}
    body["images"] = api.upload_ids(group_id, 12)
    job = api.client.post("/api/jobs/submit", json=body).json()["jobs"][0]
    finish_job(api, job["id"], ["succeeded"] * 12)
    api.drain()
    engine = api.platform.engine
    relay = Relay(engine)  # a second analytics log from the start: every event again
    relay.subscribe(dataclasses.replace(analytics_consumer(), name="analytics-again"))
    with recorded_statements(engine) as statements:
        relay.run_pass()
    reads = Counter(
        table
        for statement in statements
        if statement.startswith("SELECT")
        for table in ("jobs", "outputs")
        if f" FROM {table} " in statement
    )
    assert reads == {"jobs": 1, "outputs": 1}, statements
    with Session(engine) as session:
        logged = session.exec(
            select(AnalyticsEvent.type, func.count())
            .where(col(AnalyticsEvent.job_id) == job["id"])
            .group_by(col(AnalyticsEvent.type))
        ).all()
    assert dict(logged)["generation_completed"] == 2 * 12  # the first log's and this one's
