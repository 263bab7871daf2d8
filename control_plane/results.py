"""What the control plane accepts from a worker about one image.

The worker is trusted with nothing: it holds a dispatch's token, not the right to point an
image at another group's files, to have its file served as a page that runs scripts, or to
send numbers the columns cannot hold. `check` reads one result against the output row it
names; `control_plane/lifecycle.py` fails that image alone with the reason when it refuses.
A text task's output (kind text) gets its answer checked instead of files.
"""

import json
import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from control_plane.models import BIGINT_LIMIT, INT_LIMIT, OutputKind
from shared import layout
from shared.contract import ItemResult, ResultStatus
from shared.images import extension_for
from shared.layout import ObjectKind, StorageObject
from shared.storage import Storage, StorageError

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
MAX_COST_USD = 1_000_000.0  # no image costs this much: a larger number is a broken worker
MAX_USAGE_CHARS = 16_000  # the provider's token counts are a few hundred characters
MAX_USAGE_DEPTH = 16
MAX_TEXT_BYTES = 64 * 1024  # a text task's answer: a persona's data is a few KB
SHA256 = re.compile(r"[0-9a-f]{64}")


class ResultRejected(ValueError):
    """A worker's result that cannot be applied; the message says why, for a person."""


@dataclass(frozen=True)
class OutputFiles:
    """Where a succeeded result's image and thumbnail are, as keys of this image's own."""

    storage_key: str
    thumbnail_key: str | None


class Checked(NamedTuple):
    """What checking a result reads of its output (its outputs row's columns of these names)."""

    id: str
    job_id: str
    group_id: str
    kind: str
    params: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class TextAnswer:
    """A succeeded text task's answer, checked (JSON matching its schema when it had one)."""

    text: str


def check(result: ItemResult, output: Checked, storage: Storage) -> OutputFiles | TextAnswer | None:
    """Raise ResultRejected unless every field of `result` fits `output` and its columns;
    the image's files (or a text task's answer) when the result says it succeeded."""
    _check_numbers(result, output)
    _check_text(result)
    _check_usage(result.usage)
    if result.sha256 is not None and not SHA256.fullmatch(result.sha256):
        raise ResultRejected("sha256 is not 64 lowercase hexadecimal digits")
    if output.kind == OutputKind.TEXT:
        return _check_answer(result, output)
    if result.text is not None:
        raise ResultRejected("text is for text tasks; this output is an image")
    if result.status != ResultStatus.SUCCEEDED:
        return None
    return _check_files(result, output, storage)


def _check_answer(result: ItemResult, output: Checked) -> TextAnswer | None:
    """A text task's result: no file; when it succeeded, a bounded UTF-8 answer, and JSON
    whose object has every key the schema requires when the task had a schema."""
    for field in ("output_uri", "thumbnail_uri", "content_type"):
        if getattr(result, field) is not None:
            raise ResultRejected(f"{field} is for images; this output is a text task")
    if result.status != ResultStatus.SUCCEEDED:
        return None
    text = result.text
    if text is None:
        raise ResultRejected("a succeeded text task has no text")
    if len(text.encode()) > MAX_TEXT_BYTES:
        raise ResultRejected(f"text is over {MAX_TEXT_BYTES:,} bytes")
    schema = output.params.get("response_schema")
    if isinstance(schema, dict):
        _check_json_answer(text, schema)
    return TextAnswer(text)


