"""Reading an imported file's rows: CSV with a header row, or JSONL (one object a line).

Which one is decided by the file's extension, else by its content; every message says which
it was read as. A file that cannot be read at all is a 422 (InvalidRequest); a CSV row with
the wrong number of fields is a problem of that row (`Table.problems`), reported with the
others.
"""

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from control_plane.errors import InvalidRequest, RowProblem
from control_plane.models import clip

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv", ".txt")
QUOTING_HINT = ' (put a field that holds commas in double quotes: "a {red, blue} bird")'


@dataclass
class Table:
    """The rows of a file as read: `columns` in order, each row a dict (CSV: text; JSONL:
    JSON values) numbered from 1; `problems` of rows that could not be read as rows."""

    kind: str  # "CSV" or "JSONL"
    columns: list[str]
    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)


def read_table(name: str, data: bytes, max_rows: int) -> Table:
    """The file's rows, as CSV (with a header row) or JSONL (one object per line): by its
    name's extension, else by its content. A file that cannot be read is a 422."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + len(data) - len(exc.object)  # the codec leaves a BOM out
        raise InvalidRequest(
            f"{name} is not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}); "
            "save the CSV or JSONL file as UTF-8"
        ) from exc
    if not text.strip():
        raise InvalidRequest(
            f"{name} is empty: give a CSV with a header row and a row per prompt, or JSONL "
            "with one JSON object per line"
        )
    if _is_jsonl(name, text):
        table = _read_jsonl(name, text, max_rows)
    else:
        table = _read_csv(name, text, max_rows)
    if not table.rows:
        raise InvalidRequest(f"{name} (read as {table.kind}) has no rows, only a header")
    return table


def _is_jsonl(name: str, text: str) -> bool:
    lowered = name.lower()
    if lowered.endswith(JSONL_SUFFIXES):
        return True
    if lowered.endswith(CSV_SUFFIXES):
        return False
    return text.lstrip().startswith("{")


def _too_many(name: str, kind: str, max_rows: int) -> InvalidRequest:
    return InvalidRequest(
        f"{name} (read as {kind}) has more than {max_rows:,} rows; "
        f"an import takes at most {max_rows:,}: split the file"
    )


def _read_csv(name: str, text: str, max_rows: int) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next((line for line in reader if line), None)
        if header is None:
            raise InvalidRequest(f"{name} (read as CSV) has no header row")
        table = Table("CSV", _header(name, header))
        for line in reader:
            if not line:  # a blank line
                continue
            if len(table.rows) == max_rows:
                raise _too_many(name, "CSV", max_rows)
            _add_csv_row(table, line)
    except csv.Error as exc:
        raise InvalidRequest(
            f"{name} could not be read as CSV (line {reader.line_num}): {exc}"
        ) from exc
    return table


def _header(name: str, header: list[str]) -> list[str]:
    columns = [column.strip() for column in header]
    for index, column in enumerate(columns, start=1):
        if not column:
            raise InvalidRequest(
                f"the header row of {name} (read as CSV) has no name for column {index}: "
                "its first line must name every column"
            )
    duplicates = sorted(column for column, times in Counter(columns).items() if times > 1)
    if duplicates:
        raise InvalidRequest(
            f"the header row of {name} (read as CSV) names a column more than once: "
            f"{shown(', '.join(duplicates), 200)}"
        )
    return columns


def _add_csv_row(table: Table, line: list[str]) -> None:
    number = len(table.rows) + 1
    table.rows.append((number, dict(zip(table.columns, line, strict=False))))
    if len(line) != len(table.columns):
        hint = QUOTING_HINT if len(line) > len(table.columns) else ""
        message = f"the row has {len(line)} fields; the header has {len(table.columns)}{hint}"
        table.problems.append(RowProblem(number, None, message))


def _read_jsonl(name: str, text: str, max_rows: int) -> Table:
    table = Table("JSONL", [])
    seen: dict[str, None] = {}  # the columns in order of first appearance
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if len(table.rows) == max_rows:
            raise _too_many(name, "JSONL", max_rows)
        row = _json_object(name, line_number, line)
        seen.update(dict.fromkeys(row))
        table.rows.append((len(table.rows) + 1, row))
    table.columns = list(seen)
    return table


def _json_object(name: str, line_number: int, line: str) -> dict[str, Any]:
    where = f"line {line_number} of {name} (read as JSONL)"
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{where} is not JSON: {exc.msg} (column {exc.colno})") from exc
    except ValueError as exc:  # e.g. a number of more digits than Python converts
        raise InvalidRequest(f"{where} is not usable JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidRequest(f"{where} is not usable JSON: nested too deeply") from exc
    if not isinstance(value, dict):
        raise InvalidRequest(
            f'{where} is a JSON {json_type(value)}, not an object such as {{"prompt": "…"}}: '
            "each line must be one object"
        )
    return value


def json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def shown(text: str, limit: int) -> str:
    """`text` for a message, cut to `limit` characters."""
    return clip(text, limit) or ""
