"""Job pages at 20,000 images: is each answer within 50 ms (p95) and 1 MB?

    python -m bench.pages [--images 20000] [--requests 40] [--database-url URL]

Writes a group with one completed job of `--images` succeeded images (each with a file and
a thumbnail key, so every image carries two URLs) straight into the database with bulk
inserts (SQLite in a temporary folder by default; `--database-url` names a MariaDB/MySQL
database, dropped and created again), then asks the real app (in process, through TestClient)
`--requests` times each for `GET /api/jobs/{id}` (its first 500 images), one page of
`GET /api/jobs/{id}/images` from the middle of the job (500, and 1,000) and the UI job
page. Prints p50/p95 latency in ms and the answer size in KB for each, with p95 and size
as ratios of the 50 ms / 1 MB targets (≤ 1.0 meets them); and, for scale, how long the
whole group's download list takes to stream.
"""

import argparse
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert

from bench.common import recreate_mysql_database
from control_plane.app import create_app
from control_plane.db import make_engine, migrate
from control_plane.models import Group, Job, JobMode, JobStatus, Output, OutputStatus, utcnow
from control_plane.services.jobs import image_cursor
from control_plane.settings import Settings
from shared.ids import new_id

TARGET_MS = 50.0
TARGET_BYTES = 1_000_000
INSERT_BATCH = 2_000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixelfleet-pages-") as tmp:
        run(Path(tmp), args)


def run(tmp: Path, args: argparse.Namespace) -> None:
    database_url = args.database_url or f"sqlite:///{tmp / 'pixelfleet.db'}"
    if args.database_url:
        recreate_mysql_database(database_url)
    migrate(database_url)
    started = time.perf_counter()
    group_id, job_id = _write_job(database_url, args.images)
    print(f"database              {database_url.split('@')[-1]}")
    written_s = time.perf_counter() - started
    print(f"job                   {args.images:,} images, written in {written_s:.1f} s")
    settings = Settings(data_dir=tmp, database_url=database_url)
    middle = image_cursor(args.images // 2)
    app = create_app(settings, reconcile=False)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        for label, path in (
            ("GET /api/jobs/{id}", f"/api/jobs/{job_id}"),
            ("/images limit=500", f"/api/jobs/{job_id}/images?cursor={middle}"),
            ("/images limit=1000", f"/api/jobs/{job_id}/images?cursor={middle}&limit=1000"),
            ("UI /jobs/{id}", f"/jobs/{job_id}"),
        ):
            _measure(client, label, path, args.requests)
        started = time.perf_counter()
        listed = client.get(f"/api/download/{group_id}", headers={"Accept": "application/x-ndjson"})
        took = time.perf_counter() - started
        lines, megabytes = listed.text.count("\n"), len(listed.content) / 1e6
        print(f"download list         {lines:,} JSON lines in {took:.2f} s, {megabytes:.1f} MB")


def _measure(client: TestClient, label: str, path: str, requests: int) -> None:
    warm = client.get(path)  # warm-up
    assert warm.status_code == 200, warm.text
    timings: list[float] = []
    size = 0
    for _ in range(requests):
        started = time.perf_counter()
        answer = client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
        size = len(answer.content)
    p50 = statistics.median(timings)
    p95 = statistics.quantiles(timings, n=20)[-1]
    print(
        f"{label:<21} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms ({p95 / TARGET_MS:.2f} of 50 ms)  "
        f"{size / 1000:7.1f} KB ({size / TARGET_BYTES:.2f} of 1 MB)"
    )


def _write_job(database_url: str, images: int) -> tuple[str, str]:
    """A group with one completed job of `images` succeeded images, by bulk inserts."""
    engine = make_engine(database_url)
    now = utcnow()
    group_id, job_id = new_id("grp"), new_id("job")
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(Group),
                [{"id": group_id, "name": "bench-pages", "created_at": now, "updated_at": now}],
            )
            connection.execute(insert(Job), [_job_row(job_id, group_id, images, now)])
            for first in range(0, images, INSERT_BATCH):
                rows = [
                    _output_row(job_id, group_id, position, now)
                    for position in range(first, min(first + INSERT_BATCH, images))
                ]
                connection.execute(insert(Output), rows)
    finally:
        engine.dispose()
    return group_id, job_id


def _job_row(job_id: str, group_id: str, images: int, now: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "group_id": group_id,
        "batch_id": new_id("bat"),
        "mode": JobMode.AUTOMATIC,
        "status": JobStatus.COMPLETED,
        "prompt": "a lighthouse at dusk, {oil painting|watercolour}",
        "config": {"model": "gemini-2.5-flash-image", "aspect_ratio": "1:1"},
        "total": images,
        "succeeded": images,
        "created_at": now,
        "updated_at": now,
        "completed_at": now + timedelta(minutes=5),
    }


def _output_row(job_id: str, group_id: str, position: int, now: Any) -> dict[str, Any]:
    stem = f"groups/{group_id}/jobs/{job_id}/{position:05d}"
    return {
        "id": new_id("out"),
        "job_id": job_id,
        "group_id": group_id,
        "dispatch_id": None,
        "position": position,
        "status": OutputStatus.SUCCEEDED,
        "prompt": "a lighthouse at dusk, oil painting",
        "reference_ids": [new_id("img")],
        "kind": "image",
        "seed": 1_000 + position,
        "params": {"model": "gemini-2.5-flash-image", "aspect_ratio": "1:1"},
        "provider": "gemini",
        "model": "gemini-2.5-flash-image",
        "storage_key": f"{stem}.png",
        "thumbnail_key": f"{stem}.thumb.webp",
        "content_type": "image/png",
        "width": 1024,
        "height": 1024,
        "bytes": 1_400_000,
        "sha256": f"{position:064x}",
        "attempts": 1,
        "latency_ms": 6_500,
        "cost_usd": 0.039,
        "created_at": now,
        "updated_at": now,
        "completed_at": now,
    }


if __name__ == "__main__":
    main()
