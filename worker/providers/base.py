"""What every provider takes and returns, and the two ways an image (or a text answer) can
end without one."""

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from shared.contract import BatchInfo, ImageParams

IdleHook = Callable[[], AbstractAsyncContextManager[None]]


@dataclass(frozen=True)
class Reference:
    data: bytes
    content_type: str


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    params: ImageParams
    references: list[Reference] = field(default_factory=list)
    # Seconds this image may still take when `generate` is called (the dispatch deadline
    # minus now), or None for no limit. Providers must not retry or wait past it.
    time_budget_s: float | None = None
    # Providers wait before a retry inside `idle()`: the runner lends the image's slot to
    # another image meanwhile. None: nothing to lend.
    idle: "IdleHook | None" = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    content_type: str
    model_version: str | None = None
    usage: dict[str, Any] | None = None
    attempts: int = 1
    cost_usd: float | None = None
    seed: int | None = None  # the seed sent; differs from the request's after a reseed


@dataclass(frozen=True)
class TextRequest:
    """A text task: `prompt` to `model`, answered as JSON matching `response_schema` if any."""

    prompt: str
    model: str
    seed: int
    response_schema: dict[str, Any] | None = None
    time_budget_s: float | None = None  # as GenerationRequest's
    idle: "IdleHook | None" = field(default=None, compare=False, repr=False)  # likewise


@dataclass(frozen=True)
class GeneratedText:
    text: str
    model_version: str | None = None
    usage: dict[str, Any] | None = None
    attempts: int = 1
    cost_usd: float | None = None


class GenerationBlocked(Exception):
    """The provider refused on safety grounds. Not retried blindly."""

    def __init__(self, reason: str, attempts: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


class GenerationFailed(Exception):
    """The provider could not produce an image (after its own retries)."""

    def __init__(self, reason: str, attempts: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


class Provider(ABC):
    name: str

    @abstractmethod
    async def generate(self, request: GenerationRequest) -> GeneratedImage: ...

    async def generate_text(self, request: TextRequest) -> GeneratedText:
        """Answer a text task; providers that write no text fail it."""
        raise GenerationFailed(f"the {self.name} provider does not answer text tasks", 0)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called when the worker shuts down."""


@dataclass(frozen=True)
class BatchRequest:
    """One image of a batch: `key` finds its result again (the work item's output id)."""

    key: str
    request: GenerationRequest


BatchOutcome = GeneratedImage | GenerationBlocked | GenerationFailed


@dataclass
class BatchResults:
    """A batch as `BatchProvider.results` found it: its state, and when it ended with
    results, each request's outcome by key (streamed: read them once)."""

    info: BatchInfo
    outcomes: AsyncGenerator[tuple[str, BatchOutcome], None] | None = None


class BatchError(Exception):
    """A batch call failed as a whole (the batch service refused or could not be reached)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BatchProvider(ABC):
    """Gemini's Batch API, or a stand-in: batches created, looked up by display name, polled,
    cancelled, and their results read. Each method raises BatchError when the call fails."""

    name: str

    @abstractmethod
    async def find(self, display_name: str) -> BatchInfo | None:
        """The batch created with `display_name`, if there is one."""

    @abstractmethod
    async def create(
        self, display_name: str, model: str, requests: AsyncIterator[BatchRequest]
    ) -> BatchInfo | None:
        """Create one batch of `requests` for `model` (None, creating nothing, if there are
        none)."""

    @abstractmethod
    async def get(self, name: str) -> BatchInfo: ...

    @abstractmethod
    async def cancel(self, name: str) -> BatchInfo:
        """Cancel the batch (a batch that has ended stays as it is); its state after."""

    @abstractmethod
    async def results(self, name: str, params: Mapping[str, ImageParams]) -> BatchResults:
        """The batch's state and, once it ended with results, their outcomes (images costed
        at the batch price); `params` are the requests' by key, in the order submitted."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called when the worker shuts down."""
