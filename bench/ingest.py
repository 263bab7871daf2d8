"""Webhook ingest against job size: does finishing a dispatch cost more in a bigger job?

    python -m bench.ingest [--small 1600] [--big 20000] [--connections 16]
                           [--database-url URL]

Starts the control plane as its own process with a stub RunPod (accepts every `/run`, never
runs anything), submits an automatic job of `--small` images and one of `--big` images (16
per dispatch), waits until every dispatch is with the stub, then posts every dispatch's
COMPLETED webhook (16 succeeded images each, as a worker reports them) over `--connections`
connections. Prints webhooks/s, images/s and latency percentiles per job, the big job's rate
as a ratio of the small one's (1.0: ingest does not grow with the job), and the control
plane's CPU per webhook and peak RSS.
"""

import argparse
import asyncio
import hashlib
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from sqlmodel import Session, col, func, select

from bench.common import (
    cpu_seconds,
    free_port,
    peak_rss_mb,
    png,
    process,
    recreate_mysql_database,
)
from control_plane.db import make_engine
from control_plane.models import Dispatch, DispatchStatus, Output
from shared import layout
from shared.storage import LocalStorage

CHUNK = 16


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=1_600)
    parser.add_argument("--big", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--database-url", default="")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="then post N more webhooks, one at a time, to an app in this process under "
        "pyinstrument and print where their time went",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixelfleet-ingest-") as tmp:
        run(Path(tmp), args)


def run(tmp: Path, args: argparse.Namespace) -> None:
    runpod_port, api_port = free_port(), free_port()
    database_url = args.database_url or f"sqlite:///{tmp / 'pixelfleet.db'}"
    if args.database_url:
        recreate_mysql_database(database_url)
    env = {
        "PIXELFLEET_DATA_DIR": str(tmp),
        "PIXELFLEET_DATABASE_URL": database_url,
        "PIXELFLEET_STORAGE_URL": str(tmp / "storage"),
        "PIXELFLEET_RUNPOD_BASE_URL": f"http://127.0.0.1:{runpod_port}",
        "PIXELFLEET_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
        "PIXELFLEET_DISPATCH_CHUNK_SIZE": str(CHUNK),
        "PIXELFLEET_WEBHOOK_GRACE_S": "3600",
        "PIXELFLEET_MAX_INFLIGHT_DISPATCHES": "0",  # the stub holds every dispatch sent
        "PIXELFLEET_RUN_RATE_PER_S": "0",
        "PIXELFLEET_LOG_LEVEL": "WARNING",
    }
    base = f"http://127.0.0.1:{api_port}"
    stub = _stub_runpod(runpod_port)
    with process(["api", "--port", str(api_port)], env, f"{base}/healthz", tmp / "api.log") as pid:
        engine = make_engine(database_url)
        client = httpx.Client(base_url=base, timeout=120)
        group = client.post("/api/groups", json={"name": "ingest"}).json()["id"]
        upload = client.post(
            "/api/uploads", data={"group_id": group}, files=[("files", ("a.png", png(1)))]
        ).json()["images"][0]["id"]
        storage = LocalStorage(tmp / "storage")
        rows = []
        for label, size in (("small", args.small), ("big", args.big)):
            job_id = _submit(client, group, upload, size)
            dispatches = _wait_until_sent(engine, job_id, -(-size // CHUNK))
            bodies = _webhooks(engine, storage, dispatches)
            cpu_before = cpu_seconds(pid)
            took, latencies = asyncio.run(_post_all(base, bodies, args.connections))
            cpu = cpu_seconds(pid) - cpu_before
            progress = client.get(f"/api/jobs/{job_id}").json()["progress"]
            assert progress["succeeded"] == size, progress
            rows.append((label, size, len(bodies), took, latencies, cpu))
        rss = peak_rss_mb(pid)
        if args.profile:
            job_id = _submit(client, group, upload, args.profile * CHUNK)
            dispatches = _wait_until_sent(engine, job_id, args.profile)
            profile = asyncio.run(_profile(env, _webhooks(engine, storage, dispatches)))
    stub.should_exit = True
    _report(rows, args.connections, database_url, rss)
    if args.profile:
        print(profile)


async def _profile(env: dict[str, str], bodies: list[Any]) -> str:
    """Post `bodies` one after another to the real app run in this process, its blocking
    work on this thread (not a thread pool) so that the profiler sees all of it."""
    from pyinstrument import Profiler

    from control_plane.app import create_app
    from control_plane.settings import Settings
    from control_plane.web.api import webhook as webhook_route

    async def inline(function: Any, *args: Any) -> Any:
        return function(*args)

    webhook_route.run_in_threadpool = inline  # type: ignore[assignment]
    app = create_app(
        Settings(**{k.removeprefix("PIXELFLEET_").lower(): v for k, v in env.items()}),
        reconcile=False,
    )
    transport = httpx.ASGITransport(app=app)
    profiler = Profiler(async_mode="disabled")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            profiler.start()
            for params, body in bodies:
                answer = await client.post("/api/webhook/runpod", params=params, json=body)
                assert answer.status_code == 200, answer.text
            profiler.stop()
    return profiler.output_text(unicode=True, show_all=False)


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
    limit = asyncio.Semaphore(connections)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def post(params: dict[str, str], body: dict[str, Any]) -> None:
            async with limit:
                started = time.perf_counter()
                answer = await client.post("/api/webhook/runpod", params=params, json=body)
                latencies.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text

        started = time.perf_counter()
        await asyncio.gather(*(post(params, body) for params, body in bodies))
        return time.perf_counter() - started, latencies


def _report(rows: list[Any], connections: int, database_url: str, rss: float) -> None:
    print(f"database              {database_url.split('@')[-1]}")
    print(f"connections           {connections}, {CHUNK} images per webhook")
    rates = {}
    for label, size, webhooks, took, latencies, cpu in rows:
        cuts = statistics.quantiles(latencies, n=100)
        rates[label] = webhooks / took
        print(
            f"{label:5} job {size:>6} images  {webhooks / took:7.1f} webhooks/s "
            f"({size / took:7.0f} images/s)  p50 {cuts[49] * 1000:5.0f} ms  "
            f"p99 {cuts[98] * 1000:5.0f} ms  "
            f"control-plane CPU {cpu / webhooks * 1000:5.1f} ms/webhook"
        )
    ratio = rates["big"] / rates["small"]
    print(f"ratio big/small       {ratio:.2f}   (1.0: independent of job size)")
    print(f"peak RSS control      {rss:.0f} MB")


if __name__ == "__main__":
    main()
