"""What a run of the CLI came to: per-job counts, why images failed, and the exit code."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.filesize import decimal

from client.api import FileUpload
from control_plane.schemas import JobDetail

EXIT_OK = 0  # every image succeeded
EXIT_SOME_FAILED = 1  # some image failed or was blocked (or an input was rejected)
EXIT_NOT_SUBMITTED = 1  # over the spend cap (402), or the estimate was not confirmed
EXIT_USAGE = 2  # bad usage, or the API refused or could not be reached
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
NO_REASON = "no reason given"


@dataclass
class Outcome:
    jobs: Sequence[JobDetail] = ()
    uploads: Sequence[FileUpload] = ()
    zip_path: str | None = None
    zip_bytes: int | None = None
    problems: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for job in self.jobs:
            for image in job.images:
                if image.status in ("failed", "blocked"):
                    self.problems[image.status, image.error or NO_REASON] += 1

    def count(self, what: str) -> int:
        return sum(getattr(job.progress, what) for job in self.jobs)

    @property
    def rejected(self) -> list[FileUpload]:
        return [upload for upload in self.uploads if upload.state == "rejected"]

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.problems or self.rejected else EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {
            "jobs": [job_json(job) for job in self.jobs],
            "uploads": uploads_json(self.uploads),
            "problems": [
                {"status": status, "reason": reason, "count": count}
                for (status, reason), count in self.problems.most_common()
            ],
            "zip": None
            if self.zip_path is None
            else {"path": self.zip_path, "bytes": self.zip_bytes},
            "exit_code": self.exit_code,
        }

    def lines(self) -> list[str]:
        """The summary for a person."""
        lines = _upload_lines(self.uploads)
        lines += [_job_line(job) for job in self.jobs]
        for (status, reason), count in self.problems.most_common():
            lines.append(f"  {count} {status}: {reason}")
        if self.zip_path is not None:
            saved = f"saved {self.count('succeeded')} image(s) to {self.zip_path}"
            lines.append(f"{saved} ({decimal(self.zip_bytes or 0)})")
        return lines


def lane_lines(job: JobDetail) -> list[str]:
    """A batch job's lane, where its batches stand (Google's counts) and the images that
    went online, by reason; nothing for an online job."""
    if job.lane != "batch":
        return []
    batch, lines = job.batch, ["lane: batch"]
    if batch is not None:
        done = (batch.succeeded or 0) + (batch.failed or 0)
        counts = f", {done} of {batch.requests} request(s) done" if batch.requests else ""
        lines[0] += f", {batch.state} ({batch.batches} batch(es){counts})"
    lines += [f"went online: {n} image(s): {why}" for why, n in (job.fallback or {}).items()]
    return lines


def job_json(job: JobDetail) -> dict[str, Any]:
    return {
        "id": job.id,
        "group_id": job.group_id,
        "mode": job.mode,
        "status": job.status,
        **job.progress.model_dump(),
        "cost_usd": job.cost_usd,
        "error": job.error,
    }


def uploads_json(uploads: Sequence[FileUpload]) -> dict[str, Any]:
    states = Counter(upload.state for upload in uploads)
    return {
        "uploaded": states["uploaded"],
        "skipped": states["skipped"] + states["duplicate"],
        "rejected": [
            {"file": str(upload.file.path), "reason": upload.reason}
            for upload in uploads
            if upload.state == "rejected"
        ],
    }


def _upload_lines(uploads: Sequence[FileUpload]) -> list[str]:
    if not uploads:
        return []
    states = Counter(upload.state for upload in uploads)
    skipped = states["skipped"] + states["duplicate"]
    line = f"uploads: {states['uploaded']} uploaded, {skipped} already in the group (skipped)"
    if states["rejected"]:
        line += f", {states['rejected']} rejected"
    lines = [line]
    lines += [
        f"  rejected {upload.file.path.name}: {upload.reason}"
        for upload in uploads
        if upload.state == "rejected"
    ]
    return lines


def _job_line(job: JobDetail) -> str:
    progress = job.progress
    line = (
        f"job {job.id} ({job.mode}, {job.status}): {progress.total} image(s): "
        f"{progress.succeeded} succeeded, {progress.failed} failed, {progress.blocked} blocked"
    )
    if progress.pending:
        line += f", {progress.pending} pending"
    line += f", cost ${job.cost_usd:.4f}"
    return line + (f" ({job.error})" if job.error else "")
