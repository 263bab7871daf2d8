"""Database tables. Statuses are str Enums stored as short strings (portable to MySQL)."""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlmodel import Column, Field, SQLModel

from shared.ids import new_id

# MySQL's DATETIME drops fractions unless asked; ordering and timings need them.
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
# SQLite numbers rows itself only for INTEGER PRIMARY KEY; elsewhere a 64-bit counter.
EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# MySQL's TEXT holds 64 KB; stored answers and documents can be longer.
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


MAX_ERROR_CHARS = 2_000  # what RunPod and workers send is stored clipped: MySQL TEXT is 64 KB


INT_LIMIT = 2**31  # INT columns hold numbers below this (MySQL's signed INT)
BIGINT_LIMIT = 2**63  # and BIGINT columns numbers below this


def bounded(value: int | None, limit: int = INT_LIMIT) -> int | None:
    """`value` if it is a count a column below `limit` can hold (0 ≤ value < limit), else None."""
    return value if value is not None and 0 <= value < limit else None


def clip(text: str | None, limit: int = MAX_ERROR_CHARS) -> str | None:
    """`text` cut to `limit` characters (marked with …), so a column can always hold it."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _id(prefix: str) -> Any:
    return Field(default_factory=lambda: new_id(prefix), primary_key=True, max_length=40)


def _ts(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=Timestamp, **kwargs)


def _json(**kwargs: Any) -> Any:
    return Field(default_factory=dict, sa_column=Column(sa.JSON, nullable=False), **kwargs)


class JobMode(StrEnum):
    """How a job's images were asked for."""

    AUTOMATIC = "automatic"  # one prompt over many uploads, one image per upload
    SEMI_AUTOMATIC = "semi-automatic"  # a set of images from references and a prompt of its own
    CATALOG = "catalog"  # text to image from a prompt catalog's entries of one tag
    IMPORT = "import"  # one row of a CSV/JSONL file per prompt
    VARIATION = "variation"  # a set made from one output (`Job.parent_output_id`) as reference
    PRESET = "preset"  # a preset's examples over references picked from a pool
    CHARACTER_PACK = "character-pack"  # a character's references and locked seed, many scenes
    PERSONA_DATA = "persona-data"  # text: a persona's data, written by a text model
    PERSONA_IMAGES = "persona-images"  # a persona's base portrait, then its variations


class OutputKind(StrEnum):
    """What an output is: an image file, or a text model's answer (`Output.text`)."""

    IMAGE = "image"
    TEXT = "text"


class JobStatus(StrEnum):
    """A job's life: queued → processing → completed | failed | cancelled."""

    QUEUED = "queued"  # rows written, nothing handed to RunPod yet
    PROCESSING = "processing"  # at least one dispatch handed to RunPod
    COMPLETED = "completed"  # every image ended, at least one succeeded
    FAILED = "failed"  # every image ended, none succeeded
    CANCELLED = "cancelled"  # stopped by a user; unfinished images failed as "cancelled"


ACTIVE_JOB = (JobStatus.QUEUED, JobStatus.PROCESSING)  # not yet ended


class OutputStatus(StrEnum):
    """One requested image: pending → running → succeeded | failed | blocked."""

    PENDING = "pending"  # waiting for its dispatch to be handed to RunPod
    RUNNING = "running"  # its dispatch is with RunPod
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BLOCKED = "blocked"  # refused by the provider's safety filter


TERMINAL_OUTPUT = (OutputStatus.SUCCEEDED, OutputStatus.FAILED, OutputStatus.BLOCKED)


class DispatchStatus(StrEnum):
    """One RunPod job: pending → submitting → submitted → completed | failed. A batch
    dispatch runs one RunPod job per batch task, waiting `batched` between them."""

    PENDING = "pending"  # to be sent to RunPod (new, or a send failed and will be retried)
    SUBMITTING = "submitting"  # claimed by a sender; stale claims are retried
    SUBMITTED = "submitted"  # RunPod accepted it; waiting for webhook or status poll
    BATCHED = "batched"  # its Gemini batch runs at Google; its next step is due at next_poll_at
    COMPLETED = "completed"  # results applied
    FAILED = "failed"  # RunPod failed it, lost it, or it could not be sent


