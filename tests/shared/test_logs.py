"""shared/logs.py: what the redacting handler writes, for the kinds of lines that carry
secrets (uvicorn's access log, httpx's request log, exceptions, headers, configured values).
The whole stack's logs are checked in tests/e2e/test_cli_up.py."""

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from shared.logs import configure_logging, log_handler

TOKEN = "Zq3_token-value-0123456789abcdef"
KEY = "AIza-configured-gemini-key"


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """The text `configure_logging`'s handler writes (the root logger restored afterwards)."""
    root = logging.getLogger()
    level = root.level
    configure_logging("INFO", [KEY, None, "", "abc"])
    [handler] = root.handlers
    stream = io.StringIO()
    handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def access_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[logging.Logger]:
    """uvicorn's access logger as `uvicorn.run(log_config=None)` leaves it (servers that other
    tests run in-process configure it their way)."""
    for name in ("uvicorn", "uvicorn.access"):
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    access = logging.getLogger("uvicorn.access")
    level = access.level
    access.setLevel(logging.NOTSET)
    try:
        yield access
    finally:
        access.setLevel(level)


def test_uvicorn_access_lines_keep_their_shape_without_the_token(
    written: io.StringIO, access_log: logging.Logger
) -> None:
    path = f"/api/webhook/runpod?dispatch=dsp_1&token={TOKEN}"
    access_log.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", path, "1.1", 200)
    line = written.getvalue()
    assert TOKEN not in line
    assert '"POST /api/webhook/runpod?dispatch=dsp_1&token=*** HTTP/1.1" 200' in line


def test_httpx_urls_and_exceptions_are_masked(written: io.StringIO) -> None:
    url = httpx.URL(f"http://127.0.0.1:8000/api/webhook/runpod?token={TOKEN}&dispatch=dsp_1")
    logging.getLogger("httpx").info(
        'HTTP Request: %s %s "%s %d %s"', "POST", url, "HTTP/1.1", 200, "OK"
    )
    try:
        raise httpx.ConnectError(f"cannot reach {url}")
    except httpx.ConnectError:
        logging.getLogger("worker").exception("webhook failed")
    text = written.getvalue()
    assert TOKEN not in text
    assert "runpod?token=***&dispatch=dsp_1" in text and '"HTTP/1.1 200 OK"' in text
    assert "Traceback" in text and "cannot reach" in text


@pytest.mark.parametrize(
    "message",
    [
        f"Authorization: Bearer {TOKEN}",
        f"headers {{'authorization': 'Basic {TOKEN}'}}",
        f"GET /x?api_key={TOKEN}",
        f"form password={TOKEN}&next=/",
        f"calling Gemini with {KEY} at hand",
    ],
)
def test_headers_parameters_and_configured_secrets_are_masked(
    written: io.StringIO, message: str
) -> None:
    logging.getLogger("any").warning("%s", message)
    assert TOKEN not in written.getvalue() and KEY not in written.getvalue()
    assert "***" in written.getvalue()


def test_ordinary_lines_are_untouched(written: io.StringIO) -> None:
    logging.getLogger("any").info("job %s: %d of %d done (abc)", "job_1", 3, 4)
    assert written.getvalue().rstrip().endswith("any: job job_1: 3 of 4 done (abc)")


def test_a_message_that_is_not_text_is_masked(written: io.StringIO) -> None:
    """`log.error(exc)`: the record's msg is the exception itself."""
    error = httpx.ConnectError(f"cannot reach /api/webhook/runpod?token={TOKEN} with {KEY}")
    logging.getLogger("any").error(error)
    text = written.getvalue()
    assert TOKEN not in text and KEY not in text
    assert "cannot reach /api/webhook/runpod?token=*** with ***" in text


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", f"Bearer {TOKEN}".encode())],  # ASGI scope["headers"]
        [("Authorization", TOKEN)],
        {b"authorization": f"Basic {TOKEN}".encode()},
    ],
)
def test_header_pairs_as_asgi_holds_them_are_masked(written: io.StringIO, headers: object) -> None:
    logging.getLogger("any").info("headers %s", headers)
    logging.getLogger("any").info(headers)
    assert TOKEN not in written.getvalue()
    assert written.getvalue().count("***") == 2


def test_a_lone_dict_of_headers_is_masked(written: io.StringIO) -> None:
    """logging takes a lone dict argument as a mapping: its values alone show no name."""
    logging.getLogger("any").info("headers %s", {"authorization": f"Bearer {TOKEN}"})
    logging.getLogger("any").info("%(who)s sent %(n)d", {"who": "x", "n": 3})
    text = written.getvalue()
    assert TOKEN not in text and "{'authorization': 'Bearer ***'}" in text
    assert "any: x sent 3" in text


def test_json_lines_mask_their_fields_too() -> None:
    stream = io.StringIO()
    handler = log_handler([KEY], "json", stream)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "using %s", (KEY,), None)
    record.query = f"dispatch=dsp_1&token={TOKEN}"
    record.nested = {"authorization": f"Bearer {TOKEN}", "n": 3}
    handler.handle(record)
    line = json.loads(stream.getvalue())
    assert TOKEN not in stream.getvalue() and KEY not in stream.getvalue()
    assert line["message"] == "using ***" and line["query"] == "dispatch=dsp_1&token=***"
    assert line["nested"]["n"] == 3 and line["level"] == "INFO" and line["logger"] == "x"


def test_configure_logging_writes_json_when_told() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("INFO", [KEY], "json")
        [handler] = root.handlers
        stream = io.StringIO()
        handler.setStream(stream)  # type: ignore[attr-defined]
        # a logger of its own: an earlier test may have silenced uvicorn's (its server stops)
        logging.getLogger("tests.json").info("key %s", KEY, extra={"color_message": "x"})
        line = json.loads(stream.getvalue())
        assert line["message"] == "key ***" and "color_message" not in line
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
