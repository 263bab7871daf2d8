"""Lists and counts at size: do the job list and a big group's page stay fast?

    python -m bench.lists [--jobs 100000] [--outputs 1500000] [--group-outputs 400000]
                          [--requests 200] [--database-url URL]

Bulk-inserts `--jobs` jobs over 50 groups, and `--outputs` outputs of which `--group-outputs`
are in one group (20 jobs there; the rest spread over the other jobs), with mixed statuses
and modes, into a fresh SQLite file (default) or the MariaDB/MySQL database of
`--database-url` (dropped and created again). Then, through the real app (TestClient, its
services idle), asks each list `--requests` times and prints p50/p95 in ms and p95 as a ratio
of the 20 ms target (≤ 1.0 meets it): `GET /api/jobs` first pages unfiltered and by status,
group and mode, a page after a cursor, `GET /api/groups/{id}` of the big group, and the UI
index. On MariaDB it also prints the plan of the group counts statement.
"""

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from bench.common import batches, recreate_mysql_database
from control_plane.app import create_app
from control_plane.db import make_engine, migrate
from control_plane.models import Group, Job, JobMode, JobStatus, Output, OutputStatus, utcnow
from control_plane.services.groups import counts_statement
from control_plane.settings import Settings
from shared.ids import new_id

TARGET_MS = 20.0
GROUPS = 50
BIG_GROUP_JOBS = 20
BATCH = 10_000
WARM_UP = 5  # requests not measured: the first ones compile statements and templates
JOB_STATUSES = [JobStatus.COMPLETED] * 6 + [
    JobStatus.FAILED,
    JobStatus.QUEUED,
    JobStatus.PROCESSING,
]
MODES = [JobMode.AUTOMATIC] * 3 + [JobMode.SEMI_AUTOMATIC, JobMode.CATALOG, JobMode.IMPORT]
OUTPUT_STATUSES = [OutputStatus.SUCCEEDED] * 16 + [
    OutputStatus.FAILED,
    OutputStatus.BLOCKED,
    OutputStatus.PENDING,
    OutputStatus.RUNNING,
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--outputs", type=int, default=1_500_000)
    parser.add_argument("--group-outputs", type=int, default=400_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixelfleet-lists-") as tmp:
        run(Path(tmp), args)


def run(tmp: Path, args: argparse.Namespace) -> None:
    database_url = args.database_url or f"sqlite:///{tmp / 'pixelfleet.db'}"
    if args.database_url:
        recreate_mysql_database(database_url)
    migrate(database_url)
    engine = make_engine(database_url)
    started = time.monotonic()
    big_group, job_ids = _fill(engine, args)
    filled = time.monotonic() - started
    settings = Settings(
        data_dir=tmp,
        database_url=database_url,
        storage_url=str(tmp / "storage"),
        allowed_hosts="testserver",
    )
    print(f"database              {database_url.split('@')[-1]}")
    print(
        f"rows                  {args.jobs} jobs, {args.outputs} outputs "
        f"({args.group_outputs} in one group), inserted in {filled:.0f} s"
    )
    if engine.dialect.name == "mysql":
        _print_plan(engine, big_group)
    with TestClient(create_app(settings, reconcile=False)) as client:
        _measure(client, args, big_group, job_ids[len(job_ids) // 2])
    engine.dispose()


def _fill(engine: sa.Engine, args: argparse.Namespace) -> tuple[str, list[str]]:
    """The groups, jobs and outputs; the big group's id and every job's id, oldest first."""
    now = utcnow()
    group_ids = [new_id("grp") for _ in range(GROUPS)]
    groups = [
        {"id": gid, "name": f"g{i}", "created_at": now, "updated_at": now}
        for i, gid in enumerate(group_ids)
    ]
    job_ids = [new_id("job") for _ in range(args.jobs)]
    job_groups = [group_ids[0]] * BIG_GROUP_JOBS + [
        group_ids[1 + i % (GROUPS - 1)] for i in range(args.jobs - BIG_GROUP_JOBS)
    ]
    with engine.begin() as connection:
        connection.execute(sa.insert(Group.__table__), groups)  # type: ignore[attr-defined]
        for chunk in _chunks(zip(job_ids, job_groups, strict=True)):
            rows = [_job(job_id, gid, i, now) for i, (job_id, gid) in enumerate(chunk)]
            connection.execute(sa.insert(Job.__table__), rows)  # type: ignore[attr-defined]
    with engine.begin() as connection:
        for chunk in _chunks(_outputs(args, job_ids, job_groups)):
            connection.execute(sa.insert(Output.__table__), chunk)  # type: ignore[attr-defined]
    return group_ids[0], job_ids


def _job(job_id: str, group_id: str, index: int, now: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "group_id": group_id,
        "batch_id": "bench",
        "mode": MODES[index % len(MODES)],
        "status": JOB_STATUSES[index % len(JOB_STATUSES)],
        "prompt": "a bench job",
        "config": {},
        "created_at": now,
        "updated_at": now,
    }


def _outputs(
    args: argparse.Namespace, job_ids: list[str], job_groups: list[str]
) -> Iterator[dict[str, Any]]:
    """`--group-outputs` outputs over the big group's jobs, the rest round the other jobs."""
    now = utcnow()
    big = args.group_outputs // BIG_GROUP_JOBS
    others = itertools.cycle(range(BIG_GROUP_JOBS, len(job_ids)))
    for index in range(args.outputs):
        job = index // big if index < big * BIG_GROUP_JOBS else next(others)
        yield {
            "id": new_id("out"),
            "job_id": job_ids[job],
            "group_id": job_groups[job],
            "position": index,
            "status": OUTPUT_STATUSES[index % len(OUTPUT_STATUSES)],
            "prompt": "p",
            "reference_ids": [],
            "kind": "image",
            "seed": index,
            "params": {},
            "attempts": 1,
            "created_at": now,
            "updated_at": now,
        }


def _chunks(rows: Any) -> Iterator[list[Any]]:
    return batches(rows, BATCH)


def _print_plan(engine: sa.Engine, group_id: str) -> None:
    statement = counts_statement([group_id]).compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as connection:
        plan = connection.exec_driver_sql(f"EXPLAIN {statement}").mappings().all()
    for row in plan:
        print(f"plan                  {row['table']}: key {row['key']}, {row['Extra']}")


def _measure(client: TestClient, args: argparse.Namespace, big_group: str, middle_job: str) -> None:
    cases = {
        "jobs, first page": ("/api/jobs", {}),
        "jobs, status=completed": ("/api/jobs", {"status": "completed"}),
        "jobs, group_id=big": ("/api/jobs", {"group_id": big_group}),
        "jobs, mode=import": ("/api/jobs", {"mode": "import"}),
        "jobs, after a cursor": ("/api/jobs", {"cursor": middle_job}),
        "jobs, page=2000 (offset)": ("/api/jobs", {"page": 2000}),
        f"group, {args.group_outputs} outputs": (f"/api/groups/{big_group}", {}),
        "UI index (50 groups)": ("/", {}),
    }
    print(f"{'request':<32}{'p50 ms':>8}{'p95 ms':>8}   p95/{TARGET_MS:.0f} ms")
    for name, (path, params) in cases.items():
        for _ in range(WARM_UP):
            client.get(path, params=params)
        timings = []
        for _ in range(args.requests):
            started = time.perf_counter()
            answer = client.get(path, params=params)
            timings.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.text
        p50 = statistics.median(timings)
        p95 = statistics.quantiles(timings, n=20)[-1]
        print(f"{name:<32}{p50:>8.1f}{p95:>8.1f}   {p95 / TARGET_MS:.2f}")


if __name__ == "__main__":
    main()
