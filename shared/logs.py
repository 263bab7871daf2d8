"""Logging for every pixelfleet process: one format, and no secret ever written.

`configure_logging` sends every logger (uvicorn's access log and httpx's request log
included) to one root handler whose `RedactingFilter` replaces secrets with `***`: the
values of URL and form parameters named like `token`, `key`, `password` or `secret` (webhook
URLs carry their dispatch's token), `Authorization` header values (ASGI's byte pairs too),
and the configured secrets themselves (API password, RunPod and Gemini keys) wherever they
appear, in any message (an exception logged as the message included). With
`PIXELFLEET_LOG_FORMAT=json` each record is one JSON object a line (`JsonFormatter`), its
`extra` fields (request and dispatch ids) included and masked the same way.
"""

import json
import logging
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

MASK = "***"
# The id of the HTTP request being answered (control_plane/web/requestlog.py sets it): JSON
# lines written while answering it carry it, whichever logger writes them.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# What every LogRecord has: the JSON formatter writes any other attribute (`extra=`) as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's own lines carry a coloured copy of their message
}
# Secrets shorter than this are not searched for by value (they would mask ordinary words).
MIN_SECRET_CHARS = 4

_SECRET_PARAMETER = re.compile(
    r"(?i)\b([\w.-]*(?:token|key|password|passwd|secret))=[^&\s\"'#,;)\]]+"
)
_SECRET_FIELD = re.compile(r"(?i)(token|key|password|passwd|secret|authorization)$")
# `Authorization: x`, `authorization=x`, `{'authorization': 'x'}` and ASGI's header pairs
# `(b'authorization', b'x')`; a scheme (Bearer, Basic) is kept, its credentials masked.
_AUTHORIZATION = re.compile(
    r"(?i)(authorization(?:[\"']?\s*[:=]\s*(?:b?[\"'])?|[\"']\s*,\s*b?[\"']))"
    r"(?:(bearer|basic|token)\s+)?[^\s\"',;}]+"
)


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message, arguments and traceback; never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        values = {secret for secret in secrets if len(secret) >= MIN_SECRET_CHARS}
        # longest first, so a secret containing another is masked whole
        ordered = sorted(values, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def redact(self, text: str) -> str:
        text = _SECRET_PARAMETER.sub(rf"\1={MASK}", text)
        text = _AUTHORIZATION.sub(_mask_authorization, text)
        return self._values.sub(MASK, text) if self._values else text

    def filter(self, record: logging.LogRecord) -> bool:
        # a message that is not text (`log.error(exc)`) is formatted by its str() anyway
        record.msg = self.redact(record.msg if isinstance(record.msg, str) else str(record.msg))
        if isinstance(record.args, dict):
            self._format_mapping(record, record.args)
        elif record.args:
            record.args = tuple(self._argument(value) for value in record.args)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True

    def _format_mapping(self, record: logging.LogRecord, args: dict[str, Any]) -> None:
        """A mapping argument is `%(name)s`'s or a lone dict for `%s` (headers, say, whose
        secret shows only next to its name): the message is formatted, then redacted."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            record.args = {name: self._argument(value) for name, value in args.items()}
            return
        record.msg, record.args = self.redact(message), None

    def _argument(self, value: Any) -> Any:
        """The argument, or its text redacted when that text holds a secret (an httpx.URL, an
        exception); numbers stay numbers so `%d` still formats."""
        if isinstance(value, int | float):
            return value
        text = value if isinstance(value, str) else str(value)
        redacted = self.redact(text)
        return value if redacted == text else redacted


def _mask_authorization(match: re.Match[str]) -> str:
    scheme = f"{match.group(2)} " if match.group(2) else ""
    return f"{match.group(1)}{scheme}{MASK}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the request's id while one is
    answered, and the record's `extra` fields, every text passed through `redact`."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(self._redacted(line), default=str, ensure_ascii=False)

    def _redacted(self, value: Any) -> Any:
        """`value` with its texts redacted, and whole values of fields named like secrets."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {
                name: MASK
                if _SECRET_FIELD.search(str(name)) and isinstance(item, str | bytes)
                else self._redacted(item)
                for name, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._redacted(item) for item in value]
        return value


def log_handler(
    secrets: Iterable[str | None] = (), log_format: str = "text", stream: Any = None
) -> logging.Handler:
    """A handler that writes `log_format` ("text" or "json") lines with every secret masked."""
    handler = logging.StreamHandler(stream)
    redacting = RedactingFilter(secret for secret in secrets if secret)
    handler.addFilter(redacting)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(redacting.redact))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def configure_logging(
    level: str, secrets: Iterable[str | None] = (), log_format: str = "text"
) -> None:
    """Route every record through one redacting root handler, at `level`, as text or as
    JSON lines (`PIXELFLEET_LOG_FORMAT`).

    Run it before uvicorn is started with `log_config=None`, so uvicorn's loggers keep no
    handlers of their own and propagate here like everyone else's.
    """
    logging.basicConfig(level=level, handlers=[log_handler(secrets, log_format)], force=True)
