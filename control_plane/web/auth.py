"""Access to the control plane: one shared password, when one is configured; without one,
only the expected Host names (DNS rebinding); and no state-changing request from another
site's page (cross-site request forgery).

Every route asks for it (HTTP Basic with any user name, which browsers prompt for by
themselves, or `Authorization: Bearer <password>`), except the two that must stay open:
RunPod's webhook (it cannot send headers; each dispatch's URL carries its own token) and
`/healthz` (load balancers). Without a password (the development default) all is open.
"""

import base64
import binascii
import hmac
import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.hosts import is_loopback

OPEN_PATHS = ("/api/webhook/runpod", "/healthz")
CHALLENGE = [
    (b"content-type", b"application/json"),
    (b"www-authenticate", b'Basic realm="pixelfleet", charset="UTF-8"'),
]


class PasswordMiddleware:
    """Answer 401 to any request without the password (pure ASGI: streams pass untouched)."""

    def __init__(self, app: ASGIApp, password: str) -> None:
        self.app = app
        self.password = password.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 401, "headers": CHALLENGE})
        body = (
            b'{"detail": "authentication required: the pixelfleet password (HTTP Basic or Bearer)"}'
        )
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credentials = header.partition(b" ")
        if scheme.lower() == b"bearer":
            offered = credentials.strip()
        elif scheme.lower() == b"basic":
            try:
                offered = base64.b64decode(credentials.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        else:
            return False
        return hmac.compare_digest(offered, self.password)


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
