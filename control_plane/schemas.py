"""Request and response bodies: one family per entity (Create / Public)."""

import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)

Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=10_000)]
ImageIds = Annotated[list[str], Field(max_length=20_000)]


def _utc_iso(moment: datetime) -> str:
    """The database's naive UTC (or an aware time) as ISO 8601 in UTC with a `Z`."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


# A UTC time: stays a datetime in Python (the HTML pages format it), `…Z` in JSON answers.
UtcDatetime = Annotated[datetime, PlainSerializer(_utc_iso, return_type=str, when_used="json")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookEvent(StrEnum):
    """What a user's webhook may be sent about (`Job.webhook["events"]` lists the wanted ones):
    `job.*` once a job ends (again if a retry reopened it), `image.*` as each image ends."""

    JOB_COMPLETED = "job.completed"  # every image ended, at least one succeeded
    JOB_FAILED = "job.failed"  # every image ended, none succeeded
    JOB_CANCELLED = "job.cancelled"  # stopped by a user
    IMAGE_SUCCEEDED = "image.succeeded"
    IMAGE_FAILED = "image.failed"
    IMAGE_BLOCKED = "image.blocked"  # refused by the provider's safety filter


DEFAULT_WEBHOOK_EVENTS = (
    WebhookEvent.JOB_COMPLETED,
    WebhookEvent.JOB_FAILED,
    WebhookEvent.JOB_CANCELLED,
)


def _webhook_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL with a host")
    parts.port  # noqa: B018  (raises ValueError for a port that is not one)
    return url


class WebhookRequest(_Body):
    """The submitter's own URL, POSTed a signed message (Standard Webhooks) on each of
    `events` of the submission's jobs (services/webhooks.py checks the URL further)."""

    url: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=2_000),
        AfterValidator(_webhook_url),
    ]
    events: Annotated[list[WebhookEvent], Field(min_length=1, max_length=len(WebhookEvent))] = list(
        DEFAULT_WEBHOOK_EVENTS
    )


class _Submission(_Body):
    """Every body that makes jobs: each may carry a webhook."""

    webhook: WebhookRequest | None = None


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    total: int
    page: int
    limit: int


class CursorPage(BaseModel, Generic[T]):
    """A page of a list read by cursor: `next` (None on the last page) is the `cursor` of the
    page after it. `page` is set when the page was asked for by number, and `total` when it
    was asked for (`with_total=true`) or the page by number: counting costs a pass over
    every matching row, so a list does not count unless told to."""

    data: list[T]
    total: int | None = None
    page: int | None = None
    limit: int
    next: str | None = None


# Groups -------------------------------------------------------------------------------
class GroupCreate(_Body):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class GroupCounts(BaseModel):
    uploads: int = 0
    jobs: int = 0
    outputs: int = 0
    succeeded: int = 0
    failed: int = 0
    blocked: int = 0
    pending: int = 0
    cost_usd: float = 0.0  # its jobs' actual costs


class GroupPublic(BaseModel):
    id: str
    name: str
    created_at: UtcDatetime
    updated_at: UtcDatetime
    counts: GroupCounts | None = None


# Uploads ------------------------------------------------------------------------------
class UploadPublic(BaseModel):
    id: str
    group_id: str
    filename: str
    content_type: str
    width: int
    height: int
    bytes: int
    sha256: str
    url: str
    thumbnail_url: str | None
    created_at: UtcDatetime
    # already in the group (this upload, or an earlier file of the same request): not stored again
    duplicate: bool = False
    attributes: dict[str, Any] | None = None  # e.g. {"gender": "female"}: pools pick by these


class UploadRejected(BaseModel):
    filename: str
    reason: str


class UploadResult(BaseModel):
    images: list[UploadPublic]
    rejected: list[UploadRejected]


# Jobs ---------------------------------------------------------------------------------
BATCH_DEADLINE_S = 86_400  # a batch job's images go online if not made by then (default)
BATCH_DEADLINE_MAX_S = 172_800  # Google expires a batch after 48 h anyway


