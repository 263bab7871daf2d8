"""A user's webhook receiver on a real loopback socket, and an independent check of Standard
Webhooks signatures (https://www.standardwebhooks.com), written from the specification
rather than from `control_plane/deliveries.py`.

`Receiver` serves every path; `script(path, ...)` says how its next requests are answered
(a status code, or `HANG` to hold the request until `release()` or for `hang_s` seconds, then
answer 204), then 204. Every request is kept in `received` (in arrival order, with when it
arrived and was answered).
"""

import asyncio
import base64
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response

from tests.fakes.servers import run_server

HANG = "hang"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    arrived: float
    answered: float | None = None
    status: int | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    url: str = ""
    hang_s: float = 5.0
    received: list[Received] = field(default_factory=list)
    _scripts: dict[str, list[int | str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        """Answer the requests held by `HANG`."""
        self._released.set()

    def script(self, path: str, *answers: int | str) -> None:
        with self._lock:
            self._scripts[path] = list(answers)

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [request for request in self.received if request.path == path]

    def wait_for(self, path: str, n: int, timeout: float = 60) -> list[Received]:
        """The first `n` requests to `path` once they were answered (AssertionError if not)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.at(path)
            if len(found) >= n and all(r.answered for r in found[:n]):
                return found[:n]
            assert time.monotonic() < deadline, f"{len(found)} of {n} requests to {path}"
            time.sleep(0.05)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{path:path}")
        async def receive(path: str, request: Request) -> Response:
            body = await request.body()
            entry = Received("/" + path, dict(request.headers), body, time.monotonic())
            with self._lock:
                self.received.append(entry)
                answers = self._scripts.get(entry.path) or []
                answer = answers.pop(0) if answers else 204
            if answer == HANG:
                deadline = time.monotonic() + self.hang_s
                while not self._released.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                answer = 204
            entry.status, entry.answered = int(answer), time.monotonic()
            return Response(status_code=int(answer))

        return app


@contextmanager
def run_receiver(hang_s: float = 5.0) -> Iterator[Receiver]:
    receiver = Receiver(hang_s=hang_s)
    with run_server(receiver.app()) as url:
        receiver.url = url
        try:
            yield receiver
        finally:
            receiver.release()


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: float = 300) -> None:
    """AssertionError unless `body` and `headers` are a message signed with `secret` (whsec_
    + base64) as Standard Webhooks specifies, sent within `tolerance_s` of now."""
    message_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert abs(time.time() - int(timestamp)) < tolerance_s, timestamp
    key = base64.b64decode(secret.split("_", 1)[1])
    expected = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, "sha256").digest()
    parts = (part.partition(",") for part in headers["webhook-signature"].split())
    signatures = [base64.b64decode(value) for version, _, value in parts if version == "v1"]
    assert any(hmac.compare_digest(expected, signature) for signature in signatures), headers