TERMINAL_DISPATCH = (DispatchStatus.COMPLETED, DispatchStatus.FAILED)


class Lane(StrEnum):
    """How a job's images are made: now, or in Gemini batches at the batch price."""

    ONLINE = "online"
    BATCH = "batch"


class Group(SQLModel, table=True):
    __tablename__ = "groups"
    __table_args__ = (sa.Index("ix_groups_user_id_id", "user_id", "id"),)
    id: str = _id("grp")
    # the user who made it (None: the implicit local user of the embedded default)
    user_id: str | None = Field(default=None, max_length=40)
    name: str = Field(max_length=200)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Upload(SQLModel, table=True):
    """An uploaded reference or source image."""

    __tablename__ = "uploads"
    __table_args__ = (sa.Index("ix_uploads_group_id_sha256", "group_id", "sha256"),)
    id: str = _id("img")
    group_id: str = Field(foreign_key="groups.id", index=True, max_length=40)
    user_id: str | None = Field(default=None, max_length=40)  # its group's
    filename: str = Field(max_length=255)
    storage_key: str = Field(max_length=512)
    thumbnail_key: str | None = Field(default=None, max_length=512)
    content_type: str = Field(max_length=64)
    width: int
    height: int
    bytes: int = Field(sa_type=sa.BigInteger)
    sha256: str = Field(max_length=64, index=True)
    # flat JSON object, e.g. {"gender": "female"}: reference pools pick by these
    attributes: dict[str, Any] | None = Field(
        default=None, sa_column=Column(sa.JSON, nullable=True)
    )
    created_at: datetime = _ts()


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index("ix_jobs_status_id", "status", "id"),
        sa.Index("ix_jobs_group_id_id", "group_id", "id"),
        sa.Index("ix_jobs_mode_id", "mode", "id"),
        sa.Index("ix_jobs_source_id_id", "source_id", "id"),
        sa.Index("ix_jobs_user_id_id", "user_id", "id"),
        # a group's counts, summed from its jobs' counters and costs without reading the rows
        sa.Index(
            "ix_jobs_group_id_counts",
            "group_id",
            "total",
            "succeeded",
            "failed",
            "blocked",
            "cost_usd",
        ),
    )
    id: str = _id("job")
    group_id: str = Field(foreign_key="groups.id", max_length=40)
    user_id: str | None = Field(default=None, max_length=40)  # its group's
    batch_id: str = Field(max_length=40, index=True)  # the submission this job came from
    mode: str = Field(max_length=20)
    status: str = Field(default=JobStatus.QUEUED, max_length=20)
    prompt: str = Field(sa_type=sa.Text)
    set_index: int | None = None  # semi-automatic: which set of the batch
    config: dict[str, Any] = _json()
    # the output a variation set was made from, and the job a rerun repeats
    parent_output_id: str | None = Field(default=None, max_length=40, index=True)
    rerun_of: str | None = Field(default=None, max_length=40, index=True)
    # the preset, character or persona the job works for
    source_id: str | None = Field(default=None, max_length=40)
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    blocked: int = 0
    error: str | None = Field(default=None, sa_type=sa.Text)
    # USD: the price of every image at submit, and the sum of the ended images' actual costs
    estimate_usd: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    cost_usd: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    first_image_at: datetime | None = Field(default=None, sa_type=Timestamp)  # first stored image
    lane: str = Field(
        default=Lane.ONLINE, max_length=10, sa_column_kwargs={"server_default": "online"}
    )
    # the batch lane: when its images still in a batch go online instead
    batch_deadline_at: datetime | None = Field(default=None, sa_type=Timestamp)
    # images sent from the batch lane to the online one, by reason
    fallback: dict[str, int] | None = Field(default=None, sa_column=Column(sa.JSON, nullable=True))
    # the user's own webhook for this job: {"url": …, "events": [...]}
    webhook: dict[str, Any] | None = Field(default=None, sa_column=Column(sa.JSON, nullable=True))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    completed_at: datetime | None = Field(default=None, sa_type=Timestamp)