class GenerationConfig(_Body):
    """Per-job generation settings; checked against the model table at submit time."""

    model: str | None = None
    aspect_ratio: str | None = None
    image_size: str | None = None
    seed: Annotated[int, Field(ge=0, lt=2**31)] | None = None
    negative_prompt: Annotated[str, StringConstraints(max_length=2_000)] | None = None
    # "batch": Gemini batches at the model's batch price, falling back to the online lane
    # for images not made by `batch_deadline_s` after submit (absent: online, 86,400 s)
    lane: Literal["online", "batch"] | None = None
    batch_deadline_s: Annotated[int, Field(ge=5, le=BATCH_DEADLINE_MAX_S)] | None = None

    @model_validator(mode="after")
    def _deadline_of_batches(self) -> "GenerationConfig":
        if self.batch_deadline_s is not None and self.lane != "batch":
            raise ValueError('batch_deadline_s is for the batch lane only ("lane": "batch")')
        return self


class AutomaticConfig(GenerationConfig):
    """An automatic submission's settings, and an import's (the default `count` of its rows)."""

    outputs_per_image: Annotated[int, Field(ge=1, le=8)] = 1


class SemiAutomaticConfig(GenerationConfig):
    total_images: Annotated[int, Field(ge=1, le=10_000)] = 4
    images_per_set: Annotated[int, Field(ge=1, le=16)] = 4

    @model_validator(mode="after")
    def _whole_sets(self) -> "SemiAutomaticConfig":
        if self.total_images % self.images_per_set:
            raise ValueError(
                f"total_images ({self.total_images}) must be a multiple of images_per_set "
                f"({self.images_per_set})"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_outputs_per_image(cls, data: Any) -> Any:
        if isinstance(data, dict) and "outputs_per_image" in data:
            raise ValueError(
                "outputs_per_image is for automatic mode and imports; in semi-automatic mode "
                "each set has images_per_set images (and total_images in all)"
            )
        return data


class AutomaticSubmit(_Submission):
    group_id: str
    mode: Literal["automatic"]
    prompt: Prompt
    images: Annotated[ImageIds, Field(min_length=1)]
    config: AutomaticConfig = AutomaticConfig()


class SemiAutomaticItem(_Body):
    images: ImageIds = []
    prompt: Prompt


class SemiAutomaticSubmit(_Submission):
    group_id: str
    mode: Literal["semi-automatic"]
    items: Annotated[list[SemiAutomaticItem], Field(min_length=1, max_length=1_000)]
    config: SemiAutomaticConfig = SemiAutomaticConfig()
    # Every item (each of its prompt permutations) needs a set of its own: checked when
    # planning, once the permutations are counted (services/submissions.py).


# Catalogs -----------------------------------------------------------------------------
# Catalog ids and tags name folders and files in the ZIP, so they are plain path parts.
PATH_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
PATH_PART_RULE = (
    "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit "
    "([A-Za-z0-9][A-Za-z0-9._-]{0,99}), as it names files in the ZIP"
)


def _path_part(value: str) -> str:
    if not PATH_PART.fullmatch(value):
        raise ValueError(f"{_clipped(value)} is not a safe name: use {PATH_PART_RULE}")
    return value


def _clipped(value: object, chars: int = 40) -> str:
    """`value` quoted for a message, cut short: a message names it without echoing a body."""
    text = repr(value)
    return text if len(text) <= chars else text[:chars] + "…"


def _tag_list(tags: list[str]) -> list[str]:
    if not tags:
        raise ValueError("must not be empty: give every prompt at least one tag, e.g. 'male'")
    return list(dict.fromkeys(tags))  # a tag given twice counts once


def _flat(attributes: dict[str, Any]) -> dict[str, Any]:
    for key, value in attributes.items():
        if isinstance(value, dict | list):
            kind = "an object" if isinstance(value, dict) else "a list"
            raise ValueError(
                f"must be flat: {_clipped(key)} is {kind}; each value must be a string, "
                "a number, true, false or null"
            )
        if isinstance(value, str) and len(value) > 1_000:
            raise ValueError(f"{_clipped(key)} is longer than 1,000 characters")
    return attributes


PathPart = Annotated[str, AfterValidator(_path_part)]
NegativePrompt = Annotated[str, StringConstraints(max_length=2_000)]
Attributes = Annotated[
    dict[Annotated[str, StringConstraints(min_length=1, max_length=100)], Any],
    Field(max_length=50),
    AfterValidator(_flat),
]


class CatalogPrompt(_Body):
    """One entry of a catalog: its id (unique in the catalog), tags and prompt."""

    id: PathPart
    tags: Annotated[list[PathPart], Field(max_length=20), AfterValidator(_tag_list)]
    prompt: Prompt
    negative_prompt: NegativePrompt | None = None
    attributes: Attributes | None = None  # e.g. {"age": 28, "ethnicity": "Korean"}


class CatalogCreate(_Body):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    prompts: Annotated[list[CatalogPrompt], Field(min_length=1, max_length=10_000)]


class CatalogPublic(BaseModel):
    id: str
    name: str
    prompt_count: int
    tags: list[str]  # sorted, each once
    tag_counts: dict[str, int]  # prompts per tag
    created_at: UtcDatetime


class CatalogDetail(CatalogPublic):
    prompts: list[CatalogPrompt]


def _each_once(tags: list[str]) -> list[str]:
    repeated = sorted({tag for tag in tags if tags.count(tag) > 1})
    if repeated:
        raise ValueError(f"must each be given once; repeated: {', '.join(map(repr, repeated))}")
    return tags


def _count(value: object) -> object:
    if value == "all" or (type(value) is int and 1 <= value <= 10_000):
        return value
    raise ValueError('must be a whole number from 1 to 10,000, or "all"')


# Checked before the union, for one message instead of one per member.
CatalogCount = Annotated[
    Annotated[int, Field(ge=1, le=10_000)] | Literal["all"], BeforeValidator(_count)
]


class CatalogSubmit(_Submission):
    """Text to image from a catalog: one job per tag, `count` of its prompts picked at random
    (reproducibly with `config.seed`), or all of them."""

    group_id: str
    mode: Literal["catalog"]
    catalog_id: str
    tags: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=100)]],
        Field(min_length=1, max_length=100),
        AfterValidator(_each_once),
    ]
    count: CatalogCount
    config: GenerationConfig = GenerationConfig()


