"""What the control plane accepts from a worker about one image (control_plane/results.py):
text no database column can hold fails that image alone, whichever way it arrives."""

import json

import httpx
import pytest
from sqlmodel import select

from control_plane.models import Dispatch, Output
from control_plane.runpod.poller import reconcile_once
from tests.fakes.api import RUNPOD, Api, hook, submit_one_dispatch, succeeded_result

LONE_SURROGATE = "\ud800"  # valid in JSON ("\\ud800"), never in UTF-8


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("error", f"bad {LONE_SURROGATE}", "error is not valid text"),
        ("model_version", LONE_SURROGATE, "model_version is not valid text"),
        ("provider", LONE_SURROGATE, "provider is not valid text"),
        ("usage", {"note": LONE_SURROGATE}, "usage holds text that is not valid UTF-8"),
        ("usage", {LONE_SURROGATE: 1}, "usage holds text that is not valid UTF-8"),
    ],
)
def test_text_no_column_holds_fails_only_its_image(
    api: Api, field: str, value: object, reason: str
) -> None:
    """`/status` answers are read with Python's JSON parser, which keeps lone surrogates;
    SQLite cannot encode them and MariaDB's JSON columns refuse them, which used to sink the
    whole dispatch (every image) after its finalisation failed three times."""
    api.platform.settings.webhook_grace_s = 0
    job_id, dispatch = submit_one_dispatch(api)
    with api.session() as session:
        outputs = session.exec(select(Output).where(Output.dispatch_id == dispatch.id)).all()
    results = [succeeded_result(api, output) for output in outputs]
    results[0][field] = value
    state = {
        "id": dispatch.runpod_job_id,
        "status": "COMPLETED",
        "output": {"version": 2, "dispatch_id": dispatch.id, "results": results},
    }
    api.runpod.get(f"{RUNPOD}/status/{dispatch.runpod_job_id}").mock(
        return_value=httpx.Response(200, content=json.dumps(state).encode())
    )
    api.client.portal.call(reconcile_once, api.platform)  # type: ignore[union-attr]
    job = api.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed", job
    assert job["progress"]["succeeded"] == len(results) - 1
    errors = {image["id"]: image["error"] for image in job["images"]}
    assert errors[results[0]["output_id"]] == f"worker result rejected: {reason}"


# Text tasks ---------------------------------------------------------------------------------
PERSONA = {
    "name": "Ana Ruiz",
    "age": 30,
    "gender": "female",
    "ethnicity": "Hispanic",
    "bio": "b",
    "appearance": "a",
    "style": "s",
    "tags": ["t"],
}


def _report_text_task(api: Api, **fields: object) -> Output:
    """A persona's data task reported with `fields` over a succeeded answer; its output after."""
    api.platform.settings.webhook_grace_s = 0
    group_id = api.group()
    created = api.client.post("/api/personas", json={"group_id": group_id, "count": 1}).json()
    job_id = created["personas"][0]["data_job_id"]
    api.drain()
    with api.session() as session:
        output = session.exec(select(Output).where(Output.job_id == job_id)).one()
        dispatch = session.get(Dispatch, output.dispatch_id)
    assert dispatch is not None
    result = {
        "output_id": output.id,
        "status": "succeeded",
        "provider": "offline",
        "model": "gemini-2.5-flash",
        "text": json.dumps(PERSONA),
        **fields,
    }
    body = {"version": 2, "dispatch_id": dispatch.id, "results": [result]}
    state = {"id": dispatch.runpod_job_id, "status": "COMPLETED", "output": body}
    api.runpod.get(f"{RUNPOD}/status/{dispatch.runpod_job_id}").mock(
        return_value=httpx.Response(200, content=json.dumps(state).encode())
    )  # read by Python's JSON parser, which keeps lone surrogates (the webhook's refuses them)
    api.client.portal.call(reconcile_once, api.platform)  # type: ignore[union-attr]
    with api.session() as session:
        stored = session.get(Output, output.id)
    assert stored is not None
    return stored


def test_a_text_answer_is_stored_as_the_outputs_text(api: Api) -> None:
    stored = _report_text_task(api)
    assert stored.status == "succeeded" and stored.kind == "text"
    assert json.loads(stored.text or "") == PERSONA
    assert stored.storage_key is None and stored.content_type is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"text": f"{{{LONE_SURROGATE}"}, "text is not valid text"),
        ({"text": json.dumps({**PERSONA, "bio": "x" * 70_000})}, "text is over 65,536 bytes"),
        ({"text": "Sure! {"}, "text is not valid JSON: Expecting value"),
        (
            {"text": json.dumps({**PERSONA, "age": float("nan")})},
            "text is not valid JSON: NaN is not a JSON number",
        ),
        ({"text": json.dumps([PERSONA])}, "text is not a JSON object"),
        (
            {"text": json.dumps({k: v for k, v in PERSONA.items() if k not in ("bio", "age")})},
            "text lacks 2 required key(s) of the response schema: age, bio",
        ),
        ({"text": '{"bio": "\\ud800"}'}, "text holds text that is not valid UTF-8"),
        ({"text": None}, "a succeeded text task has no text"),
        ({"output_uri": "local://x.png"}, "output_uri is for images; this output is a text task"),
    ],
)
def test_a_text_answer_that_cannot_be_used_fails_its_task_with_why(
    api: Api, fields: dict[str, object], reason: str
) -> None:
    stored = _report_text_task(api, **fields)
    assert stored.status == "failed" and stored.text is None
    assert stored.error is not None and stored.error.startswith(f"worker result rejected: {reason}")


def test_an_image_result_carrying_text_is_refused(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api, n=1)
    with api.session() as session:
        [output] = session.exec(select(Output).where(Output.dispatch_id == dispatch.id)).all()
    result = {**succeeded_result(api, output), "text": "hello"}
    body = {"version": 2, "dispatch_id": dispatch.id, "results": [result]}
    assert hook(api, dispatch, {"status": "COMPLETED", "output": body}).status_code == 200
    image = api.client.get(f"/api/jobs/{job_id}").json()["images"][0]
    assert (
        image["error"] == "worker result rejected: text is for text tasks; this output is an image"
    )
