"""The admin password: with one set, every route asks for credentials, except RunPod's webhook,
/healthz and the sign-in page; a whole job still runs end to end behind it (webhooks arrive,
files and ZIP are served). Without it, only the expected Host names are answered (DNS
rebinding). API keys and users: tests/web/test_users.py."""

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.settings import Settings
from tests.conftest import recorded_statements
from tests.fakes.servers import run_server
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


WRONG_CREDENTIALS = (
    {},
    basic("anyone", "wrong password"),
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Basic !!not-base64!!"},
    {"Authorization": f"Token {PASSWORD}"},
)


@pytest.mark.parametrize("path", ["/api/groups", "/docs", "/openapi.json", "/metrics"])
def test_every_api_route_asks_for_credentials(client: TestClient, path: str) -> None:
    for headers in WRONG_CREDENTIALS:
        refused = client.get(path, headers=headers)
        assert refused.status_code == 401, (path, headers)
        assert refused.headers["www-authenticate"] == 'Bearer realm="pixelfleet"'
        assert "API key" in refused.json()["detail"]
    assert client.post("/api/groups", json={"name": "x"}).status_code == 401
    assert client.get("/api/groups").status_code == 401  # nothing was created either


@pytest.mark.parametrize("path", ["/", "/groups/grp_x?page=2"])
def test_every_page_sends_people_to_sign_in(client: TestClient, path: str) -> None:
    for headers in WRONG_CREDENTIALS:
        refused = client.get(path, headers=headers, follow_redirects=False)
        assert refused.status_code == 303, (path, headers)
        assert refused.headers["location"] == "/login?next=" + quote(path, safe="")
    assert client.post("/groups", data={"name": "x"}).status_code == 401


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


def test_machine_requests_look_for_no_viewer(settings: Settings) -> None:
    """RunPod's webhooks and health checks act for nobody: on the open server (which asks
    the database whether any user exists, so as to act for the local user), they send it
    no query for a viewer."""
    with TestClient(create_app(settings, reconcile=False)) as client:
        engine = client.app.state.platform.engine  # type: ignore[attr-defined]
        with recorded_statements(engine) as statements:
            assert client.get("/healthz").status_code == 200
            webhook = client.post("/api/webhook/runpod?dispatch=dsp_x&token=t", json={})
            assert webhook.status_code == 401
            assert not [s for s in statements if " FROM users " in s], statements
            assert client.get("/api/groups").status_code == 200  # a person's request does ask
        assert [s for s in statements if " FROM users " in s]


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


def test_an_open_server_refuses_a_rebinding_host_and_answers_its_own(settings: Settings) -> None:
    """Without a password, a page that re-resolved its own name to 127.0.0.1 (DNS
    rebinding) is refused: its requests name that page's host, which is not ours."""
    app = create_app(settings.model_copy(update={"allowed_hosts": ""}), reconcile=False)
    with run_server(app) as base:
        port = base.rsplit(":", 1)[1]
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
            refused = httpx.get(f"{base}/api/groups", headers={"Host": host})
            assert refused.status_code == 400, host
            assert refused.json()["detail"].startswith("unexpected Host header")
            assert "PIXELFLEET_ALLOWED_HOSTS" in refused.json()["detail"]
            posted = httpx.post(f"{base}/api/groups", json={"name": "x"}, headers={"Host": host})
            assert posted.status_code == 400
        assert httpx.get(f"{base}/healthz", headers={"Host": "evil.example"}).status_code == 200
        for host in (f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", f"[::1]:{port}"):
            assert httpx.get(f"{base}/api/groups", headers={"Host": host}).status_code == 200
        assert httpx.get(f"{base}/api/groups").json()["total"] == 0  # nothing was created


def test_allowed_hosts_and_the_public_url_host_are_answered(settings: Settings) -> None:
    app = create_app(
        settings.model_copy(
            update={
                "allowed_hosts": "studio.lan, Evil.Example",
                "public_url": "https://pixelfleet.example.com",
            }
        ),
        reconcile=False,
    )
    with run_server(app) as base:
        for host in ("evil.example", "studio.lan:8000", "pixelfleet.example.com"):
            assert httpx.get(f"{base}/api/groups", headers={"Host": host}).status_code == 200
        assert httpx.get(f"{base}/", headers={"Host": "other.example"}).status_code == 400


def test_behind_the_password_any_host_may_ask(settings: Settings) -> None:
    locked = settings.model_copy(update={"api_password": PASSWORD, "allowed_hosts": ""})
    with run_server(create_app(locked, reconcile=False)) as base:
        answer = httpx.get(
            f"{base}/api/groups",
            headers={"Host": "pixelfleet.internal", "Authorization": f"Bearer {PASSWORD}"},
        )
        assert answer.status_code == 200


def test_a_job_runs_end_to_end_on_the_open_server_with_no_extra_hosts(settings: Settings) -> None:
    """The webhook arrives with the public URL's host: the Host check lets it in."""
    with contextmanager(run_stack)(settings.model_copy(update={"allowed_hosts": ""})) as stack:
        group_id = stack.group()
        job_id = stack.http.post(
            "/api/jobs/submit",
            json={
                "group_id": group_id,
                "mode": "automatic",
                "prompt": "p",
                "images": stack.upload(group_id, 2),
            },
        ).json()["jobs"][0]["id"]
        [job] = stack.wait_for([job_id])
        assert job["status"] == "completed" and job["progress"]["succeeded"] == 2
