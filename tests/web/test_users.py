"""Users and API keys: a made key gets in, a revoked or unknown one does not; the implicit local
user ends once a user exists and never exists in production; the admin password is an admin;
the UI's sign-in keeps the key in a session cookie and never sends anyone to another site.
(Another user's rows answering 404 everywhere: tests/e2e/test_two_users_stack.py.)"""

from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.models import UserTier
from control_plane.platform import Platform
from control_plane.services import users
from control_plane.settings import Settings
from control_plane.web.auth import SESSION_COOKIE

PASSWORD = "correct horse battery staple"


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, reconcile=False)) as client:
        yield client


def platform_of(client: TestClient) -> Platform:
    platform: Platform = client.app.state.platform  # type: ignore[attr-defined]
    return platform


def make_key(client: TestClient, name: str, *, admin: bool = False) -> str:
    with platform_of(client).session_scope() as session:
        user = users.add_user(session, name, UserTier.FREE, admin=admin)
        _, secret = users.create_key(session, user)
    return secret


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_made_key_gets_in_and_a_revoked_or_unknown_one_does_not(client: TestClient) -> None:
    key = make_key(client, "ann")
    created = client.post("/api/groups", json={"name": "mine"}, headers=bearer(key))
    assert created.status_code == 201
    assert client.get("/api/groups", headers=bearer(key)).json()["total"] == 1
    for wrong in ("pf_" + "x" * 43, key[:-1], "not-a-key"):
        refused = client.get("/api/groups", headers=bearer(wrong))
        assert refused.status_code == 401
        assert refused.json() == {"detail": "this API key is unknown or revoked"}
    with platform_of(client).session_scope() as session:
        [row] = users.list_keys(session, users.find_user(session, "ann"))
        assert row.last_used_at is not None and row.prefix == key[:10]
        users.revoke_key(session, row.id)
    assert client.get("/api/groups", headers=bearer(key)).status_code == 401


def test_local_mode_ends_once_a_user_exists(client: TestClient) -> None:
    assert client.post("/api/groups", json={"name": "local"}).status_code == 201
    assert client.get("/").status_code == 200
    key = make_key(client, "ann")
    refused = client.get("/api/groups")
    assert refused.status_code == 401 and "API key" in refused.json()["detail"]
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2F"
    # the local user's rows have no owner: only admins see them now
    assert client.get("/api/groups", headers=bearer(key)).json()["total"] == 0


def test_production_never_opens_local_mode(settings: Settings) -> None:
    production = settings.model_copy(update={"environment": "production"})
    with TestClient(create_app(production, reconcile=False)) as client:
        assert client.get("/api/groups").status_code == 401
        assert client.get("/", follow_redirects=False).status_code == 303
        assert client.get("/healthz").status_code == 200


def test_a_listen_address_other_than_loopback_never_opens_local_mode(settings: Settings) -> None:
    exposed = settings.model_copy(update={"listen_host": "0.0.0.0"})
    with TestClient(create_app(exposed, reconcile=False)) as client:
        assert client.get("/api/groups").status_code == 401


def test_the_admin_password_is_an_admin_besides_keys(settings: Settings) -> None:
    locked = settings.model_copy(update={"api_password": PASSWORD})
    with TestClient(create_app(locked, reconcile=False)) as client:
        assert client.get("/api/groups").status_code == 401  # no local mode with a password
        key = make_key(client, "ann")
        group = client.post("/api/groups", json={"name": "ann's"}, headers=bearer(key)).json()
        as_admin = bearer(PASSWORD)
        assert client.get("/api/groups", headers=as_admin).json()["total"] == 1
        assert client.get(f"/api/groups/{group['id']}", headers=as_admin).status_code == 200
        admins = client.post("/api/groups", json={"name": "admin's"}, headers=as_admin).json()
        # the admin's rows are nobody's: the user does not see them
        assert client.get(f"/api/groups/{admins['id']}", headers=bearer(key)).status_code == 404
        assert client.get("/api/groups", headers=bearer(key)).json()["total"] == 1
        signed_in = client.post("/login", data={"key": PASSWORD}, follow_redirects=False)
        assert signed_in.status_code == 303  # the cookie keeps the password, quoted
        assert client.get("/api/groups").json()["total"] == 2


def test_an_admin_user_sees_everyone_s_rows(client: TestClient) -> None:
    ann, root = make_key(client, "ann"), make_key(client, "root", admin=True)
    group = client.post("/api/groups", json={"name": "ann's"}, headers=bearer(ann)).json()
    assert client.get(f"/api/groups/{group['id']}", headers=bearer(root)).status_code == 200
    assert client.get("/api/groups", headers=bearer(root)).json()["total"] == 1


def test_signing_in_keeps_the_key_in_a_session_cookie(client: TestClient) -> None:
    key = make_key(client, "ann")
    form = client.get("/login", params={"next": "/groups/grp_x?page=2"})
    assert form.status_code == 200 and 'name="key"' in form.text
    assert 'value="/groups/grp_x?page=2"' in form.text
    signed_in = client.post("/login", data={"key": key, "next": "/?page=1"}, follow_redirects=False)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/?page=1"
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={key};")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    page = client.get("/")  # the TestClient keeps the cookie
    assert page.status_code == 200 and 'action="/logout"' in page.text
    assert '<span class="muted">ann</span>' in page.text
    created = client.post("/groups", data={"name": "from the UI"}, follow_redirects=False)
    assert created.status_code == 303
    assert client.get("/api/groups").json()["data"][0]["name"] == "from the UI"
    signed_out = client.post("/logout", follow_redirects=False)
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/login"
    assert f'{SESSION_COOKIE}=""' in signed_out.headers["set-cookie"]
    assert client.get("/", follow_redirects=False).status_code == 303
    assert client.get("/api/groups").status_code == 401


def test_a_wrong_key_shows_the_form_again_with_a_plain_error(client: TestClient) -> None:
    make_key(client, "ann")
    refused = client.post("/login", data={"key": "pf_wrong", "next": "/"})
    assert refused.status_code == 401 and "unknown or revoked" in refused.text
    assert 'name="key"' in refused.text and "set-cookie" not in refused.headers


def test_the_cookie_is_secure_behind_https(settings: Settings) -> None:
    behind_https = settings.model_copy(update={"public_url": "https://pixelfleet.example.com"})
    with TestClient(create_app(behind_https, reconcile=False)) as client:
        key = make_key(client, "ann")
        signed_in = client.post("/login", data={"key": key}, follow_redirects=False)
        assert "Secure" in signed_in.headers["set-cookie"]
    with TestClient(create_app(settings, reconcile=False), base_url="https://testserver") as tls:
        signed_in = tls.post("/login", data={"key": key}, follow_redirects=False)
        assert "Secure" in signed_in.headers["set-cookie"]


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/\t/evil.example",
        "",
    ],
)
def test_sign_in_never_redirects_to_another_site(client: TestClient, target: str) -> None:
    key = make_key(client, "ann")
    signed_in = client.post("/login", data={"key": key, "next": target}, follow_redirects=False)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
    form = client.get(f"/login?next={quote(target, safe='')}")
    assert 'name="next" value="/"' in form.text
