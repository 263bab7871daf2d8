"""`Idempotency-Key` on the routes that create things (pure ASGI).

A client that retries after a timeout sends the same key: the first request's answer is
stored and replayed (same status, same JSON, plus `Idempotent-Replayed: true`), so nothing
is created twice. The same key with another body is refused (422); while the first request
is still being answered, a second gets 409 with `Retry-After`. Only final answers are
stored: 2xx and 4xx, but not 5xx, a crash, or 4xx that say "try again" (408, 409, 425, 429).

The body is hashed as it streams through to the route (never held: an upload may be
gigabytes); a replay reads the retried body through the hash and discards it. In a
multipart body the boundary, which clients draw at random per request, does not count
(`BodyDigest`). The record of keys is `control_plane/services/idempotency.py`. This
middleware sits inside the auth and body-limit middlewares: a request they refuse never
reaches it and is not recorded, and a body refused part-way by its limit leaves no record
either.
"""

import contextlib
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.access import Viewer
from control_plane.errors import DomainError
from control_plane.platform import Platform
from control_plane.services import idempotency
from control_plane.settings import Settings
from control_plane.web.errors import error_response

log = logging.getLogger(__name__)
T = TypeVar("T")

# The routes that take a key: every POST of the API but RunPod's webhook (it has its own
# exactly-once rules), the processes' internal wakes and estimates (they write nothing); a
# key sent elsewhere is ignored.
IDEMPOTENT_ROUTES = re.compile(r"/api/(?!webhook/|internal/)(?![^?#]*/estimate$)[^?#]+")
HEADER = b"idempotency-key"
KEY = re.compile(r"[\x20-\x7e]{1,255}")  # printable ASCII
RETRY_LATER = frozenset({408, 409, 425, 429})  # 4xx that say "try again": not final
RETRY_AFTER_S = "1"
REPLAYED = {"Idempotent-Replayed": "true"}


def request_scope(scope: Scope) -> str:
    """What a key is unique within: the user, the method and the route (so one user's key
    never replays another's answer), as a SHA-256 that the stored scope always holds."""
    viewer: Viewer = scope["state"]["viewer"]
    where = f"{viewer.user_id or ''} {scope['method']} {scope['path']}"
    return hashlib.sha256(where.encode()).hexdigest()


