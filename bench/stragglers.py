"""Straggler-proof throughput and time to first image (issue 12, targets 6 and 7).

    python -m bench.stragglers [--sets 25] [--set-size 4] [--latency-s 2] [--in-flight 20]

The side-by-side workload: 100 image edits as 25 sets of 4 (one RunPod job per set), 2 s
model latency, 20 Gemini calls in flight, a 429 every fifth call (RetryInfo retryDelay 1 s),
a 503 once on some prompts, some prompts blocked for safety. Its fake `generateContent` runs
in its own process and delays every answer (errors too) by the latency. The worker side is
the real handler and Gemini provider inside the local RunPod endpoint's engine
(`worker/local_endpoint.py`), which takes jobs as RunPod does through the handler's
concurrency_modifier (asked before each take, again 1 s later when full).

Prints wall time, the calls the fake answered, ideal = calls x latency / in-flight, their
ratio (target <= 1.25), images succeeded / blocked (with reasons) / failed. Then time to first
image on the tests' stack (`tests/fakes/stack.py`: control plane, local endpoint, worker, on
SQLite) with the same fake: one automatic job of 16 images (one dispatch, whose fifth call
gets a 429, so it ends after a retry), from the submit's answer until the API shows the job's
first image, next to the target latency + 1 s.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import free_port, png
from bench.worker import gemini_response, wait_until_up
from shared.contract import DispatchInput, ImageParams, WorkItem
from shared.storage import LocalStorage
from worker.handler import make_handler
from worker.local_endpoint import EndpointConfig, LocalEndpoint, RunPodStatus, RunRequest
from worker.settings import WorkerSettings

log = logging.getLogger("bench.stragglers")
MODEL = "gemini-2.5-flash-image"
KEY = "bench-key"
FLAKY, BLOCK = "FLAKY", "BLOCK"
TARGET_RATIO = 1.25
TTFI_SLACK_S = 1.0
Scope = dict[str, Any]


# --- the fake Gemini (its own process) -------------------------------------------------------


def _prompt_of(body: dict[str, Any]) -> str:
    parts = [part for content in body.get("contents", []) for part in content.get("parts", [])]
    return " ".join(part["text"] for part in parts if "text" in part)


def _json(status: int, body: dict[str, Any]) -> tuple[int, bytes]:
    return status, json.dumps(body).encode()


def _error(code: int, status: str, message: str, *details: dict[str, Any]) -> tuple[int, bytes]:
    body = {"error": {"code": code, "message": message, "status": status, "details": list(details)}}
    return _json(code, body)


class Script:
    """What the fake answers: a 429 every `quota_every`-th call, a 503 at the first call of a
    FLAKY prompt, a prompt block for BLOCK prompts, else the image."""

    def __init__(self, image: bytes, quota_every: int) -> None:
        self.image_answer = gemini_response(image, "image/png")
        self.quota_every = quota_every
        self.calls = 0
        self.seen: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.arrivals: list[float] = []  # time.monotonic() of each call (system-wide clock)

    def answer(self, body: dict[str, Any]) -> tuple[int, bytes]:
        self.calls += 1
        self.arrivals.append(time.monotonic())
        prompt = _prompt_of(body)
        self.seen[prompt] += 1
        if self.calls % self.quota_every == 0:
            self.outcomes["429"] += 1
            retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
            return _error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", retry)
        if FLAKY in prompt and self.seen[prompt] == 1:
            self.outcomes["503"] += 1
            return _error(503, "UNAVAILABLE", "The model is overloaded. Try again later.")
        if BLOCK in prompt:
            self.outcomes["blocked"] += 1
            return _json(200, {"promptFeedback": {"blockReason": "SAFETY"}})
        self.outcomes["image"] += 1
        return 200, self.image_answer


def fake_app(script: Script, latency_s: float) -> Callable[..., Any]:
    async def app(scope: Scope, receive: Callable[[], Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if scope["method"] != "POST":
            stats = {"calls": script.calls, "outcomes": script.outcomes}
            status, body = _json(200, {**stats, "arrivals": script.arrivals})
        else:
            status, body = script.answer(json.loads(b"".join(chunks)))
            await asyncio.sleep(latency_s)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def serve_fake(port: int, latency_s: float, quota_every: int) -> None:
    """Process entry point: the scripted fake on 127.0.0.1:port until terminated."""
    import uvicorn

    script = Script(png(1, 256), quota_every)
    uvicorn.run(
        fake_app(script, latency_s),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=1024,
    )


@contextlib.contextmanager
def fake_gemini(latency_s: float, quota_every: int = 5) -> Iterator[str]:
    port = free_port()
    child = multiprocessing.get_context("spawn").Process(
        target=serve_fake, args=(port, latency_s, quota_every), daemon=True
    )
    child.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url)
        yield url
    finally:
        child.terminate()
        child.join(5)


# --- the workload ---------------------------------------------------------------------------


def prompt_for(index: int) -> str:
    marks = [FLAKY] * (index % 9 == 4) + [BLOCK] * (index % 12 == 7)
    return " ".join([f"edit {index}: a lighthouse at dusk", *marks])


def sets_of(storage: LocalStorage, sets: int, size: int) -> list[dict[str, Any]]:
    reference = storage.put_bytes("bench/ref.png", png(0), content_type="image/png")
    jobs = []
    for number in range(sets):
        items = [
            WorkItem(
                output_id=f"o{number * size + n}",
                prompt=prompt_for(number * size + n),
                reference_uris=[storage.uri(reference.key)],
                params=ImageParams(model=MODEL, seed=number * size + n),
                output_key=f"bench/out/{number * size + n}",
            )
            for n in range(size)
        ]
        dispatch = DispatchInput(dispatch_id=f"d{number}", job_id="j", items=items)
        jobs.append(dispatch.model_dump(mode="json"))
    return jobs


def worker_settings(storage: Path, gemini_url: str, args: argparse.Namespace) -> WorkerSettings:
    return WorkerSettings(
        storage_url=str(storage),
        provider="gemini",
        gemini_api_key=KEY,
        gemini_base_url=gemini_url,
        gemini_concurrency=args.in_flight,
        worker_concurrency=args.image_slots or args.in_flight,
        gemini_rpm=60_000,
    )


async def run_sets(
    settings: WorkerSettings, inputs: list[dict[str, Any]]
) -> tuple[float, float, list[dict[str, Any]]]:
    """Wall time, when it started (time.monotonic()) and every result."""
    handler, modifier, _ = make_handler(settings)
    engine = LocalEndpoint(
        handler, EndpointConfig(job_concurrency=settings.worker_max_jobs), modifier
    )
    await engine.start()
    try:
        started = time.monotonic()
        jobs = [
            engine.submit(
                RunRequest(
                    input=body, webhook=None, execution_timeout_ms=600_000, ttl_ms=86_400_000
                )
            )
            for body in inputs
        ]
        await asyncio.gather(*(job.finished.wait() for job in jobs))
        wall = time.monotonic() - started
    finally:
        await engine.stop()
    assert all(job.status is RunPodStatus.COMPLETED for job in jobs), [j.result for j in jobs]
    return wall, started, [result for job in jobs for result in job.result["output"]["results"]]


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    with fake_gemini(args.latency_s) as url, tempfile.TemporaryDirectory() as tmp:
        settings = worker_settings(Path(tmp), url, args)
        inputs = sets_of(LocalStorage(Path(tmp)), args.sets, args.set_size)
        wall, started, results = asyncio.run(run_sets(settings, inputs))
        stats = httpx.get(url, timeout=5).json()
    calls = stats["calls"]
    ideal = calls * args.latency_s / args.in_flight
    statuses = Counter(result["status"] for result in results)
    reasons = Counter(result["error"] for result in results if result["status"] == "blocked")
    failures = Counter(result["error"] for result in results if result["status"] == "failed")
    calls_started = [at - started for at in stats["arrivals"]]
    return {
        "timeline": timeline(calls_started, args.latency_s, wall),
        "wall_s": wall,
        "calls": calls,
        "fake": stats["outcomes"],
        "ideal_s": ideal,
        "ratio": wall / ideal,
        "statuses": statuses,
        "blocked_reasons": reasons,
        "failures": failures,
        "expected_blocks": sum(BLOCK in prompt_for(i) for i in range(args.sets * args.set_size)),
    }


def timeline(calls_started: list[float], latency_s: float, wall_s: float) -> str:
    """Calls in flight at each half second of the run, one character each (0-9, then a-j for
    10-19, "#" for 20 or more): where the call slots idled."""
    marks = []
    for step in range(int(wall_s * 2) + 1):
        now = step / 2
        in_flight = sum(1 for at in calls_started if at <= now < at + latency_s)
        marks.append("#" if in_flight >= 20 else "0123456789abcdefghij"[in_flight])
    return "".join(marks)


# --- time to first image on the tests' stack -----------------------------------------------


def first_image(args: argparse.Namespace) -> float:
    from control_plane.db import migrate
    from control_plane.settings import Settings
    from tests.fakes.stack import run_stack

    with (
        fake_gemini(args.latency_s) as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        database = f"sqlite:///{Path(tmp) / 'pixelfleet.db'}"
        migrate(database)
        settings = Settings(
            data_dir=Path(tmp), database_url=database, storage_url=str(Path(tmp) / "s")
        )
        stack_of = run_stack(
            settings,
            provider="gemini",
            gemini_api_key=KEY,
            gemini_base_url=url,
            gemini_rpm=60_000,
            worker_concurrency=args.image_slots or args.in_flight,
            gemini_concurrency=args.in_flight,
        )
        stack = next(stack_of)
        try:
            group_id = stack.group()
            images = stack.upload(group_id, 16)
            body = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images}
            answer = stack.http.post("/api/jobs/submit", json=body)
            submitted = time.monotonic()
            [job] = answer.json()["jobs"]
            while stack.http.get(f"/api/jobs/{job['id']}").json()["progress"]["succeeded"] < 1:
                time.sleep(0.02)
            return time.monotonic() - submitted
        finally:
            stack_of.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=25)
    parser.add_argument("--set-size", type=int, default=4)
    parser.add_argument("--latency-s", type=float, default=2.0)
    parser.add_argument("--in-flight", type=int, default=20, help="Gemini calls in flight")
    parser.add_argument(
        "--image-slots",
        type=int,
        default=24,
        help="images in flight (PIXELFLEET_WORKER_CONCURRENCY; 0: as many as calls): above "
        "the calls, so images sleeping before a retry leave their call slot to others",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("worker", "httpx", "google_genai"):
        logging.getLogger(name).setLevel(logging.ERROR)
    row = throughput(args)
    load = os.getloadavg()
    statuses = row["statuses"]
    print(
        f"workload: {args.sets} sets of {args.set_size}, {args.latency_s:g} s latency, "
        f"{args.in_flight} calls in flight, {args.image_slots or args.in_flight} image slots; "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"wall {row['wall_s']:.1f} s, calls {row['calls']} {dict(row['fake'])}, "
        f"ideal {row['ideal_s']:.1f} s, ratio {row['ratio']:.2f} (target <= {TARGET_RATIO})"
    )
    print(
        f"images: succeeded {statuses['succeeded']}, blocked {statuses['blocked']} "
        f"{dict(row['blocked_reasons'])} (prompts blocked: {row['expected_blocks']}), "
        f"failed {statuses['failed']} {dict(row['failures'])}"
    )
    print(f"calls in flight every 0.5 s (0-9, a-j = 10-19, # = 20): {row['timeline']}")
    ttfi = first_image(args)
    target = args.latency_s + TTFI_SLACK_S
    print(f"time to first image on the stack: {ttfi:.2f} s (target <= {target:g} s)")
    ok = row["ratio"] <= TARGET_RATIO and ttfi <= target and not statuses["failed"]
    print("PASS" if ok else "MISS")


if __name__ == "__main__":
    main()
