"""RunPod's webhook (control_plane/runpod/webhook.py, routed by web/api/webhook.py): its
token, clipping what is stored, idempotence, failures and retries, partial results, reports
that cannot be applied."""

import json
import sqlite3

import httpx
import pymysql
import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from control_plane import lifecycle
from control_plane.models import Dispatch, Event, EventKind, Output, Upload
from control_plane.runpod import webhook, wire
from control_plane.settings import Settings
from shared import layout
from tests.fakes.api import Api, completed_body, hook, poison_finalising, submit_one_dispatch


def test_webhook_wrong_or_missing_token_is_401_and_changes_nothing(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api)
    assert hook(api, dispatch, completed_body(api, dispatch), token="guess").status_code == 401
    missing = api.client.post(
        "/api/webhook/runpod",
        params={"dispatch": dispatch.id},
        json={"id": "x", "status": "COMPLETED"},
    )
    assert missing.status_code == 401
    nothing = api.client.post("/api/webhook/runpod", json={"id": "x", "status": "COMPLETED"})
    assert nothing.status_code == 401
    wrong_and_junk = api.client.post(
        "/api/webhook/runpod", params={"dispatch": dispatch.id, "token": "guess"}, content=b"{"
    )
    assert wrong_and_junk.status_code == 401  # the token is checked before the body is read
    junk = hook(api, dispatch, {"id": None, "status": "COMPLETED"})
    assert junk.status_code == 422 and "id" in junk.json()["detail"]
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "processing"
    assert api.client.get("/api/webhook/runpod").json() == {"status": "ok"}


def test_webhook_with_huge_error_and_fields_is_stored_clipped(api: Api) -> None:
    """MySQL TEXT holds 64 KB and VARCHARs their length: what RunPod or a worker sends is
    clipped, never a DataError that would leave the dispatch unfinished for ever."""
    job_id, dispatch = submit_one_dispatch(api, n=2)
    body = completed_body(api, dispatch)
    first, second = body["output"]["results"]
    first["model_version"] = "v" * 300
    second.update(status="failed", error="e" * 70_000)
    assert hook(api, dispatch, body).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed"
    failed = next(image for image in job["images"] if image["status"] == "failed")
    assert len(failed["error"]) == 2_000 and failed["error"].endswith("…")

    job_id, dispatch = submit_one_dispatch(api, n=1)
    huge = hook(api, dispatch, {"status": "FAILED", "error": "x" * 70_000})
    assert huge.status_code == 200
    with api.session() as session:
        row = session.get(Dispatch, dispatch.id)
        assert row is not None and row.status == "failed" and len(row.error or "") == 2_000


def test_webhook_completed_is_idempotent(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api)
    body = completed_body(api, dispatch)
    for _ in range(3):  # RunPod's retry policy can deliver the same webhook three times
        assert hook(api, dispatch, body).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["progress"]["succeeded"] == 3
    assert all(image["attempts"] == 1 for image in job["images"])
    assert all(api.client.get(image["url"]).status_code == 200 for image in job["images"])


def test_webhook_failed_with_sdk_error_retries_then_fails_with_reason(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api)
    sdk_error = json.dumps(
        {
            "error_type": "<class 'RuntimeError'>",
            "error_message": "GPU on fire",
            "error_traceback": "Traceback ...",
            "hostname": "h",
            "worker_id": "w",
            "runpod_version": "1.12.0",
        }
    )
    assert hook(api, dispatch, {"status": "FAILED", "error": sdk_error}).status_code == 200
    api.drain()
    assert len(api.run_bodies) == 2  # retried as a second dispatch (attempt 2 of 2)
    with api.session() as session:
        retry = session.exec(
            select(Dispatch).where(Dispatch.job_id == job_id, Dispatch.attempt == 2)
        ).one()
    assert hook(api, retry, {"status": "FAILED", "error": sdk_error}).status_code == 200
    api.drain()
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["progress"]["failed"] == 3
    assert all("GPU on fire" in image["error"] for image in job["images"])
    assert len(api.run_bodies) == 2


def test_webhook_completed_without_output_is_a_failure(api: Api) -> None:
    api.platform.settings.dispatch_max_attempts = 1
    job_id, dispatch = submit_one_dispatch(api)
    assert hook(api, dispatch, {"status": "COMPLETED"}).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert "without output" in job["images"][0]["error"]


