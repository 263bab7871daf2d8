"""Webhook ingest against job size and API processes: does finishing a dispatch cost more in
a bigger job, and how does ingest scale with `pixelfleet api --workers N`?

    python -m bench.ingest [--small 1600] [--big 20000] [--connections 16]
                           [--workers 1,2,4] [--filler-outputs 1500000]
                           [--database-url URL] [--profile N] [--serial N]

Bulk-inserts `--filler-outputs` outputs of other jobs into a fresh database (SQLite by
default, or the MariaDB/MySQL database of `--database-url`, dropped and created again), then
for each N of `--workers` starts the control plane (`pixelfleet api --workers N`) with a stub
RunPod (accepts every `/run`, never runs anything), submits an automatic job of `--small`
images and one of `--big` images (16 per dispatch), waits until every dispatch is with the
stub, then posts every dispatch's COMPLETED webhook (16 succeeded images each, as a worker
reports them) over `--connections` connections. Prints webhooks/s, images/s, latency
percentiles and CPU per webhook (all API processes) per job, while posting and until the
relay has handed every event on (work a webhook leaves to the background counts); per N the
big job's rate as a ratio of the small one's (1.0: ingest does not grow with the job) and of
the first N's, and peak RSS. `--profile N` then posts N more webhooks to an app in this
process under pyinstrument and prints where their time went; `--serial N` posts N more one
at a time and prints the CPU each costs the request and the relay: on a shared machine,
steadier than the figures under load.
"""

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from sqlmodel import Session, col, func, select

from bench.common import (
    batches,
    cpu_seconds,
    free_port,
    peak_rss_mb,
    png,
    process,
    process_tree,
    recreate_mysql_database,
)
from control_plane.db import make_engine, migrate
from control_plane.events import Relay
from control_plane.models import (
    AnalyticsEvent,
    Dispatch,
    DispatchStatus,
    Event,
    EventCursor,
    Group,
    Job,
    JobMode,
    JobStatus,
    Output,
    OutputStatus,
    utcnow,
)
from shared import layout
from shared.ids import new_id
from shared.storage import LocalStorage

CHUNK = 16


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=1_600)
    parser.add_argument("--big", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1],
        help="API processes (`pixelfleet api --workers N`), e.g. 1,2,4: each in turn",
    )
    parser.add_argument(
        "--filler-outputs",
        type=int,
        default=0,
        help="outputs of other jobs bulk inserted first (the target: 1500000)",
    )
    parser.add_argument("--database-url", default="")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="then post N more webhooks, one at a time, to an app in this process under "
        "pyinstrument and print where their time went",
    )
    parser.add_argument(
        "--serial",
        type=int,
        default=0,
        metavar="N",
        help="then post N more webhooks, one at a time, to an app in this process, and print "
        "the CPU each costs the request and a relay pass over their events (steadier than the "
        "figures under load on a shared machine)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixelfleet-ingest-") as tmp:
        run(Path(tmp), args)


@dataclass(frozen=True)
class Row:
    """One measured job: its webhooks posted to `workers` API processes."""

    workers: int
    label: str
    size: int
    webhooks: int
    took: float
    latencies: list[float]
    cpu: float  # seconds, over every API process, while the webhooks were posted
    cpu_settled: float  # seconds, until the relay had handed every event on too
    database_cpu: float | None  # seconds, of a database server on this machine, meanwhile
    client_cpu: float  # seconds, of this bench's process (posting the webhooks), meanwhile

    @property
    def rate(self) -> float:
        return self.webhooks / self.took


def run(tmp: Path, args: argparse.Namespace) -> None:
    database_url = args.database_url or f"sqlite:///{tmp / 'pixelfleet.db'}"
    if args.database_url:
        recreate_mysql_database(database_url)
    migrate(database_url)
    engine = make_engine(database_url)
    started = time.monotonic()
    _fill(engine, args.filler_outputs)
    filled = time.monotonic() - started
    runpod_port = free_port()
    stub = _stub_runpod(runpod_port)
    rows, memory, profile, serial = [], {}, "", ""
    for workers in args.workers:
        api_port = free_port()
        env = _env(tmp, database_url, runpod_port, api_port)
        base = f"http://127.0.0.1:{api_port}"
        command = ["api", "--port", str(api_port), "--no-migrate"]
        command += ["--workers", str(workers)] if workers > 1 else []
        with process(command, env, f"{base}/healthz", tmp / f"api-{workers}.log") as pid:
            session = _ControlPlane(engine, LocalStorage(tmp / "storage"), base)
            for label, size in (("small", args.small), ("big", args.big)):
                rows.append(session.measure(workers, label, size, args.connections, pid))
            memory[workers] = [peak_rss_mb(each) for each in process_tree(pid)]
            if args.profile and not profile:
                profile = session.profile(env, args.profile)
            if args.serial and not serial:
                serial = session.serial(env, args.serial)
    stub.should_exit = True
    print(f"database              {database_url.split('@')[-1]}")
    print(f"filler                {args.filler_outputs} outputs inserted in {filled:.0f} s")
    _report(rows, args.connections, memory)
    if serial:
        print(serial)
    if profile:
        print(profile)


