"""RunPod's webhooks (and the worker's progress posts) are applied at most
`reports_at_once` at a time per API process: the rest wait for a turn before taking a thread
and a database connection, rather than queueing on one job's row lock."""

import threading
import time
from collections.abc import Callable

import httpx
import pytest
from sqlmodel import select

from control_plane.db import lock_row
from control_plane.metrics import RUNPOD_WEBHOOK_BATCHES
from control_plane.models import Dispatch, Job
from control_plane.settings import Settings
from tests.fakes.api import Api, completed_body, hook


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # one image per dispatch: a job of 3 images is 3 dispatches, 3 webhooks
    return settings.model_copy(
        update={"reports_at_once": 1, "dispatch_chunk_size": 1, "dispatch_chunk_max": 1}
    )


def _until(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def webhook_batches() -> tuple[float, float]:
    """How many batches of webhooks this process applied so far, and of how many in all."""
    samples = {sample.name: sample.value for sample in RUNPOD_WEBHOOK_BATCHES.collect()[0].samples}
    prefix = "pixelfleet_runpod_webhook_batch_size"
    return samples[f"{prefix}_count"], samples[f"{prefix}_sum"]


def test_reports_beyond_the_limit_wait_their_turn_and_are_all_applied(api: Api) -> None:
    group_id = api.group()
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p"}
    job = api.client.post(
        "/api/jobs/submit", json=body | {"images": api.upload_ids(group_id, 3)}
    ).json()["jobs"][0]
    api.drain()
    with api.session() as session:
        dispatches = list(session.exec(select(Dispatch).where(Dispatch.job_id == job["id"])))
    bodies = [completed_body(api, dispatch) for dispatch in dispatches]
    answers: list[httpx.Response] = []
    reports = api.platform.reports

    def statistics() -> tuple[int, int]:
        numbers = api.client.portal.call(reports.statistics)  # type: ignore[union-attr]
        return numbers.borrowed_tokens, api.platform.webhooks.waiting

    before = webhook_batches()
    with api.session() as holder:  # the job's row held: the first report to apply waits
        lock_row(holder, Job, job["id"])
        posts = [
            threading.Thread(target=lambda d=d, b=b: answers.append(hook(api, d, b)))
            for d, b in zip(dispatches, bodies, strict=True)
        ]
        for post in posts:
            post.start()
        # one applying (waiting for the lock), two for their turn; connections out: the
        # holder's and, once its thread has opened its session, the applying report's; those
        # waiting hold none
        pool = api.platform.engine.pool
        _until(lambda: statistics() == (1, 2) and pool.checkedout() == 2)  # type: ignore[attr-defined]
        assert pool.checkedout() == 2  # type: ignore[attr-defined]
        holder.commit()
    for post in posts:
        post.join()
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    batches, webhooks = webhook_batches()
    assert (batches - before[0], webhooks - before[1]) == (2, 3)  # the two that waited: one go
    shown = api.client.get(f"/api/jobs/{job['id']}").json()
    assert shown["status"] == "completed" and shown["progress"]["succeeded"] == 3
