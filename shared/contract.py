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

Version 4 added the Gemini Batch lane: a DispatchInput has a `task` (DispatchTask).
`generate` is the online work of versions 1-3 (the default) and returns a DispatchOutput.
The batch tasks are short steps of one Gemini batch per dispatch, each its own RunPod job:
`batch_submit` builds the requests from the items (references read from storage), creates
the batch and returns a BatchOutput naming it (a re-run finds the batch it created, by the
dispatch id in the batch's display name, and creates none); `batch_poll` returns the batch's
state and Google's counts (BatchOutput); `batch_collect` writes each image and its thumbnail
to storage as `generate` does and returns a DispatchOutput with one result per item, costed
at the model's batch price; `batch_cancel` cancels the batch and returns its state. Poll,
collect and cancel name the batch in `batch`. Items and results are as in version 3.
"""

from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONTRACT_VERSION: Final = 4


class Task(StrEnum):
    """What a work item asks for."""

    IMAGE = "image"  # an image file, written to storage at `output_key`
    TEXT = "text"  # a text model's answer, returned in the result's `text`


class DispatchTask(StrEnum):
    """What a dispatch asks the worker to do (version 4)."""

    GENERATE = "generate"  # online: every item generated now (DispatchOutput)
    BATCH_SUBMIT = "batch_submit"  # create the dispatch's Gemini batch (BatchOutput)
    BATCH_POLL = "batch_poll"  # one look at the batch: state and counts (BatchOutput)
    BATCH_COLLECT = "batch_collect"  # store its results, one per item (DispatchOutput)
    BATCH_CANCEL = "batch_cancel"  # cancel it; its state after (BatchOutput)


BATCH_TASKS: Final = frozenset(DispatchTask) - {DispatchTask.GENERATE}
NAMED_BATCH_TASKS: Final = BATCH_TASKS - {DispatchTask.BATCH_SUBMIT}  # need `batch`
ITEM_TASKS: Final = frozenset(
    {DispatchTask.GENERATE, DispatchTask.BATCH_SUBMIT, DispatchTask.BATCH_COLLECT}
)


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
    """The `input` of one RunPod job: a chunk of a pixelfleet job, or one step of its batch."""

    version: Literal[4] = CONTRACT_VERSION
    dispatch_id: str
    job_id: str
    task: DispatchTask = DispatchTask.GENERATE
    items: list[WorkItem] = Field(
        default_factory=list,
        description="generate, batch_submit, batch_collect: the images (at least one); the "
        "batch tasks take image items of one model",
    )
    batch: str | None = Field(
        None,
        min_length=1,
        description="batch_poll, batch_collect, batch_cancel: the batch's name, as "
        "batch_submit returned it",
    )
    progress_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="where the worker POSTs a ProgressReport as results are stored (best "
        "effort; the output still carries every result)",
    )

    @model_validator(mode="after")
    def _fields_of_task(self) -> "DispatchInput":
        if self.task in ITEM_TASKS and not self.items:
            raise ValueError(f"a {self.task} task needs at least one item")
        if self.task not in ITEM_TASKS and self.items:
            raise ValueError(f"a {self.task} task takes no items")
        if (self.batch is None) == (self.task in NAMED_BATCH_TASKS):
            raise ValueError("`batch` names the batch of poll, collect and cancel tasks only")
        if self.task in BATCH_TASKS and self.items:
            if any(item.task != Task.IMAGE for item in self.items):
                raise ValueError("batch tasks take image items only")
            if len({item.params.model for item in self.items}) > 1:
                raise ValueError("a batch runs one model: the items' models differ")
        return self


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
    """The `output` of a generate or batch_collect task: one result per work item."""

    version: Literal[4] = CONTRACT_VERSION
    dispatch_id: str
    results: list[ItemResult]


class ProgressReport(_Strict):
    """What the worker POSTs to a dispatch's `progress_url`: results stored since its last
    report (each image's result is final on the worker; a later report never revises it)."""

    version: Literal[3, 4] = CONTRACT_VERSION  # 4 changed no field of it
    dispatch_id: str
    results: list[ItemResult] = Field(min_length=1)


class BatchState(StrEnum):
    """A Gemini batch's state in pixelfleet's terms (Google's `BATCH_STATE_*`)."""

    PENDING = "pending"  # accepted, not started (Google may keep it here for a long time)
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # ended with results (each request may still have failed)
    FAILED = "failed"  # ended without results
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # not finished within Google's 48 h: no results

    @property
    def ended(self) -> bool:
        return self not in (BatchState.PENDING, BatchState.RUNNING)


class BatchInfo(_Strict):
    """One Gemini batch as the worker saw it; the counts are Google's (None when it gave
    none)."""

    name: str = Field(description="Google's name for it, `batches/…`: what later tasks pass")
    state: BatchState
    requests: int | None = None
    succeeded: int | None = None
    failed: int | None = None
    pending: int | None = None
    error: str | None = Field(None, description="why a failed batch failed, when Google says")
    input: Literal["inline", "file"] | None = Field(
        None, description="batch_submit: how the requests went (inline up to the size limit)"
    )
    created: bool = Field(
        False, description="batch_submit: this run created it (False: an earlier run had)"
    )


class BatchOutput(_Strict):
    """The `output` of a batch_submit, batch_poll or batch_cancel task."""

    version: Literal[4] = CONTRACT_VERSION
    dispatch_id: str
    task: DispatchTask
    batch: BatchInfo | None = Field(
        None, description="None only when batch_submit had no request to send"
    )
    results: list[ItemResult] = Field(
        default_factory=list,
        description="batch_submit: items left out of the batch (failed, with the reason, e.g. "
        "a reference that could not be read); final, as in a DispatchOutput. A re-run that "
        "finds the batch reports none: collect fails them as having no result",
    )
