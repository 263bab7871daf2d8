"""Shared fixtures: databases (SQLite always, MariaDB/MySQL when reachable), settings, images;
and, from tests/fakes/, the harnesses every folder may use (see tests/README.md)."""

import contextlib
import functools
import io
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from PIL import Image
from sqlmodel import SQLModel

import control_plane.models  # noqa: F401  (the tables, for TABLES)
from control_plane.db import alembic_config, migrate
from control_plane.settings import Settings

# The fakes' own asserts report like a test's (they are imported by test modules too).
pytest.register_assert_rewrite("tests.fakes")

pytest_plugins = [
    "tests.fakes.api",  # api: the app under a TestClient, RunPod's cloud mocked
    "tests.fakes.stack",  # stack: the whole stack on real sockets
    "tests.fakes.gcs_emulator",  # gcs_emulator, gcs_env, gcs_storage, service_account_info
]

MYSQL_URL = os.environ.get("PIXELFLEET_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRE_MYSQL = os.environ.get("PIXELFLEET_REQUIRE_MYSQL") == "1"
# Every table the models describe (children first), and Alembic's own.
TABLES = (*(t.name for t in reversed(SQLModel.metadata.sorted_tables)), "alembic_version")
_mysql_problem: list[str] = []
_mysql_migrated: set[str] = set()  # databases this test process migrated


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[str]:
    """A database of this test session's own on the MariaDB/MySQL server (so concurrent runs
    never reset each other's tables), or the configured one if it may not create one; ""
    plus a reason (in `mysql_problem`) when the server is unreachable."""
    base = sa.engine.make_url(MYSQL_URL)
    try:
        server = sa.create_engine(base.set(database=""), connect_args={"connect_timeout": 3})
        with server.connect():
            pass
    except Exception as exc:  # any failure to connect means "not here"
        _mysql_problem.append(f"MariaDB/MySQL unreachable at {MYSQL_URL}: {exc}")
        yield ""
        return
    own = f"{base.database or 'test'}_pf_{secrets.token_hex(4)}"
    try:
        with server.begin() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE `{own}` CHARACTER SET utf8mb4")
    except sa.exc.DBAPIError:
        own = ""
    try:
        yield base.set(database=own).render_as_string(hide_password=False) if own else MYSQL_URL
    finally:
        if own:
            with server.begin() as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{own}`")
        server.dispose()


def _reset_mysql(url: str) -> None:
    """Leave the database at `url` migrated and empty: its rows deleted when this process
    migrated it and its schema is still the head's (a tenth of a second), else every table
    dropped and the migrations run again (a second or two on MariaDB)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
            if url in _mysql_migrated and _at_head(connection):
                _delete_rows(connection)
                return
            _mysql_migrated.discard(url)
            for table in TABLES:
                connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
    finally:
        engine.dispose()
    migrate(url)
    _mysql_migrated.add(url)


def _at_head(connection: sa.Connection) -> bool:
    """Whether the database has every table, each as the migrations left it, and the head's
    revision."""
    tables = connection.exec_driver_sql(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()"
    ).scalar_one()
    if tables != len(TABLES):
        return False
    revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return revision == _head_revision()


def _delete_rows(connection: sa.Connection) -> None:
    """Delete every row (foreign key checks are off) and restart the auto-increment ids, as a
    new database would number them; tables the last test left empty and unnumbered are left
    alone (most tests touch a few of them, and each statement costs a round trip)."""
    tables = SQLModel.metadata.sorted_tables
    probes = " UNION ALL ".join(f"(SELECT '{t.name}' FROM {t.name} LIMIT 1)" for t in tables)
    used = set(connection.exec_driver_sql(probes).scalars())
    numbered = set(
        connection.exec_driver_sql(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND auto_increment > 1"
        ).scalars()
    )
    for table in tables:
        if table.name in used:
            connection.exec_driver_sql(f"DELETE FROM {table.name}")
        counted = table.autoincrement_column is not None
        if counted and (table.name in used or table.name in numbered):
            connection.exec_driver_sql(f"ALTER TABLE {table.name} AUTO_INCREMENT = 1")


@functools.cache
def _head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config(MYSQL_URL)).get_current_head()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite database, which each test's database starts as a copy of."""
    path = tmp_path_factory.mktemp("migrated") / "pixelfleet.db"
    migrate(f"sqlite:///{path}")
    return path


def _copy_sqlite(source: Path, target: Path) -> None:
    with (
        contextlib.closing(sqlite3.connect(source)) as original,
        contextlib.closing(sqlite3.connect(target)) as copy,
    ):
        original.backup(copy)


@pytest.fixture(params=["sqlite", "mysql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: SQLite, then MariaDB/MySQL."""
    if request.param == "sqlite":
        path = tmp_path / "pixelfleet.db"
        _copy_sqlite(request.getfixturevalue("migrated_sqlite"), path)
        return f"sqlite:///{path}"
    server_url: str = request.getfixturevalue("mysql_url")
    if not server_url:
        problem = _mysql_problem[0]
        if REQUIRE_MYSQL:
            pytest.fail(problem)
        pytest.skip(problem)
    _reset_mysql(server_url)
    return server_url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        storage_url=str(tmp_path / "storage"),
        reconcile_interval_s=0.2,
        relay_spacing_s=0.02,  # the tests wait on what the relay does next
        webhook_grace_s=30,
        dispatch_chunk_size=16,
        allowed_hosts="testserver",  # TestClient's Host header
    )


def png_bytes(
    width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(
    width: int = 64, height: int = 48, colour: tuple[int, int, int] = (30, 200, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def tmp_storage(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "storage"


@contextlib.contextmanager
def recorded_statements(engine: sa.Engine) -> Iterator[list[str]]:
    """Every statement `engine` sends inside the block, whitespace folded: for tests that
    bound how many statements (and of what kind) a piece of work takes."""
    statements: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
