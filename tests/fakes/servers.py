"""Run ASGI apps on real loopback sockets for end-to-end tests."""

import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import uvicorn


def reserve_socket(port: int = 0) -> socket.socket:
    """A listening-ready socket on 127.0.0.1 with `port`, or a free one (know the URL before
    the app)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextmanager
def run_server(app: Any, sock: socket.socket | None = None) -> Iterator[str]:
    """Serve `app` in a background thread; yields its base URL, stops it on exit."""
    sock = sock or reserve_socket()
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    url = url_of(sock)
    try:
        yield url
    finally:
        server.should_exit = True
        try:
            _join(thread, url)
        finally:
            sock.close()


def _join(thread: threading.Thread, url: str) -> None:
    """Wait for a stopping server's thread. One still running after 20 s is a failure: its
    graceful close takes 5 s at most, so something in its shutdown does not end (the
    stop of a `pixelfleet up` would hang as long)."""
    thread.join(timeout=20)
    if thread.is_alive():
        frame = sys._current_frames().get(thread.ident or 0)
        where = "".join(traceback.format_stack(frame)) if frame else "(gone)"
        raise RuntimeError(f"the server at {url} did not stop in 20 s; it is at:\n{where}")


class RestartableServer:
    """The app that `build` makes, served on one loopback port that survives restarts: `stop`
    then `start` is a process restart (a fresh app: whatever the old one held in memory is
    gone). Use it as a context manager."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._port = free_port()
        self.url = f"http://127.0.0.1:{self._port}"
        self._serving: AbstractContextManager[str] | None = None

    def start(self) -> None:
        self._serving = run_server(self._build(), reserve_socket(self._port))
        self._serving.__enter__()

    def stop(self) -> None:
        if self._serving is not None:
            self._serving.__exit__(None, None, None)
            self._serving = None

    def __enter__(self) -> "RestartableServer":
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def free_port() -> int:
    """A port free a moment ago, for a child process to listen on."""
    sock = reserve_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port
