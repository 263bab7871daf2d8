"""The control plane in-process, with RunPod's cloud API mocked (respx).

`api` (a fixture, registered for every test by tests/conftest.py) is the app under a
TestClient on the `settings` database, with every `POST /run` answered IN_QUEUE and its
body kept in `run_bodies`. The services' timers are off: they run when a commit wakes them,
and `drain()` waits until they are idle. `submit_one_dispatch`, `hook` and `completed_body`
take one job through a dispatch and RunPod's webhook; `finish_job` reports each image of a
job as succeeded, failed or blocked; `poison_finalising` makes applying one dispatch's
results raise.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

import httpx
import pytest
import respx
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from control_plane import lifecycle
from control_plane.app import create_app
from control_plane.models import Dispatch, Event, EventKind, Output
from control_plane.platform import Platform
from control_plane.settings import Settings
from shared import layout
from tests.conftest import png_bytes

RUNPOD = "https://api.runpod.ai/v2/ep-test"


@dataclass
class Api:
    client: TestClient
    platform: Platform
    runpod: respx.MockRouter
    run_route: respx.Route
    run_bodies: list[dict]

    def drain(self) -> None:
        self.client.portal.call(self.platform.drain)  # type: ignore[union-attr]

    def group(self, name: str = "dataset") -> str:
        response = self.client.post("/api/groups", json={"name": name})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def upload(self, group_id: str, files: list[tuple[str, bytes]]) -> httpx.Response:
        return self.client.post(
            "/api/uploads",
            data={"group_id": group_id},
            files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        )

    def upload_ids(self, group_id: str, n: int) -> list[str]:
        response = self.upload(group_id, [(f"img{i}.png", png_bytes(32 + i, 32)) for i in range(n)])
        assert response.status_code == 201, response.text
        return [image["id"] for image in response.json()["images"]]

    def automatic_job(self, n: int, prompt: str = "p") -> str:
        """A new group's automatic job over `n` new uploads: its id."""
        group_id = self.group()
        body = {"group_id": group_id, "mode": "automatic", "prompt": prompt}
        answer = self.client.post(
            "/api/jobs/submit", json=body | {"images": self.upload_ids(group_id, n)}
        )
        assert answer.status_code == 201, answer.text
        job_id: str = answer.json()["jobs"][0]["id"]
        return job_id

    def session(self) -> Session:
        return Session(self.platform.engine)

    def outputs(self, job_id: str) -> list[Output]:
        """The job's output rows, by position."""
        with self.session() as session:
            return list(
                session.exec(
                    select(Output).where(Output.job_id == job_id).order_by(col(Output.position))
                ).all()
            )


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    settings = settings.model_copy(
        update={
            "runpod_base_url": "https://api.runpod.ai",
            "runpod_endpoint_id": "ep-test",
            "runpod_api_key": "rp-key",
            "reconcile_interval_s": 3600,
        }
    )
    ids = count(1)
    bodies: list[dict] = []

    def run(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer rp-key"
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"id": f"rp-{next(ids)}", "status": "IN_QUEUE"})

    with respx.mock(assert_all_called=False) as router:
        run_route = router.post(f"{RUNPOD}/run").mock(side_effect=run)
        with TestClient(create_app(settings, reconcile=False)) as client:
            yield Api(client, client.app.state.platform, router, run_route, bodies)  # type: ignore[attr-defined]


def submit_one_dispatch(api: Api, n: int = 3) -> tuple[str, Dispatch]:
    group_id = api.group()
    images = api.upload_ids(group_id, n)
    job = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "p",
            "images": images,
        },
    ).json()["jobs"][0]
    api.drain()
    with api.session() as session:
        dispatch = session.exec(select(Dispatch).where(Dispatch.job_id == job["id"])).one()
    return job["id"], dispatch


def hook(api: Api, dispatch: Dispatch, body: dict, token: str | None = None) -> httpx.Response:
    return api.client.post(
        "/api/webhook/runpod",
        params={"dispatch": dispatch.id, "token": token or dispatch.webhook_token},
        json={"id": dispatch.runpod_job_id, "delayTime": 5, "executionTime": 9, **body},
    )


