"""What the benchmarks share: process start-up, memory, synthetic images, a GCS emulator."""

import io
import itertools
import logging
import multiprocessing
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import TypeVar

import httpx
import psutil
import sqlalchemy as sa
from PIL import Image

from control_plane.db import make_engine

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


ROLES = ("api", "relay", "endpoint", "up")  # `pixelfleet …` commands, as their processes run


@dataclass
class RssSampler:
    """The peak RSS (MB) of a process and its descendants by role (the `pixelfleet` command
    each runs: api, relay, endpoint, up), sampled every `interval_s` on a thread."""

    root: int
    interval_s: float = 0.05
    peaks: dict[str, float] = field(default_factory=dict)
    running: bool = True

    def start(self) -> "RssSampler":
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def take(self) -> dict[str, float]:
        """The peaks since the last take, and start again."""
        peaks, self.peaks = self.peaks, {}
        return peaks

    def _sample(self) -> None:
        while self.running:
            for pid in process_tree(self.root):
                try:
                    role = next((r for r in ROLES if r in psutil.Process(pid).cmdline()), "?")
                    megabytes = rss_mb(pid)
                except (psutil.Error, OSError):  # it ended meanwhile
                    continue
                self.peaks[role] = max(self.peaks.get(role, 0.0), megabytes)
            time.sleep(self.interval_s)


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (e.g. `pixelfleet api --workers N`'s processes)."""
    return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]


def batches(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    """`rows` in lists of at most `size` (bulk inserts)."""
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@contextmanager
def process(args: list[str], env: dict[str, str], health_url: str, log: Path) -> Iterator[int]:
    """Start `python -m control_plane.cli ARGS`, wait until `health_url` answers, yield its pid."""
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "control_plane.cli", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(health_url, timeout=1).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{args[0]} did not start; see {log}")
                time.sleep(0.1)
            yield child.pid
        finally:
            child.terminate()
            child.wait(timeout=30)


def png(index: int, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (index % 256, (index * 7) % 256, (index * 13) % 256)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


@contextmanager
def gcs_emulator() -> Iterator[str]:
    """gcp-storage-emulator (in memory) in a child process; yields its URL.

    The URL is the value for STORAGE_EMULATOR_HOST. A child process of its own rather than a
    thread here: the emulator is pure Python, and sharing this process's GIL with the
    benchmark's own work (hashing while populating, reading the ZIP) would slow both.
    """
    context = multiprocessing.get_context("spawn")
    ports: Queue[int] = context.Queue()
    child = context.Process(target=_serve_gcs_emulator, args=(ports,), daemon=True)
    child.start()
    try:
        yield f"http://127.0.0.1:{_emulator_port(child, ports)}"
    finally:
        child.terminate()
        child.join(timeout=10)


def _emulator_port(child: multiprocessing.process.BaseProcess, ports: "Queue[int]") -> int:
    deadline = time.monotonic() + 60
    while True:
        try:
            return ports.get(timeout=0.2)
        except queue.Empty:
            if not child.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the GCS emulator did not start") from None


def _serve_gcs_emulator(ports: "Queue[int]") -> None:
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)  # it logs every response
    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    httpd = server._api._httpd
    # It listens with a backlog of 5 and serves one connection at a time: more concurrent
    # clients (the read-ahead of GCSStorage.iter_many) get SYNs dropped and stall ~1 s each.
    httpd.socket.listen(128)
    ports.put(int(httpd.server_address[1]))
    threading.Event().wait()  # serve until terminated


def recreate_mysql_database(database_url: str) -> None:
    """Drop the MySQL/MariaDB database of `database_url` and create it empty (a benchmark's
    fresh start, whatever migrations made the tables there before)."""
    url = sa.engine.make_url(database_url)
    server = make_engine(url.set(database="mysql").render_as_string(hide_password=False))
    with server.begin() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{url.database}`")
        connection.exec_driver_sql(f"CREATE DATABASE `{url.database}`")
    server.dispose()
