"""Property-based webhooks with valid tokens: whatever a worker or RunPod sends, the webhook
never answers 5xx and every dispatch ends in a state the lifecycle allows.

Each example finalises a fresh dispatch (a job of one-image dispatches), so every example
reaches the code that applies results, not just the idempotency check.
"""

import json
from typing import Any

import hypothesis
from hypothesis import strategies as st
from sqlmodel import col, select

from control_plane.models import Dispatch, Job, Output
from shared import layout
from tests.fakes.api import Api

EXAMPLES = 40
FINAL_STATES = ["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]

huge_ints = st.integers(min_value=-(2**70), max_value=2**70)
numbers = st.one_of(st.integers(min_value=0, max_value=10_000), huge_ints)
any_float = st.floats(allow_nan=True, allow_infinity=True)
json_scalars = st.one_of(st.none(), st.booleans(), huge_ints, any_float, st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


# Stand-ins the test replaces with the dispatch's own values once an example is drawn (the
# strategies must not depend on which dispatch an example lands on).
OWN_OUTPUT, OWN_KEY, FOREIGN_KEY, OWN_DISPATCH, OWN_RUNPOD_JOB = (
    "<own output>",
    "<own key>",
    "<foreign key>",
    "<own dispatch>",
    "<own runpod job>",
)
uris = st.sampled_from([OWN_KEY, FOREIGN_KEY]) | st.text(max_size=80)
results = st.fixed_dictionaries(
    {
        "output_id": st.just(OWN_OUTPUT) | st.text(max_size=40),
        "status": st.sampled_from(["succeeded", "failed", "blocked"]) | st.text(max_size=12),
        "provider": st.text(max_size=60),
        "model": st.text(max_size=100),
    },
    optional={
        "seed": numbers,
        "output_uri": uris,
        "thumbnail_uri": uris,
        "content_type": st.sampled_from(["image/png", "text/html"]) | st.text(max_size=80),
        "width": numbers,
        "height": numbers,
        "bytes": numbers,
        "sha256": st.text(alphabet="0123456789abcdef", min_size=60, max_size=70),
        "error": st.text(max_size=3_000),
        "attempts": numbers,
        "latency_ms": numbers,
        "model_version": st.text(max_size=100),
        "usage": st.dictionaries(st.text(max_size=10), json_values, max_size=4),
        "cost_usd": any_float | numbers,
    },
)
contract_outputs = st.fixed_dictionaries(
    {
        "version": st.just(1) | numbers,
        "dispatch_id": st.just(OWN_DISPATCH) | st.text(max_size=40),
        "results": st.lists(results, max_size=3),
    }
)
states = st.fixed_dictionaries(
    {
        "id": st.just(OWN_RUNPOD_JOB) | st.text(max_size=100),
        "status": st.sampled_from([*FINAL_STATES, "IN_PROGRESS"]) | st.text(max_size=20),
    },
    optional={
        "output": st.one_of(contract_outputs, json_values),
        "error": json_values,
        "delayTime": numbers,
        "executionTime": numbers,
    },
)


def _materialise(value: Any, own: dict[str, str]) -> Any:
    """`value` with the stand-ins replaced by the dispatch's own ids and keys."""
    if isinstance(value, str):
        return own.get(value, value)
    if isinstance(value, list):
        return [_materialise(item, own) for item in value]
    if isinstance(value, dict):
        return {key: _materialise(item, own) for key, item in value.items()}
    return value


def _own_values(api: Api, dispatch: Dispatch) -> dict[str, str]:
    with api.session() as session:
        output = session.exec(select(Output).where(Output.job_id == dispatch.job_id)).first()
    assert output is not None
    uri = api.platform.storage.uri
    return {
        OWN_OUTPUT: output.id,
        OWN_KEY: uri(layout.output_stem(output.group_id, output.job_id, output.id) + ".png"),
        FOREIGN_KEY: uri(layout.upload_key(output.group_id, "img_someoneelse", ".png")),
        OWN_DISPATCH: dispatch.id,
        OWN_RUNPOD_JOB: dispatch.runpod_job_id or "",
    }


def test_no_webhook_gets_a_server_error(api: Api) -> None:
    api.platform.settings.dispatch_chunk_size = 1  # one dispatch per example
    group_id = api.group()
    images = api.upload_ids(group_id, EXAMPLES)
    submitted = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images},
    )
    job_id = submitted.json()["jobs"][0]["id"]
    api.drain()
    with api.session() as session:
        fresh = list(session.exec(select(Dispatch).where(Dispatch.job_id == job_id)).all())
    server_errors: list[str] = []

    @hypothesis.given(state=states)
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def deliver(state: dict[str, Any]) -> None:
        dispatch = fresh.pop() if fresh else _any_dispatch(api, job_id)
        body = _materialise(state, _own_values(api, dispatch))
        response = api.client.post(
            "/api/webhook/runpod",
            params={"dispatch": dispatch.id, "token": dispatch.webhook_token},
            content=json.dumps(body, allow_nan=True),
            headers={"content-type": "application/json"},
        )
        if response.status_code >= 500:
            server_errors.append(f"{response.status_code}: {json.dumps(body)[:300]}")

    deliver()
    assert not server_errors, server_errors[:5]
    api.drain()
    with api.session() as session:  # the job's counts still add up to its outputs
        job = session.get(Job, job_id)
        outputs = session.exec(select(Output).where(col(Output.job_id) == job_id)).all()
    assert job is not None and job.total == len(outputs) == EXAMPLES
    finished = [o for o in outputs if o.status in ("succeeded", "failed", "blocked")]
    assert job.succeeded + job.failed + job.blocked == len(finished)


def _any_dispatch(api: Api, job_id: str) -> Dispatch:
    with api.session() as session:
        return session.exec(select(Dispatch).where(Dispatch.job_id == job_id)).first()  # type: ignore[return-value]