def completed_body(api: Api, dispatch: Dispatch) -> dict:
    with api.session() as session:
        outputs = session.exec(select(Output).where(Output.dispatch_id == dispatch.id)).all()
    results = []
    for output in outputs:
        key = f"groups/{output.group_id}/outputs/{output.job_id}/{output.id}.png"
        stored = api.platform.storage.put_bytes(key, png_bytes(), content_type="image/png")
        results.append(
            {
                "output_id": output.id,
                "status": "succeeded",
                "provider": "offline",
                "model": output.model,
                "seed": output.seed,
                "output_uri": api.platform.storage.uri(key),
                "content_type": "image/png",
                "width": 64,
                "height": 48,
                "bytes": stored.size,
                "sha256": stored.sha256,
            }
        )
    return {
        "status": "COMPLETED",
        "output": {"version": 2, "dispatch_id": dispatch.id, "results": results},
    }


def poison_finalising(
    monkeypatch: pytest.MonkeyPatch,
    dispatch_id: str,
    error: Exception | None = None,
    times: int | None = None,
) -> None:
    """Make applying any report of `dispatch_id`'s results raise, as an unknown bug or a value
    the database refuses would (other dispatches are applied as usual): `error` (a DataError
    by default), the first `times` times (every time by default)."""
    note_report = lifecycle._note_report  # applying any report, alone or with others, does
    raised = count()

    def poisoned(dispatch: Dispatch, report: lifecycle.DispatchReport) -> None:
        if dispatch.id == dispatch_id and (times is None or next(raised) < times):
            raise error or sa.exc.DataError(
                "UPDATE outputs …", {}, Exception("Data too long for column")
            )
        note_report(dispatch, report)

    monkeypatch.setattr(lifecycle, "_note_report", poisoned)


def succeeded_result(api: Api, output: Output) -> dict[str, object]:
    """What a worker reports for `output` when it succeeded, with its file stored at the
    output's own key (`shared/layout.py`)."""
    stem = layout.output_stem(output.group_id, output.job_id, output.id)
    key = layout.output_key(stem, "image/png")
    stored = api.platform.storage.put_bytes(key, png_bytes(), content_type="image/png")
    return {
        "output_id": output.id,
        "status": "succeeded",
        "provider": "offline",
        "model": "m",
        "output_uri": api.platform.storage.uri(key),
        "content_type": "image/png",
        "width": 64,
        "height": 48,
        "bytes": stored.size,
        "sha256": stored.sha256,
    }


def finish_job(api: Api, job_id: str, statuses: list[str]) -> None:
    """Send the job's dispatches to (mocked) RunPod and report its images, in position
    order, as `statuses` say: succeeded (a file stored), failed or blocked."""
    api.drain()
    with api.session() as session:
        outputs = session.exec(
            select(Output).where(Output.job_id == job_id).order_by(col(Output.position))
        ).all()
        dispatches = {
            d.id: d for d in session.exec(select(Dispatch).where(Dispatch.job_id == job_id))
        }
    assert len(outputs) == len(statuses)
    reports: dict[str, list[dict[str, object]]] = {}
    for output, status in zip(outputs, statuses, strict=True):
        result = (
            succeeded_result(api, output)
            if status == "succeeded"
            else {
                "output_id": output.id,
                "status": status,
                "provider": "offline",
                "model": "m",
                "error": f"{status} on purpose",
            }
        )
        reports.setdefault(output.dispatch_id or "", []).append(result)
    for dispatch_id, results in reports.items():
        dispatch = dispatches[dispatch_id]
        body = {"version": 2, "dispatch_id": dispatch.id, "results": results}
        answer = hook(api, dispatch, {"status": "COMPLETED", "output": body})
        assert answer.status_code == 200, answer.text


def dispatch_failed_events(api: Api, job_id: str) -> list[Event]:
    """The job's `dispatch_failed` events, oldest first."""
    with api.session() as session:
        return list(
            session.exec(
                select(Event)
                .where(Event.job_id == job_id, Event.kind == EventKind.DISPATCH_FAILED)
                .order_by(col(Event.id))
            ).all()
        )


def answer_text_job(api: Api, job_id: str, text: str | None, status: str = "succeeded") -> None:
    """Send a text job's dispatch to (mocked) RunPod and report its one text task: `text` as
    its answer (succeeded), or failed / blocked with a reason."""
    api.drain()
    with api.session() as session:
        output = session.exec(select(Output).where(Output.job_id == job_id)).one()
        dispatch = session.get(Dispatch, output.dispatch_id)
    assert dispatch is not None
    result: dict[str, object] = {
        "output_id": output.id,
        "status": status,
        "provider": "offline",
        "model": output.model,
    }
    result.update({"text": text} if status == "succeeded" else {"error": f"{status} on purpose"})
    body = {"version": 2, "dispatch_id": dispatch.id, "results": [result]}
    answer = hook(api, dispatch, {"status": "COMPLETED", "output": body})
    assert answer.status_code == 200, answer.text
