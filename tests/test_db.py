"""The schema (control_plane/migrations/) on SQLite and MariaDB: ids compare exactly, the
migrations make what the models describe, and the engine (control_plane/db.py) keeps
statement parameters out of its errors."""

import io
import logging

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import control_plane.models  # noqa: F401 - registers the tables
from control_plane.db import make_engine
from shared.logs import configure_logging
from tests.conftest import png_bytes
from tests.fakes.api import Api

TOKEN = "whk-token-0123456789abcdef"


def test_ids_match_exactly_on_every_database(api: Api) -> None:
    """MySQL's default collations compare case-insensitively and ignore trailing spaces; the
    tables are binary, and what is found is used by its stored id (keys are built from it)."""
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    assert api.client.get(f"/api/groups/{group_id.upper()}").status_code == 404
    upper = api.upload(group_id.upper(), [("a.png", png_bytes())])
    assert upper.status_code == 404
    padded = api.upload(group_id + " ", [("a.png", png_bytes())])
    assert padded.status_code in (201, 404), padded.text  # MariaDB pads; SQLite does not
    if padded.status_code == 201:
        assert padded.json()["images"][0]["group_id"] == group_id
    submitted = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id + " ", "mode": "automatic", "prompt": "p", "images": images},
    )
    assert submitted.status_code in (201, 404), submitted.text
    if submitted.status_code == 201:
        assert submitted.json()["jobs"][0]["group_id"] == group_id
        api.drain()
        inputs = api.run_bodies[-1]["input"]["items"]
        assert all(item["output_key"].startswith(f"groups/{group_id}/") for item in inputs)
    wrong_case = api.client.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "p",
            "images": [images[0].upper()],
        },
    )
    assert (
        wrong_case.status_code == 422
        and "not uploads or images of group" in wrong_case.json()["detail"]
    )


def test_the_migrations_make_exactly_the_tables_the_models_describe(database_url: str) -> None:
    """Alembic's own comparison of the migrated database with the models (types and server
    defaults included) finds nothing, on SQLite and on MariaDB."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            differences = compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_a_failed_insert_logs_no_statement_parameters(database_url: str) -> None:
    """A dispatch row that cannot be inserted (no job, no status): the error, logged through
    the logging the CLI configures, names the statement but not its webhook token."""
    engine = make_engine(database_url)
    assert engine.hide_parameters
    root = logging.getLogger()
    level = root.level
    configure_logging("INFO")
    [handler] = root.handlers
    written = io.StringIO()
    handler.setStream(written)  # type: ignore[attr-defined]
    try:
        with pytest.raises(sa.exc.DBAPIError), engine.begin() as connection:
            try:
                connection.execute(
                    sa.text("INSERT INTO dispatches (id, webhook_token) VALUES (:id, :token)"),
                    {"id": "dsp_x", "token": TOKEN},
                )
            except sa.exc.DBAPIError:
                logging.getLogger("control_plane").exception("cannot add dispatch")
                raise
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        engine.dispose()
    text = written.getvalue()
    assert "INSERT INTO dispatches" in text and "parameters hidden" in text
    assert TOKEN not in text
