"""Logging for every pixelfleet process: one format, and no secret ever written.

`configure_logging` sends every logger (uvicorn's access log and httpx's request log
included) to one root handler whose `RedactingFilter` replaces secrets with `***`: the
values of URL and form parameters named like `token`, `key`, `password` or `secret` (webhook
URLs carry their dispatch's token), `Authorization` header values (ASGI's byte pairs too),
and the configured secrets themselves (API password, RunPod and Gemini keys) wherever they
appear, in any message (an exception logged as the message included).
"""

import logging
import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
# Secrets shorter than this are not searched for by value (they would mask ordinary words).
MIN_SECRET_CHARS = 4

_SECRET_PARAMETER = re.compile(
    r"(?i)\b([\w.-]*(?:token|key|password|passwd|secret))=[^&\s\"'#,;)\]]+"
)
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


def configure_logging(level: str, secrets: Iterable[str | None] = ()) -> None:
    """Route every record through one redacting root handler, at `level`.

    Run it before uvicorn is started with `log_config=None`, so uvicorn's loggers keep no
    handlers of their own and propagate here like everyone else's.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secret for secret in secrets if secret))
    logging.basicConfig(level=level, handlers=[handler], force=True)
