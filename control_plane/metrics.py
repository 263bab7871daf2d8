"""`GET /metrics`: Prometheus text format, correct however many API replicas there are.

Two kinds of figures:

- **From the database at scrape time** (`DatabaseCollector`): every replica answers the same
  global figures, so aggregate them across instances with `max`, never `sum`. Each is read by
  an indexed query, so a scrape costs the same on a database of 100 jobs or 100,000:
  dispatches queued / in flight (the dispatches' status index), unfinished images by model
  (the active jobs' counters, by the jobs' status index), user-webhook deliveries pending /
  failed (their status index), and — over the last `PIXELFLEET_METRICS_WINDOW_S` of the
  analytics log (an id range found by binary search on its primary key) — images ended by
  status and model, spend in USD by model and by the jobs' lane, and the generation-latency
  and time-to-first-image histograms, bucketed in SQL. A window's figures are a snapshot,
  not a running total: they are gauges, and the histograms are gauge histograms
  (`histogram_quantile(0.95, max without(instance)
  (pixelfleet_generation_latency_seconds_bucket))` is the p95 of the window).
- **Counted by the process that saw them** (prometheus-client counters): RunPod webhooks
  received and `/status` polls of the reconciler, by outcome; how many webhooks were applied
  in one go (a histogram). Each replica counts its own,
  so `sum` them across instances. With `PROMETHEUS_MULTIPROC_DIR` set (several worker
  processes in one replica), prometheus-client's multiprocess mode adds up the processes.
"""

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlmodel import Session, col, func, select

from control_plane.models import (
    ACTIVE_JOB,
    AnalyticsEvent,
    DeliveryStatus,
    Dispatch,
    DispatchStatus,
    Job,
    WebhookDelivery,
    utcnow,
)
from control_plane.services.analytics import AnalyticsType, model_of

PROCESS = CollectorRegistry(auto_describe=True)
RUNPOD_WEBHOOKS = Counter(
    "pixelfleet_runpod_webhooks",
    "RunPod webhooks received by this process, by outcome",
    ["outcome"],
    registry=PROCESS,
)
RUNPOD_WEBHOOK_BATCHES = Histogram(
    "pixelfleet_runpod_webhook_batch_size",
    "RunPod webhooks this process applied in one go (`control_plane/batching.py`)",
    buckets=(1, 2, 4, 8, 16, 32),
    registry=PROCESS,
)
RUNPOD_PROGRESS = Counter(
    "pixelfleet_runpod_progress",
    "Worker progress posts received by this process, by outcome",
    ["outcome"],
    registry=PROCESS,
)
RECONCILE_POLLS = Counter(
    "pixelfleet_reconcile_polls",
    "quiet dispatches this process asked RunPod's /status about, by outcome",
    ["outcome"],
    registry=PROCESS,
)
LATENCY_BUCKETS_S = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300)
FIRST_IMAGE_BUCKETS_S = (5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800, 3600)
UNKNOWN = "unknown"


def exposition(engine: sa.Engine, window_s: float) -> bytes:
    """Every metric, in Prometheus text format."""
    process = PROCESS
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        process = CollectorRegistry()
        MultiProcessCollector(process)
    database = CollectorRegistry(auto_describe=False)
    database.register(DatabaseCollector(engine, window_s))
    return generate_latest(process) + generate_latest(database)


class DatabaseCollector(Collector):
    """Figures read from the database at scrape time (see the module's docstring)."""

    def __init__(self, engine: sa.Engine, window_s: float) -> None:
        self.engine = engine
        self.window_s = window_s

    def collect(self) -> Iterator[Metric]:
        with Session(self.engine) as session:
            yield from _dispatches(session)
            yield from _unfinished_images(session)
            yield from _deliveries(session)
            window = GaugeMetricFamily(
                "pixelfleet_metrics_window_seconds",
                "the span of the windowed figures (images ended, spend, histograms)",
                value=self.window_s,
            )
            yield window
            start = first_id_since(session, utcnow() - timedelta(seconds=self.window_s))
            yield from _window(session, start)


