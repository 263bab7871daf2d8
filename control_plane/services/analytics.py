"""The analytics event log (seed 002's events), written from the domain events by one consumer
and read through `GET /api/events`.

What each type stands for (per job or per image, as in the seed):

| type                   | one per                     | from the domain event        |
|------------------------|-----------------------------|------------------------------|
| `generation_queued`    | job (and each retry of one) | job_queued, job_reopened     |
| `generation_started`   | dispatch handed to RunPod   | dispatch_started             |
| `generation_completed` | image that succeeded        | output_succeeded             |
| `generation_failed`    | image that failed / blocked | output_failed, output_blocked|
| `image_stored`         | image file stored           | output_succeeded (a file)    |
| `pack_completed`       | character pack that ended   | job_finished (character-pack)|
| `job_finished`         | job that ended              | job_finished                 |

The seed's model is called per image, but pixelfleet hands images to the worker in chunks
(dispatches): `generation_started` is one per dispatch, with its `image_count`. Every row
carries the job's owner (`user_id`), so the log is owned like everything else.
"""

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from sqlmodel import Session, col, select

from control_plane.access import Viewer
from control_plane.db import in_batches, insert_many
from control_plane.errors import InvalidRequest
from control_plane.events import Consumer, with_jobs
from control_plane.lifecycle import NO_RESULT, RESULT_REJECTED
from control_plane.models import (
    AnalyticsEvent,
    Event,
    EventKind,
    Job,
    JobMode,
    Output,
    OutputKind,
    clip,
)
from control_plane.services.rows import fetch
from shared.contract import NAMED_BATCH_TASKS

CONSUMER = "analytics"
ANALYTICS_EVENTS = AnalyticsEvent.__table__  # type: ignore[attr-defined]
LATER_BATCH_TASKS = frozenset(NAMED_BATCH_TASKS)  # RunPod jobs of a batch after its submit
ERROR_CHARS = 300


class AnalyticsType(StrEnum):
    GENERATION_QUEUED = "generation_queued"
    GENERATION_STARTED = "generation_started"
    GENERATION_COMPLETED = "generation_completed"
    GENERATION_FAILED = "generation_failed"
    IMAGE_STORED = "image_stored"
    PACK_COMPLETED = "pack_completed"
    JOB_FINISHED = "job_finished"


Row = tuple[AnalyticsType, str | None, dict[str, Any]]  # type, output id, data


class LoggedOutput(NamedTuple):
    """What the log takes of an output."""

    id: str
    kind: str
    model: str | None
    latency_ms: int | None
    cost_usd: float | None
    storage_key: str | None
    bytes: int | None
    content_type: str | None


def analytics_consumer() -> Consumer:
    """The consumer that writes the analytics log, in the transaction that moves its cursor
    (so each domain event is logged exactly once)."""
    kinds = frozenset(
        {
            EventKind.JOB_QUEUED,
            EventKind.JOB_REOPENED,
            EventKind.DISPATCH_STARTED,
            EventKind.OUTPUT_SUCCEEDED,
            EventKind.OUTPUT_FAILED,
            EventKind.OUTPUT_BLOCKED,
            EventKind.JOB_FINISHED,
        }
    )
    return Consumer(CONSUMER, kinds, record)


def record(session: Session, events: Sequence[Event]) -> None:
    """Log a batch of events: their jobs and outputs read in a query each, the log's rows
    written in one insert (a 20,000-image job makes 20,000 image events)."""
    outputs = {output.id: output for output in _outputs_of(session, events)}
    rows = [
        {
            "type": kind,
            "user_id": job.user_id,
            "job_id": job.id,
            "output_id": output_id,
            # what is not known is left out (SQL reads a missing key as NULL)
            "data": {name: value for name, value in data.items() if value is not None},
            "created_at": event.created_at,
        }
        for event, job in with_jobs(session, events)
        for kind, output_id, data in _rows_of(event, job, outputs)
    ]
    insert_many(session, ANALYTICS_EVENTS, rows)


def _outputs_of(session: Session, events: Sequence[Event]) -> list[LoggedOutput]:
    """The columns of the events' outputs that the log takes (not whole rows: a batch holds
    up to `events.BATCH` of them, and an output row's JSON columns cost most to load)."""
    output_ids = sorted({event.output_id for event in events if event.output_id})
    columns = [col(getattr(Output, name)) for name in LoggedOutput._fields]
    return [
        LoggedOutput(*row)
        for batch in in_batches(output_ids)
        for row in session.exec(select(*columns).where(col(Output.id).in_(batch))).all()
    ]


def _rows_of(event: Event, job: Job, outputs: dict[str, LoggedOutput]) -> list[Row]:
    common = {"mode": job.mode, **_character(job)}
    if event.kind == EventKind.JOB_QUEUED:
        queued = {**common, "model": model_of(job.config), "image_count": job.total}
        return [(AnalyticsType.GENERATION_QUEUED, None, queued)]
    if event.kind == EventKind.JOB_REOPENED:
        count = event.data.get("retried", 0)
        retried = {**common, "model": model_of(job.config), "image_count": count, "retry": True}
        return [(AnalyticsType.GENERATION_QUEUED, None, retried)]
    if event.kind == EventKind.DISPATCH_STARTED and event.data.get("task") in LATER_BATCH_TASKS:
        return []  # a batch's poll, collect or cancel: its images started with its submit
    if event.kind == EventKind.DISPATCH_STARTED:
        started = {
            **common,
            "model": model_of(job.config),
            "image_count": event.data.get("images"),
            "dispatch_id": event.dispatch_id,
        }
        return [(AnalyticsType.GENERATION_STARTED, None, started)]
    if event.kind == EventKind.JOB_FINISHED:
        return _finished(event, job, common)
    output = outputs.get(event.output_id or "")
    if output is None:
        return []
    return _output_rows(event, job, output, common)


