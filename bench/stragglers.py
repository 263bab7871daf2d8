"""Straggler-proof throughput and time to first image (issue 12, targets 6 and 7).

    python -m bench.stragglers [--sets 25] [--set-size 4] [--latency-s 2] [--in-flight 20]
                               [--image-slots 24] [--slow-429]

The side-by-side workload: 100 image edits as 25 sets of 4 (one RunPod job per set), 2 s
model latency, 20 Gemini calls in flight, a 429 every fifth call (RetryInfo retryDelay 1 s),
a 503 once on some prompts, some prompts blocked for safety. Its fake `generateContent` runs
in its own process. As real Gemini does, it answers a 429 at once, without running the model;
every other answer (503s and blocks too) comes after the latency. `--slow-429` delays 429s by
the latency too, as this bench did before (the "old rule"). The worker side is the real
handler and Gemini provider inside the local RunPod endpoint's engine
(`worker/local_endpoint.py`), which takes jobs as the worker's scaler does on RunPod through
the handler's concurrency_modifier (asked before each take, and when full again as soon as
an image ends).

Prints wall time; the calls the fake answered and how many ran the model (took the latency);
ideal = model calls x latency / in-flight and the ratio wall / ideal (target <= 1.25), next to
the old rule's ideal (every call x latency / in-flight, which flatters the ratio when 429s are
quick); images succeeded / blocked (with reasons) / failed; the calls in flight every 0.25 s
(from the fake's record of each call's start and end) and the call-slot seconds left idle
while some image had not yet made its first call. Then time to first image on the tests'
stack (`tests/fakes/stack.py`: control plane, local endpoint, worker, on SQLite) with the same
fake: one automatic job of 16 images (one dispatch, whose fifth call gets a 429, so it ends
after a retry), from the submit's answer until the API shows the job's first image, next to
the target latency + 1 s.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import string
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    FLAKY prompt, a prompt block for BLOCK prompts, else the image. Each answer says whether
    it ran the model (waits the latency): all but 429s, and those too with `slow_429`."""

    def __init__(self, image: bytes, quota_every: int, slow_429: bool) -> None:
        self.image_answer = gemini_response(image, "image/png")
        self.quota_every = quota_every
        self.slow_429 = slow_429
        self.calls = 0
        self.seen: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        # Each call's [start, end, outcome, prompt], start and end on time.monotonic() (one
        # clock for every process on the machine).
        self.spans: list[list[Any]] = []

    def answer(self, body: dict[str, Any]) -> tuple[int, bytes, bool, list[Any]]:
        self.calls += 1
        prompt = _prompt_of(body)
        span: list[Any] = [time.monotonic(), None, "", prompt]
        self.spans.append(span)
        self.seen[prompt] += 1
        status, answer, ran = self._answer(prompt)
        outcome = {429: "429", 503: "503"}.get(status) or (
            "blocked" if BLOCK in prompt else "image"
        )
        span[2] = outcome
        self.outcomes[outcome] += 1
        return status, answer, ran, span

    def _answer(self, prompt: str) -> tuple[int, bytes, bool]:
        if self.calls % self.quota_every == 0:
            retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
            status, body = _error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", retry)
            return status, body, self.slow_429
        if FLAKY in prompt and self.seen[prompt] == 1:
            status, body = _error(503, "UNAVAILABLE", "The model is overloaded. Try again later.")
            return status, body, True
        if BLOCK in prompt:
            status, body = _json(200, {"promptFeedback": {"blockReason": "SAFETY"}})
            return status, body, True
        return 200, self.image_answer, True


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
            status, body = _json(200, {**stats, "spans": script.spans})
        else:
            status, body, ran, span = script.answer(json.loads(b"".join(chunks)))
            if ran:
                await asyncio.sleep(latency_s)
            span[1] = time.monotonic()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def serve_fake(port: int, latency_s: float, quota_every: int, slow_429: bool) -> None:
    """Process entry point: the scripted fake on 127.0.0.1:port until terminated."""
    import uvicorn

    script = Script(png(1, 256), quota_every, slow_429)
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
def fake_gemini(latency_s: float, slow_429: bool, quota_every: int = 5) -> Iterator[str]:
    port = free_port()
    child = multiprocessing.get_context("spawn").Process(
        target=serve_fake, args=(port, latency_s, quota_every, slow_429), daemon=True
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
    with fake_gemini(args.latency_s, args.slow_429) as url, tempfile.TemporaryDirectory() as tmp:
        settings = worker_settings(Path(tmp), url, args)
        inputs = sets_of(LocalStorage(Path(tmp)), args.sets, args.set_size)
        wall, started, results = asyncio.run(run_sets(settings, inputs))
        stats = httpx.get(url, timeout=5).json()
    spans = [
        Span(start - started, end - started, outcome, prompt)
        for start, end, outcome, prompt in stats["spans"]
    ]
    calls = len(spans)
    # The calls that ran the model: those the fake answered after the latency (all of them
    # with --slow-429, every one but the 429s otherwise).
    model_calls = sum(1 for span in spans if span.end - span.start >= args.latency_s / 2)
    statuses = Counter(result["status"] for result in results)
    reasons = Counter(result["error"] for result in results if result["status"] == "blocked")
    failures = Counter(result["error"] for result in results if result["status"] == "failed")
    last_first_call = max(
        min(s.start for s in spans if s.prompt == p) for p in {s.prompt for s in spans}
    )
    return {
        "timeline": timeline(spans, wall, args.in_flight),
        "idle_while_waiting": idle_slot_seconds(spans, last_first_call, args.in_flight),
        "last_first_call_s": last_first_call,
        "wall_s": wall,
        "calls": calls,
        "model_calls": model_calls,
        "fake": stats["outcomes"],
        "ideal_s": model_calls * args.latency_s / args.in_flight,
        "ratio": wall / (model_calls * args.latency_s / args.in_flight),
        "old_ideal_s": calls * args.latency_s / args.in_flight,
        "old_ratio": wall / (calls * args.latency_s / args.in_flight),
        "statuses": statuses,
        "blocked_reasons": reasons,
        "failures": failures,
        "expected_blocks": sum(BLOCK in prompt_for(i) for i in range(args.sets * args.set_size)),
    }


@dataclass(frozen=True)
class Span:
    """One call as the fake saw it, in seconds from the start of the run."""

    start: float
    end: float
    outcome: str
    prompt: str


def in_flight(spans: list[Span], at: float) -> int:
    return sum(1 for span in spans if span.start <= at < span.end)


def timeline(spans: list[Span], wall_s: float, limit: int) -> str:
    """Calls in flight at each quarter second of the run, one character each (0-9, then a-z
    for 10-35, "#" for `limit` or more), in groups of four (one second each)."""
    marks = []
    for step in range(int(wall_s * 4) + 1):
        count = in_flight(spans, step / 4)
        marks.append("#" if count >= limit else (string.digits + string.ascii_lowercase)[count])
    return " ".join("".join(marks[i : i + 4]) for i in range(0, len(marks), 4))


def idle_slot_seconds(spans: list[Span], until_s: float, limit: int, step_s: float = 0.01) -> float:
    """Call-slot seconds left idle from the first call until `until_s` (the last image's first
    call: until then some image was waiting to start), sampled every `step_s`."""
    begin = min(span.start for span in spans)
    steps = int((until_s - begin) / step_s)
    idle = sum(max(0, limit - in_flight(spans, begin + n * step_s)) for n in range(steps))
    return idle * step_s


# --- time to first image on the tests' stack -----------------------------------------------


def first_image(args: argparse.Namespace) -> float:
    from control_plane.db import migrate
    from control_plane.settings import Settings
    from tests.fakes.stack import run_stack

    with (
        fake_gemini(args.latency_s, args.slow_429) as url,
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
    parser.add_argument(
        "--slow-429",
        action="store_true",
        help="the old rule: the fake answers 429s after the model latency too, and the ideal "
        "counts every call",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("worker", "httpx", "google_genai"):
        logging.getLogger(name).setLevel(logging.ERROR)
    row = throughput(args)
    load = os.getloadavg()
    statuses = row["statuses"]
    rule = "429s after the latency (old rule)" if args.slow_429 else "429s at once"
    print(
        f"workload: {args.sets} sets of {args.set_size}, {args.latency_s:g} s latency, "
        f"{args.in_flight} calls in flight, {args.image_slots or args.in_flight} image slots, "
        f"{rule}; load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"wall {row['wall_s']:.1f} s; calls {row['calls']} {dict(row['fake'])}, "
        f"{row['model_calls']} of them ran the model"
    )
    print(
        f"ideal (model calls x latency / in-flight) {row['ideal_s']:.1f} s: "
        f"ratio {row['ratio']:.2f} (target <= {TARGET_RATIO})"
    )
    print(
        f"ideal (every call x latency / in-flight, the old rule's) {row['old_ideal_s']:.1f} s: "
        f"ratio {row['old_ratio']:.2f}"
        + ("" if args.slow_429 else " (flattered: 429s took no time)")
    )
    print(
        f"images: succeeded {statuses['succeeded']}, blocked {statuses['blocked']} "
        f"{dict(row['blocked_reasons'])} (prompts blocked: {row['expected_blocks']}), "
        f"failed {statuses['failed']} {dict(row['failures'])}"
    )
    print(
        f"calls in flight every 0.25 s (0-9, a-z = 10-35, # = {args.in_flight}), a group a "
        f"second: {row['timeline']}"
    )
    print(
        f"call-slot seconds idle until the last image's first call "
        f"({row['last_first_call_s']:.1f} s): {row['idle_while_waiting']:.1f} "
        f"(of {args.in_flight * row['last_first_call_s']:.0f})"
    )
    ttfi = first_image(args)
    target = args.latency_s + TTFI_SLACK_S
    print(f"time to first image on the stack: {ttfi:.2f} s (target <= {target:g} s)")
    ok = row["ratio"] <= TARGET_RATIO and ttfi <= target and not statuses["failed"]
    print("PASS" if ok else "MISS")


if __name__ == "__main__":
    main()