class Output(SQLModel, table=True):
    """One requested output image, from request to file."""

    __tablename__ = "outputs"
    __table_args__ = (
        sa.Index("ix_outputs_job_id_position", "job_id", "position"),
        # a group's gallery: its images newest job first, in keyset pages (and the group's
        # images by group alone, as the single-column index it replaced served them)
        sa.Index("ix_outputs_group_id_job_id_position", "group_id", "job_id", "position"),
    )
    id: str = _id("out")
    job_id: str = Field(foreign_key="jobs.id", max_length=40)
    group_id: str = Field(foreign_key="groups.id", max_length=40)
    dispatch_id: str | None = Field(default=None, index=True, max_length=40)
    position: int
    status: str = Field(default=OutputStatus.PENDING, max_length=20)
    prompt: str = Field(sa_type=sa.Text)
    reference_ids: list[str] = Field(
        default_factory=list, sa_column=Column(sa.JSON, nullable=False)
    )
    kind: str = Field(
        default=OutputKind.IMAGE, max_length=10, sa_column_kwargs={"server_default": "image"}
    )
    text: str | None = Field(default=None, sa_type=LongText)  # a text task's answer
    prompt_id: str | None = Field(default=None, max_length=200)  # a catalog entry's id
    tags: list[str] | None = Field(default=None, sa_column=Column(sa.JSON, nullable=True))
    seed: int = Field(sa_type=sa.BigInteger)
    params: dict[str, Any] = _json()
    provider: str | None = Field(default=None, max_length=40)
    model: str | None = Field(default=None, max_length=80)
    model_version: str | None = Field(default=None, max_length=80)
    storage_key: str | None = Field(default=None, max_length=512)
    thumbnail_key: str | None = Field(default=None, max_length=512)
    content_type: str | None = Field(default=None, max_length=64)
    width: int | None = None
    height: int | None = None
    bytes: int | None = Field(default=None, sa_type=sa.BigInteger)
    sha256: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_type=sa.Text)
    attempts: int = 0
    latency_ms: int | None = None
    cost_usd: float | None = None
    usage: dict[str, Any] | None = Field(default=None, sa_column=Column(sa.JSON, nullable=True))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    completed_at: datetime | None = Field(default=None, sa_type=Timestamp)