def _output_rows(event: Event, job: Job, output: LoggedOutput, common: dict[str, Any]) -> list[Row]:
    data = {**common, "model": output.model or model_of(job.config)}
    if event.kind != EventKind.OUTPUT_SUCCEEDED:
        error = clip(event.data.get("error"), ERROR_CHARS)
        failed = {
            **data,
            "error_type": error_type(event),
            "error": error,
            "cost_usd": output.cost_usd,
        }
        return [(AnalyticsType.GENERATION_FAILED, output.id, failed)]
    completed = {**data, "duration_ms": output.latency_ms, "cost_usd": output.cost_usd}
    if event.data.get("first_image") and job.first_image_at is not None:
        completed["time_to_first_image_ms"] = _ms(job.first_image_at, job.created_at)
    rows: list[Row] = [(AnalyticsType.GENERATION_COMPLETED, output.id, completed)]
    if output.kind == OutputKind.IMAGE and output.storage_key:
        stored = {**common, "size_bytes": output.bytes, "content_type": output.content_type}
        rows.append((AnalyticsType.IMAGE_STORED, output.id, stored))
    return rows


def _finished(event: Event, job: Job, common: dict[str, Any]) -> list[Row]:
    succeeded, failed, blocked = (
        event.data.get(name, getattr(job, name)) for name in ("succeeded", "failed", "blocked")
    )
    data = {
        **common,
        "status": event.data.get("status"),
        "image_count": job.total,
        "succeeded": succeeded,
        "failed": failed,
        "blocked": blocked,
        "success_rate": rate(succeeded, succeeded + failed + blocked),
        "total_duration_ms": _ms(event.created_at, job.created_at),
    }
    rows: list[Row] = [(AnalyticsType.JOB_FINISHED, None, data)]
    if job.mode == JobMode.CHARACTER_PACK:
        rows.append((AnalyticsType.PACK_COMPLETED, None, data))
    return rows


def error_type(event: Event) -> str:
    """Why an image did not succeed, in one word: blocked, cancelled, lost, dispatch_failed,
    unsendable (what failed it with its dispatch), or no_result, result_rejected,
    generation_error (what the worker said of it)."""
    if event.kind == EventKind.OUTPUT_BLOCKED:
        return "blocked"
    cause = event.data.get("cause")
    if cause:
        return str(cause)
    error = str(event.data.get("error") or "")
    if error == NO_RESULT:
        return "no_result"
    if error.startswith(RESULT_REJECTED):
        return "result_rejected"
    return "generation_error"


def _character(job: Job) -> dict[str, Any]:
    return {"character_id": job.source_id} if job.mode == JobMode.CHARACTER_PACK else {}


def model_of(config: dict[str, Any]) -> str | None:
    """The model a job's config asks for."""
    model = config.get("model") or config.get("text_model")
    return str(model) if model else None


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _ms(later: datetime, earlier: datetime) -> int:
    return max(int((later - earlier).total_seconds() * 1000), 0)


def success_rate(job: Job) -> float | None:
    """Succeeded over ended images; None before any ended."""
    return rate(job.succeeded, job.succeeded + job.failed + job.blocked)


def first_image_s(job: Job) -> float | None:
    """Seconds from submit to the job's first stored image; None before it."""
    if job.first_image_at is None:
        return None
    return round((job.first_image_at - job.created_at).total_seconds(), 3)


# -- reading ------------------------------------------------------------------------------


def parse_type(value: str | None) -> AnalyticsType | None:
    if value is None or value == "":
        return None
    try:
        return AnalyticsType(value)
    except ValueError:
        known = ", ".join(t.value for t in AnalyticsType)
        raise InvalidRequest(f"unknown event type {value!r}; one of: {known}") from None


def parse_cursor(value: str | None) -> int:
    if not value:
        return 0
    if not value.isdigit() or len(value) > 18:
        raise InvalidRequest(f"after: {value!r} is not a cursor (the `next` of a page)")
    return int(value)


def list_events(
    session: Session,
    viewer: Viewer,
    kind: AnalyticsType | None,
    job_id: str | None,
    after: int,
    limit: int,
) -> tuple[list[AnalyticsEvent], str | None]:
    """The viewer's events after the cursor `after`, oldest first, and the cursor of the
    next page (None at the end of the log, for now)."""
    if job_id is not None:
        fetch(session, Job, job_id, "job", viewer=viewer)
    filters = [col(AnalyticsEvent.id) > after, *viewer.owned(col(AnalyticsEvent.user_id))]
    if kind is not None:
        filters.append(col(AnalyticsEvent.type) == kind)
    if job_id is not None:
        filters.append(col(AnalyticsEvent.job_id) == job_id)
    rows = list(
        session.exec(
            select(AnalyticsEvent).where(*filters).order_by(col(AnalyticsEvent.id)).limit(limit + 1)
        ).all()
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, str(rows[-1].id) if more and rows else None
