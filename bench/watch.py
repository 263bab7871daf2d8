"""A dataset as a person makes one, small and big: is a 20,000-image job as pleasant to watch
and download as a 20-image one (issue 12)?

    python -m bench.watch [--uploads 2500] [--outputs-per-image 8] [--small 20]
                          [--latency-ms 300] [--concurrency 64] [--database-url URL]

Starts the platform as `pixelfleet up` does (control plane, relay, local endpoint with the
worker; the offline provider with `--latency-ms` per image, `--concurrency` images at once;
SQLite by default, or the MariaDB/MySQL database of `--database-url`, dropped and created
again). Then, for a job of `--small` images (one output each) and one of `--uploads` x
`--outputs-per-image` images, does what `pixelfleet generate` does through the client
library: uploads a folder of distinct PNGs, submits one automatic job, follows it until it
ends, downloads the group's ZIP and checks it holds every image. Meanwhile Chromium (Debian's,
through Playwright) keeps a tab open on the job page, as a person watching it would (its live
updates counted), and loads the job page afresh every `--view-every` seconds (once at least),
timed. Every process's RSS is sampled every 0.25 s. Prints, per job: the time of each step,
time to first image, images/s, page loads, the live updates' count and bytes, the ZIP's MB/s,
and each process's peak RSS.
"""

import argparse
import contextlib
import random
import shutil
import statistics
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from bench.common import RssSampler, free_port, process, recreate_mysql_database
from client.api import Client

ENDED = ("completed", "failed", "cancelled")


@dataclass
class Viewer:
    """A person watching a job in Chromium: one tab kept open on its page, and a fresh load
    of the page every `every_s`, timed. Runs on a thread of its own (Playwright's sync API
    stays on the thread that started it)."""

    base_url: str
    job_id: str
    every_s: float
    loads_s: list[float] = field(default_factory=list)
    live_updates: list[int] = field(default_factory=list)  # bytes of each live fragment
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as playwright:
                chromium = shutil.which("chromium") or shutil.which("chromium-browser")
                browser = playwright.chromium.launch(
                    executable_path=chromium, args=["--no-sandbox"]
                )
                kept = browser.new_page()
                kept.on("response", self._note_live)
                kept.goto(f"{self.base_url}/jobs/{self.job_id}")
                while True:  # once at least, should the job end before the first load
                    page = browser.new_page()
                    started = time.perf_counter()
                    page.goto(f"{self.base_url}/jobs/{self.job_id}", wait_until="load")
                    self.loads_s.append(time.perf_counter() - started)
                    page.close()
                    if self.stop.wait(self.every_s):
                        break
                browser.close()
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def _note_live(self, response: Any) -> None:
        from playwright.sync_api import Error

        if "/live/" in response.url:
            with contextlib.suppress(Error):  # the tab closed as the answer came
                self.live_updates.append(len(response.body()))


