"""Fair priority queueing (control_plane/queueing.py) over the real sender and database, with
RunPod's `/run` mocked: paid users first, users taking turns, the in-flight caps, the `/run`
pacing, per-user submission limits (429) and the queue view (`GET /api/queue`,
`queue_position`).

The 20,000-image job is written by `lifecycle.add_job` directly (its 20,000 output rows in
one transaction), not through the API: 20,000 uploads or import rows would take minutes per
database without changing what the sender sees."""

import asyncio
import time
from collections import Counter

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import col, func, select

from control_plane import lifecycle, queueing
from control_plane.models import Dispatch, Job, JobMode, Output, UserTier, utcnow
from control_plane.runpod.rate import TokenBucket
from control_plane.runpod.sender import window
from control_plane.services import users
from shared.ids import new_id
from tests.conftest import recorded_statements
from tests.fakes.api import Api, completed_body, hook

BIG_JOB_IMAGES = 20_000
Headers = dict[str, str]


def make_user(api: Api, name: str, tier: UserTier) -> Headers:
    with api.platform.session_scope() as session:
        user = users.add_user(session, name, tier)
        _, secret = users.create_key(session, user)
    return {"Authorization": f"Bearer {secret}"}


def group_of(api: Api, headers: Headers) -> str:
    response = api.client.post("/api/groups", json={"name": "mine"}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def submit_set(api: Api, headers: Headers, group_id: str, images: int = 4) -> httpx.Response:
    """A text-to-image set of `images` (one dispatch)."""
    return api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"prompt": "a lighthouse at dusk"}],
            "config": {"total_images": images, "images_per_set": images},
        },
        headers=headers,
    )


def set_job(api: Api, headers: Headers) -> str:
    response = submit_set(api, headers, group_of(api, headers))
    assert response.status_code == 201, response.text
    return response.json()["jobs"][0]["id"]


def big_job(api: Api, group_id: str, images: int = BIG_JOB_IMAGES) -> str:
    """A text-to-image job of `images` in dispatches of 16, written in one transaction (its
    commit wakes the sender, as a submission's does)."""
    job = Job(group_id=group_id, batch_id=new_id("bat"), mode=JobMode.IMPORT, prompt="big")
    outputs = [_output(job.id, group_id, position) for position in range(images)]
    with api.platform.session_scope() as session:
        lifecycle.add_job(session, job, outputs, chunk_size=16)
    return job.id


def _output(job_id: str, group_id: str, position: int) -> Output:
    """An output row made without pydantic's validation (20,000 validated models take
    seconds; these are the same rows)."""
    output: Output = sa.inspect(Output).class_manager.new_instance()
    values = {
        "id": new_id("out"),
        "job_id": job_id,
        "group_id": group_id,
        "position": position,
        "status": "pending",
        "kind": "image",
        "prompt": f"prompt {position}",
        "reference_ids": [],
        "seed": position,
        "params": {"model": "gemini-2.5-flash-image"},
        "attempts": 0,
    }
    for name, value in values.items():
        setattr(output, name, value)
    return output


def sent_jobs(api: Api) -> list[str]:
    """The job of each `/run` call, in the order they were made."""
    return [body["input"]["job_id"] for body in api.run_bodies]


def in_flight(api: Api) -> Counter[str | None]:
    """Dispatches claimed or submitted, per user, from the database."""
    with api.session() as session:
        rows = session.exec(
            select(Job.user_id, func.count())
            .join(Dispatch, col(Dispatch.job_id) == col(Job.id))
            .where(col(Dispatch.status).in_(("submitting", "submitted")))
            .group_by(col(Job.user_id))
        ).all()
    return Counter(dict(rows))


def complete_one(api: Api, job_id: str) -> None:
    """Report one submitted dispatch of `job_id` completed (RunPod's webhook)."""
    with api.session() as session:
        dispatch = session.exec(
            select(Dispatch)
            .where(Dispatch.job_id == job_id, Dispatch.status == "submitted")
            .order_by(col(Dispatch.submitted_at))
            .limit(1)
        ).one()
    assert hook(api, dispatch, completed_body(api, dispatch)).status_code == 200
    api.drain()


def user_id_of(api: Api, name: str) -> str:
    with api.session() as session:
        return users.find_user(session, name).id