class Dispatch(SQLModel, table=True):
    """One RunPod job carrying a chunk of a pixelfleet job."""

    __tablename__ = "dispatches"
    __table_args__ = (
        sa.Index("ix_dispatches_status_updated_at", "status", "updated_at"),
        sa.Index("ix_dispatches_status_next_poll_at", "status", "next_poll_at"),
    )
    id: str = _id("dsp")
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=40)
    attempt: int = 1  # which try of its chunk this is; a failure of the worker's counts
    # RunPod jobs of its chunk lost before this one (they do not count above):
    losses: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    status: str = Field(default=DispatchStatus.PENDING, max_length=20)
    runpod_job_id: str | None = Field(default=None, index=True, max_length=80)
    runpod_status: str | None = Field(default=None, max_length=20)
    webhook_token: str = Field(max_length=64)
    submit_attempts: int = 0
    # times applying RunPod's report raised (rolled back):
    finish_failures: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    error: str | None = Field(default=None, sa_type=sa.Text)
    delay_ms: int | None = None
    execution_ms: int | None = None
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    submitted_at: datetime | None = Field(default=None, sa_type=Timestamp)
    finished_at: datetime | None = Field(default=None, sa_type=Timestamp)
    last_polled_at: datetime | None = Field(default=None, sa_type=Timestamp)
    # what its current RunPod job asks the worker (shared.contract.DispatchTask), and its
    # Gemini batch as the last batch task saw it (Google's name, state and counts)
    task: str = Field(
        default="generate", max_length=20, sa_column_kwargs={"server_default": "generate"}
    )
    batch_name: str | None = Field(default=None, max_length=200)
    batch_state: str | None = Field(default=None, max_length=20)
    batch_requests: int | None = None
    batch_succeeded: int | None = None
    batch_failed: int | None = None
    batch_pending: int | None = None
    next_poll_at: datetime | None = Field(default=None, sa_type=Timestamp)
    # batch tasks of its batch in a row whose RunPod job failed or was lost
    batch_failures: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # polls in a row that saw its batch unchanged (they back off: `lifecycle.poll_interval_s`)
    batch_quiet_polls: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class Catalog(SQLModel, table=True):
    """A named list of prompts, each with an id unique in the catalog and its tags."""

    __tablename__ = "catalogs"
    __table_args__ = (sa.Index("ix_catalogs_user_id_id", "user_id", "id"),)
    id: str = _id("cat")
    # the user who made it (None: the implicit local user of the embedded default)
    user_id: str | None = Field(default=None, max_length=40)
    name: str = Field(max_length=200)
    # [{id, tags, prompt, negative_prompt?, attributes?}, …] as checked at creation:
    prompts: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(sa.JSON, nullable=False)
    )
    prompt_count: int = 0
    tag_counts: dict[str, int] = _json()  # how many prompts carry each tag
    created_at: datetime = _ts()


class IdempotentRequest(SQLModel, table=True):
    """A request made with an `Idempotency-Key`: its body's hash and, once answered, the
    answer replayed to a retry with the same key and body."""

    __tablename__ = "idempotent_requests"
    scope: str = Field(primary_key=True, max_length=100)  # SHA-256 of user, method, route
    key: str = Field(primary_key=True, max_length=255)
    body_sha256: str = Field(max_length=64)
    status_code: int | None = None  # None while the first request is still being answered
    response: str | None = Field(default=None, sa_type=LongText)
    created_at: datetime = _ts()
    expires_at: datetime = Field(sa_type=Timestamp, index=True)


class Preset(SQLModel, table=True):
    """A prompt and settings whose examples are made over references picked from a pool."""

    __tablename__ = "presets"
    __table_args__ = (sa.Index("ix_presets_user_id_id", "user_id", "id"),)
    id: str = _id("pre")
    # the user who made it (None: the implicit local user of the embedded default)
    user_id: str | None = Field(default=None, max_length=40)
    name: str = Field(max_length=200)
    prompt: str = Field(sa_type=sa.Text)
    config: dict[str, Any] = _json()
    examples_per_reference: int = 1
    created_at: datetime = _ts()


class PresetUsageStatus(StrEnum):
    """A pool reference for a preset: reserved by a job in flight → used, or released."""

    RESERVED = "reserved"  # picked by an examples job that has not finished
    USED = "used"  # at least one of its examples succeeded


class PresetUsage(SQLModel, table=True):
    """A reference picked for a preset: never picked again for it until the usage is reset."""

    __tablename__ = "preset_usage"
    preset_id: str = Field(foreign_key="presets.id", primary_key=True, max_length=40)
    upload_id: str = Field(primary_key=True, max_length=40)
    job_id: str = Field(max_length=40, index=True)
    status: str = Field(default=PresetUsageStatus.RESERVED, max_length=20)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class PresetExample(SQLModel, table=True):
    """An example in a preset's gallery: a succeeded output of one of its jobs."""

    __tablename__ = "preset_examples"
    __table_args__ = (sa.Index("ix_preset_examples_preset_id_added", "preset_id", "added"),)
    preset_id: str = Field(foreign_key="presets.id", primary_key=True, max_length=40)
    output_id: str = Field(primary_key=True, max_length=40)
    upload_id: str = Field(max_length=40)
    added: int = Field(sa_type=EventId)  # the event that added it: newest first by this
    created_at: datetime = _ts()