SubmitRequest = Annotated[
    AutomaticSubmit | SemiAutomaticSubmit | CatalogSubmit, Field(discriminator="mode")
]


class Progress(BaseModel):
    total: int
    succeeded: int
    failed: int
    blocked: int
    pending: int


class BatchProgress(BaseModel):
    """A batch job's live Gemini batches: their state in words (`pending at Google`,
    `running`, `collecting`; the least advanced of them) and Google's counts, summed."""

    state: str = Field(
        description="the least advanced of the job's live batches: `submitting`, "
        "`pending at Google`, `running` or `collecting`"
    )
    batches: int = Field(description="the job's Gemini batches not yet ended")
    deadline_at: UtcDatetime | None = Field(
        None, description="when images still in a batch go to the online lane instead"
    )
    next_poll_at: UtcDatetime | None = Field(
        None, description="the next look at Google (polls back off while a batch is unchanged)"
    )
    requests: int | None = Field(None, description="requests in the batches, as Google counts")
    succeeded: int | None = Field(None, description="requests Google has done")
    failed: int | None = Field(None, description="requests that failed at Google")
    pending: int | None = Field(None, description="requests Google has still to do")


class JobPublic(BaseModel):
    id: str
    group_id: str
    batch_id: str
    mode: str
    status: str
    prompt: str
    set_index: int | None
    config: dict[str, Any]
    progress: Progress
    error: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime
    completed_at: UtcDatetime | None
    parent_output_id: str | None = None  # a variation set: the image it was made from
    rerun_of: str | None = None  # a rerun: the job it repeats
    reruns: list[str] = []  # the jobs that rerun this one, oldest first
    success_rate: float | None = None  # succeeded / ended images; None before any ended
    first_image_s: float | None = None  # seconds from submit to the first stored image
    webhook: dict[str, Any] | None = None  # the submitter's webhook: {url, events}
    estimate_usd: float = Field(
        0.0,
        description="every image at its model's price in the job's lane; an image that fell "
        "back from the batch lane to the online one at the online price",
    )
    cost_usd: float = 0.0  # the actual costs of its ended images, so far
    # dispatches the sender sends before this job's next one (None: nothing of it queued)
    queue_position: int | None = None
    lane: str = Field(
        "online", description="`online`, or `batch`: Gemini batches at the batch price"
    )
    batch: BatchProgress | None = Field(
        None, description="the batch lane: where its live batches stand (None: none is live)"
    )
    fallback: dict[str, int] | None = Field(
        None, description="the batch lane: how many images went to the online lane, by reason"
    )


