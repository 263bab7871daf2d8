"""The schema (control_plane/migrations/) on SQLite and MariaDB: ids compare exactly, the
migrations make what the models describe, the engine (control_plane/db.py) keeps
statement parameters out of its errors, and bulk inserts (`db.insert_many`) write what the
ORM would."""

import io
import logging
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import Session, SQLModel, col, select

import control_plane.models  # noqa: F401 - registers the tables
from control_plane import db
from control_plane.db import insert_many, make_engine, new_session, session_scope
from control_plane.models import EventCursor, Group, Job, Output, OutputKind, utcnow
from shared.logs import configure_logging
from tests.conftest import png_bytes, recorded_statements
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


def test_a_connection_back_in_the_pool_carries_no_transaction(database_url: str) -> None:
    """What a session wrote without committing, and what the driver was used for directly,
    is rolled back when its connection goes back to the pool: the next session on that
    connection sees none of it."""
    engine = make_engine(database_url)
    try:
        with new_session(engine) as session:
            session.add(Group(name="never committed"))
            session.flush()
            before = _connection_id(session)
        raw = engine.raw_connection()
        raw.cursor().execute(
            "INSERT INTO groups (id, name, created_at, updated_at)"
            " VALUES ('grp_raw', 'raw', '2026-01-01', '2026-01-01')"
        )
        raw.close()
        with new_session(engine) as session:
            names = session.exec(select(Group.name)).all()
            assert _connection_id(session) == before  # the same connection, reused
        assert names == []
    finally:
        engine.dispose()


def test_a_committed_connection_goes_back_without_a_rollback(database_url: str) -> None:
    """A MySQL round trip costs both processes a wake-up: a session that committed returns
    its connection without the pool's ROLLBACK (SQLAlchemy's default sends one every
    time)."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite's rollback is a call in this process, not a round trip")
    engine = make_engine(database_url)
    try:
        rollbacks = []
        for name in ("a", "b", "c"):
            with session_scope(engine) as session:
                session.add(Group(name=name))
                rollbacks.append(_session_status(session, "Com_rollback"))
        assert rollbacks[0] == rollbacks[1] == rollbacks[2]
    finally:
        engine.dispose()


def test_an_idle_connection_that_died_is_replaced(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection idle for `PING_AFTER_IDLE_S` is pinged before it is handed out;
    one the server has closed meanwhile is replaced, unseen by the session."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has no server to lose the connection")
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)
    engine, killer = make_engine(database_url), make_engine(database_url)
    try:
        with new_session(engine) as session:
            killed = _connection_id(session)
        with killer.connect() as connection:
            connection.execute(sa.text(f"KILL CONNECTION {killed}"))
        with new_session(engine) as session:
            assert session.exec(select(Group.name)).all() == []
            assert _connection_id(session) != killed
    finally:
        engine.dispose()
        killer.dispose()


def test_write_loaded_writes_what_changed_on_each_row_in_one_statement(
    engine: sa.Engine,
) -> None:
    """Each loaded row's changes, its own or shared, in one UPDATE; what a row did not
    change is kept; the rows stay loaded as written, so the flush sends nothing more."""
    stamp = datetime(2026, 5, 6, 7, 8, 9)
    with session_scope(engine) as session:
        groups = [Group(name=f"g{n}", user_id="usr_a") for n in range(3)]
        session.add_all(groups)
    ids = [group.id for group in groups]
    with session_scope(engine) as session, recorded_statements(engine) as statements:
        loaded = [session.get(Group, group_id) for group_id in ids]
        for group, name in zip(loaded, ["it's", "g1", "%s ? b"], strict=True):
            assert group is not None
            group.name, group.updated_at = name, stamp
        loaded[2].user_id = None  # type: ignore[union-attr]
        db.write_loaded(session, loaded)
        session.flush()
        assert [group.name for group in loaded] == ["it's", "g1", "%s ? b"]  # type: ignore[union-attr]
    assert [sql.split(" SET")[0] for sql in statements if sql.startswith("UPDATE")] == [
        "UPDATE groups"
    ]
    with new_session(engine) as session:
        rows = {g.id: (g.name, g.user_id, g.updated_at) for g in session.exec(select(Group))}
    assert [rows[group_id] for group_id in ids] == [
        ("it's", "usr_a", stamp),
        ("g1", "usr_a", stamp),
        ("%s ? b", None, stamp),
    ]


def test_update_rows_adds_to_each_row_only_its_own_amount_in_every_statement(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four rows in statements of two: the amounts added to the second statement's rows
    reach none of the first's."""
    monkeypatch.setattr(db, "ROWS_PER_UPDATE", 2)
    names = [f"consumer-{n}" for n in range(4)]
    with session_scope(engine) as session:
        session.add_all([EventCursor(consumer=name) for name in names])
    with session_scope(engine) as session:
        db.update_rows(
            session.connection(),
            EventCursor.__table__,  # type: ignore[attr-defined]
            {name: {"position": 7} for name in names},
            added={"failures": {names[2]: 1, names[3]: 1}},
        )
    with new_session(engine) as session:
        rows = session.exec(
            select(EventCursor.consumer, EventCursor.position, EventCursor.failures)
        )
        assert sorted(rows) == [
            (names[0], 7, 0),
            (names[1], 7, 0),
            (names[2], 7, 1),
            (names[3], 7, 1),
        ]