@dataclass(frozen=True)
class HeldKey:
    """A key this request holds."""

    scope: str
    key: str
    claimed: idempotency.Claimed


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not IDEMPOTENT_ROUTES.fullmatch(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        sent = [value for name, value in scope["headers"] if name == HEADER]
        if not sent:
            await self.app(scope, receive, send)
            return
        key = sent[0].decode("latin-1")
        if len(sent) > 1 or not KEY.fullmatch(key):
            await _answer_error(scope, receive, send, 422, _bad_key(sent))
            return
        platform: Platform = scope["app"].state.platform
        where = request_scope(scope)
        outcome = await _in_session(
            platform, idempotency.claim, where, key, self.settings.idempotency_ttl_s
        )
        if isinstance(outcome, idempotency.InProgress):
            message = "a request with this Idempotency-Key is still being answered; retry shortly"
            await _answer_error(scope, receive, send, 409, message, {"Retry-After": RETRY_AFTER_S})
        elif isinstance(outcome, idempotency.Answered):
            await self._replay(outcome, scope, receive, send)
        else:
            await self._first(platform, HeldKey(where, key, outcome), scope, receive, send)

    async def _first(
        self, platform: Platform, held: HeldKey, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Run the request, hashing its body, and store its answer before sending it."""
        body = HashedBody(scope, receive)
        answer = BufferedAnswer()
        try:
            await self.app(scope, body.receive, answer.send)
            with contextlib.suppress(HTTPException):  # the rest is over its limit: no record
                await body.read_rest()  # what a route that answered early left unread
        except BaseException:
            await _release(platform, held)
            raise
        stored = answer.storable() if body.complete else None
        if stored is None:
            await _release(platform, held)
        else:
            await self._store(platform, held, body.sha256, *stored)
        await answer.forward(send)

    async def _store(
        self, platform: Platform, held: HeldKey, body_sha256: str, status_code: int, text: str
    ) -> None:
        """Keep the answer. If that fails the work is done all the same: the client gets its
        answer, and the key stays claimed (a retry is told to wait) until its lease ends."""
        try:
            await _in_session(
                platform,
                idempotency.complete,
                held.scope,
                held.key,
                held.claimed,
                body_sha256=body_sha256,
                status_code=status_code,
                response=text,
                ttl_s=self.settings.idempotency_ttl_s,
            )
        except Exception:
            log.exception("could not store the answer to idempotency key %r", held.key)

    async def _replay(
        self, answered: idempotency.Answered, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The first answer again, once the retried body has been read and found the same."""
        body = HashedBody(scope, receive)
        try:
            await body.read_rest()
        except HTTPException as exc:  # over its limit
            await _answer_error(scope, receive, send, exc.status_code, exc.detail)
            return
        if not body.complete:  # the client went away
            return
        try:
            idempotency.check_same_body(answered, body.sha256)
        except DomainError as exc:
            await _answer_error(scope, receive, send, exc.status_code, exc.message)
            return
        replay = Response(
            answered.response.encode(),
            status_code=answered.status_code,
            media_type="application/json",
            headers=REPLAYED,
        )
        await replay(scope, receive, send)


class HashedBody:
    """The request body as the route reads it, hashed on the way through (never kept)."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self._receive = receive
        self._digest = BodyDigest(multipart_boundary(scope))
        self.complete = False  # the whole body went through the hash
        self.failed = False  # reading it raised (a limit) or the client went away

    async def receive(self) -> Message:
        try:
            message = await self._receive()
        except BaseException:
            self.failed = True
            raise
        if message["type"] == "http.request" and not self.complete:
            self._digest.update(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            self.failed = True
        return message

    async def read_rest(self) -> None:
        """Read (hash and discard) what the route left of the body."""
        while not self.complete and not self.failed:
            await self.receive()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


CANONICAL_DELIMITER = b"--pixelfleet-idempotency-boundary"


class BodyDigest:
    """sha256 of a body fed in pieces. In a multipart body every delimiter (`--` and the
    boundary) counts as one fixed delimiter: clients such as curl and httpx pick a new
    random boundary for each request, so a retried upload differs from the first by its
    boundary alone, which says nothing about what was sent."""

    def __init__(self, boundary: bytes | None) -> None:
        self._sha = hashlib.sha256()
        self._delimiter = b"--" + boundary if boundary else b""
        self._carry = b""  # the tail of the last piece, which may begin a delimiter

    def update(self, piece: bytes) -> None:
        if not self._delimiter:
            self._sha.update(piece)
            return
        data, start = self._carry + piece, 0
        while (found := data.find(self._delimiter, start)) != -1:
            self._sha.update(data[start:found])
            self._sha.update(CANONICAL_DELIMITER)
            start = found + len(self._delimiter)
        keep = max(start, len(data) - len(self._delimiter) + 1)
        self._sha.update(data[start:keep])
        self._carry = data[keep:]

    def hexdigest(self) -> str:
        sha = self._sha.copy()
        sha.update(self._carry)
        return sha.hexdigest()


def multipart_boundary(scope: Scope) -> bytes | None:
    """The boundary of a multipart body (from its Content-Type), else None."""
    content_type = dict(scope["headers"]).get(b"content-type", b"")
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary") if kind.startswith(b"multipart/") else None
    return boundary or None


class BufferedAnswer:
    """The route's answer, held until its record is written (JSON answers are small)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    def storable(self) -> tuple[int, str] | None:
        """(status, JSON text) if this answer is final and may be replayed, else None."""
        start = next((m for m in self.messages if m["type"] == "http.response.start"), None)
        if start is None:
            return None
        status_code: int = start["status"]
        final = 200 <= status_code < 300 or (400 <= status_code < 500)
        if not final or status_code in RETRY_LATER:
            return None
        headers = dict(start.get("headers", []))
        if not headers.get(b"content-type", b"").startswith(b"application/json"):
            return None
        body = b"".join(
            m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"
        )
        try:
            return status_code, body.decode()
        except UnicodeDecodeError:
            return None

    async def forward(self, send: Send) -> None:
        for message in self.messages:
            await send(message)


async def _in_session(platform: Platform, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    def run() -> T:
        with platform.session() as session:
            return work(session, *args, **kwargs)

    return await run_in_threadpool(run)


async def _release(platform: Platform, held: HeldKey) -> None:
    """Drop the claim, even while the request is being cancelled (shutdown, disconnect)."""
    with anyio.CancelScope(shield=True):
        try:
            await _in_session(platform, idempotency.release, held.scope, held.key, held.claimed)
        except Exception:  # the key frees itself when its claim's lease ends
            log.exception("could not release idempotency key %r (%s)", held.key, held.scope)


async def _answer_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    status_code: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> None:
    answer = error_response(Request(scope), status_code, message, headers)
    await answer(scope, receive, send)


def _bad_key(sent: list[bytes]) -> str:
    if len(sent) > 1:
        return "send one Idempotency-Key header, not several"
    return (
        "Idempotency-Key must be 1 to 255 printable ASCII characters "
        f"(got {len(sent[0])} byte(s)); a UUID is a good key"
    )
