"""One log line per request (logger `control_plane.access`, in place of uvicorn's access
log): client, method, path, the query with its secrets masked, status, duration, request id
and the user it acted for. `X-Request-Id` is taken from the request when it looks like an id
(else one is made), answered back, and carried by every line logged while answering
(`shared.logs.REQUEST_ID`), dispatch transitions included."""

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logs import REQUEST_ID

log = logging.getLogger("control_plane.access")
HEADER = b"x-request-id"
_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500  # unless an answer starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (HEADER, request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _log(scope, status, (time.perf_counter() - started) * 1000)
            REQUEST_ID.reset(token)


def _request_id(scope: Scope) -> str:
    offered = dict(scope["headers"]).get(HEADER, b"").decode("latin-1")
    return offered if _SHAPE.fullmatch(offered) else uuid.uuid4().hex


def _log(scope: Scope, status: int, duration_ms: float) -> None:
    viewer = scope.get("state", {}).get("viewer")
    user_id = viewer.user_id if viewer is not None else None
    client = scope.get("client")
    address = client[0] if client else None
    query = scope.get("query_string", b"").decode("latin-1")
    target = scope["path"] + (f"?{query}" if query else "")  # the handler masks its secrets
    log.info(
        '%s "%s %s" %d %.1fms user=%s',
        address or "-",
        scope["method"],
        target,
        status,
        duration_ms,
        user_id or "-",
        extra={
            "client": address,
            "method": scope["method"],
            "path": scope["path"],
            "query": query or None,
            "status": status,
            "duration_ms": round(duration_ms, 1),
            "user_id": user_id,
        },
    )
