"""Request and response bodies: one family per entity (Create / Public)."""

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
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


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    total: int
    page: int
    limit: int


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


class UploadRejected(BaseModel):
    filename: str
    reason: str


class UploadResult(BaseModel):
    images: list[UploadPublic]
    rejected: list[UploadRejected]


# Jobs ---------------------------------------------------------------------------------
class GenerationConfig(_Body):
    """Per-job generation settings; checked against the model table at submit time."""

    model: str | None = None
    aspect_ratio: str | None = None
    image_size: str | None = None
    seed: Annotated[int, Field(ge=0, lt=2**31)] | None = None
    negative_prompt: Annotated[str, StringConstraints(max_length=2_000)] | None = None


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


class AutomaticSubmit(_Body):
    group_id: str
    mode: Literal["automatic"]
    prompt: Prompt
    images: Annotated[ImageIds, Field(min_length=1)]
    config: GenerationConfig = GenerationConfig()


class SemiAutomaticItem(_Body):
    images: ImageIds = []
    prompt: Prompt


class SemiAutomaticSubmit(_Body):
    group_id: str
    mode: Literal["semi-automatic"]
    items: Annotated[list[SemiAutomaticItem], Field(min_length=1, max_length=1_000)]
    config: SemiAutomaticConfig = SemiAutomaticConfig()

    @model_validator(mode="after")
    def _every_item_used(self) -> "SemiAutomaticSubmit":
        sets = self.config.total_images // self.config.images_per_set
        if len(self.items) > sets:
            raise ValueError(
                f"{len(self.items)} items but only {sets} set(s) "
                f"(total_images {self.config.total_images} / images_per_set "
                f"{self.config.images_per_set}): raise total_images to at least "
                f"{len(self.items) * self.config.images_per_set} or send fewer items"
            )
        return self


SubmitRequest = Annotated[AutomaticSubmit | SemiAutomaticSubmit, Field(discriminator="mode")]


class Progress(BaseModel):
    total: int
    succeeded: int
    failed: int
    blocked: int
    pending: int


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


class OutputPublic(BaseModel):
    id: str
    position: int
    status: str
    prompt: str
    seed: int
    reference_ids: list[str]
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


class JobDetail(JobPublic):
    images: list[OutputPublic]


class SubmitResponse(BaseModel):
    batch_id: str
    jobs: list[JobPublic]


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
