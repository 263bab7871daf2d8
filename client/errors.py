"""What a call to the pixelfleet API can raise: one base class, so a caller catches one thing."""

from typing import Any


class ClientError(Exception):
    """Anything that stopped a client call; `str()` is a message for a person."""


class ApiError(ClientError):
    """The API answered with an error: its HTTP status, `detail` (the server's message) and
    `errors` (the field-by-field problems of a 422, when the server lists them)."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: list[Any] | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"the API answered {status}: {detail}")
        self.status = status
        self.detail = detail
        self.errors = errors
        self.retry_after = retry_after  # seconds the server asked to wait before trying again


class ApiUnreachable(ClientError):
    """No answer from the API (refused, timed out, cut off), after the client's retries.
    `refused`: nothing listens there (or no route to it), so the request was never sent."""

    def __init__(self, api_url: str, reason: str, *, refused: bool) -> None:
        if refused:
            message = (
                f"cannot reach the pixelfleet API at {api_url} ({reason}); is it running? "
                "Start the platform with `pixelfleet up`, or point --api (PIXELFLEET_API_URL) "
                "at a running one"
            )
        else:
            message = f"no answer from the pixelfleet API at {api_url} ({reason})"
        super().__init__(message)
        self.api_url = api_url
        self.reason = reason
        self.refused = refused