class OutputPublic(BaseModel):
    id: str
    position: int
    status: str
    prompt: str
    seed: int
    reference_ids: list[str]
    prompt_id: str | None = None  # catalog jobs: the entry's id and tags
    tags: list[str] | None = None
    kind: str = "image"  # or "text": a text task's answer is in `text` (and it has no file)
    text: str | None = None
    provider: str | None
    model: str | None
    url: str | None
    thumbnail_url: str | None
    content_type: str | None
    width: int | None
    height: int | None
    bytes: int | None
    sha256: str | None
    error: str | None
    attempts: int
    latency_ms: int | None
    cost_usd: float | None
    variations: list[str] = []  # variation sets (jobs) made from this image, oldest first


class JobDetail(JobPublic):
    images: list[OutputPublic]  # the first `image_limit` of them, by position
    images_next: str | None = None  # cursor to the rest (GET /api/jobs/{id}/images); None: all


class JobImages(BaseModel):
    """A page of a job's images, by position, and the cursor to the next page (None: the
    last one)."""

    images: list[OutputPublic]
    next: str | None


class ModelEstimate(BaseModel):
    images: int
    cost_usd: float


class Estimate(BaseModel):
    """What a submission costs at the model table's prices: its outputs (text tasks
    included), in all and by model."""

    images: int
    cost_usd: float
    by_model: dict[str, ModelEstimate]

    @classmethod
    def of(cls, model: str, images: int, cost_usd: float) -> "Estimate":
        share = ModelEstimate(images=images, cost_usd=round(cost_usd, 6))
        return cls(images=images, cost_usd=share.cost_usd, by_model={model: share})


class SubmitResponse(BaseModel):
    batch_id: str
    jobs: list[JobPublic]
    estimate: Estimate | None = None  # set by every submission's answer


class RerunPublic(JobPublic):
    """A rerun's new job, with what it is estimated to cost."""

    estimate: Estimate | None = None


# Prompt permutations -----------------------------------------------------------------
class PromptExpand(_Body):
    prompt: Prompt


class PromptExpansion(BaseModel):
    prompts: list[str]
    count: int


class DownloadItem(BaseModel):
    id: str
    job_id: str
    position: int
    prompt: str
    url: str
    thumbnail_url: str | None
    content_type: str | None
    bytes: int | None
    sha256: str | None


# Personas -----------------------------------------------------------------------------
class PersonaCreate(_Submission):
    """`count` personas in `group_id`: each one's data by a text model (following `brief` and
    `attributes`), then a base portrait and four variations of it."""

    group_id: str
    count: Annotated[int, Field(ge=1, le=20)]
    brief: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2_000)] | None = None
    attributes: Attributes | None = None  # e.g. {"gender": "female", "age_range": "25-35"}
    config: GenerationConfig = GenerationConfig()  # the portraits' model, ratio, size, seed
    text_model: Annotated[str, StringConstraints(min_length=1, max_length=80)] | None = None