def test_a_paid_set_then_a_second_free_users_set_go_before_a_free_20000_image_job(
    api: Api,
) -> None:
    """The endpoint holds 8 dispatches: the free 20,000-image job fills it; then a paid user's
    set and a second free user's set are submitted. As room frees, the paid set goes first,
    the second free user's next (they hold nothing at RunPod), then the big job again."""
    api.platform.settings.max_inflight_dispatches = 8
    free, paid, other = (
        make_user(api, "free", UserTier.FREE),
        make_user(api, "paid", UserTier.PAID),
        make_user(api, "other", UserTier.FREE),
    )
    big = big_job(api, group_of(api, free))
    api.drain()
    assert sent_jobs(api) == [big] * 8
    paid_set, other_set = set_job(api, paid), set_job(api, other)
    api.drain()
    assert len(api.run_bodies) == 8  # the endpoint is full: they wait

    for _ in range(3):
        complete_one(api, big)
        assert sum(in_flight(api).values()) == 8
    assert sent_jobs(api)[8:] == [paid_set, other_set, big]
    job = api.client.get(f"/api/jobs/{big}", headers=free).json()
    assert job["queue_position"] == 0  # nothing else waits
    assert len(api.outputs(big)) == BIG_JOB_IMAGES


def test_a_set_submitted_while_a_big_job_is_sent_goes_in_the_next_round(api: Api) -> None:
    """No cap on the endpoint but 220 in flight: while the sender's first round (200
    dispatches) of the big free job is under way, a paid and a second free user submit a set
    each; both are sent in the next round, not after the big job's
    1,250 dispatches."""
    from control_plane.runpod import sender

    api.platform.settings.max_inflight_dispatches = 220
    api.platform.run_bucket = TokenBucket(0)
    free, paid, other = (
        make_user(api, "free", UserTier.FREE),
        make_user(api, "paid", UserTier.PAID),
        make_user(api, "other", UserTier.FREE),
    )
    groups = {name: group_of(api, h) for name, h in (("paid", paid), ("other", other))}
    answer = api.run_route.side_effect
    made: dict[str, str] = {}

    def run(request: httpx.Request) -> httpx.Response:
        if not made:  # the first /run of the big job: the two sets arrive now
            made["paid"] = big_job(api, groups["paid"], images=4)
            made["other"] = big_job(api, groups["other"], images=4)
        return answer(request)  # type: ignore[misc,operator]

    api.run_route.side_effect = run
    big = big_job(api, group_of(api, free))
    api.drain()
    order = sent_jobs(api)
    assert len(order) == 220
    assert order[: sender.BATCH] == [big] * sender.BATCH
    # the next round is the last 20 sends (the cap), planned with both sets first; its sends
    # run 8 at a time, so the order they are recorded in within the round may vary
    next_round = order[sender.BATCH :]
    assert made["paid"] in next_round and made["other"] in next_round


def test_per_user_caps_by_tier_and_waiting_work_goes_out_when_a_dispatch_ends(api: Api) -> None:
    settings = api.platform.settings
    settings.max_inflight_per_user_free, settings.max_inflight_per_user_paid = 2, 3
    free, paid = make_user(api, "free", UserTier.FREE), make_user(api, "paid", UserTier.PAID)
    big = big_job(api, group_of(api, free), images=16 * 5)
    paid_job = big_job(api, group_of(api, paid), images=16 * 5)
    api.drain()
    counts = in_flight(api)
    assert counts == {user_id_of(api, "free"): 2, user_id_of(api, "paid"): 3}
    assert Counter(sent_jobs(api)) == {big: 2, paid_job: 3}
    complete_one(api, big)  # the free user's room: their next goes, nobody else's
    assert Counter(sent_jobs(api)) == {big: 3, paid_job: 3}
    assert in_flight(api) == counts
    complete_one(api, paid_job)
    assert Counter(sent_jobs(api)) == {big: 3, paid_job: 4}


def test_a_cancelled_job_makes_room_for_waiting_work(api: Api) -> None:
    api.platform.settings.max_inflight_dispatches = 2
    api.runpod.post(url__regex=r".*/cancel/.*").mock(return_value=httpx.Response(200, json={}))
    free, other = make_user(api, "free", UserTier.FREE), make_user(api, "other", UserTier.FREE)
    big = big_job(api, group_of(api, free), images=64)
    api.drain()
    waiting = set_job(api, other)
    api.drain()
    assert sent_jobs(api) == [big, big]
    assert api.client.post(f"/api/jobs/{big}/cancel", headers=free).status_code == 200
    api.drain()
    assert sent_jobs(api) == [big, big, waiting]