def test_webhook_for_partial_results_fails_the_silent_ones(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api)
    body = completed_body(api, dispatch)
    body["output"]["results"][0] = {
        **body["output"]["results"][0],
        "status": "blocked",
        "error": "IMAGE_SAFETY",
    }
    del body["output"]["results"][1]
    hook(api, dispatch, body)
    progress = api.client.get(f"/api/jobs/{job_id}").json()["progress"]
    assert progress == {"total": 3, "succeeded": 1, "failed": 1, "blocked": 1, "pending": 0}


# -- what a worker may say: each result is checked against the image it names -----------------


def _post_raw(api: Api, dispatch: Dispatch, body: dict) -> httpx.Response:
    """`hook` with NaN and Infinity written as Python's json writes them (httpx refuses)."""
    return api.client.post(
        "/api/webhook/runpod",
        params={"dispatch": dispatch.id, "token": dispatch.webhook_token},
        content=json.dumps({"id": dispatch.runpod_job_id, "delayTime": 5, **body}),
        headers={"content-type": "application/json"},
    )


def _images(api: Api, job_id: str) -> dict[str, dict]:
    job = api.client.get(f"/api/jobs/{job_id}")
    assert job.status_code == 200, job.text
    return {image["id"]: image for image in job.json()["images"]}


def _one_rejected(api: Api, job_id: str, output_id: str, reason: str) -> None:
    """That image failed with `reason`, every other one succeeded, and the job ended."""
    images = _images(api, job_id)
    rejected = images.pop(output_id)
    assert rejected["status"] == "failed", rejected
    assert rejected["error"] == f"worker result rejected: {reason}"
    assert rejected["url"] is None
    assert api.client.get(f"/api/outputs/{output_id}/file").status_code == 404
    assert images and all(image["status"] == "succeeded" for image in images.values())
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "completed"


def test_a_result_pointing_at_another_groups_upload_fails_that_image_alone(api: Api) -> None:
    """A worker holds a dispatch's token, not the right to show another group's files as
    its output: the upload stays where it is, served as the upload only."""
    victim_group = api.group("victim")
    victim_id = api.upload_ids(victim_group, 1)[0]
    victim = api.client.get(f"/api/uploads/{victim_id}/file").content
    job_id, dispatch = submit_one_dispatch(api)
    body = completed_body(api, dispatch)
    first = body["output"]["results"][0]
    with api.session() as session:
        upload = session.get(Upload, victim_id)
        assert upload is not None
    first["output_uri"] = api.platform.storage.uri(upload.storage_key)
    assert hook(api, dispatch, body).status_code == 200
    _one_rejected(api, job_id, first["output_id"], "output_uri is outside this image's own keys")
    assert api.client.get(f"/api/uploads/{victim_id}/file").content == victim


@pytest.mark.parametrize(
    ("field", "where", "reason"),
    [
        ("output_uri", "a neighbour's image", "output_uri is outside this image's own keys"),
        ("output_uri", "its own thumbnail", "output_uri is outside this image's own keys"),
        ("output_uri", "another job", "output_uri is outside this image's own keys"),
        ("output_uri", "outside storage", "output_uri is unusable: "),
        ("output_uri", "its own key as .bin", "output_uri's extension is not that of image/png"),
        ("thumbnail_uri", "a neighbour's image", "thumbnail_uri is outside this image's own keys"),
        ("thumbnail_uri", "its own image", "thumbnail_uri is outside this image's own keys"),
    ],
)
def test_a_result_outside_its_own_keys_fails_that_image(
    api: Api, field: str, where: str, reason: str
) -> None:
    job_id, dispatch = submit_one_dispatch(api)
    body = completed_body(api, dispatch)
    first, second, _ = body["output"]["results"]
    with api.session() as session:
        mine = session.get(Output, first["output_id"])
        assert mine is not None
    own_stem = layout.run_stem(layout.output_stem(mine.group_id, mine.job_id, mine.id), "rp-1")
    storage = api.platform.storage
    first[field] = {
        "a neighbour's image": second["output_uri"],
        "its own thumbnail": storage.uri(layout.thumbnail_key(own_stem)),
        "its own image": storage.uri(layout.output_key(own_stem, "image/png")),
        "another job": storage.uri(
            layout.output_key(layout.output_stem(mine.group_id, "job_other", mine.id), "image/png")
        ),
        "outside storage": "file:///etc/passwd",
        "its own key as .bin": storage.uri(own_stem + ".bin"),
    }[where]
    assert hook(api, dispatch, body).status_code == 200
    images = _images(api, job_id)
    assert images[first["output_id"]]["error"].startswith(f"worker result rejected: {reason}")
    assert images[first["output_id"]]["status"] == "failed"
    assert images[second["output_id"]]["status"] == "succeeded"


