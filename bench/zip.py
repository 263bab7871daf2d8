"""ZIP download throughput and memory: a 1 GB group streamed to /dev/null, local disk and GCS.

    python -m bench.zip [--backend local|gcs|both] [--total-mb 1024] [--gcs-total-mb N]
                        [--file-mb 2]

`--file-mb 0.05` makes the same gigabyte 20,000 files of 50 KB: what the API keeps per
image while planning and streaming shows in its peak RSS.

For each backend: writes a group of incompressible images' worth of bytes into storage with
real database rows, starts the control plane as its own process, and streams
`GET /api/download/{group}/zip` to /dev/null. Local disk: also `zip -0 -r` over the same
files, in the same run. GCS: gcp-storage-emulator (in memory, its own process) stands in
for the bucket, and the API reads it as it would GCS (PIXELFLEET_STORAGE_URL=gs://…,
STORAGE_EMULATOR_HOST). Prints MB/s and the API's peak RSS side by side.

The emulator serves one request at a time in pure Python, so GCS figures measure the
emulator more than pixelfleet; `--gcs-total-mb` makes its group smaller when time is short.
"""

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlmodel import Session

from bench.common import free_port, gcs_emulator, peak_rss_mb, process
from control_plane.db import make_engine, migrate
from control_plane.models import Group, Job, JobStatus, Output, OutputStatus
from shared import layout
from shared.storage import LocalStorage, Storage, StoredObject

log = logging.getLogger("bench.zip")
MB = 1024 * 1024
BUCKET = "pixelfleet-bench"
PREFIX = "pf"
UPLOAD_THREADS = 4  # overlaps our hashing with the emulator's work; it serves one at a time


@dataclass(frozen=True)
class Download:
    """One backend's run: what was stored, how fast the ZIP came, how big the API grew."""

    backend: str
    total_mb: int
    files: int
    populate_s: float
    seconds: float
    bytes: int
    rss_idle_mb: float
    rss_peak_mb: float

    @property
    def rate(self) -> float:
        return self.bytes / MB / self.seconds


@dataclass(frozen=True)
class ZipCli:
    seconds: float
    bytes: int

    @property
    def rate(self) -> float:
        return self.bytes / MB / self.seconds


def populate(storage: Storage, database_url: str, total_mb: int, file_mb: float) -> str:
    """A completed job of `total_mb / file_mb` outputs in `storage` and the database."""
    migrate(database_url)
    group = Group(name="zip bench")
    job = Job(
        group_id=group.id,
        batch_id="bat_bench",
        mode="automatic",
        prompt="bench",
        status=JobStatus.COMPLETED,
    )
    block = os.urandom(int(file_mb * MB))

    def store(position: int) -> tuple[str, StoredObject]:
        data = hashlib.sha256(str(position).encode()).digest() + block[32:]
        stem = layout.output_stem(group.id, job.id, f"{position:05d}")
        key = layout.output_key(stem, "image/png")
        return key, storage.put_bytes(key, data, content_type="image/png")

    threads = UPLOAD_THREADS if not isinstance(storage, LocalStorage) else 1
    with ThreadPoolExecutor(max_workers=threads) as pool:
        stored = list(pool.map(store, range(int(total_mb / file_mb))))
    outputs = [
        Output(
            job_id=job.id,
            group_id=group.id,
            position=position,
            prompt="bench",
            seed=position,
            status=OutputStatus.SUCCEEDED,
            storage_key=key,
            content_type="image/png",
            bytes=obj.size,
            sha256=obj.sha256,
            width=1024,
            height=1024,
        )
        for position, (key, obj) in enumerate(stored)
    ]
    engine = make_engine(database_url)
    with Session(engine, expire_on_commit=False) as session:
        session.add(group)
        session.flush()
        session.add(job)
        session.flush()
        session.add_all(outputs)
        session.commit()
    engine.dispose()
    return group.id


def time_zip_cli(folder: Path) -> ZipCli:
    started = time.monotonic()
    with open(os.devnull, "wb") as sink:
        subprocess.run(["zip", "-0", "-q", "-r", "-", "."], cwd=folder, stdout=sink, check=True)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return ZipCli(time.monotonic() - started, size)


def time_download(port: int, group_id: str) -> tuple[float, int]:
    received = 0
    started = time.monotonic()
    with httpx.stream(
        "GET", f"http://127.0.0.1:{port}/api/download/{group_id}/zip", timeout=300
    ) as reply:
        reply.raise_for_status()
        for chunk in reply.iter_raw(MB):
            received += len(chunk)
    return time.monotonic() - started, received


def download_through_api(
    data_dir: Path, env: dict[str, str], group_id: str
) -> tuple[float, int, float, float]:
    """Start `pixelfleet api` with `env`, stream the ZIP: (seconds, bytes, idle RSS, peak RSS)."""
    port = free_port()
    env = {
        "PIXELFLEET_DATA_DIR": str(data_dir),
        "PIXELFLEET_LOG_LEVEL": "WARNING",
        "PIXELFLEET_RECONCILE_INTERVAL_S": "600",
        **env,
    }
    health = f"http://127.0.0.1:{port}/healthz"
    with process(["api", "--port", str(port)], env, health, data_dir / "api.log") as pid:
        rss_idle = peak_rss_mb(pid)
        seconds, received = time_download(port, group_id)
        rss_peak = peak_rss_mb(pid)
    return seconds, received, rss_idle, rss_peak