def _connection_id(session: Session) -> Any:
    """The server's id of the session's connection (SQLite: the driver's connection)."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        return id(connection.connection.dbapi_connection)
    return connection.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one()


def _session_status(session: Session, name: str) -> int:
    query = sa.text("SHOW SESSION STATUS LIKE :name")
    return int(session.connection().execute(query, {"name": name}).one()[1])


def output_rows(job_id: str, group_id: str, count: int) -> list[dict[str, Any]]:
    """Every column of `count` outputs: values all rows share (a params object, a timestamp
    on a whole second) and values that vary, among them quotes, backslashes, placeholders
    and None in some rows only."""
    params = {"model": "m", "negative_prompt": None, "weights": [1, 2.5, True]}
    shared_time = datetime(2026, 1, 2, 3, 4, 5)  # microsecond 0: SQLite still writes .000000
    return [
        {column.name: None for column in Output.__table__.columns}
        | {
            "id": f"out_{job_id[-6:]}_{position:04d}",
            "job_id": job_id,
            "group_id": group_id,
            "dispatch_id": f"dsp_{position // 3}" if position % 4 else None,
            "position": position,
            "status": "pending",
            "prompt": ["it's", "back\\slash", "100% %s %(x)s ?", "ünï ✓", ""][position % 5],
            "reference_ids": [f"img_{position % 2}"] if position % 3 else [],
            "kind": "image",
            "text": "x" * 70_000 if position == 1 else None,
            "tags": ["a", "b"] if position % 2 else None,
            "seed": 2**31 - 1 - position,
            "params": params,
            "model": "m",
            "cost_usd": 0.25 if position == 2 else None,
            "attempts": 0,
            "created_at": shared_time,
            "updated_at": datetime(2026, 1, 2, 3, 4, 5, position),
        }
        for position in range(count)
    ]


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def new_job(engine: sa.Engine) -> tuple[str, str]:
    with new_session(engine) as session:
        group = Group(name="g")
        job = Job(group_id=group.id, batch_id="bat_1", mode="automatic", prompt="p", config={})
        session.add(group)
        session.flush()
        session.add(job)
        session.commit()
        return job.id, group.id


def stored(engine: sa.Engine, job_id: str) -> list[tuple[Any, ...]]:
    """The job's outputs as the database holds them (text as stored: datetimes on SQLite,
    JSON everywhere), but for their ids, job and group."""
    quote = engine.dialect.identifier_preparer.quote
    names = [
        quote(column.name)
        for column in Output.__table__.columns
        if column.name not in ("id", "job_id", "group_id")
    ]
    with engine.connect() as connection:
        result = connection.execute(
            sa.text(
                f"SELECT {', '.join(names)} FROM outputs WHERE job_id = :job ORDER BY position"
            ),
            {"job": job_id},
        )
        return [tuple(row) for row in result]


def test_insert_many_stores_exactly_what_the_orm_stores(engine: sa.Engine) -> None:
    """Shared values bound once, the others per row: every column of every row as the ORM
    writes it, NULLs, JSON nulls, datetimes' text and escapes included."""
    by_orm, by_insert = new_job(engine), new_job(engine)
    with new_session(engine) as session:
        session.add_all(Output(**row) for row in output_rows(*by_orm, 12))
        session.commit()
    with new_session(engine) as session:
        insert_many(session, Output.__table__, output_rows(*by_insert, 12))
        session.commit()
    orm_rows = stored(engine, by_orm[0])
    assert len(orm_rows) == 12
    assert stored(engine, by_insert[0]) == orm_rows