@pytest.mark.parametrize("content_type", ["text/html", "image/svg+xml", "application/pdf", None])
def test_a_result_that_is_not_a_png_jpeg_or_webp_fails_that_image(
    api: Api, content_type: str | None
) -> None:
    """The file route serves an output with the content type its result gave: only the
    image types browsers show as images are taken."""
    job_id, dispatch = submit_one_dispatch(api)
    body = completed_body(api, dispatch)
    first = body["output"]["results"][0]
    api.platform.storage.put_bytes(
        api.platform.storage.key_of(first["output_uri"]),
        b"<script>alert(document.cookie)</script>",
        content_type="image/png",
    )
    first["content_type"] = content_type
    assert hook(api, dispatch, body).status_code == 200
    _one_rejected(
        api, job_id, first["output_id"], f"content type {content_type!r} is not PNG, JPEG or WebP"
    )


def test_results_for_images_of_other_dispatches_are_ignored(api: Api) -> None:
    other_job_id, other = submit_one_dispatch(api, n=1)
    foreign = completed_body(api, other)["output"]["results"][0]
    job_id, dispatch = submit_one_dispatch(api, n=2)
    body = completed_body(api, dispatch)
    body["output"]["results"].insert(0, foreign)
    assert hook(api, dispatch, body).status_code == 200
    assert all(i["status"] == "succeeded" for i in _images(api, job_id).values())
    [untouched] = _images(api, other_job_id).values()
    assert untouched["status"] == "running" and untouched["url"] is None
    assert hook(api, other, completed_body(api, other)).status_code == 200
    assert api.client.get(f"/api/jobs/{other_job_id}").json()["status"] == "completed"


BAD_NUMBERS = [
    ("width", 2**31, "width is out of range (0 to 2147483647)"),
    ("height", 2**31, "height is out of range (0 to 2147483647)"),
    ("width", -1, "width is out of range (0 to 2147483647)"),
    ("bytes", 2**63, "bytes is out of range (0 to 9223372036854775807)"),
    ("latency_ms", 2**31, "latency_ms is out of range (0 to 2147483647)"),
    ("attempts", 2**31, "attempts is out of range (0 to 2147483647)"),
    ("seed", 2**63, "seed is out of range (0 to 9223372036854775807)"),
    ("sha256", "a" * 65, "sha256 is not 64 lowercase hexadecimal digits"),
    ("sha256", "<b>" * 20 + "abcd", "sha256 is not 64 lowercase hexadecimal digits"),
    ("cost_usd", float("inf"), "cost_usd is not a price (0 to 1,000,000)"),
    ("cost_usd", float("nan"), "cost_usd is not a price (0 to 1,000,000)"),
    ("cost_usd", -0.04, "cost_usd is not a price (0 to 1,000,000)"),
    (
        "usage",
        {"tokens": float("nan")},
        "usage holds a number that is not finite (NaN or Infinity)",
    ),
    (
        "usage",
        {"a": [{"b": float("inf")}]},
        "usage holds a number that is not finite (NaN or Infinity)",
    ),
    ("usage", {"tokens": 2**64}, "usage holds a number out of range"),
    ("usage", {"pad": "x" * 20_000}, "usage is over 16,000 characters"),
    (
        "width",
        "wide",
        (
            "does not match the contract: "
            "width: Input should be a valid integer, unable to parse string as an integer"
        ),
    ),
]


