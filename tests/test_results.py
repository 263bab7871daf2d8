"""What the control plane accepts from a worker about one image (control_plane/results.py):
text no database column can hold fails that image alone, whichever way it arrives."""

import json

import httpx
import pytest
from sqlmodel import select

from control_plane.models import Output
from control_plane.runpod.poller import reconcile_once
from tests.fakes.api import RUNPOD, Api, submit_one_dispatch, succeeded_result

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
