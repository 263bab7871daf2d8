"""Submitting a big job, and the API's memory while it runs (issue 12, targets 4 and 5).

    python -m bench.submit [--images 20000] [--connections 8] [--database-url URL]
                           [--inflight 200] [--profile]

Starts the control plane as its own process (`pixelfleet api`) with a stub RunPod in this
process that accepts every `/run` at once and checks RunPod's limits: `/run` calls in any
10 s window (RunPod allows 1,000) and RunPod jobs in flight (accepted and not yet completed;
RunPod allows 200). An instant endpoint takes everything it may: the control plane's
in-flight cap is set to RunPod's 200 (`--inflight`). The stub completes nothing by itself:
a RunPod job counts as completed once this bench has posted its COMPLETED webhook.

1. Target 4: an automatic job of `--images` images over one upload is submitted; prints the
   answer's time, the API's RSS before, after and at its peak, and the time from the answer
   until every image is with the stub (no webhook is posted meanwhile).
2. Target 5: the job then runs to its end: every dispatch's COMPLETED webhook (all its images
   succeeded, as a worker reports them) is posted over `--connections` connections, while a
   viewer loads the UI job page and `GET /api/jobs/{id}` every 3 s and the download list
   (`GET /api/download/{group}`) is read twice (half way and at the end); the API's RSS is
   sampled every 50 ms throughout, its peak compared with 250 MB.

`--profile` then submits the same job once more to an app in this process under pyinstrument
(its blocking work on this thread) and prints where the answer's time went.
"""

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import uvicorn
from fastapi import FastAPI, Request

from bench.common import (
    RssSampler,
    cpu_seconds,
    free_port,
    peak_rss_mb,
    png,
    process,
    process_tree,
    recreate_mysql_database,
    rss_mb,
)
from shared import layout
from shared.storage import LocalStorage
from shared.waiting import wait_at_most

RUN_LIMIT_PER_10S = 1_000  # RunPod's documented /run rate limit
IN_FLIGHT_LIMIT = 200  # and its jobs in flight
ANSWER_TARGET_S = 1.0
GROWTH_TARGET_MB = 50.0
ALL_SENT_TARGET_S = 3.0
RSS_TARGET_MB = 250.0
VIEWER_PERIOD_S = 3.0


