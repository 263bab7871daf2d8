"""Worker overhead: the real handler and Gemini provider against a fake Gemini on loopback.

    python -m bench.worker [--delay-ms 200] [--levels 1,8,32,64] [--rounds 10]
                           [--format png|jpeg] [--no-reference]

A fake `generateContent` server runs in its own process (so its CPU is not the worker's) and
answers every request after a fixed delay with one pre-encoded 1024x1024 image. The worker
side is `worker.handler.make_handler(WorkerSettings(provider="gemini", ...))`, fed RunPod
jobs of 16 images each (LocalStorage in a temp dir, one small reference per image), with
worker and Gemini concurrency both set to C. Per level: images/s next to the ideal C/delay,
efficiency, the worker's CPU per image (time.process_time: every thread), the fake's CPU per
image, and the worker's peak RSS during the level. Then what a thumbnail alone costs.

Targets: efficiency ≥ 0.9 at C=32; worker CPU ≤ 5 ms/image (one core feeds ≥ 200 images/s).
"""

import argparse
import asyncio
import base64
import hashlib
import io
import json
import logging
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageChops

from bench.common import cpu_seconds, free_port, peak_rss_mb, png
from shared.contract import DispatchInput, ImageParams, WorkItem
from shared.images import dimensions, make_thumbnail
from worker.handler import Handler, make_handler
from worker.runner import Runner
from worker.settings import WorkerSettings

log = logging.getLogger("bench.worker")
MODEL = "gemini-2.5-flash-image"
SIDE = 1024
CHUNK = 16  # images per RunPod job, the control plane's default chunk
MODIFIER_POLL_S = 0.02  # how often the concurrency_modifier is asked while jobs run
TARGET_EFFICIENCY = 0.9
TARGET_CPU_MS = 5.0
Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


# --- the fake Gemini ---------------------------------------------------------------------


def sample_image(fmt: str) -> tuple[bytes, str]:
    """A photo-like 1024x1024 picture (gradients, blur, grain): about the size Gemini sends."""
    size = (SIDE, SIDE)
    grain = Image.effect_noise(size, 8)
    blotches = Image.effect_noise((64, 64), 80).resize(size, Image.Resampling.BICUBIC)
    across = Image.linear_gradient("L").resize(size)
    centre = Image.radial_gradient("L").resize(size)
    picture = Image.merge(
        "RGB",
        (
            ImageChops.add(ImageChops.multiply(across, blotches), grain, 2.0, -40),
            ImageChops.add(centre, grain, 2.0, -30),
            ImageChops.add(blotches, grain, 2.0, -50),
        ),
    )
    buffer = io.BytesIO()
    if fmt == "jpeg":
        picture.save(buffer, "JPEG", quality=90)
        return buffer.getvalue(), "image/jpeg"
    picture.save(buffer, "PNG")
    return buffer.getvalue(), "image/png"


