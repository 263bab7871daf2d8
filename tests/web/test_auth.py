"""The shared password: every route asks for it, except RunPod's webhook and /healthz; a
whole job still runs end to end behind it (webhooks arrive, files and ZIP are served)."""

import base64
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.settings import Settings
from tests.fakes.stack import Stack, check_zip_against_manifest, read_zip, run_stack

PASSWORD = "correct horse battery staple"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    locked = settings.model_copy(update={"api_password": PASSWORD})
    with TestClient(create_app(locked, reconcile=False)) as client:
        yield client


@pytest.mark.parametrize("path", ["/api/groups", "/", "/docs", "/openapi.json", "/groups/grp_x"])
def test_every_route_asks_for_the_password(client: TestClient, path: str) -> None:
    for headers in (
        {},
        basic("anyone", "wrong password"),
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic !!not-base64!!"},
        {"Authorization": f"Token {PASSWORD}"},
    ):
        refused = client.get(path, headers=headers)
        assert refused.status_code == 401, (path, headers)
        assert refused.headers["www-authenticate"].startswith('Basic realm="pixelfleet"')
        assert "password" in refused.json()["detail"]
    assert client.post("/api/groups", json={"name": "x"}).status_code == 401
    assert client.get("/api/groups").status_code == 401  # nothing was created either


def test_basic_with_any_user_or_bearer_gets_in(client: TestClient) -> None:
    created = client.post("/api/groups", json={"name": "x"}, headers=basic("me", PASSWORD))
    assert created.status_code == 201
    listing = client.get("/api/groups", headers={"Authorization": f"Bearer {PASSWORD}"})
    assert listing.json()["total"] == 1
    assert client.get("/", headers=basic("", PASSWORD)).status_code == 200


def test_the_webhook_and_health_stay_open(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/api/webhook/runpod").json() == {"status": "ok"}
    # The webhook is guarded by its per-dispatch token instead.
    hook = client.post("/api/webhook/runpod", params={"dispatch": "dsp_x", "token": "guess"})
    assert hook.status_code == 401 and hook.json() == {"detail": "invalid webhook token"}


def test_a_job_runs_end_to_end_behind_the_password(settings: Settings) -> None:
    locked = settings.model_copy(update={"api_password": PASSWORD})
    with contextmanager(run_stack)(locked) as stack:
        stack.http.headers.update(basic("me", PASSWORD))
        run_a_job(stack)


def run_a_job(stack: Stack) -> None:
    group_id = stack.group()
    image_ids = stack.upload(group_id, 6)
    job_id = stack.http.post(
        "/api/jobs/submit",
        json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": image_ids},
    ).json()["jobs"][0]["id"]
    [job] = stack.wait_for([job_id])  # the local endpoint's webhooks got through
    assert job["status"] == "completed" and job["progress"]["succeeded"] == 6
    assert stack.http.get(job["images"][0]["url"]).status_code == 200
    assert httpx.get(job["images"][0]["url"]).status_code == 401  # the file route is guarded
    _, archive, manifest = read_zip(stack, group_id)
    check_zip_against_manifest(archive, manifest)