def test_run_calls_are_paced_by_the_token_bucket(api: Api) -> None:
    api.platform.run_bucket = TokenBucket(20, burst=1)
    group_id = group_of(api, {})
    started = time.monotonic()
    big_job(api, group_id, images=16 * 6)
    api.drain()
    assert len(api.run_bodies) == 6
    assert time.monotonic() - started >= 5 / 20 * 0.9


def test_the_token_bucket_lets_a_burst_through_then_paces() -> None:
    async def timings() -> list[float]:
        bucket, stamps = TokenBucket(50, burst=3), []
        start = time.monotonic()
        for _ in range(8):
            await bucket.take()
            stamps.append(time.monotonic() - start)
        return stamps

    stamps = asyncio.run(timings())
    assert stamps[2] < 0.01  # the burst
    assert stamps[-1] >= 5 / 50 * 0.9  # then 50 a second
    assert TokenBucket(0).rate_per_s == 0


def test_the_token_bucket_never_lets_more_through_than_its_burst_and_rate() -> None:
    """In any span of t seconds, at most burst + rate * t calls (how the defaults keep under
    RunPod's 1,000 `/run` per 10 s): a slow machine only spaces them more."""

    async def timings() -> list[float]:
        bucket, stamps = TokenBucket(40, burst=4), []
        for _ in range(24):
            await bucket.take()
            stamps.append(time.monotonic())
        return stamps

    stamps = asyncio.run(timings())
    for first, start in enumerate(stamps):
        for last in range(first, len(stamps)):
            allowed = 4 + 40 * (stamps[last] - start) + 1e-6
            assert last - first + 1 <= allowed + 1  # +1: stamps are taken a little after each call


@pytest.mark.parametrize("tier", [UserTier.FREE, UserTier.PAID])
def test_submissions_over_the_per_minute_limit_get_429_with_retry_after(
    api: Api, tier: UserTier
) -> None:
    settings = api.platform.settings
    settings.submit_rate_per_min_free, settings.submit_rate_per_min_paid = 2, 3
    limit = 2 if tier == UserTier.FREE else 3
    headers = make_user(api, "someone", tier)
    group_id = group_of(api, headers)
    for _ in range(limit):
        assert submit_set(api, headers, group_id).status_code == 201
    refused = submit_set(api, headers, group_id)
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "submissions a minute" in refused.json()["detail"]
    with api.session() as session:  # nothing written
        assert session.exec(select(func.count()).select_from(Job)).one() == limit
    # another user is not held back, nor the admin password / local user
    other = make_user(api, "other", tier)
    assert submit_set(api, other, group_of(api, other)).status_code == 201


def test_every_job_making_route_is_limited(api: Api) -> None:
    api.platform.settings.submit_rate_per_min_free = 1
    headers = make_user(api, "someone", UserTier.FREE)
    group_id = group_of(api, headers)
    job_id = submit_set(api, headers, group_id).json()["jobs"][0]["id"]
    routes = [
        ("/api/jobs/submit", {"json": {}}),
        ("/api/jobs/import", {"files": {"file": ("a.csv", b"prompt\na\n")}}),
        (f"/api/jobs/{job_id}/retry", {}),
        (f"/api/jobs/{job_id}/rerun", {}),
        (f"/api/outputs/{api.outputs(job_id)[0].id}/variations", {"json": {}}),
        (f"/api/presets/{new_id('pre')}/examples", {"json": {}}),
        (f"/api/characters/{new_id('chr')}/packs", {"json": {}}),
        ("/api/personas", {"json": {}}),
        (f"/groups/{group_id}/submit", {"data": {}}),  # the web UI's forms
        (f"/jobs/{job_id}/retry", {}),
        (f"/jobs/{job_id}/rerun", {}),
        (f"/outputs/{api.outputs(job_id)[0].id}/variations", {}),
    ]
    for path, body in routes:
        answer = api.client.post(path, headers=headers, **body)  # type: ignore[arg-type]
        assert answer.status_code == 429, (path, answer.text)


