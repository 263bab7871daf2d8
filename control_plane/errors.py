"""Typed domain errors; the app turns them into JSON answers with a clear message."""

from collections.abc import Iterable, Mapping
from typing import Any


class DomainError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(DomainError):
    status_code = 401


class NotFound(DomainError):
    status_code = 404


class InvalidRequest(DomainError):
    status_code = 422


class Conflict(DomainError):
    status_code = 409


class PayloadTooLarge(DomainError):
    status_code = 413


class Unavailable(DomainError):
    status_code = 503


def describe_validation(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one line a person reads: `field.path: problem; …`."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)
