"""Structured logs (`PIXELFLEET_LOG_FORMAT=json`): one line per request
(`control_plane/web/requestlog.py`) and per dispatch transition (`control_plane/lifecycle.py`),
with their ids and without secrets (API keys, webhook tokens)."""

import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest

from control_plane.models import UserTier
from control_plane.services import users
from shared.logs import log_handler
from tests.fakes.api import Api, completed_body, submit_one_dispatch

Lines = Callable[[], list[dict]]


def _capture(log_format: str) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = log_handler(["rp-key"], log_format, stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """What a JSON handler on the root logger writes during the test."""
    yield from _capture("json")


@pytest.fixture
def text_written() -> Iterator[io.StringIO]:
    yield from _capture("text")


def lines_of(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def requests_to(lines: list[dict], path: str) -> list[dict]:
    return [
        line for line in lines if line["logger"] == "control_plane.access" and line["path"] == path
    ]


def test_a_request_with_a_key_is_one_line_with_its_ids(api: Api, written: io.StringIO) -> None:
    with api.platform.session_scope() as session:
        alice = users.add_user(session, "alice", UserTier.FREE)
        _, secret = users.create_key(session, alice)
        alice_id = alice.id
    headers = {"Authorization": f"Bearer {secret}", "X-Request-Id": "trace-42"}
    answer = api.client.get("/api/jobs", params={"limit": 5}, headers=headers)
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "trace-42"
    made_up = api.client.get("/api/jobs", headers={**headers, "X-Request-Id": "no spaces"})
    assert len(made_up.headers["x-request-id"]) == 32  # not an id: one is made
    refused = api.client.get("/api/jobs", headers={"Authorization": "Bearer pf_wrong-key-1234"})
    assert refused.status_code == 401

    first, second, third = requests_to(lines_of(written), "/api/jobs")
    assert first["method"] == "GET" and first["status"] == 200 and first["query"] == "limit=5"
    assert first["request_id"] == "trace-42" and first["user_id"] == alice_id
    assert isinstance(first["duration_ms"], float) and first["level"] == "INFO"
    assert second["request_id"] == made_up.headers["x-request-id"]
    assert third["status"] == 401 and third["user_id"] is None
    assert secret not in written.getvalue() and "pf_wrong-key-1234" not in written.getvalue()


def test_a_runpod_webhook_logs_its_transitions_without_its_token(
    api: Api, written: io.StringIO
) -> None:
    job_id, dispatch = submit_one_dispatch(api)
    answer = api.client.post(
        "/api/webhook/runpod",
        params={"dispatch": dispatch.id, "token": dispatch.webhook_token},
        json={"id": dispatch.runpod_job_id, **completed_body(api, dispatch)},
        headers={"X-Request-Id": "hook-1"},
    )
    assert answer.status_code == 200, answer.text
    api.drain()
    lines = lines_of(written)
    assert dispatch.webhook_token not in written.getvalue()
    assert "rp-key" not in written.getvalue()  # the RunPod key httpx's log would show

    (hook,) = requests_to(lines, "/api/webhook/runpod")
    assert hook["status"] == 200 and hook["request_id"] == "hook-1"
    assert hook["query"] == f"dispatch={dispatch.id}&token=***"
    moves = [
        (line["from_status"], line["to_status"], line.get("request_id"))
        for line in lines
        if line.get("dispatch_id") == dispatch.id and "to_status" in line
    ]
    assert moves == [
        (None, "pending", moves[0][2]),  # written while answering the submission
        ("pending", "submitting", None),  # the sender, in the background
        ("submitting", "submitted", None),
        ("submitted", "completed", "hook-1"),  # while answering the webhook
    ]
    assert moves[0][2] is not None
    assert all(line["job_id"] == job_id for line in lines if line.get("dispatch_id"))


def test_text_lines_mask_the_token_too(api: Api, text_written: io.StringIO) -> None:
    _, dispatch = submit_one_dispatch(api)
    api.client.post(
        "/api/webhook/runpod",
        params={"dispatch": dispatch.id, "token": dispatch.webhook_token},
        json={"id": dispatch.runpod_job_id, "status": "IN_PROGRESS"},
    )
    text = text_written.getvalue()
    assert dispatch.webhook_token not in text
    assert any(
        "control_plane.access" in line and f'dispatch={dispatch.id}&token=***" 200' in line
        for line in text.splitlines()
    ), text
