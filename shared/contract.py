"""The contract between the control plane and the worker: a RunPod job's input and output.

Inputs carry storage URIs, never image bytes: RunPod caps `/run` bodies at 10 MB and echoes
the whole input back in its webhook. Bump CONTRACT_VERSION on any incompatible change; the
worker refuses versions it does not know.

Version 2 added text tasks: a WorkItem with `task: "text"` asks a text model (`text_model`)
for an answer, as JSON matching `response_schema` when one is given; its ItemResult carries
the answer in `text` and no file. Image items and results are as in version 1.

Version 3 added progress: a DispatchInput may carry a `progress_url` (the control plane's
per-dispatch, token-authenticated URL, next to its RunPod webhook) to which the worker POSTs a
ProgressReport with the results stored since its last post, as they are stored (coalesced,
best effort: a post that fails is logged, never fails the dispatch). The DispatchOutput still
carries every result, and RunPod's webhook and `/status` stay the authority for the
dispatch's end. Items and results are as in version 2.
"""

from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONTRACT_VERSION: Final = 3


class Task(StrEnum):
    """What a work item asks for."""

    IMAGE = "image"  # an image file, written to storage at `output_key`
    TEXT = "text"  # a text model's answer, returned in the result's `text`


class ResultStatus(StrEnum):
    """How one requested image (or text) ended on the worker."""

    SUCCEEDED = "succeeded"  # an output file was written
    FAILED = "failed"  # an error; `error` says which
    BLOCKED = "blocked"  # the provider refused on safety grounds; `error` gives the reason


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageParams(_Strict):
    model: str
    aspect_ratio: str | None = None
    image_size: str | None = None
    seed: int
    negative_prompt: str | None = None


class WorkItem(_Strict):
    """One image (or, with `task` text, one text answer) to generate."""

    output_id: str
    task: Task = Task.IMAGE
    prompt: str
    reference_uris: list[str] = Field(default_factory=list)
    params: ImageParams
    output_key: str = Field(
        description="storage key without extension; the worker adds a tag of its run and the "
        "extension"
    )
    text_model: str | None = Field(None, description="text tasks: the model that answers")
    response_schema: dict[str, Any] | None = Field(
        None, description="text tasks: the JSON schema the answer must match (JSON mode)"
    )

    @model_validator(mode="after")
    def _fields_of_task(self) -> "WorkItem":
        if self.task == Task.TEXT and not self.text_model:
            raise ValueError("a text task needs text_model")
        if self.task == Task.IMAGE and (self.text_model or self.response_schema is not None):
            raise ValueError("text_model and response_schema are for text tasks only")
        return self


class DispatchInput(_Strict):
    """The `input` of one RunPod job: a chunk of a pixelfleet job."""

    version: Literal[3] = CONTRACT_VERSION
    dispatch_id: str
    job_id: str
    items: list[WorkItem] = Field(min_length=1)
    progress_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="where the worker POSTs a ProgressReport as results are stored (best "
        "effort; the output still carries every result)",
    )


class ItemResult(_Strict):
    output_id: str
    status: ResultStatus
    provider: str
    model: str
    seed: int | None = None
    output_uri: str | None = None
    thumbnail_uri: str | None = None
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    error: str | None = None
    text: str | None = None  # a text task's answer (JSON text when it had a response_schema)
    attempts: int = 1
    latency_ms: int = 0
    model_version: str | None = None
    usage: dict[str, Any] | None = None
    cost_usd: float | None = None


class DispatchOutput(_Strict):
    """The `output` of one RunPod job: one result per work item."""

    version: Literal[3] = CONTRACT_VERSION
    dispatch_id: str
    results: list[ItemResult]


class ProgressReport(_Strict):
    """What the worker POSTs to a dispatch's `progress_url`: results stored since its last
    report (each image's result is final on the worker; a later report never revises it)."""

    version: Literal[3] = CONTRACT_VERSION
    dispatch_id: str
    results: list[ItemResult] = Field(min_length=1)
