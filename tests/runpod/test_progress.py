"""The worker's progress posts (contract version 3 on; control_plane/runpod/webhook.py →
lifecycle.apply_progress): results applied image by image before the dispatch's webhook,
ignored after it, first result wins (repeats, a dispatch re-run by RunPod), the token and
body checked as the webhook's are, and a dispatch that fails at RunPod after progress."""

import httpx
from sqlmodel import col, select

from control_plane.models import Dispatch, DispatchStatus, Event, Output
from shared import layout
from shared.contract import CONTRACT_VERSION
from tests.conftest import png_bytes
from tests.fakes.api import Api, completed_body, hook, submit_one_dispatch, succeeded_result

PROGRESS = "/api/webhook/runpod/progress"


def post_progress(
    api: Api, dispatch: Dispatch, results: list[dict[str, object]], token: str | None = None
) -> httpx.Response:
    return api.client.post(
        PROGRESS,
        params={"dispatch": dispatch.id, "token": token or dispatch.webhook_token},
        json={"version": CONTRACT_VERSION, "dispatch_id": dispatch.id, "results": results},
    )


def outputs_of(api: Api, dispatch: Dispatch) -> list[Output]:
    with api.session() as session:
        return list(
            session.exec(
                select(Output)
                .where(Output.dispatch_id == dispatch.id)
                .order_by(col(Output.position))
            ).all()
        )


def output_events(api: Api, job_id: str) -> list[tuple[str, str | None]]:
    with api.session() as session:
        events = session.exec(
            select(Event).where(Event.job_id == job_id, col(Event.output_id).is_not(None))
        ).all()
    return sorted((event.kind, event.output_id) for event in events)


def progress_of(api: Api, job_id: str) -> dict[str, int]:
    return api.client.get(f"/api/jobs/{job_id}").json()["progress"]


def test_the_sender_gives_the_worker_its_progress_url(api: Api) -> None:
    _, dispatch = submit_one_dispatch(api, n=1)
    sent = api.run_bodies[0]["input"]
    assert sent["version"] == 4 and sent["task"] == "generate"
    url = httpx.URL(sent["progress_url"])
    assert url.path == PROGRESS
    assert dict(url.params) == {"dispatch": dispatch.id, "token": dispatch.webhook_token}


def test_progress_moves_the_job_image_by_image_before_the_webhook(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api, n=3)
    first, second, third = outputs_of(api, dispatch)
    answer = post_progress(api, dispatch, [succeeded_result(api, first)])
    assert answer.status_code == 200 and answer.json() == {"status": "accepted"}
    assert progress_of(api, job_id) == {
        "total": 3,
        "succeeded": 1,
        "failed": 0,
        "blocked": 0,
        "pending": 2,
    }
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "processing"
    shown = {image["id"]: image for image in job["images"]}
    assert shown[first.id]["status"] == "succeeded"
    assert api.client.get(shown[first.id]["url"]).status_code == 200
    blocked = {**succeeded_result(api, second), "status": "blocked", "error": "IMAGE_SAFETY"}
    assert post_progress(api, dispatch, [blocked]).status_code == 200
    assert progress_of(api, job_id)["blocked"] == 1
    with api.session() as session:
        assert session.get(Dispatch, dispatch.id).status == DispatchStatus.SUBMITTED  # type: ignore[union-attr]

    # The webhook carries every result: only the image still unfinished is applied from it.
    assert hook(api, dispatch, completed_body(api, dispatch)).status_code == 200
    assert progress_of(api, job_id) == {
        "total": 3,
        "succeeded": 2,
        "failed": 0,
        "blocked": 1,
        "pending": 0,
    }
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "completed"
    assert output_events(api, job_id) == sorted(
        [
            ("output_succeeded", first.id),
            ("output_blocked", second.id),
            ("output_succeeded", third.id),
        ]
    )


def test_progress_after_the_webhook_is_ignored(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api, n=2)
    first, _ = outputs_of(api, dispatch)
    assert hook(api, dispatch, completed_body(api, dispatch)).status_code == 200
    before = {output.id: output.storage_key for output in outputs_of(api, dispatch)}
    late = {**succeeded_result(api, first), "status": "failed", "error": "late"}
    answer = post_progress(api, dispatch, [late])
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    assert {output.id: output.storage_key for output in outputs_of(api, dispatch)} == before
    assert progress_of(api, job_id)["succeeded"] == 2
    assert len(output_events(api, job_id)) == 2


def test_progress_before_runpods_job_is_recorded_is_ignored(api: Api) -> None:
    """A dispatch still `submitting` may be sent again (a stale claim): its images must stay
    unfinished for that send, so progress waits for the RunPod job to be recorded."""
    job_id, dispatch = submit_one_dispatch(api, n=2)
    first, _ = outputs_of(api, dispatch)
    with api.session() as session:
        row = session.get(Dispatch, dispatch.id)
        assert row is not None
        row.status = DispatchStatus.SUBMITTING
        session.add(row)
        session.commit()
    answer = post_progress(api, dispatch, [succeeded_result(api, first)])
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    assert progress_of(api, job_id)["pending"] == 2