def _env(tmp: Path, database_url: str, runpod_port: int, api_port: int) -> dict[str, str]:
    return {
        "PIXELFLEET_DATA_DIR": str(tmp),
        "PIXELFLEET_DATABASE_URL": database_url,
        "PIXELFLEET_STORAGE_URL": str(tmp / "storage"),
        "PIXELFLEET_RUNPOD_BASE_URL": f"http://127.0.0.1:{runpod_port}",
        "PIXELFLEET_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
        "PIXELFLEET_DISPATCH_CHUNK_SIZE": str(CHUNK),
        "PIXELFLEET_DISPATCH_CHUNK_MAX": str(CHUNK),  # 16 per dispatch, whatever the job
        "PIXELFLEET_WEBHOOK_GRACE_S": "3600",
        "PIXELFLEET_MAX_INFLIGHT_DISPATCHES": "0",  # the stub holds every dispatch sent
        "PIXELFLEET_RUN_RATE_PER_S": "0",
        "PIXELFLEET_LOG_LEVEL": "WARNING",
    }


class _ControlPlane:
    """Jobs submitted to one running control plane, and their webhooks posted."""

    def __init__(self, engine: Any, storage: LocalStorage, base: str) -> None:
        self.engine, self.storage, self.base = engine, storage, base
        self.client = httpx.Client(base_url=base, timeout=120)
        self.group = self.client.post("/api/groups", json={"name": "ingest"}).json()["id"]
        self.upload = self.client.post(
            "/api/uploads", data={"group_id": self.group}, files=[("files", ("a.png", png(1)))]
        ).json()["images"][0]["id"]

    def sent_webhooks(self, size: int) -> tuple[str, list[Any]]:
        job_id = _submit(self.client, self.group, self.upload, size)
        dispatches = _wait_until_sent(self.engine, job_id, -(-size // CHUNK))
        return job_id, _webhooks(self.engine, self.storage, dispatches)

    def measure(self, workers: int, label: str, size: int, connections: int, pid: int) -> Row:
        job_id, bodies = self.sent_webhooks(size)
        tree, server = process_tree(pid), _database_server(self.engine)
        cpu_before = sum(cpu_seconds(each) for each in tree)
        database_before = cpu_seconds(server) if server else 0.0
        client_before = time.process_time()
        took, latencies = asyncio.run(_post_all(self.base, bodies, connections))
        cpu = sum(cpu_seconds(each) for each in tree) - cpu_before
        database_cpu = cpu_seconds(server) - database_before if server else None
        client_cpu = time.process_time() - client_before
        _wait_until_relayed(self.engine)
        cpu_settled = sum(cpu_seconds(each) for each in tree) - cpu_before
        progress = self.client.get(f"/api/jobs/{job_id}").json()["progress"]
        assert progress["succeeded"] == size, progress
        return Row(
            workers,
            label,
            size,
            len(bodies),
            took,
            latencies,
            cpu,
            cpu_settled,
            database_cpu,
            client_cpu,
        )

    def profile(self, env: dict[str, str], webhooks: int) -> str:
        _, bodies = self.sent_webhooks(webhooks * CHUNK)
        return asyncio.run(_profile(env, bodies))

    def serial(self, env: dict[str, str], webhooks: int) -> str:
        _, bodies = self.sent_webhooks((webhooks + SERIAL_WARM_UP) * CHUNK)
        return asyncio.run(_serial(env, bodies))


def _database_server(engine: sa.Engine) -> int | None:
    """The pid of the MariaDB/MySQL server `engine` talks to, when it runs on this machine
    (its CPU counts in what one webhook costs here); None for SQLite or a remote server."""
    import psutil

    if engine.dialect.name == "sqlite" or engine.url.host not in ("127.0.0.1", "localhost"):
        return None
    names = ("mariadbd", "mysqld")
    found = [each.pid for each in psutil.process_iter(["name"]) if each.info["name"] in names]
    return found[0] if len(found) == 1 else None


FILLER_JOB = 20_000  # outputs per filler job


def _fill(engine: sa.Engine, outputs: int) -> None:
    """`outputs` ended outputs of other jobs in a group of their own, bulk inserted."""
    if not outputs:
        return
    now = utcnow()
    group_id = new_id("grp")
    job_ids = [new_id("job") for _ in range(-(-outputs // FILLER_JOB))]
    with engine.begin() as connection:
        connection.execute(
            sa.insert(Group.__table__),  # type: ignore[attr-defined]
            [{"id": group_id, "name": "filler", "created_at": now, "updated_at": now}],
        )
        jobs = [_filler_job(job_id, group_id, now) for job_id in job_ids]
        connection.execute(sa.insert(Job.__table__), jobs)  # type: ignore[attr-defined]
    rows = (_filler_output(index, job_ids, group_id, now) for index in range(outputs))
    for batch in batches(rows, 10_000):
        with engine.begin() as connection:
            connection.execute(sa.insert(Output.__table__), batch)  # type: ignore[attr-defined]


def _filler_job(job_id: str, group_id: str, now: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "group_id": group_id,
        "batch_id": "filler",
        "mode": JobMode.AUTOMATIC,
        "status": JobStatus.COMPLETED,
        "prompt": "filler",
        "config": {},
        "created_at": now,
        "updated_at": now,
    }


def _filler_output(index: int, job_ids: list[str], group_id: str, now: Any) -> dict[str, Any]:
    return {
        "id": new_id("out"),
        "job_id": job_ids[index // FILLER_JOB],
        "group_id": group_id,
        "dispatch_id": new_id("dsp"),
        "position": index % FILLER_JOB,
        "status": OutputStatus.SUCCEEDED,
        "prompt": "p",
        "reference_ids": [],
        "kind": "image",
        "seed": index,
        "params": {},
        "attempts": 1,
        "created_at": now,
        "updated_at": now,
    }


@contextlib.asynccontextmanager
async def _served_here(env: dict[str, str]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The control plane's app started in this process, configured as `env` says (its
    services' timers off), and a client that calls it directly."""
    from control_plane.app import create_app
    from control_plane.settings import Settings

    configured: dict[str, Any] = {k.removeprefix("PIXELFLEET_").lower(): v for k, v in env.items()}
    app = create_app(Settings(**configured), reconcile=False)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        yield app, client


async def _profile(env: dict[str, str], bodies: list[Any]) -> str:
    """Post `bodies` one after another to the real app run in this process, its blocking
    work on this thread (not a thread pool) so that the profiler sees all of it."""
    from pyinstrument import Profiler

    from control_plane.web.api import webhook as webhook_route

    async def inline(function: Any, *args: Any, **_: Any) -> Any:
        return function(*args)

    webhook_route.run_in_threadpool = inline  # type: ignore[assignment]
    webhook_route.anyio.to_thread.run_sync = inline  # type: ignore[assignment]
    profiler = Profiler(async_mode="disabled")
    async with _served_here(env) as (_, client):
        profiler.start()
        await _post_each(client, bodies)
        profiler.stop()
    return profiler.output_text(unicode=True, show_all=False)


SERIAL_WARM_UP = 20  # webhooks posted before measuring (caches, compiled statements)
SERIAL_CHUNK = 50  # webhooks per measured chunk
RELAY_REPLAYS = 5


async def _serial(env: dict[str, str], bodies: list[Any]) -> str:
    """Post `bodies` one after another to the app run in this process: the CPU of this
    process per webhook over chunks of SERIAL_CHUNK (the request path, its worker threads
    included), then of a relay pass over their events, replayed RELAY_REPLAYS times (the
    consumers' cursors set back, the analytics rows it wrote deleted). The app's consumers
    are moved to a relay of the bench's own, so that the app's passes do nothing meanwhile."""
    async with _served_here(env) as (app, client):
        platform = app.state.platform
        relay = Relay(platform.engine)
        for consumer in platform.relay.consumers:
            relay.subscribe(consumer)
        platform.relay.consumers.clear()
        warm_up, measured = bodies[:SERIAL_WARM_UP], bodies[SERIAL_WARM_UP:]
        await _post_each(client, warm_up)
        relay.run_pass()
        start = _relay_start(platform.engine)
        requests = []
        for first in range(0, len(measured), SERIAL_CHUNK):
            chunk = measured[first : first + SERIAL_CHUNK]
            before = time.process_time()
            await _post_each(client, chunk)
            requests.append((time.process_time() - before) / len(chunk) * 1000)
        passes = _relay_replays(platform.engine, relay, start, len(measured))
    return (
        f"serial, in this process, {len(measured)} webhooks: request "
        f"{min(requests):.2f} ms CPU/webhook (least of chunks of {SERIAL_CHUNK}; median "
        f"{statistics.median(requests):.2f}), relay {min(passes):.2f} ms CPU/webhook (least "
        f"of {RELAY_REPLAYS} passes over their events; median {statistics.median(passes):.2f})"
    )


async def _post_each(client: httpx.AsyncClient, bodies: list[Any]) -> None:
    for params, body in bodies:
        answer = await client.post("/api/webhook/runpod", params=params, json=body)
        assert answer.status_code == 200, answer.text


def _relay_start(engine: sa.Engine) -> tuple[dict[str, int], int]:
    """Where the relay's consumers stand, and the last analytics row."""
    with Session(engine) as session:
        cursors = {each.consumer: each.position for each in session.exec(select(EventCursor))}
        top = session.exec(select(func.coalesce(func.max(AnalyticsEvent.id), 0))).one()
    return cursors, top or 0


def _relay_replays(
    engine: sa.Engine, relay: Relay, start: tuple[dict[str, int], int], webhooks: int
) -> list[float]:
    """CPU ms per webhook of each of RELAY_REPLAYS relay passes from `start`."""
    cursors, top = start
    analytics = AnalyticsEvent.__table__  # type: ignore[attr-defined]
    positions = EventCursor.__table__  # type: ignore[attr-defined]
    passes = []
    for _ in range(RELAY_REPLAYS):
        with engine.begin() as connection:
            for consumer, position in cursors.items():
                connection.execute(
                    sa.update(positions)
                    .where(positions.c.consumer == consumer)
                    .values(position=position)
                )
            connection.execute(sa.delete(analytics).where(analytics.c.id > top))
        before = time.process_time()
        relay.run_pass()
        passes.append((time.process_time() - before) / webhooks * 1000)
    return passes


def _stub_runpod(port: int) -> uvicorn.Server:
    """RunPod's `/run`, accepting everything and running nothing."""
    app = FastAPI()

    @app.post("/v2/{endpoint}/run")
    def run_job(endpoint: str) -> dict[str, str]:
        return {"id": str(uuid.uuid4()), "status": "IN_QUEUE"}

    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server


def _submit(client: httpx.Client, group: str, upload: str, size: int) -> str:
    answer = client.post(
        "/api/jobs/submit",
        json={"group_id": group, "mode": "automatic", "prompt": "p", "images": [upload] * size},
    )
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["jobs"][0]["id"]
    return job_id


def _wait_until_sent(engine: Any, job_id: str, count: int) -> list[Dispatch]:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with Session(engine) as session:
            sent = session.exec(
                select(func.count())
                .select_from(Dispatch)
                .where(
                    col(Dispatch.job_id) == job_id,
                    col(Dispatch.status) == DispatchStatus.SUBMITTED,
                )
            ).one()
            if sent == count:
                return list(session.exec(select(Dispatch).where(Dispatch.job_id == job_id)).all())
        time.sleep(0.2)
    raise RuntimeError(f"only some of {count} dispatches reached the stub")


def _wait_until_relayed(engine: Any) -> None:
    """Until every consumer's cursor is past the last event: the work webhooks leave to the
    relay (the analytics log, users' webhooks) is done too."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with Session(engine) as session:
            last = session.exec(select(func.max(Event.id))).one() or 0
            behind = session.exec(
                select(func.count()).select_from(EventCursor).where(EventCursor.position < last)
            ).one()
        if not behind:
            return
        time.sleep(0.05)
    raise RuntimeError("the relay did not catch up within 10 minutes")


def _webhooks(engine: Any, storage: LocalStorage, dispatches: list[Dispatch]) -> list[Any]:
    """Each dispatch's webhook URL and COMPLETED body, as a worker would report its images."""
    digest = hashlib.sha256(b"image").hexdigest()
    by_dispatch: dict[str, list[Output]] = {}
    with Session(engine) as session:
        for output in session.exec(
            select(Output).where(col(Output.dispatch_id).in_([d.id for d in dispatches]))
        ):
            by_dispatch.setdefault(output.dispatch_id or "", []).append(output)
    bodies = []
    for dispatch in dispatches:
        results = []
        for output in by_dispatch[dispatch.id]:
            stem = layout.output_stem(output.group_id, output.job_id, output.id)
            results.append(
                {
                    "output_id": output.id,
                    "status": "succeeded",
                    "provider": "offline",
                    "model": output.model,
                    "seed": output.seed,
                    "output_uri": storage.uri(layout.output_key(stem, "image/png")),
                    "thumbnail_uri": storage.uri(layout.thumbnail_key(stem)),
                    "content_type": "image/png",
                    "width": 512,
                    "height": 512,
                    "bytes": 1000,
                    "sha256": digest,
                    "latency_ms": 500,
                }
            )
        body = {
            "id": dispatch.runpod_job_id,
            "status": "COMPLETED",
            "output": {"version": 1, "dispatch_id": dispatch.id, "results": results},
        }
        params = {"dispatch": dispatch.id, "token": dispatch.webhook_token}
        bodies.append((params, body))
    return bodies


async def _post_all(base: str, bodies: list[Any], connections: int) -> tuple[float, list[float]]:
    """Post every webhook over `connections` kept-alive connections; (seconds, latencies).
    Each request is encoded beforehand and written and read with plain asyncio streams, so
    that this bench's own CPU (which shares the machine's cores with the API and the
    database) is little more than the sockets' (httpx spent ~1.7 ms per webhook)."""
    url = httpx.URL(base)
    requests = iter([_encoded(url, params, body) for params, body in bodies])
    latencies: list[float] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        for request in requests:
            started = time.perf_counter()
            writer.write(request)
            status, answer = await _answer(reader)
            latencies.append(time.perf_counter() - started)
            assert status == 200, answer
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return time.perf_counter() - started, latencies


def _encoded(url: httpx.URL, params: dict[str, str], body: dict[str, Any]) -> bytes:
    """A webhook's HTTP/1.1 request, as bytes."""
    content = json.dumps(body).encode()
    target = httpx.URL("/api/webhook/runpod", params=params)
    head = (
        f"POST {target.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n\r\n"
    )
    return head.encode() + content


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and body of the next answer on a kept-alive connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:")
    )
    return status, await reader.readexactly(length)


def _cpu_split(row: Row) -> str:
    """CPU per webhook of the API, the database server and this bench, and the rate at which
    they would take every core of this machine."""
    parts = {"API": row.cpu_settled, "bench client": row.client_cpu}
    if row.database_cpu is not None:
        parts["database server"] = row.database_cpu
    per_webhook = {name: seconds / row.webhooks * 1000 for name, seconds in parts.items()}
    total = sum(per_webhook.values())
    cores = os.cpu_count() or 1
    split = ", ".join(f"{name} {ms:.1f}" for name, ms in per_webhook.items())
    return (
        f"CPU ms/webhook: {split}; {total:.1f} in all: {cores} cores allow at most "
        f"{cores * 1000 / total:.0f} webhooks/s"
    )


def _report(rows: list[Row], connections: int, memory: dict[int, list[float]]) -> None:
    print(f"connections           {connections}, {CHUNK} images per webhook")
    rates = {(row.workers, row.label): row.rate for row in rows}
    for row in rows:
        cuts = statistics.quantiles(row.latencies, n=100)
        print(
            f"{row.workers} process(es) {row.label:5} job {row.size:>6} images  "
            f"{row.rate:7.1f} webhooks/s ({row.size / row.took:6.0f} images/s)  "
            f"p50 {cuts[49] * 1000:5.0f} ms  p99 {cuts[98] * 1000:5.0f} ms  "
            f"CPU {row.cpu / row.webhooks * 1000:5.1f} ms/webhook "
            f"({row.cpu_settled / row.webhooks * 1000:.1f} with the relay's share)"
        )
        print(f"{'':27}{_cpu_split(row)}")
    first = min(memory)
    for workers, peaks in memory.items():
        ratio = rates[workers, "big"] / rates[workers, "small"]
        scaling = rates[workers, "big"] / rates[first, "big"]
        print(
            f"{workers} process(es)         big/small {ratio:.2f} (1.0: independent of job "
            f"size)  big vs {first} process(es) {scaling:.2f}  peak RSS "
            f"{max(peaks):.0f} MB per process, {sum(peaks):.0f} MB in all"
        )


if __name__ == "__main__":
    main()
