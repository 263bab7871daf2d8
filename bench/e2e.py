"""End-to-end throughput on embedded defaults: N images, automatic mode, offline provider.

    python -m bench.e2e [--images 1000] [--latency-ms 500] [--concurrency 32]

Starts the local endpoint and the control plane as separate processes (as `pixelfleet up`
does), uploads N images, submits one automatic job, and waits for it. Prints wall time next
to the ideal N·L/C, efficiency = ideal / wall, control-plane CPU per image, and each
process's peak RSS.
"""

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import cpu_seconds, free_port, peak_rss_mb, png, process


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--latency-ms", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32, help="worker images in flight")
    parser.add_argument("--chunk", type=int, default=16, help="images per RunPod job")
    parser.add_argument("--max-jobs", type=int, default=8, help="RunPod jobs one worker takes")
    parser.add_argument("--image-size", default="512", help="512, 1K, 2K or 4K")
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pixelfleet-bench-") as tmp:
        api_port, endpoint_port = free_port(), free_port()
        env = {
            "PIXELFLEET_DATA_DIR": tmp,
            "PIXELFLEET_LOG_LEVEL": "WARNING",
            "PIXELFLEET_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
            "PIXELFLEET_RUNPOD_BASE_URL": f"http://127.0.0.1:{endpoint_port}",
            "PIXELFLEET_PROVIDER": "offline",
            "PIXELFLEET_OFFLINE_LATENCY_MS": str(args.latency_ms),
            "PIXELFLEET_WORKER_CONCURRENCY": str(args.concurrency),
            "PIXELFLEET_WORKER_MAX_JOBS": str(args.max_jobs),
            "PIXELFLEET_DISPATCH_CHUNK_SIZE": str(args.chunk),
            "PIXELFLEET_RECONCILE_INTERVAL_S": "5",
        }
        if args.database_url:
            env["PIXELFLEET_DATABASE_URL"] = args.database_url
        logs = Path(tmp)
        endpoint_args = ["endpoint", "--port", str(endpoint_port)]
        api_args = ["api", "--port", str(api_port)]
        with (
            process(
                endpoint_args,
                env,
                f"http://127.0.0.1:{endpoint_port}/v2/local/health",
                logs / "endpoint.log",
            ) as endpoint_pid,
            process(
                api_args, env, f"http://127.0.0.1:{api_port}/healthz", logs / "api.log"
            ) as api_pid,
            httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=120) as http,
        ):
            run(http, args, api_pid, endpoint_pid)


def _job_summary(http: httpx.Client, group_id: str, job_id: str) -> dict[str, Any]:
    """The job without its images: what a progress bar polls."""
    page = http.get("/api/jobs", params={"group_id": group_id}).json()
    return next(job for job in page["data"] if job["id"] == job_id)


def run(http: httpx.Client, args: argparse.Namespace, api_pid: int, endpoint_pid: int) -> None:
    group_id = http.post("/api/groups", json={"name": "bench"}).json()["id"]
    started = time.monotonic()
    image_ids: list[str] = []
    for start in range(0, args.images, 100):
        files = [
            ("files", (f"{i}.png", png(i), "image/png"))
            for i in range(start, min(args.images, start + 100))
        ]
        reply = http.post("/api/uploads", data={"group_id": group_id}, files=files)
        reply.raise_for_status()
        image_ids += [image["id"] for image in reply.json()["images"]]
    upload_s = time.monotonic() - started

    cpu_before = cpu_seconds(api_pid)
    worker_cpu_before = cpu_seconds(endpoint_pid)
    started = time.monotonic()
    job_id = http.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "benchmark",
            "images": image_ids,
            "config": {"model": "gemini-3.1-flash-image", "image_size": args.image_size},
        },
    ).json()["jobs"][0]["id"]
    while (job := _job_summary(http, group_id, job_id))["status"] not in ("completed", "failed"):
        time.sleep(0.1)
    wall = time.monotonic() - started
    control_cpu = cpu_seconds(api_pid) - cpu_before
    worker_cpu = cpu_seconds(endpoint_pid) - worker_cpu_before

    ideal = args.images * args.latency_ms / 1000 / args.concurrency
    n = args.images
    rows = [
        ("images", f"{n} (size {args.image_size}), latency {args.latency_ms} ms"),
        ("worker", f"concurrency {args.concurrency}, chunk {args.chunk}, max jobs {args.max_jobs}"),
        ("result", str(job["progress"])),
        ("upload", f"{upload_s:.1f} s ({n / upload_s:.0f} images/s)"),
        ("wall (submit→done)", f"{wall:.2f} s"),
        ("ideal N·L/C", f"{ideal:.2f} s"),
        ("efficiency", f"{ideal / wall:.3f}   (target ≥ 0.85)"),
        ("control-plane CPU", f"{control_cpu / n * 1000:.2f} ms/image ({control_cpu:.1f} s)"),
        ("worker CPU", f"{worker_cpu / n * 1000:.2f} ms/image ({worker_cpu:.1f} s)"),
        ("peak RSS control", f"{peak_rss_mb(api_pid):.0f} MB"),
        ("peak RSS worker", f"{peak_rss_mb(endpoint_pid):.0f} MB"),
    ]
    for label, value in rows:
        print(f"{label:<22}{value}")


if __name__ == "__main__":
    main()