def photos(folder: Path, count: int, seed: int) -> Path:
    """`count` distinct small PNGs (distinct bytes: uploads are deduplicated by content)."""
    folder.mkdir(parents=True)
    chosen = random.Random(seed)
    for number in range(count):
        image = Image.new("RGB", (64, 64), tuple(chosen.randrange(256) for _ in range(3)))
        image.putpixel((number % 64, number // 64 % 64), (number % 256, number // 256 % 256, 0))
        image.save(folder / f"photo{number:05d}.png")
    return folder


def make_dataset(
    client: Client, base_url: str, folder: Path, per_image: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Upload, submit, follow, download: each step's time, and what the viewer saw."""
    steps: dict[str, Any] = {}
    started = time.perf_counter()
    group = client.create_group(folder.name)
    uploads = client.upload_folder(group.id, folder)
    steps["upload_s"] = time.perf_counter() - started
    started = time.perf_counter()
    answer = client.submit(
        {
            "group_id": group.id,
            "mode": "automatic",
            "prompt": "the same scene as a watercolour",
            "images": [upload.upload_id for upload in uploads if upload.upload_id],
            "config": {"outputs_per_image": per_image},
        }
    )
    steps["submit_s"] = time.perf_counter() - started
    job_id = answer.jobs[0].id
    viewer = Viewer(base_url, job_id, args.view_every)
    watching = viewer.start()
    first_image = None
    while True:
        job = client.job(job_id, images=False)
        if first_image is None and job.progress.succeeded:
            first_image = time.perf_counter() - started
        if job.status in ENDED:
            break
        time.sleep(0.2)
    steps.update(first_image_s=first_image, done_s=time.perf_counter() - started, job=job)
    viewer.stop.set()
    watching.join(timeout=60)
    if viewer.error is not None:
        raise viewer.error
    steps["viewer"] = viewer
    zipped = folder.with_suffix(".zip")
    started = time.perf_counter()
    size = client.download_zip(group.id, zipped)
    steps["zip_s"], steps["zip_mb"] = time.perf_counter() - started, size / 1e6
    with zipfile.ZipFile(zipped) as archive:
        steps["zip_files"] = len(archive.namelist()) - 2  # the manifest and metadata
    zipped.unlink()
    return steps


def report(label: str, steps: dict[str, Any], rss: dict[str, float]) -> None:
    job, viewer = steps["job"], steps["viewer"]
    images = job.progress.total
    loads = viewer.loads_s or [float("nan")]
    live = viewer.live_updates or [0]
    print(f"{label}: {images:,} images ({job.progress.succeeded:,} succeeded), {job.status}")
    print(
        f"  upload {steps['upload_s']:.1f} s; submit answer {steps['submit_s']:.2f} s; first "
        f"image {steps['first_image_s']:.2f} s after submitting; all {steps['done_s']:.2f} s "
        f"({images / steps['done_s']:.0f} images/s)"
    )
    print(
        f"  job page, fresh loads: {len(viewer.loads_s)}, median "
        f"{statistics.median(loads):.2f} s, slowest {max(loads):.2f} s"
    )
    print(
        f"  the tab kept open: {len(viewer.live_updates)} live updates, "
        f"{sum(live) / 1e3:.0f} KB in all, largest {max(live) / 1e3:.0f} KB"
    )
    print(
        f"  ZIP {steps['zip_mb']:.0f} MB with {steps['zip_files']:,} images in "
        f"{steps['zip_s']:.1f} s ({steps['zip_mb'] / steps['zip_s']:.0f} MB/s)"
    )
    print(f"  peak RSS: {_by_role(rss)}")


def _by_role(rss: dict[str, float]) -> str:
    return ", ".join(f"{role} {megabytes:.0f} MB" for role, megabytes in sorted(rss.items()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uploads", type=int, default=2500)
    parser.add_argument("--outputs-per-image", type=int, default=8)
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--latency-ms", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--view-every", type=float, default=10.0)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixelfleet-watch-") as tmp:
        run(Path(tmp), args)


def run(tmp: Path, args: argparse.Namespace) -> None:
    if args.database_url:
        recreate_mysql_database(args.database_url)
    api_port, endpoint_port = free_port(), free_port()
    env = {
        "PIXELFLEET_DATA_DIR": str(tmp / "data"),
        "PIXELFLEET_LOG_LEVEL": "WARNING",
        "PIXELFLEET_PROVIDER": "offline",
        "PIXELFLEET_OFFLINE_LATENCY_MS": str(args.latency_ms),
        "PIXELFLEET_WORKER_CONCURRENCY": str(args.concurrency),
        **({"PIXELFLEET_DATABASE_URL": args.database_url} if args.database_url else {}),
    }
    base_url = f"http://127.0.0.1:{api_port}"
    small = photos(tmp / "small", args.small, seed=1)
    big = photos(tmp / "big", args.uploads, seed=2)
    command = ["up", "--port", str(api_port), "--endpoint-port", str(endpoint_port)]
    with process(command, env, f"{base_url}/healthz", tmp / "up.log") as pid:
        sampler = RssSampler(pid, interval_s=0.25).start()
        time.sleep(1)
        database = args.database_url.split("@")[-1] or "SQLite"
        print(f"database {database}; RSS when idle: {_by_role(sampler.take())}")
        with Client(base_url, timeout=300) as client:
            report("small", make_dataset(client, base_url, small, 1, args), sampler.take())
            per_image = args.outputs_per_image
            report("big", make_dataset(client, base_url, big, per_image, args), sampler.take())
        sampler.running = False


if __name__ == "__main__":
    main()
