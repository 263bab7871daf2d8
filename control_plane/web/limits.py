"""Request-body limits, enforced while the body streams in (pure ASGI).

Each route family has its own limit: uploads (multipart), RunPod's webhook, submissions,
catalogs, and every other body (JSON and the UI's small forms). A request whose
`Content-Length` already says too much is answered 413 before the app sees it; a body without
one (chunked) is counted as the server delivers it, and the read that passes the limit raises
`BodyTooLarge` (a 413), so nothing beyond the limit is read, parsed or spooled. Routes that
never read their body (the webhook with a wrong token) answer as they would anyway.
"""

import re

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.settings import Settings
from control_plane.web.errors import error_response

UPLOAD_PATHS = re.compile(r"/api/uploads|/groups/[^/]+/uploads")
SUBMIT_PATHS = re.compile(r"/api/jobs/(submit|estimate)|/groups/[^/]+/submit")
WEBHOOK_PATH = "/api/webhook/runpod"
CATALOG_PATH = "/api/catalogs"
# A submission's schema allows 1,000 items with 10,000-character prompts (or 20,000 image ids):
# about 10 MB of plain text, so it gets room beyond the limit of other bodies.
SUBMIT_MAX_BODY_BYTES = 16 * 1024 * 1024
# A catalog holds up to 10,000 prompts (JSON body or a multipart file).
CATALOG_MAX_BODY_BYTES = 16 * 1024 * 1024
IMPORT_PATH = "/api/jobs/import"
# An import's file: 20,000 rows of several hundred characters each, with room to spare.
IMPORT_MAX_BODY_BYTES = 16 * 1024 * 1024


class BodyTooLarge(HTTPException):
    """A request body over its route's limit (413); the message names the limit."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(413, f"request body too large: the limit for {what}")


class BodyLimitMiddleware:
    """Refuse request bodies over their route's limit, reading no more than the limit."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, what = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            too_large = BodyTooLarge(limit, what)
            answer = error_response(Request(scope), too_large.status_code, too_large.detail)
            await answer(scope, receive, send)
            return
        await self.app(scope, _counting(receive, limit, what), send)

    def limit_for(self, path: str) -> tuple[int, str]:
        """The body limit of the route at `path`, and the 413's words for it."""
        settings = self.settings
        if UPLOAD_PATHS.fullmatch(path):
            limit = settings.upload_request_limit
            return limit, f"one upload is {_size(limit)}; send the files in several uploads"
        if path == WEBHOOK_PATH:
            limit = settings.webhook_max_body_bytes
            return limit, f"a webhook is {_size(limit)}"
        if SUBMIT_PATHS.fullmatch(path):
            limit = max(SUBMIT_MAX_BODY_BYTES, settings.request_max_body_bytes)
            return limit, f"a submission is {_size(limit)}"
        if path == CATALOG_PATH:
            limit = max(CATALOG_MAX_BODY_BYTES, settings.request_max_body_bytes)
            return limit, f"a catalog is {_size(limit)}; split it into several catalogs"
        if path in (IMPORT_PATH, f"{IMPORT_PATH}/estimate"):
            limit = max(IMPORT_MAX_BODY_BYTES, settings.request_max_body_bytes)
            return limit, f"an import is {_size(limit)}; split the file into several imports"
        limit = settings.request_max_body_bytes
        return limit, f"this request is {_size(limit)}"


def _counting(receive: Receive, limit: int, what: str) -> Receive:
    received = 0

    async def receive_within_limit() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit, what)
        return message

    return receive_within_limit


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _size(limit: int) -> str:
    return f"{limit:,} bytes ({limit / 2**20:,.1f} MiB)"