@pytest.mark.parametrize(("field", "value", "reason"), BAD_NUMBERS)
def test_a_result_with_values_no_column_holds_fails_that_image_not_the_request(
    api: Api, field: str, value: object, reason: str
) -> None:
    """Numbers beyond their column, non-finite floats and malformed digests were a
    DataError (a 500, and the dispatch never finished); now they fail just their image."""
    job_id, dispatch = submit_one_dispatch(api)
    body = completed_body(api, dispatch)
    first = body["output"]["results"][0]
    first[field] = value
    assert _post_raw(api, dispatch, body).status_code == 200
    _one_rejected(api, job_id, first["output_id"], reason)


def test_a_failed_result_with_values_no_column_holds_is_failed_with_the_reason(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api, n=2)
    body = completed_body(api, dispatch)
    first = body["output"]["results"][0]
    first.update(status="failed", error="quota", latency_ms=2**40, output_uri=None)
    assert _post_raw(api, dispatch, body).status_code == 200
    _one_rejected(api, job_id, first["output_id"], "latency_ms is out of range (0 to 2147483647)")


def test_dispatch_timings_no_column_holds_are_dropped(api: Api) -> None:
    """RunPod's own numbers describe the dispatch, not an image: dropped, nothing fails."""
    job_id, dispatch = submit_one_dispatch(api)
    body = {**completed_body(api, dispatch), "delayTime": 2**40, "executionTime": -3}
    assert _post_raw(api, dispatch, body).status_code == 200
    assert api.client.get(f"/api/jobs/{job_id}").json()["progress"]["succeeded"] == 3
    with api.session() as session:
        stored = session.get(Dispatch, dispatch.id)
        assert stored is not None and stored.status == "completed"
        assert (stored.delay_ms, stored.execution_ms) == (None, None)


def test_output_that_is_no_list_of_results_still_fails_the_dispatch(api: Api) -> None:
    api.platform.settings.dispatch_max_attempts = 1
    job_id, dispatch = submit_one_dispatch(api, n=1)
    body = {
        "status": "COMPLETED",
        "output": {"version": 2, "dispatch_id": dispatch.id, "results": 7},
    }
    assert hook(api, dispatch, body).status_code == 200
    [image] = _images(api, job_id).values()
    assert image["status"] == "failed"
    assert image["error"].startswith("worker output does not match the contract")