@dataclass
class StubRunPod:
    """What the stub saw: each accepted `/run` body by RunPod job id, and the limits."""

    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_times: deque[float] = field(default_factory=deque)
    images: int = 0
    completed: set[str] = field(default_factory=set)
    completed_images: int = 0
    max_per_10s: int = 0
    max_in_flight: int = 0
    max_body_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, body: bytes, parsed: dict[str, Any]) -> str:
        runpod_job_id = str(uuid.uuid4())
        now = time.monotonic()
        with self.lock:
            self.runs[runpod_job_id] = parsed
            self.images += len(parsed["input"]["items"])
            self.run_times.append(now)
            while self.run_times[0] < now - 10:
                self.run_times.popleft()
            self.max_per_10s = max(self.max_per_10s, len(self.run_times))
            self.max_in_flight = max(self.max_in_flight, len(self.runs) - len(self.completed))
            self.max_body_bytes = max(self.max_body_bytes, len(body))
        return runpod_job_id

    def complete(self, runpod_job_id: str) -> None:
        with self.lock:
            self.completed.add(runpod_job_id)
            self.completed_images += len(self.runs[runpod_job_id]["input"]["items"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--database-url", default="")
    parser.add_argument(
        "--inflight",
        type=int,
        default=200,
        help="PIXELFLEET_MAX_INFLIGHT_DISPATCHES: an endpoint as large as RunPod allows",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then submit the job again to an app in this process under pyinstrument and "
        "print where the answer's time went",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixelfleet-submit-") as tmp:
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
        "PIXELFLEET_SUBMIT_MAX_IMAGES": str(max(args.images, 20_000)),
        "PIXELFLEET_WEBHOOK_GRACE_S": "3600",
        "PIXELFLEET_MAX_INFLIGHT_DISPATCHES": str(args.inflight),
        "PIXELFLEET_LOG_LEVEL": "WARNING",
    }
    base = f"http://127.0.0.1:{api_port}"
    stub = StubRunPod()
    server = _serve_stub(stub, runpod_port)
    with process(["api", "--port", str(api_port)], env, f"{base}/healthz", tmp / "api.log") as pid:
        client = httpx.Client(base_url=base, timeout=300)
        group = client.post("/api/groups", json={"name": "submit"}).json()["id"]
        upload = client.post(
            "/api/uploads", data={"group_id": group}, files=[("files", ("a.png", png(1)))]
        ).json()["images"][0]["id"]
        client.get(f"/api/groups/{group}")  # the routes' first-use costs, before measuring
        sampler = RssSampler(pid).start()
        submitted = _submit(client, stub, pid, group, upload, args.images)
        ran = asyncio.run(_run_job(base, stub, group, submitted["job_id"], args, tmp))
        sampler.running = False
        hwm = peak_rss_mb(pid)
        relay = [peak_rss_mb(child) for child in process_tree(pid)[1:]]
    _report(args, database_url, stub, submitted, ran, max(sampler.peaks.get("api", 0.0), hwm))
    if relay:  # on MySQL/MariaDB the relay runs beside the API in a process of its own
        print(f"relay process peak     {max(relay):.0f} MB (its own process, beside the API's)")
    if args.profile:
        print(asyncio.run(_profile(env, group, upload, args.images)))
    server.should_exit = True


def _serve_stub(stub: StubRunPod, port: int) -> uvicorn.Server:
    app = FastAPI()

    @app.post("/v2/{endpoint}/run")
    async def run_job(endpoint: str, request: Request) -> dict[str, str]:
        body = await request.body()
        return {"id": stub.accept(body, json.loads(body)), "status": "IN_QUEUE"}

    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server


def _submit(
    client: httpx.Client, stub: StubRunPod, pid: int, group: str, upload: str, images: int
) -> dict[str, Any]:
    before, cpu_before = rss_mb(pid), cpu_seconds(pid)
    started = time.perf_counter()
    answer = client.post(
        "/api/jobs/submit",
        json={"group_id": group, "mode": "automatic", "prompt": "p", "images": [upload] * images},
    )
    answered = time.perf_counter()
    cpu = cpu_seconds(pid) - cpu_before
    assert answer.status_code == 201, answer.text
    after = rss_mb(pid)
    deadline = answered + 30
    while stub.images < images and time.perf_counter() < deadline:
        time.sleep(0.01)
    all_sent = time.perf_counter() - answered if stub.images >= images else float("nan")
    return {
        "job_id": answer.json()["jobs"][0]["id"],
        "answer_s": answered - started,
        "answer_cpu_s": cpu,
        "rss_before": before,
        "rss_after": after,
        "peak_after_send": peak_rss_mb(pid),
        "all_sent_s": all_sent,
        "dispatches": len(stub.runs),
    }


async def _run_job(
    base: str, stub: StubRunPod, group: str, job_id: str, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """Post every dispatch's webhook while a viewer polls and the download list is read."""
    storage = LocalStorage(tmp / "storage")
    limits = httpx.Limits(max_connections=args.connections + 4)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        stop = asyncio.Event()
        viewer = asyncio.create_task(_view(client, job_id, stop))
        started = time.perf_counter()
        first_list = None
        while len(stub.completed) < len(stub.runs) or stub.images < args.images:
            waiting = [r for r in list(stub.runs) if r not in stub.completed]
            for start in range(0, len(waiting), args.connections):
                some = waiting[start : start + args.connections]
                await _post_webhooks(client, stub, storage, some, args.connections)
                if first_list is None and 2 * stub.completed_images >= args.images:
                    first_list = await _download_list(client, group)
            await asyncio.sleep(0.05)
        took = time.perf_counter() - started
        stop.set()
        views = await viewer
        last_list = await _download_list(client, group)
        job = (await client.get(f"/api/jobs/{job_id}", params={"image_limit": 0})).json()
    return {
        "took_s": took,
        "views": views,
        "lists": (first_list or (0, 0.0), last_list),
        "progress": job["progress"],
        "status": job["status"],
    }


async def _post_webhooks(
    client: httpx.AsyncClient,
    stub: StubRunPod,
    storage: LocalStorage,
    runpod_job_ids: list[str],
    connections: int,
) -> None:
    limit = asyncio.Semaphore(connections)

    async def post(runpod_job_id: str) -> None:
        async with limit:
            params, body = _webhook(storage, runpod_job_id, stub.runs[runpod_job_id])
            stub.complete(runpod_job_id)  # RunPod's job ends before its webhook is sent
            answer = await client.post("/api/webhook/runpod", params=params, json=body)
            assert answer.status_code == 200, answer.text

    await asyncio.gather(*(post(runpod_job_id) for runpod_job_id in runpod_job_ids))


def _webhook(
    storage: LocalStorage, runpod_job_id: str, run: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Any]]:
    """A COMPLETED webhook as RunPod posts it (the input echoed), every image succeeded."""
    query = {key: values[0] for key, values in parse_qs(urlsplit(run["webhook"]).query).items()}
    results = [
        {
            "output_id": item["output_id"],
            "status": "succeeded",
            "provider": "offline",
            "model": item["params"]["model"],
            "seed": item["params"]["seed"],
            "output_uri": storage.uri(layout.output_key(item["output_key"], "image/png")),
            "thumbnail_uri": storage.uri(layout.thumbnail_key(item["output_key"])),
            "content_type": "image/png",
            "width": 512,
            "height": 512,
            "bytes": 1000,
            "sha256": "0" * 64,
            "latency_ms": 500,
        }
        for item in run["input"]["items"]
    ]
    output = {"version": 1, "dispatch_id": run["input"]["dispatch_id"], "results": results}
    body = {"id": runpod_job_id, "status": "COMPLETED", "output": output, "input": run["input"]}
    return query, body


async def _view(client: httpx.AsyncClient, job_id: str, stop: asyncio.Event) -> int:
    """A browser tab on the job: its page and the job's JSON every 3 s; returns how many."""
    views = 0
    while not stop.is_set():
        page = await client.get(f"/jobs/{job_id}")
        api = await client.get(f"/api/jobs/{job_id}")
        assert page.status_code == 200 and api.status_code == 200, (page.text, api.text)
        views += 1
        await wait_at_most(stop.wait(), VIEWER_PERIOD_S)
    return views


async def _download_list(client: httpx.AsyncClient, group: str) -> tuple[int, float]:
    """Read the group's download list as JSON lines: (images listed, seconds)."""
    started, lines = time.perf_counter(), 0
    headers = {"accept": "application/x-ndjson"}
    async with client.stream("GET", f"/api/download/{group}", headers=headers) as answer:
        assert answer.status_code == 200
        async for line in answer.aiter_lines():
            lines += bool(line.strip())
    return lines, time.perf_counter() - started


async def _profile(env: dict[str, str], group: str, upload: str, images: int) -> str:
    """Submit the job to the real app run in this process, its blocking work on this thread
    (not a thread pool) so that the profiler sees all of it."""
    from pyinstrument import Profiler

    from control_plane.app import create_app
    from control_plane.settings import Settings
    from control_plane.web.api import jobs as jobs_route

    async def inline(function: Any, *args: Any) -> Any:
        return function(*args)

    jobs_route.run_in_threadpool = inline  # type: ignore[assignment]
    app = create_app(
        Settings(**{k.removeprefix("PIXELFLEET_").lower(): v for k, v in env.items()}),
        reconcile=False,
    )
    body = {"group_id": group, "mode": "automatic", "prompt": "p", "images": [upload] * images}
    profiler = Profiler(async_mode="disabled")
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=300) as client,
    ):
        profiler.start()
        answer = await client.post("/api/jobs/submit", json=body)
        profiler.stop()
        assert answer.status_code == 201, answer.text
    return profiler.output_text(unicode=True, show_all=False)