class PersonaPublic(BaseModel):
    id: str
    batch_id: str
    group_id: str
    status: str
    stage: Literal["data", "base", "variations"]  # the stage it is in, or ended in
    name: str | None
    brief: str | None
    attributes: dict[str, Any]
    data: dict[str, Any] | None
    error_log: list[str]
    data_job_id: str | None
    base_job_id: str | None
    variations_job_id: str | None
    base_output_id: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class PersonaImages(BaseModel):
    base: OutputPublic | None
    variations: list[OutputPublic]


class PersonaDetail(PersonaPublic):
    images: PersonaImages


class PersonaBatch(BaseModel):
    batch_id: str
    personas: list[PersonaPublic]
    estimate: Estimate | None = None  # every stage: data, base portrait and variations


# Reference pools and presets ----------------------------------------------------------
MAX_UPLOAD_ATTRIBUTES = 32
MAX_ATTRIBUTE_KEY = 64
AttributeKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ATTRIBUTE_KEY)]


def _attribute_value(key: str, value: Any, nullable: bool) -> None:
    if value is None and nullable:
        return
    if isinstance(value, str) and len(value) > 1_000:
        raise ValueError(f"{_clipped(key)} is longer than 1,000 characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{_clipped(key)} is not a finite number")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError(f"{_clipped(key)} is too large a number")
    if not isinstance(value, str | int | float):  # bool is an int
        kind = {dict: "an object", list: "a list", type(None): "null"}.get(type(value), "?")
        raise ValueError(
            f"{_clipped(key)} is {kind}: each value must be a string, a number, true or false"
            + (" (null deletes the key)" if nullable else "")
        )


def _attribute_map(nullable: bool) -> Any:
    def check(attributes: dict[str, Any]) -> dict[str, Any]:
        if len(attributes) > MAX_UPLOAD_ATTRIBUTES:
            raise ValueError(f"at most {MAX_UPLOAD_ATTRIBUTES} attributes; got {len(attributes)}")
        for key, value in attributes.items():
            if not 1 <= len(key) <= MAX_ATTRIBUTE_KEY:
                raise ValueError(
                    f"attribute names are 1 to {MAX_ATTRIBUTE_KEY} characters; got {_clipped(key)}"
                )
            _attribute_value(key, value, nullable)
        return attributes

    return AfterValidator(check)


# An upload's attributes: a flat object of strings, numbers and booleans, e.g. {"gender": "f"}.
UploadAttributes = Annotated[dict[str, Any], _attribute_map(nullable=False)]


class UploadPatch(_Body):
    """Merged into the upload's attributes (RFC 7396): a key given is set, a key given null
    is deleted, keys not given stay; `"attributes": null` deletes them all."""

    attributes: Annotated[dict[str, Any], _attribute_map(nullable=True)] | None


class PresetCreate(_Body):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    prompt: Prompt
    config: GenerationConfig = GenerationConfig()
    examples_per_reference: Annotated[int, Field(ge=1, le=8)] = 1


class PresetUsageCounts(BaseModel):
    used: int  # references with at least one succeeded example
    reserved: int  # references picked by examples jobs still running


class PresetPublic(BaseModel):
    id: str
    name: str
    prompt: str
    config: dict[str, Any]
    examples_per_reference: int
    usage: PresetUsageCounts
    examples: int  # in the gallery
    created_at: UtcDatetime


class PresetExamplePublic(BaseModel):
    output_id: str
    job_id: str
    upload_id: str  # the reference it was made from
    prompt: str
    seed: int
    url: str | None
    thumbnail_url: str | None
    width: int | None
    height: int | None
    added_at: UtcDatetime