def test_insert_many_gives_rows_that_leave_a_column_out_its_python_default(
    engine: sa.Engine,
) -> None:
    """As SQLAlchemy's insert does: a column that rows leave out, or hold None in, takes its
    `default_factory` (outputs' timestamps, `kind`), not NULL."""
    job_id, group_id = new_job(engine)
    rows = output_rows(job_id, group_id, 3)
    for row in rows:
        del row["created_at"], row["kind"]
        row["updated_at"] = None
    before = utcnow()
    with new_session(engine) as session:
        insert_many(session, Output.__table__, rows)
        session.commit()
    with new_session(engine) as session:
        written = session.exec(select(Output).where(col(Output.job_id) == job_id)).all()
    assert len(written) == 3
    for output in written:
        assert output.kind == OutputKind.IMAGE
        assert output.created_at >= before.replace(microsecond=0)
        assert output.updated_at >= before.replace(microsecond=0)


def test_insert_many_writes_a_single_row_and_identical_rows(engine: sa.Engine) -> None:
    job_id, group_id = new_job(engine)
    [one] = output_rows(job_id, group_id, 1)
    same = [one | {"id": "out_twin"}, one | {"id": "out_twin_2"}]
    with new_session(engine) as session:
        insert_many(session, Output.__table__, [one])
        insert_many(session, Output.__table__, [])
        session.commit()
        with pytest.raises(sa.exc.IntegrityError):  # two rows still, with one key
            insert_many(session, Output.__table__, [same[0], same[0]])
        session.rollback()
        insert_many(session, Output.__table__, same)
        session.commit()
    assert len(stored(engine, job_id)) == 3


def test_insert_many_binds_shared_values_once_in_bounded_statements(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each statement binds what every row shares once and five values per row (those that
    vary); statements stop at `INSERT_CHARS` characters of values, and on SQLite at its
    limit of bound values (999 before 3.32)."""
    job_id, group_id = new_job(engine)
    rows = [
        row | {"dispatch_id": f"dsp_{index}", "reference_ids": [f"img_{index}"], "text": None}
        for index, row in enumerate(output_rows(job_id, group_id, 600))
    ]
    for row in rows:
        row.update(prompt="p", tags=None, cost_usd=None, updated_at=row["created_at"])
    monkeypatch.setattr(db, "INSERT_CHARS", 10_000)
    statements: list[tuple[int, int]] = []  # (values bound, characters of text bound)

    def note(_conn: object, _cursor: object, statement: str, parameters: Any, *_: object) -> None:
        if statement.startswith("INSERT INTO"):
            text = sum(len(value) for value in parameters if isinstance(value, str))
            statements.append((len(parameters), text))

    sa.event.listen(engine, "before_cursor_execute", note)
    with new_session(engine) as session:
        driver = session.connection().connection.dbapi_connection
        sqlite = isinstance(driver, sqlite3.Connection)
        if sqlite:
            driver.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        insert_many(session, Output.__table__, rows)
        session.commit()
    sa.event.remove(engine, "before_cursor_execute", note)
    # Shared: job, group, status, prompt, kind, tags, params, usage, model, attempts and the
    # two timestamps; varying: id, dispatch, position, seed, references.
    statement_rows = [(values - 12) / 5 for values, _ in statements]
    assert sum(statement_rows) == 600 and all(n == int(n) for n in statement_rows)
    assert len(statements) > 1
    if sqlite:
        assert max(values for values, _ in statements) <= 999
    else:  # the shared values' text (about 150 characters) besides the rows'
        assert max(text for _, text in statements) <= 10_000 + 200
    assert [row[1] for row in stored(engine, job_id)] == list(range(600))


def test_insert_many_on_mysql_selects_each_row(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MySQL (not MariaDB) is sent a `UNION ALL SELECT` per row instead of a VALUES list:
    the same rows, here on MariaDB."""
    if engine.dialect.name != "mysql":
        pytest.skip("MySQL's statement; SQLite takes a VALUES list")
    by_orm, by_insert = new_job(engine), new_job(engine)
    with new_session(engine) as session:
        session.add_all(Output(**row) for row in output_rows(*by_orm, 12))
        session.commit()
    sent: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        sent.append(statement)

    sa.event.listen(engine, "before_cursor_execute", note)
    with new_session(engine) as session:
        monkeypatch.setattr(engine.dialect, "is_mariadb", False)
        insert_many(session, Output.__table__, output_rows(*by_insert, 12))
        monkeypatch.undo()
        session.commit()
    sa.event.remove(engine, "before_cursor_execute", note)
    [insert] = [statement for statement in sent if statement.startswith("INSERT")]
    assert insert.count("UNION ALL SELECT") == 11 and "VALUES" not in insert
    assert stored(engine, by_insert[0]) == stored(engine, by_orm[0])