def _dispatches(session: Session) -> Iterator[Metric]:
    counts = dict(
        session.exec(
            select(Dispatch.status, func.count())
            .where(
                col(Dispatch.status).in_(
                    (DispatchStatus.PENDING, DispatchStatus.SUBMITTING, DispatchStatus.SUBMITTED)
                )
            )
            .group_by(col(Dispatch.status))
        ).all()
    )
    yield GaugeMetricFamily(
        "pixelfleet_dispatches_queued",
        "dispatches waiting for the sender",
        value=counts.get(DispatchStatus.PENDING, 0),
    )
    yield GaugeMetricFamily(
        "pixelfleet_dispatches_in_flight",
        "dispatches being sent to RunPod or with RunPod",
        value=counts.get(DispatchStatus.SUBMITTING, 0) + counts.get(DispatchStatus.SUBMITTED, 0),
    )


def _unfinished_images(session: Session) -> Iterator[Metric]:
    rows = session.execute(
        sa.select(
            col(Job.config), col(Job.total), col(Job.succeeded), col(Job.failed), col(Job.blocked)
        ).where(col(Job.status).in_(ACTIVE_JOB))
    ).all()
    by_model: dict[str, int] = defaultdict(int)
    for config, total, succeeded, failed, blocked in rows:
        by_model[model_of(config) or UNKNOWN] += total - succeeded - failed - blocked
    family = GaugeMetricFamily(
        "pixelfleet_images_unfinished",
        "images of active jobs not ended yet (pending or running), by model",
        labels=["model"],
    )
    for model, count in sorted(by_model.items()):
        family.add_metric([model], count)
    yield family


def _deliveries(session: Session) -> Iterator[Metric]:
    counts = dict(
        session.exec(
            select(WebhookDelivery.status, func.count())
            .where(col(WebhookDelivery.status).in_((DeliveryStatus.PENDING, DeliveryStatus.FAILED)))
            .group_by(col(WebhookDelivery.status))
        ).all()
    )
    family = GaugeMetricFamily(
        "pixelfleet_user_webhook_deliveries",
        "webhooks to users' own URLs waiting to be delivered (pending) or given up (failed)",
        labels=["status"],
    )
    for status in (DeliveryStatus.PENDING, DeliveryStatus.FAILED):
        family.add_metric([status.value], counts.get(status, 0))
    yield family


def first_id_since(session: Session, since: datetime) -> int:
    """The first analytics event id at or after `since` (one past the last if none): a
    binary search of primary-key seeks, as the log is written in time order."""
    bounds = select(func.min(AnalyticsEvent.id), func.max(AnalyticsEvent.id))
    first, last = session.exec(bounds).one()
    if first is None or last is None or _time_at(session, last) < since:
        return (last or 0) + 1
    low, high = int(first), int(last)
    while low < high:
        middle = (low + high) // 2
        if _time_at(session, middle) >= since:
            high = middle
        else:
            low = middle + 1
    return low


def _time_at(session: Session, event_id: int) -> datetime:
    """The time of the first event at or after `event_id` (one exists: the caller checked)."""
    moment = session.exec(
        select(AnalyticsEvent.created_at)
        .where(col(AnalyticsEvent.id) >= event_id)
        .order_by(col(AnalyticsEvent.id))
        .limit(1)
    ).one()
    return moment


def _number(name: str) -> Any:
    return AnalyticsEvent.data[name].as_float()


def _text(name: str) -> Any:
    return AnalyticsEvent.data[name].as_string()


