"""What every provider takes and returns, and the two ways an image (or a text answer) can
end without one."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from shared.contract import ImageParams

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