class PresetDetail(PresetPublic):
    gallery: Page[PresetExamplePublic]  # newest first


class PresetExamplesRequest(_Submission):
    pool_group_id: str
    count: Annotated[int, Field(ge=1, le=1_000)] = 20
    balance_by: AttributeKey | None = None  # an attribute of the pool's uploads
    seed: Annotated[int, Field(ge=0, lt=2**31)] | None = None
    group_id: str | None = None  # where the examples go; the pool's group by default


class PresetExamplesResponse(SubmitResponse):
    reference_ids: list[str]  # the picked references, in output order
    split: dict[str, int] | None  # references per value of `balance_by`


class PresetUsageReset(BaseModel):
    released: int  # usage records deleted: those references may be picked again
    kept_reserved: int  # references of examples jobs still running (released when they end)


# Characters ---------------------------------------------------------------------------
CharacterName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
]
Scene = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
StylePrompt = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2_000)]
PACK_SIZES = (5, 10)  # a pack has this many images, at least and at most


class CharacterStyle(_Body):
    """A character's look, locked at creation (model, ratio and size checked against the
    model table, defaults filled in)."""

    model: str | None = None
    aspect_ratio: str | None = None
    image_size: str | None = None
    style_prompt: StylePrompt | None = None
    negative_prompt: NegativePrompt | None = None


class CharacterCreate(_Body):
    name: CharacterName
    # uploads or succeeded image outputs, of any group; at most the model's limit
    references: Annotated[
        list[Annotated[str, StringConstraints(max_length=100)]],
        Field(min_length=1, max_length=100),
        AfterValidator(_each_once),
    ]
    seed: Annotated[int, Field(ge=0, lt=2**31)] | None = None  # random when absent
    style: CharacterStyle = CharacterStyle()


class CharacterPublic(BaseModel):
    id: str
    name: str
    references: list[str]
    seed: int
    style: dict[str, Any]
    created_at: UtcDatetime


class PackPublic(BaseModel):
    """One pack of a character: its job's status and progress, and `summary` in words
    (`7 of 8 images succeeded, 1 failed`)."""

    id: str  # the pack's job
    group_id: str
    status: str
    progress: Progress
    summary: str
    created_at: UtcDatetime
    completed_at: UtcDatetime | None


class CharacterDetail(CharacterPublic):
    packs: list[PackPublic]  # newest first


class PackCreate(_Submission):
    size: Annotated[int, Field(ge=PACK_SIZES[0], le=PACK_SIZES[1])] = 8
    # one per image, in order; fewer than `size` are used in turn
    scenes: Annotated[list[Scene], Field(min_length=1, max_length=PACK_SIZES[1])] | None = None
    group_id: str | None = None  # by default the group of the character's first reference

    @model_validator(mode="after")
    def _scenes_fit(self) -> "PackCreate":
        if self.scenes is not None and len(self.scenes) > self.size:
            raise ValueError(
                f"{len(self.scenes)} scenes for a pack of {self.size} images: give at most "
                f"{self.size} scenes, or a larger size (up to {PACK_SIZES[1]})"
            )
        return self


# Variations and reruns ----------------------------------------------------------------
class VariationCreate(_Submission):
    """A variation set of a succeeded image: `count` new images that use it as their only
    reference, with its prompt unless `prompt` is given; `strength` says how far they may
    stray from it (services/variations.py words it for the model)."""

    count: Annotated[int, Field(ge=1, le=16)] = 4
    prompt: Prompt | None = None
    strength: Literal["subtle", "strong"] = "strong"


class RerunCreate(_Submission):
    """A rerun's body (optional): only its webhook; the rest is the job's."""


class OutputDetail(OutputPublic):
    """One image on its own: where it belongs, with its links."""

    job_id: str
    group_id: str


# Analytics events ---------------------------------------------------------------------


class AnalyticsEventPublic(BaseModel):
    """One entry of the analytics log (`GET /api/events`)."""

    id: int
    type: str
    user_id: str | None
    job_id: str | None
    output_id: str | None
    data: dict[str, Any]
    created_at: UtcDatetime