def test_repeated_and_re_run_progress_keeps_the_first_result(api: Api) -> None:
    """RunPod may run one dispatch twice: both runs post progress for the same images, each
    with files of its own (`layout.run_stem`); the first result of each image wins."""
    job_id, dispatch = submit_one_dispatch(api, n=2)
    first, second = outputs_of(api, dispatch)
    result = succeeded_result(api, first)
    for _ in range(2):  # a post repeated after a lost answer
        assert post_progress(api, dispatch, [result]).status_code == 200
    stem = layout.run_stem(layout.output_stem(first.group_id, first.job_id, first.id), "rp-2")
    key = layout.output_key(stem, "image/png")
    stored = api.platform.storage.put_bytes(key, png_bytes(), content_type="image/png")
    other_run = {
        **result,
        "output_uri": api.platform.storage.uri(key),
        "sha256": stored.sha256,
        "bytes": stored.size,
    }
    assert post_progress(api, dispatch, [other_run, succeeded_result(api, second)]).is_success
    kept = {output.id: output for output in outputs_of(api, dispatch)}
    assert api.platform.storage.uri(kept[first.id].storage_key or "") == result["output_uri"]
    assert progress_of(api, job_id)["succeeded"] == 2
    assert output_events(api, job_id) == sorted(
        [("output_succeeded", first.id), ("output_succeeded", second.id)]
    )
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "completed"
    with api.session() as session:  # RunPod's report still ends the dispatch
        assert session.get(Dispatch, dispatch.id).status == DispatchStatus.SUBMITTED  # type: ignore[union-attr]
    assert hook(api, dispatch, completed_body(api, dispatch)).status_code == 200
    with api.session() as session:
        assert session.get(Dispatch, dispatch.id).status == DispatchStatus.COMPLETED  # type: ignore[union-attr]


def test_progress_of_a_version_3_worker_is_still_applied(api: Api) -> None:
    """Contract 4 changed no field of a progress report: a worker not yet updated still
    reports, as the control plane reads its outputs of versions 1 to 3."""
    job_id, dispatch = submit_one_dispatch(api, n=2)
    first, _ = outputs_of(api, dispatch)
    answer = api.client.post(
        PROGRESS,
        params={"dispatch": dispatch.id, "token": dispatch.webhook_token},
        json={"version": 3, "dispatch_id": dispatch.id, "results": [succeeded_result(api, first)]},
    )
    assert answer.status_code == 200 and answer.json() == {"status": "accepted"}
    assert progress_of(api, job_id)["succeeded"] == 1


def test_progress_with_a_wrong_token_or_a_bad_body_is_refused_and_changes_nothing(
    api: Api,
) -> None:
    job_id, dispatch = submit_one_dispatch(api, n=2)
    first, _ = outputs_of(api, dispatch)
    good = [succeeded_result(api, first)]
    assert post_progress(api, dispatch, good, token="guess").status_code == 401
    unknown = api.client.post(
        PROGRESS, params={"dispatch": "dsp_nope", "token": dispatch.webhook_token}, json={}
    )
    assert unknown.status_code == 401  # as the webhook: no telling which dispatches exist
    junk = api.client.post(
        PROGRESS, params={"dispatch": dispatch.id, "token": "guess"}, content=b"{"
    )
    assert junk.status_code == 401  # the token is checked before the body is read
    params = {"dispatch": dispatch.id, "token": dispatch.webhook_token}
    not_json = api.client.post(PROGRESS, params=params, content=b"{")
    assert not_json.status_code == 422
    empty = post_progress(api, dispatch, [])
    assert empty.status_code == 422 and "results" in empty.json()["detail"]
    old = api.client.post(
        PROGRESS, params=params, json={"version": 2, "dispatch_id": dispatch.id, "results": good}
    )
    assert old.status_code == 422
    elsewhere = api.client.post(
        PROGRESS,
        params=params,
        json={"version": CONTRACT_VERSION, "dispatch_id": "dsp_other", "results": good},
    )
    assert elsewhere.status_code == 422 and "dsp_other" in elsewhere.json()["detail"]
    assert progress_of(api, job_id)["pending"] == 2
    assert output_events(api, job_id) == []


def test_a_dispatch_failing_at_runpod_after_progress_keeps_its_images_and_retries_the_rest(
    api: Api,
) -> None:
    job_id, dispatch = submit_one_dispatch(api, n=3)
    first, second, third = outputs_of(api, dispatch)
    assert post_progress(api, dispatch, [succeeded_result(api, first)]).status_code == 200
    assert hook(api, dispatch, {"status": "TIMED_OUT"}).status_code == 200
    api.drain()
    assert len(api.run_bodies) == 2
    retried = [item["output_id"] for item in api.run_bodies[1]["input"]["items"]]
    assert retried == [second.id, third.id]
    assert progress_of(api, job_id)["succeeded"] == 1

    # All of a dispatch's images ended by progress, then it fails: nothing is left to retry.
    job_id, dispatch = submit_one_dispatch(api, n=1)
    [only] = outputs_of(api, dispatch)
    assert post_progress(api, dispatch, [succeeded_result(api, only)]).status_code == 200
    sent = len(api.run_bodies)
    assert hook(api, dispatch, {"status": "FAILED", "error": "worker lost"}).status_code == 200
    api.drain()
    assert len(api.run_bodies) == sent
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "completed"
