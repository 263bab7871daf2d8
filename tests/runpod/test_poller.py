"""The poller (control_plane/runpod/poller.py): `/status` as the authority on quiet dispatches.
A job RunPod no longer knows (404) is a loss, retried under its own budget; a report that
cannot be applied is counted and, after a few passes, fails its dispatch."""

import httpx
import pytest
import respx
from sqlmodel import col, select

from control_plane.models import Dispatch
from control_plane.runpod.poller import poll_quiet
from tests.fakes.api import (
    RUNPOD,
    Api,
    completed_body,
    dispatch_failed_events,
    hook,
    poison_finalising,
    submit_one_dispatch,
)


def _status_route(api: Api) -> respx.Route:
    """RunPod's `/status`, to be mocked; every submitted dispatch is quiet at once, and the
    RunPod jobs of dispatches that fail for good are cancelled."""
    api.platform.settings.webhook_grace_s = 0
    api.runpod.post(url__regex=rf"{RUNPOD}/cancel/.*").mock(return_value=httpx.Response(200))
    return api.runpod.get(url__regex=rf"{RUNPOD}/status/.*")


def _poll(api: Api) -> int:
    polled: int = api.client.portal.call(poll_quiet, api.platform)  # type: ignore[union-attr]
    api.drain()  # retries are sent
    return polled


def _chain(api: Api, job_id: str) -> list[Dispatch]:
    with api.session() as session:
        return list(
            session.exec(
                select(Dispatch).where(Dispatch.job_id == job_id).order_by(col(Dispatch.created_at))
            ).all()
        )


def test_a_chunk_lost_more_often_than_max_attempts_still_succeeds(api: Api) -> None:
    """Endpoint restarts lose RunPod jobs; that is no failure of the worker's, so it spends the
    loss budget, not PIXELFLEET_DISPATCH_MAX_ATTEMPTS (2)."""
    _status_route(api).mock(return_value=httpx.Response(404, json={"error": "job not found"}))
    job_id, _ = submit_one_dispatch(api)
    assert [_poll(api) for _ in range(3)] == [1, 1, 1]
    *lost, latest = _chain(api, job_id)
    assert [(d.attempt, d.losses, d.status) for d in lost] == [(1, i, "failed") for i in range(3)]
    assert all("no longer knows" in (d.error or "") for d in lost)
    assert [event.data["lost"] for event in dispatch_failed_events(api, job_id)] == [True] * 3
    assert (latest.attempt, latest.losses, latest.status) == (1, 3, "submitted")
    assert hook(api, latest, completed_body(api, latest)).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["progress"]["succeeded"] == 3


def test_losses_beyond_the_loss_budget_fail_the_images_naming_the_losses(api: Api) -> None:
    api.platform.settings.dispatch_max_losses = 2
    _status_route(api).mock(return_value=httpx.Response(404, json={"error": "job not found"}))
    job_id, _ = submit_one_dispatch(api)
    assert [_poll(api) for _ in range(4)] == [1, 1, 1, 0]
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["progress"]["failed"] == 3
    assert all(
        image["error"].startswith("lost 3 times") and "no longer knows" in image["error"]
        for image in job["images"]
    )
    assert [event.data["lost"] for event in dispatch_failed_events(api, job_id)] == [True] * 3


def test_a_report_that_cannot_be_applied_stops_being_polled_after_n_passes(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the limit, every pass would poll and crash on the same report for ever."""
    api.platform.settings.dispatch_max_attempts = 1
    job_id, dispatch = submit_one_dispatch(api)
    status = _status_route(api).mock(
        return_value=httpx.Response(
            200, json={"id": dispatch.runpod_job_id, **completed_body(api, dispatch)}
        )
    )
    poison_finalising(monkeypatch, dispatch.id)
    assert [_poll(api) for _ in range(5)] == [1, 1, 1, 0, 0]
    assert status.call_count == 3
    [failed] = _chain(api, job_id)
    assert failed.status == "failed" and failed.finish_failures == 3
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert all("could not apply RunPod's report" in image["error"] for image in job["images"])


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"json": {"status": "COMPLETED", "delayTime": "soon"}}, "delayTime: Input should be"),
        ({"json": {"status": "IN_PROGRESS", "executionTime": 1.5}}, "executionTime: Input should"),
        ({"json": ["COMPLETED"]}, "Input should be a valid dictionary"),
        ({"text": "<html>maintenance</html>"}, "not JSON (JSONDecodeError)"),
        ({"content": b"[" * 100_000}, "not JSON (RecursionError)"),
    ],
)
def test_a_status_answer_that_cannot_be_read_fails_its_dispatch_after_n_passes(
    api: Api, answer: dict, problem: str
) -> None:
    """Counted like a report that cannot be applied; without that, every pass would poll
    and crash on it for ever."""
    api.platform.settings.dispatch_max_attempts = 1
    job_id, dispatch = submit_one_dispatch(api)
    if isinstance(answer.get("json"), dict):
        answer = {"json": {"id": dispatch.runpod_job_id, **answer["json"]}}
    status = _status_route(api).mock(return_value=httpx.Response(200, **answer))
    assert [_poll(api) for _ in range(5)] == [1, 1, 1, 0, 0]
    assert status.call_count == 3
    [failed] = _chain(api, job_id)
    assert failed.status == "failed" and failed.finish_failures == 3
    assert failed.last_polled_at is not None
    assert (failed.error or "").startswith("RunPod's /status answer is unreadable: ")
    assert problem in (failed.error or "")
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert all("/status answer is unreadable" in image["error"] for image in job["images"])


def test_a_failed_state_with_an_error_nested_too_deep_fails_its_dispatch_in_one_pass(
    api: Api,
) -> None:
    """The handler's error is JSON-decoded when it looks like the SDK's; one nested beyond
    Python's recursion limit is kept as the text it is."""
    job_id, dispatch = submit_one_dispatch(api)
    state = {"id": dispatch.runpod_job_id, "status": "FAILED", "error": '{"a":' * 100_000}
    _status_route(api).mock(return_value=httpx.Response(200, json=state))
    assert _poll(api) == 1
    failed, retry = _chain(api, job_id)
    assert failed.status == "failed" and failed.finish_failures == 0
    assert (failed.error or "").startswith('{"a":{"a":')
    assert (retry.attempt, retry.status) == (2, "submitted")