# Webhooks to users' URLs --------------------------------------------------------------
class WebhookDeliveryPublic(BaseModel):
    """One message to a job's webhook: `id` is its `webhook-id` header."""

    id: str
    event_type: str
    url: str
    status: str  # pending | delivered | failed (gave up after the retry window)
    attempts: int
    next_attempt_at: UtcDatetime | None  # pending: when it is tried next
    last_status_code: int | None
    last_error: str | None
    created_at: UtcDatetime
    delivered_at: UtcDatetime | None


# Cost ---------------------------------------------------------------------------------


class ModelPublic(BaseModel):
    """A model of the model table: what it accepts and what an image costs (USD), online
    (`price_usd`, by image size where it varies: `size_prices_usd`) and by batch."""

    id: str
    default: bool
    max_reference_images: int
    aspect_ratios: list[str]
    image_sizes: list[str]
    default_image_size: str
    price_usd: float
    size_prices_usd: dict[str, float]  # the online price of each image size
    batch_price_usd: float | None  # None: no batch lane


class ModelTable(BaseModel):
    default_model: str
    models: list[ModelPublic]


class VariationEstimate(VariationCreate):
    """`POST /api/outputs/{output_id}/variations`'s body, with the image's id."""

    mode: Literal["variation"]
    output_id: str


class RerunEstimate(_Body):
    """`POST /api/jobs/{job_id}/rerun`."""

    mode: Literal["rerun"]
    job_id: str


class PresetExamplesEstimate(PresetExamplesRequest):
    """`POST /api/presets/{preset_id}/examples`'s body, with the preset's id."""

    mode: Literal["preset"]
    preset_id: str


class PackEstimate(PackCreate):
    """`POST /api/characters/{character_id}/packs`'s body, with the character's id."""

    mode: Literal["character-pack"]
    character_id: str


class PersonasEstimate(PersonaCreate):
    """`POST /api/personas`'s body."""

    mode: Literal["persona"]


EstimateBody = (
    AutomaticSubmit
    | SemiAutomaticSubmit
    | CatalogSubmit
    | VariationEstimate
    | RerunEstimate
    | PresetExamplesEstimate
    | PackEstimate
    | PersonasEstimate
)
EstimateRequest = Annotated[EstimateBody, Field(discriminator="mode")]


class UsageBucket(BaseModel):
    """Outputs that ended in the range, of one day, model, user or group."""

    key: str | None  # the day (YYYY-MM-DD), model, user id or group id
    name: str | None = None  # the user's or group's name
    images: int  # outputs that ended (text tasks included)
    succeeded: int
    cost_usd: float


class Usage(BaseModel):
    start: str  # YYYY-MM-DD, inclusive
    end: str  # YYYY-MM-DD, inclusive
    group_by: Literal["day", "model", "user", "group", "lane"]
    images: int
    cost_usd: float
    buckets: list[UsageBucket]


# Queue ----------------------------------------------------------------------------------


class QueueCaps(BaseModel):
    """The sender's caps (0: none)."""

    max_inflight_dispatches: int
    max_inflight_per_user: dict[str, int]  # by tier
    run_rate_per_s: float  # `/run` calls a second, per control-plane process


class UserInQueue(BaseModel):
    user_id: str | None  # None: the local user / admin password
    name: str
    tier: str
    queued: int  # dispatches waiting to be sent
    in_flight: int  # dispatches claimed or at RunPod


class JobInQueue(BaseModel):
    job_id: str
    user_id: str | None
    queued: int
    in_flight: int
    queue_position: int | None  # dispatches sent before its next one; None: none queued


class QueueView(BaseModel):
    caps: QueueCaps
    queued: int
    in_flight: int
    users: list[UserInQueue]  # paid first, then by who waited longest
    jobs: list[JobInQueue]  # next to be sent first