def run_local(root: Path, total_mb: int, file_mb: float) -> tuple[Download, ZipCli]:
    data_dir = root / "local"
    storage = LocalStorage(data_dir / "storage")
    log.info("local: writing %d MB", total_mb)
    started = time.monotonic()
    group_id = populate(storage, f"sqlite:///{data_dir / 'pixelfleet.db'}", total_mb, file_mb)
    populate_s = time.monotonic() - started
    folder = storage.root / "groups" / group_id
    time_zip_cli(folder)  # warm the page cache so both read from memory
    log.info("local: streaming the ZIP")
    env = {"PIXELFLEET_STORAGE_URL": str(storage.root)}
    seconds, received, idle, peak = download_through_api(data_dir, env, group_id)
    zip_cli = time_zip_cli(folder)
    files = int(total_mb / file_mb)
    return Download("local", total_mb, files, populate_s, seconds, received, idle, peak), zip_cli


def run_gcs(root: Path, total_mb: int, file_mb: float) -> Download:
    from shared.storage.gcs import EMULATOR_ENV, GCSStorage, client_from_env

    data_dir = root / "gcs"
    data_dir.mkdir()
    with gcs_emulator() as emulator_url:
        client = client_from_env(BUCKET, {EMULATOR_ENV: emulator_url})
        client.create_bucket(BUCKET)
        storage_url = f"gs://{BUCKET}/{PREFIX}"
        storage = GCSStorage(storage_url, client=client)
        log.info("gcs: writing %d MB into the emulator", total_mb)
        started = time.monotonic()
        group_id = populate(storage, f"sqlite:///{data_dir / 'pixelfleet.db'}", total_mb, file_mb)
        populate_s = time.monotonic() - started
        log.info("gcs: streaming the ZIP")
        env = {"PIXELFLEET_STORAGE_URL": storage_url, EMULATOR_ENV: emulator_url}
        seconds, received, idle, peak = download_through_api(data_dir, env, group_id)
    files = int(total_mb / file_mb)
    return Download("gcs", total_mb, files, populate_s, seconds, received, idle, peak)


def report(local: tuple[Download, ZipCli] | None, gcs: Download | None) -> None:
    runs = [run for run in (local[0] if local else None, gcs) if run is not None]
    titles = {"local": "local disk", "gcs": "GCS (emulator)"}
    rows: list[tuple[str, Callable[[Download], str]]] = [
        ("group", lambda r: f"{r.total_mb} MB in {r.files} files"),
        ("populate", lambda r: f"{r.populate_s:.1f} s ({r.total_mb / r.populate_s:.0f} MB/s)"),
        (
            "pixelfleet ZIP (HTTP)",
            lambda r: f"{r.rate:.0f} MB/s ({r.bytes / MB:.0f} MB, {r.seconds:.2f} s)",
        ),
        ("API peak RSS", lambda r: f"{r.rss_peak_mb:.0f} MB (idle {r.rss_idle_mb:.0f} MB)"),
    ]
    print(f"{'':<24}" + "".join(f"{titles[run.backend]:<36}" for run in runs).rstrip())
    for label, cell in rows:
        print(f"{label:<24}" + "".join(f"{cell(run):<36}" for run in runs).rstrip())
    if local is not None:
        ours, zip_cli = local
        print(f"{'zip -0 -r (local files)':<24}{zip_cli.rate:.0f} MB/s ({zip_cli.seconds:.2f} s)")
        print(f"{'ratio local/zip -0':<24}{ours.rate / zip_cli.rate:.2f}   (target ≥ 0.70)")
    print(f"{'targets':<24}API peak RSS < 150 MB")
    if gcs is not None:
        print("note: GCS is gcp-storage-emulator: it serves one request at a time")
        print("      in pure Python, so its speed, not pixelfleet's, bounds the GCS column")
        if local is not None and gcs.total_mb < local[0].total_mb:
            print(
                f"      the GCS group is smaller than the local one (--gcs-total-mb {gcs.total_mb})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["local", "gcs", "both"], default="both")
    parser.add_argument("--total-mb", type=int, default=1024)
    parser.add_argument(
        "--gcs-total-mb", type=int, default=None, help="GCS group size (default: --total-mb)"
    )
    parser.add_argument("--file-mb", type=float, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.backend != "gcs" and shutil.which("zip") is None:
        raise SystemExit("zip is not installed (apt-get install zip)")
    with tempfile.TemporaryDirectory(prefix="pixelfleet-zipbench-") as tmp:
        root = Path(tmp)
        local = run_local(root, args.total_mb, args.file_mb) if args.backend != "gcs" else None
        gcs_mb = args.gcs_total_mb or args.total_mb
        gcs = run_gcs(root, gcs_mb, args.file_mb) if args.backend != "local" else None
    report(local, gcs)


if __name__ == "__main__":
    main()