class Character(SQLModel, table=True):
    """A character: references, a locked seed and a style, for packs of consistent images."""

    __tablename__ = "characters"
    __table_args__ = (sa.Index("ix_characters_user_id_id", "user_id", "id"),)
    id: str = _id("chr")
    # the user who made it (None: the implicit local user of the embedded default)
    user_id: str | None = Field(default=None, max_length=40)
    name: str = Field(max_length=200)
    reference_ids: list[str] = Field(
        default_factory=list, sa_column=Column(sa.JSON, nullable=False)
    )
    seed: int = Field(sa_type=sa.BigInteger)
    style: dict[str, Any] = _json()
    created_at: datetime = _ts()


class PersonaStatus(StrEnum):
    """pending → generating-data → data-generated → generating-images → completed | failed."""

    PENDING = "pending"
    GENERATING_DATA = "generating-data"
    DATA_GENERATED = "data-generated"
    GENERATING_IMAGES = "generating-images"
    COMPLETED = "completed"
    FAILED = "failed"  # `error_log` says why


class Persona(SQLModel, table=True):
    """A generated persona: data by a text model, then a base portrait and its variations."""

    __tablename__ = "personas"
    id: str = _id("per")
    batch_id: str = Field(max_length=40, index=True)
    group_id: str = Field(foreign_key="groups.id", index=True, max_length=40)
    user_id: str | None = Field(default=None, max_length=40, index=True)  # its group's
    status: str = Field(default=PersonaStatus.PENDING, max_length=20)
    brief: str | None = Field(default=None, sa_type=sa.Text)
    attributes: dict[str, Any] = _json()
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(sa.JSON, nullable=True))
    error_log: list[str] = Field(default_factory=list, sa_column=Column(sa.JSON, nullable=False))
    data_job_id: str | None = Field(default=None, max_length=40)
    base_job_id: str | None = Field(default=None, max_length=40)
    variations_job_id: str | None = Field(default=None, max_length=40)
    base_output_id: str | None = Field(default=None, max_length=40)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class EventKind(StrEnum):
    """What happened to a job, a dispatch or an output (see `control_plane/lifecycle.py`)."""

    JOB_QUEUED = "job_queued"  # a submission wrote it
    JOB_STARTED = "job_started"  # its first dispatch reached RunPod
    JOB_FINISHED = "job_finished"  # completed, failed or cancelled; `data.status` says which
    JOB_REOPENED = "job_reopened"  # a retry queued its failed images again
    DISPATCH_QUEUED = "dispatch_queued"  # a chunk waits for the sender (new, or a retry)
    DISPATCH_STARTED = "dispatch_started"  # RunPod accepted it (`data.runpod_job_id`)
    DISPATCH_COMPLETED = "dispatch_completed"  # its results were applied
    DISPATCH_FAILED = "dispatch_failed"  # failed, lost, cancelled (`data.reason`, `retry`, `lost`)
    # a batch task saw its Gemini batch (`data.batch`, `state`, Google's counts), or its
    # images went to the online lane (`data.fallback`: why, `images`: how many)
    DISPATCH_BATCH = "dispatch_batch"
    OUTPUT_SUCCEEDED = "output_succeeded"
    OUTPUT_FAILED = "output_failed"  # `data.error` says why
    OUTPUT_BLOCKED = "output_blocked"  # refused by the provider's safety filter
    OUTPUT_RETRIED = "output_retried"  # a failed image queued again by a retry


class Event(SQLModel, table=True):
    """A domain event, written in the transaction that made it happen (transactional outbox).

    Consumers read them in id order after commit, each with its own cursor
    (`control_plane/events.py`).
    """

    __tablename__ = "events"
    id: int | None = Field(default=None, primary_key=True, sa_type=EventId)
    kind: str = Field(max_length=40)
    job_id: str | None = Field(default=None, max_length=40)
    dispatch_id: str | None = Field(default=None, max_length=40)
    output_id: str | None = Field(default=None, max_length=40)
    data: dict[str, Any] = _json()
    created_at: datetime = _ts()


