"""`GET /metrics` (`control_plane/metrics.py`), parsed as Prometheus would."""

from datetime import timedelta
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import col, select

from control_plane.metrics import first_id_since
from control_plane.models import AnalyticsEvent, Dispatch, UserTier, utcnow
from control_plane.runpod.poller import poll
from control_plane.services import users
from tests.fakes.api import RUNPOD, Api, hook, succeeded_result

MODEL = "gemini-2.5-flash-image"
PRICE = 0.039


def scrape(api: Api, headers: dict[str, str] | None = None) -> dict[tuple[str, Any], float]:
    """Every sample of `/metrics`: (name, sorted labels) → value."""
    answer = api.client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def submitted(api: Api, n: int) -> str:
    group_id = api.group()
    images = api.upload_ids(group_id, n)
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images}
    answer = api.client.post("/api/jobs/submit", json=body)
    assert answer.status_code == 201, answer.text
    api.drain()
    job_id: str = answer.json()["jobs"][0]["id"]
    return job_id


def report(api: Api, job_id: str, statuses: list[str], latency_ms: int) -> None:
    """Report the job's one dispatch: each image as `statuses` say, succeeded ones with the
    model's latency and price."""
    outputs = api.outputs(job_id)
    results: list[dict[str, Any]] = []
    for output, status in zip(outputs, statuses, strict=True):
        if status == "succeeded":
            results.append(
                {**succeeded_result(api, output), "latency_ms": latency_ms, "cost_usd": PRICE}
            )
        else:
            error = {"status": status, "provider": "offline", "model": MODEL, "error": status}
            results.append({"output_id": output.id, **error})
    with api.session() as session:
        dispatch = session.exec(select(Dispatch).where(Dispatch.job_id == job_id)).one()
    body = {"version": 2, "dispatch_id": dispatch.id, "results": results}
    assert hook(api, dispatch, {"status": "COMPLETED", "output": body}).status_code == 200
    api.drain()


def test_metrics_after_a_job_with_successes_failures_and_blocks(api: Api) -> None:
    before = scrape(api)
    webhooks = before.get(("pixelfleet_runpod_webhooks_total", (("outcome", "accepted"),)), 0)
    finished = submitted(api, 4)
    report(api, finished, ["succeeded", "succeeded", "failed", "blocked"], latency_ms=1500)
    waiting = submitted(api, 3)  # sent, never reported

    seen = scrape(api)

    def value(name: str, **labels: str) -> float:
        return seen[(name, tuple(sorted(labels.items())))]

    model = {"model": "m"}  # what the fake worker reports for its succeeded images
    assert value("pixelfleet_images_ended", status="succeeded", **model) == 2
    assert value("pixelfleet_images_ended", status="failed", model=MODEL) == 1
    assert value("pixelfleet_images_ended", status="blocked", model=MODEL) == 1
    assert value("pixelfleet_spend_usd", **model) == 2 * PRICE
    assert value("pixelfleet_spend_by_lane_usd", lane="online") == 2 * PRICE
    assert value("pixelfleet_images_unfinished", model=MODEL) == 3
    assert value("pixelfleet_dispatches_queued") == 0
    assert value("pixelfleet_dispatches_in_flight") == 1
    assert value("pixelfleet_metrics_window_seconds") == 3600

    latency = "pixelfleet_generation_latency_seconds_bucket"
    assert value(latency, le="1.0") == 0 and value(latency, le="2.0") == 2
    assert value(latency, le="+Inf") == 2
    assert value("pixelfleet_generation_latency_seconds_gsum") == 3.0
    first = "pixelfleet_time_to_first_image_seconds_bucket"
    assert value(first, le="+Inf") == 1 and value(first, le="3600.0") == 1
    assert value("pixelfleet_runpod_webhooks_total", outcome="accepted") == webhooks + 1
    assert value("pixelfleet_user_webhook_deliveries", status="pending") == 0

    # the reconciler's polls are counted by outcome
    polls = ("pixelfleet_reconcile_polls_total", (("outcome", "running"),))
    with api.session() as session:
        dispatch = session.exec(
            select(Dispatch).where(Dispatch.job_id == waiting).order_by(col(Dispatch.id))
        ).one()
    assert dispatch.runpod_job_id
    status = {"id": dispatch.runpod_job_id, "status": "IN_PROGRESS"}
    api.runpod.get(f"{RUNPOD}/status/{dispatch.runpod_job_id}").mock(
        return_value=httpx.Response(200, json=status)
    )
    api.client.portal.call(poll, api.platform, dispatch.id, dispatch.runpod_job_id)  # type: ignore[union-attr]
    assert scrape(api)[polls] == before.get(polls, 0) + 1


def test_metrics_are_for_admins(api: Api) -> None:
    with api.platform.session_scope() as session:
        user = users.add_user(session, "alice", UserTier.PAID)
        root = users.add_user(session, "root", UserTier.FREE, admin=True)
        _, user_key = users.create_key(session, user)
        _, admin_key = users.create_key(session, root)
    assert api.client.get("/metrics").status_code == 401
    refused = api.client.get("/metrics", headers={"Authorization": f"Bearer {user_key}"})
    assert refused.status_code == 403
    assert scrape(api, {"Authorization": f"Bearer {admin_key}"})


def test_the_window_starts_at_the_first_event_in_it(api: Api) -> None:
    """The window's first id is found by binary search over the log's primary key."""
    now = utcnow()
    with api.platform.session_scope() as session:
        assert first_id_since(session, now) == 1  # an empty log
        for minutes in (90, 80, 70, 50, 40, 30, 20, 10, 5):
            session.add(
                AnalyticsEvent(type="job_finished", created_at=now - timedelta(minutes=minutes))
            )
    with api.session() as session:
        ids = session.exec(select(AnalyticsEvent.id).order_by(col(AnalyticsEvent.id))).all()
        assert first_id_since(session, now - timedelta(hours=1)) == ids[3]
        assert first_id_since(session, now - timedelta(hours=2)) == ids[0]
        assert first_id_since(session, now) == (ids[-1] or 0) + 1