def gemini_response(image: bytes, mime: str) -> bytes:
    """A `generateContent` answer carrying `image`, encoded once for every request."""
    body = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"inlineData": {"mimeType": mime, "data": _b64(image)}}],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 270,
            "candidatesTokenCount": 1290,
            "totalTokenCount": 1560,
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
        },
        "modelVersion": MODEL,
    }
    return json.dumps(body).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fake_gemini_app(body: bytes, delay_s: float) -> Callable[[Scope, Receive, Send], Any]:
    """A bare ASGI app: POSTs get `body` after `delay_s`, anything else at once (health)."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # drain the request (prompt and references)
            more = (await receive()).get("more_body", False)
        if scope["method"] == "POST":
            await asyncio.sleep(delay_s)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def serve_fake(port: int, body: bytes, delay_s: float) -> None:
    """Process entry point: serve the fake on 127.0.0.1:port until terminated."""
    import uvicorn

    uvicorn.run(
        fake_gemini_app(body, delay_s),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=1024,
    )


def wait_until_up(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the fake Gemini at {url} did not start") from None
            time.sleep(0.05)


# --- driving the worker --------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    concurrency: int
    images: int
    wall_s: float
    worker_cpu_s: float
    fake_cpu_s: float
    peak_rss_mb: float
    delay_s: float
    peak_jobs: int  # the most RunPod jobs in flight at once (as the modifier allowed)

    @property
    def rate(self) -> float:
        return self.images / self.wall_s

    @property
    def ideal_rate(self) -> float:
        return self.concurrency / self.delay_s

    @property
    def efficiency(self) -> float:
        return self.rate / self.ideal_rate

    @property
    def cpu_ms(self) -> float:
        return self.worker_cpu_s / self.images * 1000

    @property
    def fake_cpu_ms(self) -> float:
        return self.fake_cpu_s / self.images * 1000


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM so the next reading is this level's peak (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def jobs_for(level: int, start: int, count: int, reference_uris: list[str]) -> list[dict[str, Any]]:
    """RunPod jobs (input = DispatchInput as JSON) for images start..start+count, 16 each."""
    items = [
        WorkItem(
            output_id=f"out-{level}-{n}",
            prompt=f"benchmark image {n}",
            reference_uris=reference_uris,
            params=ImageParams(model=MODEL, aspect_ratio="1:1", seed=n),
            output_key=f"outputs/c{level}/{n:06d}",
        )
        for n in range(start, start + count)
    ]
    return [
        {
            "id": f"job-{level}-{start + i}",
            "input": DispatchInput(
                dispatch_id=f"dsp-{level}-{start + i}", job_id="bench", items=items[i : i + CHUNK]
            ).model_dump(mode="json"),
        }
        for i in range(0, count, CHUNK)
    ]


async def run_jobs(
    handler: Handler, jobs: list[dict[str, Any]], modifier: Callable[[int], int]
) -> tuple[int, int]:
    """Run the jobs as RunPod does: a job is taken only while fewer are in flight than the
    handler's concurrency_modifier returns. Returns images done and the peak jobs in flight."""
    waiting = list(reversed(jobs))
    running: set[asyncio.Task[dict[str, Any]]] = set()
    outputs: list[dict[str, Any]] = []
    concurrency, peak = 1, 0
    while waiting or running:
        concurrency = modifier(concurrency)
        while waiting and len(running) < concurrency:
            running.add(asyncio.create_task(handler(waiting.pop())))
            await asyncio.sleep(0)  # the handler registers its images with the runner
            concurrency = modifier(concurrency)
        peak = max(peak, len(running))
        done, running = await asyncio.wait(
            running, timeout=MODIFIER_POLL_S, return_when=asyncio.FIRST_COMPLETED
        )
        outputs += [task.result() for task in done]
    results = [result for output in outputs for result in output["results"]]
    failed = [result for result in results if result["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} images failed: {failed[0]['error']}")
    return len(results), peak


async def drive(
    handler: Handler,
    runner: Runner,
    modifier: Callable[[int], int],
    level: int,
    images: int,
    references: list[str],
    fake_pid: int,
) -> tuple[int, float, float, float, int]:
    """Warm up (connections, first-call costs), then time `images` images.

    Returns images done, wall seconds, worker CPU seconds, the fake's CPU seconds and the
    peak jobs in flight.
    """
    try:
        await run_jobs(handler, jobs_for(level, 0, level, references), modifier)
        jobs = jobs_for(level, level, images, references)
        fake_cpu, cpu = cpu_seconds(fake_pid), time.process_time()
        started = time.perf_counter()
        done, peak_jobs = await run_jobs(handler, jobs, modifier)
        wall = time.perf_counter() - started
        cpu_s, fake_cpu_s = time.process_time() - cpu, cpu_seconds(fake_pid) - fake_cpu
        return done, wall, cpu_s, fake_cpu_s, peak_jobs
    finally:
        await runner.provider.aclose()


def run_level(
    level: int, args: argparse.Namespace, fake_url: str, fake_pid: int, root: Path
) -> Level:
    settings = WorkerSettings(
        storage_url=str(root / f"c{level}"),
        provider="gemini",
        gemini_api_key="bench-key",
        gemini_base_url=fake_url,
        gemini_concurrency=level,
        worker_concurrency=level,
        gemini_rpm=60_000_000,  # a slot every microsecond: never the limit
        gemini_max_attempts=1,
        gemini_timeout_s=60,
    )
    handler, concurrency_modifier, runner = make_handler(settings)
    references: list[str] = []
    if args.reference:
        stored = runner.storage.put_bytes("refs/ref.png", png(1), content_type="image/png")
        references.append(runner.storage.uri(stored.key))
    exact_peak = reset_peak_rss()
    done, wall, cpu, fake_cpu, peak_jobs = asyncio.run(
        drive(
            handler, runner, concurrency_modifier, level, args.rounds * level, references, fake_pid
        )
    )
    peak = peak_rss_mb(os.getpid()) if exact_peak else float("nan")
    log.info("C=%d: %d images in %.2f s", level, done, wall)
    return Level(level, done, wall, cpu, fake_cpu, peak, args.delay_ms / 1000, peak_jobs)


# --- what a thumbnail costs ----------------------------------------------------------------


def cpu_ms_per_call(work: Callable[[], object], calls: int = 20) -> float:
    work()  # first-call costs (plugin import, codec set-up) out of the figure
    started = time.process_time()
    for _ in range(calls):
        work()
    return (time.process_time() - started) / calls * 1000


def parse_ms(body: bytes) -> float:
    """JSON + base64 decode of one response: a lower bound of what the SDK spends on it."""

    def parse() -> bytes:
        part = json.loads(body)["candidates"][0]["content"]["parts"][0]
        return base64.b64decode(part["inlineData"]["data"])

    return cpu_ms_per_call(parse)


# --- report --------------------------------------------------------------------------------


def print_table(levels: list[Level], thumbnail_ms: float) -> None:
    header = (
        f"{'C':>3} {'images':>6} {'wall s':>7} {'img/s':>7} {'ideal/s':>7} {'effic.':>6} "
        f"{'CPU ms/img':>10} {'excl. thumb':>11} {'img/s/core':>10} {'fake ms/img':>11} "
        f"{'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in levels:
        print(
            f"{row.concurrency:>3} {row.images:>6} {row.wall_s:>7.2f} {row.rate:>7.1f} "
            f"{row.ideal_rate:>7.1f} {row.efficiency:>6.3f} {row.cpu_ms:>10.2f} "
            f"{row.cpu_ms - thumbnail_ms:>11.2f} {1000 / row.cpu_ms:>10.0f} "
            f"{row.fake_cpu_ms:>11.2f} {row.peak_rss_mb:>11.0f}"
        )


def print_verdict(levels: list[Level], thumbnail_ms: float) -> None:
    by_level = {row.concurrency: row for row in levels}
    if 32 in by_level:
        efficiency = by_level[32].efficiency
        verdict = "ok" if efficiency >= TARGET_EFFICIENCY else "MISSED"
        print(f"target efficiency ≥ {TARGET_EFFICIENCY} at C=32: {efficiency:.3f}  {verdict}")
    worst = max(row.cpu_ms for row in levels)
    verdict = "ok" if worst <= TARGET_CPU_MS else "MISSED"
    print(
        f"target CPU ≤ {TARGET_CPU_MS:g} ms/image (≥ 200 images/s per core): worst "
        f"{worst:.2f} ms  {verdict}; without thumbnails {worst - thumbnail_ms:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--delay-ms", type=int, default=200, help="fake Gemini answer time")
    parser.add_argument("--levels", default="1,8,32,64", help="worker concurrency levels")
    parser.add_argument("--rounds", type=int, default=10, help="images per level = rounds x C")
    parser.add_argument("--format", choices=["png", "jpeg"], default="png")
    parser.add_argument("--no-reference", dest="reference", action="store_false")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    image, mime = sample_image(args.format)
    body = gemini_response(image, mime)
    other, _ = sample_image("jpeg" if args.format == "png" else "png")
    thumbnail_ms = cpu_ms_per_call(lambda: make_thumbnail(image))
    other_thumbnail_ms = cpu_ms_per_call(lambda: make_thumbnail(other))
    digest_ms = cpu_ms_per_call(lambda: (hashlib.sha256(image).digest(), dimensions(image)))
    load = os.getloadavg()[0]
    port = free_port()
    fake = multiprocessing.get_context("spawn").Process(
        target=serve_fake, args=(port, body, args.delay_ms / 1000), daemon=True
    )
    fake.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url)
        assert fake.pid is not None
        with tempfile.TemporaryDirectory(prefix="pixelfleet-bench-worker-") as tmp:
            levels = [
                run_level(int(level), args, url, fake.pid, Path(tmp))
                for level in args.levels.split(",")
            ]
    finally:
        fake.terminate()
        fake.join(timeout=10)

    print(
        f"fake Gemini: {args.delay_ms} ms per request, {SIDE}x{SIDE} {mime} of "
        f"{len(image) / 1e6:.2f} MB ({len(body) / 1e6:.2f} MB JSON); "
        f"{'one 64x64 reference' if args.reference else 'no reference'} per image; "
        f"RunPod jobs of {CHUNK}, as many at a time as the concurrency_modifier allows "
        f"(peak {', '.join(str(row.peak_jobs) for row in levels)}); "
        f"{os.cpu_count()} CPUs, load average {load:.2f} before the run"
    )
    print_table(levels, thumbnail_ms)
    print(
        f"per image, measured alone: make_thumbnail {thumbnail_ms:.2f} ms CPU "
        f"(same picture as {'JPEG' if args.format == 'png' else 'PNG'}: "
        f"{other_thumbnail_ms:.2f} ms); sha256 + dimensions {digest_ms:.2f} ms; "
        f"JSON + base64 decode of the response {parse_ms(body):.2f} ms"
    )
    print_verdict(levels, thumbnail_ms)


if __name__ == "__main__":
    main()