class EventCursor(SQLModel, table=True):
    """How far one consumer has read the events, and its trouble with the next one."""

    __tablename__ = "event_cursors"
    consumer: str = Field(primary_key=True, max_length=80)
    position: int = Field(default=0, sa_type=sa.BigInteger)  # id of the last event handled
    failures: int = 0  # consecutive failures on the event after `position`
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    updated_at: datetime = _ts()


class UserTier(StrEnum):
    """What a user pays for: paid users' dispatches are sent before free users'."""

    FREE = "free"
    PAID = "paid"


class User(SQLModel, table=True):
    """Someone with API keys, who owns what they make and pays for what they generate."""

    __tablename__ = "users"
    id: str = _id("usr")
    name: str = Field(max_length=100, unique=True)
    tier: str = Field(default=UserTier.FREE, max_length=10)
    is_admin: bool = False  # sees and may do everything
    monthly_cap_usd: float | None = None  # None: no cap
    # signs the user's own webhooks (Standard Webhooks: `whsec_` + base64); None: none yet
    webhook_secret: str | None = Field(default=None, max_length=100)
    created_at: datetime = _ts()


class ApiKey(SQLModel, table=True):
    """An API key (`pf_…`), stored as its SHA-256: the key itself is shown once."""

    __tablename__ = "api_keys"
    id: str = _id("key")
    user_id: str = Field(foreign_key="users.id", index=True, max_length=40)
    key_sha256: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)  # the key's first characters, to tell keys apart
    created_at: datetime = _ts()
    last_used_at: datetime | None = Field(default=None, sa_type=Timestamp)
    revoked_at: datetime | None = Field(default=None, sa_type=Timestamp)


class AnalyticsEvent(SQLModel, table=True):
    """The analytics event log (`generation_queued`, `image_stored`, …), read by users through
    `GET /api/events`; written from the domain events by a consumer."""

    __tablename__ = "analytics_events"
    __table_args__ = (
        sa.Index("ix_analytics_events_user_id_id", "user_id", "id"),
        sa.Index("ix_analytics_events_job_id_id", "job_id", "id"),
        sa.Index("ix_analytics_events_type_id", "type", "id"),
    )
    id: int | None = Field(default=None, primary_key=True, sa_type=EventId)
    type: str = Field(max_length=40)
    user_id: str | None = Field(default=None, max_length=40)
    job_id: str | None = Field(default=None, max_length=40)
    output_id: str | None = Field(default=None, max_length=40)
    data: dict[str, Any] = _json()
    created_at: datetime = _ts()


class DeliveryStatus(StrEnum):
    """A webhook to a user's URL: pending → delivered | failed (gave up after its window)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(SQLModel, table=True):
    """One message to a user's webhook URL (a durable outbox); its id is the `webhook-id`
    receivers de-duplicate by."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )
    id: str = _id("msg")
    user_id: str | None = Field(default=None, max_length=40, index=True)
    job_id: str = Field(max_length=40, index=True)
    event_type: str = Field(max_length=40)  # e.g. "job.completed", "image.succeeded"
    url: str = Field(sa_type=sa.Text)
    payload: dict[str, Any] = _json()
    status: str = Field(default=DeliveryStatus.PENDING, max_length=20)
    attempts: int = 0
    next_attempt_at: datetime = _ts()
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = _ts()
    delivered_at: datetime | None = Field(default=None, sa_type=Timestamp)


# The tables as SQLAlchemy Core sees them, for statements on columns rather than ORM objects.
OUTPUTS = SQLModel.metadata.tables["outputs"]
DISPATCHES = SQLModel.metadata.tables["dispatches"]
JOBS = SQLModel.metadata.tables["jobs"]
