"""Access to the control plane: who a request acts for (an API key, the admin password, a
session cookie, or the implicit local user), the expected Host names while the API is open
(DNS rebinding), and no state-changing request from another site's page (cross-site request
forgery).

Every route asks for it (`Authorization: Bearer pf_…`, HTTP Basic with the key or password as
its password, or the UI's session cookie), except those that must stay open: RunPod's webhook
and the worker's progress posts next to it (neither can send our credentials; each
dispatch's URL carries its own token), the wake the relay process hands the API (with the
processes' own token), `/healthz` (load balancers) and the UI's sign-in page.
Without credentials a request acts for the implicit local user, but only in development, on a
loopback address, without an admin password, and until the first user exists.
"""

import base64
import binascii
import hmac
import json
import logging
from urllib.parse import quote, urlsplit

import anyio
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from control_plane.access import LOCAL, PASSWORD_ADMIN, Viewer
from control_plane.platform import Platform
from control_plane.services import users
from control_plane.settings import Settings
from shared.hosts import is_loopback

log = logging.getLogger(__name__)
# Requests machines make, authenticated on their own terms (a dispatch's token) or not at all:
# they act for nobody, so finding a viewer for them is skipped.
MACHINE_PATHS = (
    "/api/webhook/runpod",
    "/api/webhook/runpod/progress",
    "/api/internal/wake",
    "/healthz",
)
STATIC_PREFIX = "/static/"  # the pages' stylesheet and scripts: the same for everyone
OPEN_PATHS = (*MACHINE_PATHS, "/login", "/logout")
SESSION_COOKIE = "pixelfleet_session"
API_PREFIXES = ("/api/", "/docs", "/redoc", "/openapi.json", "/metrics")
CHALLENGE = [
    (b"content-type", b"application/json"),
    (b"www-authenticate", b'Bearer realm="pixelfleet"'),
]


class AuthMiddleware:
    """Find who each request acts for (`scope["state"]["viewer"]`), or answer 401 (API) or
    send a person to the sign-in page (UI). Pure ASGI: streams pass untouched."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.password = settings.api_password.encode()
        self._users_exist = False  # once a user exists, the local user is gone for good

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _for_anyone(scope["path"]):
            await self.app(scope, receive, send)
            return
        viewer = await self._viewer(scope)
        if viewer is None and scope["path"] not in OPEN_PATHS:
            await _refuse(scope, send, _offered(scope) is not None)
            return
        if viewer is not None:
            scope.setdefault("state", {})["viewer"] = viewer
        await self.app(scope, receive, send)

    async def _viewer(self, scope: Scope) -> Viewer | None:
        offered = _offered(scope)
        if offered is None:
            return LOCAL if await self.local_mode(scope) else None
        if self.password and hmac.compare_digest(offered, self.password):
            return PASSWORD_ADMIN
        platform: Platform = scope["app"].state.platform
        return await anyio.to_thread.run_sync(_viewer_for_key, platform, offered)

    async def local_mode(self, scope: Scope) -> bool:
        """Whether requests without credentials act for the implicit local user."""
        if self.settings.environment != "development" or self.password:
            return False
        if not is_loopback(self.settings.listen_host) or self._users_exist:
            return False
        platform: Platform = scope["app"].state.platform
        self._users_exist = await anyio.to_thread.run_sync(_users_exist, platform)
        return not self._users_exist


def _for_anyone(path: str) -> bool:
    return path in MACHINE_PATHS or path.startswith(STATIC_PREFIX)


def _viewer_for_key(platform: Platform, offered: bytes) -> Viewer | None:
    with platform.session_scope() as session:
        return users.viewer_for_key(session, offered.decode("utf-8", "replace"))


def _users_exist(platform: Platform) -> bool:
    with platform.session() as session:
        return users.any_users(session)


def _offered(scope: Scope) -> bytes | None:
    """The key or password the request carries (header first, then the session cookie)."""
    headers = dict(scope["headers"])
    scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
    if scheme.lower() == b"bearer":
        return credentials.strip()
    if scheme.lower() == b"basic":
        try:
            return base64.b64decode(credentials.strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return b""
    # as the sign-in page set it: a value with spaces (a password) arrives quoted
    session = cookie_parser(headers.get(b"cookie", b"").decode("latin-1")).get(SESSION_COOKIE)
    return session.encode() if session else None


async def _refuse(scope: Scope, send: Send, offered: bool) -> None:
    if scope["method"] == "GET" and not scope["path"].startswith(API_PREFIXES):
        target = scope["path"] + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        location = f"/login?next={quote(target, safe='')}".encode()
        await send(
            {"type": "http.response.start", "status": 303, "headers": [(b"location", location)]}
        )
        await send({"type": "http.response.body", "body": b""})
        return
    detail = (
        "this API key is unknown or revoked"
        if offered
        else "authentication required: an API key (Authorization: Bearer pf_…)"
    )
    await send({"type": "http.response.start", "status": 401, "headers": CHALLENGE})
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORBIDDEN = [(b"content-type", b"application/json")]


class SameOriginMiddleware:
    """Refuse a state-changing request that a browser says comes from another site.

    Browsers send `Sec-Fetch-Site` (older ones at least `Origin`) with every form post; a
    page elsewhere could otherwise make a visitor's browser create, upload, submit or
    cancel here, with a cached password too. Requests from programs (curl, RunPod's
    webhook) carry neither header and pass.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS or _same_site(scope):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 403, "headers": FORBIDDEN})
        body = b'{"detail": "refused: this request came from another site\'s page"}'
        await send({"type": "http.response.body", "body": body})


def _same_site(scope: Scope) -> bool:
    headers = dict(scope["headers"])
    fetch_site = headers.get(b"sec-fetch-site")
    if fetch_site is not None:
        return fetch_site in (b"same-origin", b"none")
    origin = headers.get(b"origin")
    if origin is None or origin == b"null":
        return origin is None
    return urlsplit(origin.decode("latin-1")).netloc.encode("latin-1") == headers.get(b"host")


BAD_REQUEST = [(b"content-type", b"application/json")]


def expected_hosts(public_url: str, allowed_hosts: list[str]) -> frozenset[str]:
    """Host names (any port) an open server answers besides loopback ones: the public URL's
    and the listed."""
    public = urlsplit(public_url).hostname
    return frozenset(allowed_hosts) | ({public} if public else set())


class HostCheckMiddleware:
    """Answer 400 to a request whose Host header names none of `hosts`.

    Without a password the API is open to whoever reaches it, and a page on any site can
    reach it through the visitor's browser by DNS rebinding: its own name, re-resolved to
    127.0.0.1, then reads and posts here as a same-origin page. Such requests carry the
    page's host name, which is not ours. `/healthz` stays open like it does behind the
    password (probes may address the server by any name).
    """

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        host = _host_name(dict(scope["headers"]).get(b"host", b"").decode("latin-1"))
        if host in self.hosts or is_loopback(host):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 400, "headers": BAD_REQUEST})
        detail = (
            f"unexpected Host header {host!r}: this server answers "
            f"{', '.join(['loopback names', *sorted(self.hosts)])}; "
            "add the name to PIXELFLEET_ALLOWED_HOSTS"
        )
        await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


def _host_name(header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case ("" if none)."""
    try:
        return urlsplit(f"//{header}").hostname or ""
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return ""