def _report(
    args: argparse.Namespace,
    database_url: str,
    stub: StubRunPod,
    submitted: dict[str, Any],
    ran: dict[str, Any],
    peak: float,
) -> None:
    growth = submitted["peak_after_send"] - submitted["rss_before"]
    print(f"database               {database_url.split('@')[-1]}")
    print(f"load average           {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"images                 {args.images:,} in {len(stub.runs)} dispatches")
    print(
        f"submit answer          {submitted['answer_s']:.2f} s   "
        f"(target ≤ {ANSWER_TARGET_S:.0f} s: ratio {submitted['answer_s'] / ANSWER_TARGET_S:.2f}); "
        f"API CPU meanwhile {submitted['answer_cpu_s']:.2f} s"
    )
    print(
        f"API RSS                before {submitted['rss_before']:.0f} MB, after the answer "
        f"{submitted['rss_after']:.0f} MB, peak until all sent "
        f"{submitted['peak_after_send']:.0f} MB"
    )
    print(
        f"RSS growth             {growth:.0f} MB   "
        f"(target ≤ {GROWTH_TARGET_MB:.0f} MB: ratio {growth / GROWTH_TARGET_MB:.2f})"
    )
    print(
        f"all images with stub   {submitted['all_sent_s']:.2f} s after the answer   "
        f"(target ≤ {ALL_SENT_TARGET_S:.0f} s: ratio "
        f"{submitted['all_sent_s'] / ALL_SENT_TARGET_S:.2f})"
    )
    print(
        f"/run per 10 s, max     {stub.max_per_10s}   (RunPod: {RUN_LIMIT_PER_10S}: ratio "
        f"{stub.max_per_10s / RUN_LIMIT_PER_10S:.2f})"
    )
    print(
        f"in flight, max         {stub.max_in_flight}   (RunPod: {IN_FLIGHT_LIMIT}: ratio "
        f"{stub.max_in_flight / IN_FLIGHT_LIMIT:.2f})"
    )
    print(f"largest /run body      {stub.max_body_bytes / 2**20:.2f} MB   (RunPod: 10 MB)")
    (first, first_s), (last, last_s) = ran["lists"]
    print(
        f"job run to its end     {ran['took_s']:.1f} s of webhooks over {args.connections} "
        f"connections; {ran['views']} viewer reloads; status {ran['status']}, "
        f"{ran['progress']['succeeded']:,} succeeded"
    )
    print(f"download list          {first:,} images in {first_s:.2f} s, {last:,} in {last_s:.2f} s")
    print(
        f"API RSS peak, all      {peak:.0f} MB   "
        f"(target ≤ {RSS_TARGET_MB:.0f} MB: ratio {peak / RSS_TARGET_MB:.2f})"
    )


if __name__ == "__main__":
    main()
