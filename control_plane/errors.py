"""Typed domain errors; the app turns them into JSON answers with a clear message."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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


class PaymentRequired(DomainError):
    """Refused because it would take the user's spend over their cap (402)."""

    status_code = 402


class RateLimited(DomainError):
    """Too many requests (429): `retry_after_s` says when the next may come."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def describe_validation(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one line a person reads: `field.path: problem; …`."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


@dataclass(frozen=True)
class RowProblem:
    """What is wrong with one row of an imported file: `row` counts data rows from 1;
    `column` is None when the row as a whole is wrong."""

    row: int
    column: str | None
    message: str


class InvalidRows(InvalidRequest):
    """An import with bad rows (422): the first MAX_LISTED problems, and how many in all."""

    MAX_LISTED = 100

    def __init__(self, problems: Sequence[RowProblem]) -> None:
        rows = len({problem.row for problem in problems})
        super().__init__(
            f"{rows:,} row{'s have' if rows != 1 else ' has'} errors; nothing was imported "
            "(rows are numbered from 1, counting data rows only: not a CSV's header)"
        )
        self.problems = list(problems[: self.MAX_LISTED])
        self.problem_count = len(problems)