def _check_json_answer(text: str, schema: dict[str, Any]) -> None:
    try:
        answer = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ResultRejected("text is JSON nested too deeply") from None
    except ValueError as exc:
        raise ResultRejected(f"text is not valid JSON: {exc}") from None
    _check_json_value(answer, depth=0, name="text")
    if schema.get("type") == "object" and not isinstance(answer, dict):
        raise ResultRejected("text is not a JSON object, as the response schema asks")
    required = [key for key in schema.get("required") or [] if isinstance(key, str)]
    missing = [key for key in required if not isinstance(answer, dict) or key not in answer]
    if missing:
        raise ResultRejected(
            f"text lacks {len(missing)} required key(s) of the response schema: "
            + ", ".join(missing[:20])
        )


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _check_numbers(result: ItemResult, output: Checked) -> None:
    limits = {
        "seed": BIGINT_LIMIT,
        "width": INT_LIMIT,
        "height": INT_LIMIT,
        "bytes": BIGINT_LIMIT,
        "latency_ms": INT_LIMIT,
        "attempts": INT_LIMIT - output.attempts,  # they add up over retries
    }
    for name, limit in limits.items():
        value = getattr(result, name)
        if value is not None and not 0 <= value < limit:
            raise ResultRejected(f"{name} is out of range (0 to {limit - 1})")
    cost = result.cost_usd
    if cost is not None and not (math.isfinite(cost) and 0 <= cost < MAX_COST_USD):
        raise ResultRejected(f"cost_usd is not a price (0 to {MAX_COST_USD:,.0f})")


TEXT_FIELDS = (
    "provider",
    "model",
    "model_version",
    "error",
    "content_type",
    "output_uri",
    "thumbnail_uri",
    "sha256",
    "text",
)


def _check_text(result: ItemResult) -> None:
    """Text a database can store: UTF-8 (JSON may carry lone surrogates, which no column
    holds; a MySQL JSON column refuses them too, so `usage` is checked as well)."""
    for name in TEXT_FIELDS:
        value = getattr(result, name)
        if value is not None and not _is_utf8(value):
            raise ResultRejected(f"{name} is not valid text")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_usage(usage: dict[str, Any] | None) -> None:
    """JSON columns hold finite numbers only, and a bounded document."""
    if usage is None:
        return
    _check_json_value(usage, depth=0, name="usage")
    if len(json.dumps(usage)) > MAX_USAGE_CHARS:
        raise ResultRejected(f"usage is over {MAX_USAGE_CHARS:,} characters")


def _check_json_value(value: Any, depth: int, name: str) -> None:
    """A JSON value (`name` says which) a JSON column can hold."""
    if depth > MAX_USAGE_DEPTH:
        raise ResultRejected(f"{name} is nested over {MAX_USAGE_DEPTH} levels deep")
    if isinstance(value, float) and not math.isfinite(value):
        raise ResultRejected(f"{name} holds a number that is not finite (NaN or Infinity)")
    if isinstance(value, int) and not -BIGINT_LIMIT <= value < BIGINT_LIMIT:
        raise ResultRejected(f"{name} holds a number out of range")
    texts = [value] if isinstance(value, str) else list(value) if isinstance(value, dict) else []
    if not all(_is_utf8(text) for text in texts):
        raise ResultRejected(f"{name} holds text that is not valid UTF-8")
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    )
    for child in children:
        _check_json_value(child, depth + 1, name)


def _check_files(result: ItemResult, output: Checked, storage: Storage) -> OutputFiles:
    if result.content_type not in IMAGE_TYPES:
        raise ResultRejected(f"content type {result.content_type!r} is not PNG, JPEG or WebP")
    storage_key = _own_key(storage, "output_uri", result.output_uri, output, ObjectKind.OUTPUT)
    if not storage_key.endswith(extension_for(result.content_type)):
        raise ResultRejected(f"output_uri's extension is not that of {result.content_type}")
    thumbnail_key = None
    if result.thumbnail_uri is not None:
        thumbnail_key = _own_key(
            storage, "thumbnail_uri", result.thumbnail_uri, output, ObjectKind.OUTPUT_THUMBNAIL
        )
    return OutputFiles(storage_key, thumbnail_key)


def _own_key(
    storage: Storage, field: str, uri: str | None, output: Checked, kind: ObjectKind
) -> str:
    """The key `uri` names, if it is one of `output`'s own: its stem, optionally the worker's
    run tag, then the extension of `kind` (`shared/layout.py`)."""
    if not uri:
        raise ResultRejected(f"{field} is missing")
    try:
        key = storage.key_of(uri)
    except StorageError as exc:
        raise ResultRejected(f"{field} is unusable: {exc}") from None
    if layout.parse(key) != StorageObject(kind, output.group_id, output.job_id, output.id):
        raise ResultRejected(f"{field} is outside this image's own keys")
    return key
