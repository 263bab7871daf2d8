"""End-to-end throughput on embedded defaults: N images, automatic mode, offline provider.

    python -m bench.e2e [--images 1000] [--latency-ms 500] [--concurrency 32]
                        [--storage local|gcs] [--database-url URL]

Starts the local endpoint and the control plane as separate processes (as `pixelfleet up`
does), uploads N images, submits one automatic job, and waits for it. Prints wall time next
to the ideal N·L/C, efficiency = ideal / wall, control-plane CPU per image, and each
process's peak RSS. Then downloads the group's ZIP (files and manifest lines counted) and
runs `pixelfleet storage gc --grace-hours 0`, which must find nothing orphaned.

`--storage gcs` runs the same against gs:// storage in gcp-storage-emulator (its own process
on loopback; it serves one request at a time, so expect it to be the bottleneck).
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.common import cpu_seconds, free_port, gcs_emulator, peak_rss_mb, png, process

BUCKET = "pixelfleet-bench-e2e"


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
    parser.add_argument("--storage", choices=["local", "gcs"], default="local")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="pixelfleet-bench-") as tmp,
        storage_env(args.storage) as storage,
    ):
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
            "PIXELFLEET_DISPATCH_CHUNK_MAX": str(args.chunk),
            "PIXELFLEET_RECONCILE_INTERVAL_S": "5",
            **storage,
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
            group_id = run(http, args, api_pid, endpoint_pid)
            check_zip_and_gc(http, group_id, env, args.images)


@contextmanager
def storage_env(kind: str) -> Iterator[dict[str, str]]:
    """Environment for the storage: nothing for local disk (the default), else an emulator."""
    if kind == "local":
        yield {}
        return
    from shared.storage.gcs import EMULATOR_ENV, client_from_env

    with gcs_emulator() as emulator_url:
        client_from_env(BUCKET, {EMULATOR_ENV: emulator_url}).create_bucket(BUCKET)
        yield {"PIXELFLEET_STORAGE_URL": f"gs://{BUCKET}/bench", EMULATOR_ENV: emulator_url}


def _job_summary(http: httpx.Client, group_id: str, job_id: str) -> dict[str, Any]:
    """The job without its images: what a progress bar polls."""
    page = http.get("/api/jobs", params={"group_id": group_id}).json()
    return next(job for job in page["data"] if job["id"] == job_id)


def run(http: httpx.Client, args: argparse.Namespace, api_pid: int, endpoint_pid: int) -> str:
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
    return group_id


def check_zip_and_gc(http: httpx.Client, group_id: str, env: dict[str, str], n: int) -> None:
    """The group comes out whole as a ZIP, and nothing in storage is orphaned."""
    started = time.monotonic()
    reply = http.get(f"/api/download/{group_id}/zip")
    reply.raise_for_status()
    seconds = time.monotonic() - started
    archive = zipfile.ZipFile(io.BytesIO(reply.content))
    manifest = [json.loads(line) for line in archive.read("manifest.jsonl").splitlines()]
    files = sum(not name.endswith(".jsonl") for name in archive.namelist())  # the images
    print(
        f"{'ZIP':<22}{files} files + {len(manifest)} manifest lines, "
        f"{len(reply.content) / 1e6:.1f} MB in {seconds:.1f} s"
    )
    gc = subprocess.run(
        [sys.executable, "-m", "control_plane.cli", "storage", "gc", "--grace-hours", "0"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    verdict = gc.stdout.strip().splitlines()[-1]
    print(f"{'storage gc':<22}{verdict}")
    if files != n or len(manifest) != n or not verdict.startswith("0 orphaned"):
        raise SystemExit("the ZIP or storage is not what the job produced")


if __name__ == "__main__":
    main()