def _window(session: Session, start: int) -> Iterator[Metric]:
    yield from _ended(session, start)
    completed = (
        col(AnalyticsEvent.id) >= start,
        col(AnalyticsEvent.type) == AnalyticsType.GENERATION_COMPLETED,
    )
    yield _histogram(
        session,
        completed,
        "duration_ms",
        LATENCY_BUCKETS_S,
        "pixelfleet_generation_latency_seconds",
        "how long the model took per image that succeeded in the window",
    )
    yield _histogram(
        session,
        completed,
        "time_to_first_image_ms",
        FIRST_IMAGE_BUCKETS_S,
        "pixelfleet_time_to_first_image_seconds",
        "submit to first stored image, of the jobs whose first image came in the window",
    )


def _ended(session: Session, start: int) -> Iterator[Metric]:
    model, error = _text("model"), _text("error_type")
    lane = col(Job.lane)
    rows = session.execute(
        sa.select(
            col(AnalyticsEvent.type),
            model,
            error,
            lane,
            func.count(),
            func.sum(_number("cost_usd")),
        )
        .select_from(AnalyticsEvent)
        .outerjoin(Job, col(Job.id) == col(AnalyticsEvent.job_id))
        .where(
            col(AnalyticsEvent.id) >= start,
            col(AnalyticsEvent.type).in_(
                (AnalyticsType.GENERATION_COMPLETED, AnalyticsType.GENERATION_FAILED)
            ),
        )
        .group_by(col(AnalyticsEvent.type), model, error, lane)
    ).all()
    images: dict[tuple[str, str], int] = defaultdict(int)
    spend: dict[str, float] = defaultdict(float)
    by_lane: dict[str, float] = defaultdict(float)
    for kind, model_name, error_type, job_lane, count, cost in rows:
        status = (
            "succeeded"
            if kind == AnalyticsType.GENERATION_COMPLETED
            else "blocked"
            if error_type == "blocked"
            else "failed"
        )
        images[(status, model_name or UNKNOWN)] += count
        spend[model_name or UNKNOWN] += float(cost or 0)
        by_lane[job_lane or UNKNOWN] += float(cost or 0)
    ended = GaugeMetricFamily(
        "pixelfleet_images_ended",
        "images that ended in the window, by status (succeeded, failed, blocked) and model",
        labels=["status", "model"],
    )
    for (status, model_name), count in sorted(images.items()):
        ended.add_metric([status, model_name], count)
    yield ended
    usd = GaugeMetricFamily(
        "pixelfleet_spend_usd",
        "what the images that ended in the window cost, in USD, by model",
        labels=["model"],
    )
    for model_name, cost in sorted(spend.items()):
        usd.add_metric([model_name], round(cost, 6))
    yield usd
    lanes = GaugeMetricFamily(
        "pixelfleet_spend_by_lane_usd",
        "what the images that ended in the window cost, in USD, by their job's lane (online, "
        "batch: a batch job's images that fell back online included)",
        labels=["lane"],
    )
    for lane_name, cost in sorted(by_lane.items()):
        lanes.add_metric([lane_name], round(cost, 6))
    yield lanes


def _histogram(
    session: Session,
    where: Sequence[Any],
    field: str,
    buckets_s: Sequence[float],
    name: str,
    documentation: str,
) -> Metric:
    """A gauge histogram of `field` (milliseconds) over the events `where` picks, bucketed
    in SQL (one pass over the window's rows)."""
    value = _number(field)
    columns = [func.sum(sa.case((value <= bound * 1000, 1), else_=0)) for bound in buckets_s]
    row = session.execute(
        sa.select(func.count(value), func.sum(value), *columns).where(*where)
    ).one()
    count, total, *cumulative = list(row)
    points = [
        (_bound(bound), float(seen or 0)) for bound, seen in zip(buckets_s, cumulative, strict=True)
    ]
    points.append(("+Inf", float(count or 0)))
    return GaugeHistogramMetricFamily(
        name, documentation, buckets=points, gsum_value=float(total or 0) / 1000
    )


def _bound(seconds: float) -> str:
    return f"{float(seconds)}"