def test_the_queue_view_for_an_admin_and_for_a_user(api: Api) -> None:
    api.platform.settings.max_inflight_dispatches = 4
    api.platform.settings.max_inflight_per_user_free = 3
    free, paid = make_user(api, "free", UserTier.FREE), make_user(api, "paid", UserTier.PAID)
    with api.platform.session_scope() as session:
        _, admin_key = users.create_key(
            session, users.add_user(session, "boss", UserTier.PAID, admin=True)
        )
    admin = {"Authorization": f"Bearer {admin_key}"}
    big = big_job(api, group_of(api, free), images=16 * 10)
    api.drain()  # 3 in flight (the free cap), 7 queued
    paid_job = set_job(api, paid)  # 1 in flight: the endpoint is full
    second = big_job(api, group_of(api, paid), images=16 * 2)  # 2 queued, paid
    api.drain()

    everything = api.client.get("/api/queue", headers=admin).json()
    assert everything["caps"] == {
        "max_inflight_dispatches": 4,
        "max_inflight_per_user": {"free": 3, "paid": 0},
        "run_rate_per_s": 90.0,
    }
    by_user = {row["name"]: row for row in everything["users"]}
    assert {key: by_user["free"][key] for key in ("tier", "queued", "in_flight")} == {
        "tier": "free",
        "queued": 7,
        "in_flight": 3,
    }
    assert (by_user["paid"]["queued"], by_user["paid"]["in_flight"]) == (2, 1)
    assert (everything["queued"], everything["in_flight"]) == (9, 4)
    positions = {row["job_id"]: row["queue_position"] for row in everything["jobs"]}
    assert positions == {second: 0, big: 2, paid_job: None}

    mine = api.client.get("/api/queue", headers=free).json()
    assert [row["name"] for row in mine["users"]] == ["free"]
    assert [row["job_id"] for row in mine["jobs"]] == [big]
    assert (mine["queued"], mine["in_flight"]) == (7, 3)
    assert mine["jobs"][0]["queue_position"] == 2  # the paid user's two go first

    assert api.client.get(f"/api/jobs/{big}", headers=free).json()["queue_position"] == 2
    assert api.client.get(f"/api/jobs/{second}", headers=paid).json()["queue_position"] == 0
    assert api.client.get(f"/api/jobs/{paid_job}", headers=paid).json()["queue_position"] is None
    listed = api.client.get("/api/jobs", headers=admin).json()["data"]
    assert {job["id"]: job["queue_position"] for job in listed} == {
        second: 0,
        paid_job: None,
        big: 2,
    }


def test_positions_follow_the_order_the_sender_sends_in(api: Api) -> None:
    """`queue_position` predicts the sends: with the endpoint full (of a fourth user's one
    dispatch) and each dispatch ending before the next is sent, every job's position equals
    the number of dispatches the sender then sends before it."""
    api.platform.settings.max_inflight_dispatches = 1
    free, other, paid, filler = (
        make_user(api, "free", UserTier.FREE),
        make_user(api, "other", UserTier.FREE),
        make_user(api, "paid", UserTier.PAID),
        make_user(api, "filler", UserTier.PAID),
    )
    full = big_job(api, group_of(api, filler), images=16)
    api.drain()
    jobs = [
        big_job(api, group_of(api, free), images=16 * 3),
        big_job(api, group_of(api, other), images=16 * 2),
        big_job(api, group_of(api, paid), images=16 * 2),
    ]
    api.drain()
    assert sent_jobs(api) == [full]
    with api.session() as session:
        rows = session.exec(select(Job).where(col(Job.id).in_(jobs))).all()
        predicted = queueing.job_positions(session, window(api.platform), rows)
    assert sorted(predicted.values()) == [0, 2, 3]
    while len(api.run_bodies) < 8:
        complete_one(api, sent_jobs(api)[-1])
    order = sent_jobs(api)[1:]
    assert [order.index(job_id) for job_id in jobs] == [predicted[job_id] for job_id in jobs]


def test_a_pass_with_nothing_queued_asks_the_database_once(api: Api) -> None:
    """Every ended dispatch wakes the sender: when nothing waits, its plan is one query, not
    the counts of every user's dispatches in flight."""
    set_job(api, make_user(api, "busy", UserTier.FREE))
    api.drain()  # its dispatch sent: in flight
    platform = api.platform
    with recorded_statements(platform.engine) as statements, platform.session() as session:
        planned = queueing.plan(session, platform.settings, window(platform), utcnow(), 10)
    assert planned == []
    assert len([s for s in statements if s.upper().startswith("SELECT")]) == 1