def test_a_report_that_cannot_be_applied_fails_its_dispatch_after_n_tries(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finalising that raises is answered 503 (RunPod sends again) and counted; the third
    time the dispatch fails with the clipped error and is retried like any failed dispatch,
    and every later re-send of the poisoned report gets 200."""
    job_id, dispatch = submit_one_dispatch(api)
    poison_finalising(monkeypatch, dispatch.id)
    body = completed_body(api, dispatch)
    answers = [hook(api, dispatch, body) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [503, 503, 200, 200]
    assert answers[2].json()["status"] == "failed"
    with api.session() as session:
        row = session.get(Dispatch, dispatch.id)
        assert row is not None and row.status == "failed" and row.finish_failures == 3
        assert row.error is not None and len(row.error) <= 2_000
        assert row.error.startswith("could not apply RunPod's report: DataError")
    api.drain()
    assert len(api.run_bodies) == 2  # the chunk was sent again
    with api.session() as session:
        retry = session.exec(
            select(Dispatch).where(Dispatch.job_id == job_id, Dispatch.attempt == 2)
        ).one()
    assert hook(api, retry, completed_body(api, retry)).status_code == 200
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["progress"]["succeeded"] == 3


@pytest.mark.parametrize("error", ["[" * 100_000, '{"a":' * 100_000])
def test_a_failed_state_with_an_error_nested_too_deep_is_applied(api: Api, error: str) -> None:
    """Not a RecursionError (a 500 for every re-send): the error is kept as the text it is."""
    _, dispatch = submit_one_dispatch(api)
    answer = hook(api, dispatch, {"status": "FAILED", "error": error})
    assert answer.status_code == 200 and answer.json() == {"status": "accepted"}
    with api.session() as session:
        row = session.get(Dispatch, dispatch.id)
        assert row is not None and row.status == "failed" and row.finish_failures == 0
        assert row.error is not None and row.error.startswith(error[:100])


def test_a_report_that_cannot_even_be_read_is_counted_not_a_500(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading RunPod's state into a report happens inside the finisher's safety net."""

    def unreadable(_state: wire.RunPodJobState) -> str:
        raise RuntimeError("a bug in reading RunPod's error")

    monkeypatch.setattr(wire, "describe_failure", unreadable)
    _, dispatch = submit_one_dispatch(api)
    answers = [hook(api, dispatch, {"status": "FAILED", "error": "boom"}) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [503, 503, 200]
    assert answers[2].json()["status"] == "failed"
    with api.session() as session:
        row = session.get(Dispatch, dispatch.id)
        assert row is not None and row.status == "failed" and row.finish_failures == 3
        assert row.error == (
            "could not apply RunPod's report: RuntimeError: a bug in reading RunPod's error"
        )


def _db_error(orig: Exception, invalidated: bool = False) -> sa.exc.OperationalError:
    return sa.exc.OperationalError("UPDATE outputs …", {}, orig, connection_invalidated=invalidated)


TRANSIENT = {
    "deadlock": _db_error(pymysql.err.OperationalError(1213, "Deadlock found")),
    "lock wait timeout": _db_error(pymysql.err.OperationalError(1205, "Lock wait timeout")),
    "gone away": _db_error(pymysql.err.OperationalError(2006, "MySQL server has gone away")),
    "lost connection": _db_error(pymysql.err.OperationalError(2013, "Lost connection")),
    "sqlite locked": _db_error(sqlite3.OperationalError("database is locked")),
    "invalidated": _db_error(Exception("connection reset"), invalidated=True),
}


@pytest.mark.parametrize("name", TRANSIENT)
def test_a_passing_database_error_is_answered_503_and_not_counted(
    api: Api, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A deadlock or a lost connection says nothing about the report: counting it would fail
    a dispatch with good results after a few busy moments."""
    job_id, dispatch = submit_one_dispatch(api)
    poison_finalising(monkeypatch, dispatch.id, TRANSIENT[name], times=3)
    body = completed_body(api, dispatch)
    answers = [hook(api, dispatch, body) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [503, 503, 503, 200]
    assert answers[3].json() == {"status": "accepted"}
    with api.session() as session:
        row = session.get(Dispatch, dispatch.id)
        assert row is not None and row.status == "completed" and row.finish_failures == 0
    assert api.client.get(f"/api/jobs/{job_id}").json()["progress"]["succeeded"] == 3


def test_a_permanent_error_raised_as_operational_error_is_counted(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MariaDB raises a failed CHECK constraint (4025) as an OperationalError: classified by
    its code, it is counted like any report that cannot be applied."""
    _, dispatch = submit_one_dispatch(api)
    refused = _db_error(pymysql.err.OperationalError(4025, "CONSTRAINT `c` failed"))
    poison_finalising(monkeypatch, dispatch.id, refused)
    assert hook(api, dispatch, completed_body(api, dispatch)).status_code == 503
    with api.session() as session:
        row = session.get(Dispatch, dispatch.id)
        assert row is not None and row.status == "submitted" and row.finish_failures == 1


def test_a_report_failing_while_another_one_ends_the_dispatch_is_not_answered_failed(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the failed attempt and its counting, a good report finished the dispatch:
    nothing is counted or failed, and the answer is that of a report already applied."""
    job_id, dispatch = submit_one_dispatch(api)
    body = completed_body(api, dispatch)
    good = json.dumps({"id": dispatch.runpod_job_id, **body}).encode()
    poison_finalising(monkeypatch, dispatch.id, times=1)
    note_finish_failure = lifecycle.note_finish_failure

    def after_the_good_report(
        session: Session, settings: Settings, dispatch_id: str, reason: str
    ) -> object:
        with api.session() as other:
            storage = api.platform.storage
            posts = [webhook.Post(dispatch_id, dispatch.webhook_token, good)]
            assert webhook.receive(other, settings, storage, posts) == [{"status": "accepted"}]
        return note_finish_failure(session, settings, dispatch_id, reason)

    monkeypatch.setattr(lifecycle, "note_finish_failure", after_the_good_report)
    answer = hook(api, dispatch, body)
    assert answer.status_code == 200 and answer.json()["status"] != "failed"
    with api.session() as session:
        row = session.get(Dispatch, dispatch.id)
        assert row is not None and row.status == "completed" and row.finish_failures == 0
        failed = session.exec(
            select(Event).where(
                col(Event.dispatch_id) == dispatch.id, Event.kind == EventKind.DISPATCH_FAILED
            )
        ).all()
        assert failed == []
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "completed"
