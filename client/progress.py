"""Progress bars (rich, on stderr) for uploading, generating and downloading; none with --json."""

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from client.api import FileUpload
from client.files import LocalFile
from control_plane.schemas import JobDetail, PersonaPublic


class UploadBars:
    """Reading (hashing) the folder's files, then sending the ones the group lacks."""

    def __init__(self, progress: Progress | None, files: int) -> None:
        self.progress = progress
        self.files = files
        self.hashed_files = 0
        self.hashing = self._task("checking files", files) if progress else None
        self.sending: TaskID | None = None
        self.to_send = self.sent_files = self.total_bytes = self.sent_bytes = 0

    def hashed(self, _: LocalFile) -> None:
        if self.progress and self.hashing is not None:
            self.hashed_files += 1  # callbacks come from worker threads: rich's updates lock
            self.progress.update(
                self.hashing, advance=1, detail=f"{self.hashed_files}/{self.files} files"
            )

    def planned(self, files: Sequence[LocalFile]) -> None:
        if self.progress:
            self.to_send, self.total_bytes = len(files), sum(file.size for file in files)
            self.sending = self._task("uploading", self.total_bytes)
            self._show_sent()

    def sent(self, outcome: list[FileUpload]) -> None:
        if self.progress and self.sending is not None:
            self.sent_files += len(outcome)
            self.sent_bytes += sum(upload.file.size for upload in outcome)
            self._show_sent()

    def _show_sent(self) -> None:
        assert self.progress is not None and self.sending is not None
        self.progress.update(
            self.sending,
            completed=self.sent_bytes,
            detail=f"{self.sent_files}/{self.to_send} files, "
            f"{decimal(self.sent_bytes)} of {decimal(self.total_bytes)}",
        )

    def _task(self, description: str, total: int) -> TaskID:
        assert self.progress is not None
        return self.progress.add_task(description, total=total, detail="")


NO_NEWS: dict[str, Any] = {"succeeded": 0, "failed": 0, "blocked": 0, "rate": "", "cost": ""}


class JobBars:
    """One bar per job: done of total, succeeded/failed/blocked, rate, ETA, cost so far."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}
        self.started = time.monotonic()
        self.done_at_start: dict[str, int] = {}

    def update(self, jobs: Sequence[JobDetail]) -> None:
        if self.progress is None:
            return
        for job in jobs:
            done = job.progress.total - job.progress.pending
            if job.id not in self.tasks:
                self.tasks[job.id] = self.progress.add_task(
                    f"job ..{job.id[-6:]}", total=job.progress.total, **NO_NEWS
                )
                self.done_at_start[job.id] = done
            elapsed = max(time.monotonic() - self.started, 1e-6)
            rate = (done - self.done_at_start[job.id]) / elapsed
            batch = f" [{job.batch.state}]" if job.batch else ""
            self.progress.update(
                self.tasks[job.id],
                description=f"job ..{job.id[-6:]}{batch}",
                total=job.progress.total,
                completed=done,
                succeeded=job.progress.succeeded,
                failed=job.progress.failed,
                blocked=job.progress.blocked,
                rate=f"{rate:.1f}/s",
                cost=f"${job.cost_usd:.4f}",
            )


PERSONA_STEPS = 5  # data asked, data written, base asked, variations asked, ended


def persona_step(persona: PersonaPublic) -> int:
    """How far along its pipeline a persona is, 0 to PERSONA_STEPS."""
    if persona.status in ("completed", "failed"):
        return PERSONA_STEPS
    if persona.status == "generating-images":
        return 4 if persona.stage == "variations" else 3
    return {"pending": 0, "generating-data": 1, "data-generated": 2}.get(persona.status, 0)


class PersonaBars:
    """One bar per persona: its step along the pipeline, its status and stage."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def update(self, personas: Sequence[PersonaPublic]) -> None:
        if self.progress is None:
            return
        for persona in personas:
            if persona.id not in self.tasks:
                self.tasks[persona.id] = self.progress.add_task(
                    f"persona ..{persona.id[-6:]}", total=PERSONA_STEPS, state=""
                )
            label = persona.name or f"persona ..{persona.id[-6:]}"
            state = (
                persona.status
                if persona.status in ("completed", "failed")
                else (f"{persona.status} ({persona.stage})")
            )
            self.progress.update(
                self.tasks[persona.id],
                description=label[:24],
                completed=persona_step(persona),
                state=state,
            )


class DownloadBar:
    def __init__(self, progress: Progress | None, what: str) -> None:
        self.progress = progress
        self.task = progress.add_task(what, total=None) if progress else None

    def chunk(self, size: int, total: int | None) -> None:
        if self.progress and self.task is not None:
            self.progress.update(self.task, total=total, advance=size)


class Display:
    """Where the bars go: stderr, so stdout carries only results; nothing when `enabled` is
    false (--json)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)

    @contextmanager
    def uploading(self, files: int) -> Iterator[UploadBars]:
        with self._progress(TextColumn("{task.fields[detail]}"), TimeRemainingColumn()) as bars:
            yield UploadBars(bars, files)

    @contextmanager
    def watching(self) -> Iterator[JobBars]:
        columns = (
            MofNCompleteColumn(),
            TextColumn(
                "[green]{task.fields[succeeded]} ok[/] [red]{task.fields[failed]} failed[/] "
                "[yellow]{task.fields[blocked]} blocked[/] {task.fields[rate]}"
            ),
            TimeRemainingColumn(),
            TextColumn("{task.fields[cost]}"),
        )
        with self._progress(*columns) as bars:
            yield JobBars(bars)

    @contextmanager
    def watching_personas(self) -> Iterator[PersonaBars]:
        with self._progress(TextColumn("{task.fields[state]}")) as bars:
            yield PersonaBars(bars)

    @contextmanager
    def downloading(self, what: str) -> Iterator[DownloadBar]:
        with self._progress(DownloadColumn(), TransferSpeedColumn()) as bars:
            yield DownloadBar(bars, what)

    @contextmanager
    def _progress(self, *columns: ProgressColumn) -> Iterator[Progress | None]:
        if not self.enabled:
            yield None
            return
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            *columns,
            console=self.console,
        )
        with progress:
            yield progress
