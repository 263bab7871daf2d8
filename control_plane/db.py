"""Engine, sessions and migrations. The same Alembic migrations run on SQLite and MySQL.

A transaction can ask for a background service to be woken once it commits
(`wake_after_commit`): the session's `info["wake"]` (set by the platform's sessions) is called
with the service's name. Sessions without it simply wake nothing; the services' timers catch up.
"""

import bisect
import functools
import itertools
import json
import operator
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlmodel import Session, create_engine

MIGRATIONS = Path(__file__).parent / "migrations"
RowT = TypeVar("RowT")
# MySQL/MariaDB error codes that say "try again", not "this can never work": deadlock, lock
# wait timeout, too many connections, server shutting down, connection killed, the
# connection lost or refused (client codes 2003, 2006, 2013, 2055), idle disconnect (4031).
# Classified by code: MariaDB raises permanent errors as OperationalError too (4025).
TRANSIENT_MYSQL_CODES = frozenset({1040, 1053, 1205, 1213, 1927, 2003, 2006, 2013, 2055, 4031})
SQLITE_BUSY, SQLITE_LOCKED = 5, 6


def _ensure_sqlite_folder(url: str) -> None:
    path = url.split("///", 1)[-1] if url.startswith("sqlite") else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str) -> sa.Engine:
    """An engine whose errors never show statement parameters (webhook tokens are among them,
    and errors reach the logs)."""
    _ensure_sqlite_folder(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # READ COMMITTED: finalisers lock the job row, then count its outputs; under InnoDB's
    # default REPEATABLE READ that count would come from a snapshot taken before the lock.
    engine = create_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_recycle=3600,
        pool_size=10,
        max_overflow=20,
        pool_reset_on_return=None,  # `_reset`: only what is still open is rolled back
        hide_parameters=True,
    )
    for name, listener in _POOL_LISTENERS.items():
        sa.event.listen(engine, name, listener)
    return engine


# Every round trip to a MySQL server costs both processes a wake-up. SQLAlchemy's pool makes
# two of its own per checkout: a ping on the way out (`pool_pre_ping`) and a ROLLBACK on the
# way back, even after a COMMIT. Here a connection is pinged only when it was idle long
# enough to have gone stale, and rolled back only when a transaction is still open on it.
PING_AFTER_IDLE_S = 5.0
_RETURNED_AT, _OPEN = "pixelfleet_returned_at", "pixelfleet_transaction_open"


def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Hand out a connection idle for a while only if it still answers a ping; otherwise the
    pool replaces it (`DisconnectionError`). Until it says otherwise, it may carry a
    transaction (whoever takes it may use the driver directly)."""
    returned_at = record.info.get(_RETURNED_AT)
    if returned_at is not None and time.monotonic() - returned_at > PING_AFTER_IDLE_S:
        try:
            dbapi_connection.ping(False)
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"idle connection is gone: {exc}") from exc
    record.info[_OPEN] = True


def _began(connection: sa.Connection) -> None:
    connection.connection.info[_OPEN] = True


def _ended(connection: sa.Connection) -> None:
    connection.connection.info[_OPEN] = False


def _reset(dbapi_connection: Any, record: Any, state: sa.PoolResetState) -> None:
    """A returned connection's transaction rolled back, unless SQLAlchemy committed or rolled
    it back already."""
    if record.info.get(_OPEN, True) and not state.transaction_was_reset:
        dbapi_connection.rollback()
    record.info[_OPEN] = False


def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


_POOL_LISTENERS: dict[str, Callable[..., None]] = {
    "checkout": _checked_out,
    "begin": _began,
    "commit": _ended,
    "rollback": _ended,
    "reset": _reset,
    "checkin": _checked_in,
}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    _ensure_sqlite_folder(url)
    command.upgrade(alembic_config(url), revision)


Wake = Callable[[str], None]


def new_session(engine: sa.Engine, wake: Wake | None = None) -> Session:
    """A session whose commits wake the services its transactions asked for."""
    return Session(engine, expire_on_commit=False, info={"wake": wake} if wake else {})


def wake_after_commit(session: Session, service: str) -> None:
    """Ask for background service `service` to be woken when this transaction commits."""
    session.info.setdefault("wake_after_commit", set()).add(service)


@sa.event.listens_for(Session, "after_commit")
def _wake_services(session: Session) -> None:
    services = session.info.pop("wake_after_commit", ())
    wake = session.info.get("wake")
    if wake is not None:
        for service in sorted(services):
            wake(service)


@sa.event.listens_for(Session, "after_rollback")
def _forget_wakes(session: Session) -> None:
    session.info.pop("wake_after_commit", None)


@contextmanager
def session_scope(engine: sa.Engine, wake: Wake | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with new_session(engine, wake) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def lock_row(session: Session, model: type[RowT], key: Any) -> RowT | None:
    """The row of `model` whose primary key is `key`, read fresh and locked until the
    transaction ends (`SELECT … FOR UPDATE`); None if there is none."""
    rows = lock_rows(session, model, [key])
    return rows[0] if rows else None


def lock_rows(session: Session, model: type[RowT], keys: Sequence[Any]) -> list[RowT]:
    """The rows of `model` whose primary keys are among `keys`, in key order, read fresh
    and locked in that order until the transaction ends, in one statement.

    SQLite ignores FOR UPDATE, so there an UPDATE that changes nothing takes the database's
    write lock first: what is read after it is current and stays so, as a row lock keeps it
    elsewhere."""
    column = sa.inspect(model).primary_key[0]
    if session.get_bind().dialect.name == "sqlite":
        session.execute(sa.update(model).where(column.in_(keys)).values({column.name: column}))
    query = sa.select(model).where(column.in_(keys)).order_by(column).with_for_update()
    return list(session.scalars(query.execution_options(populate_existing=True)))


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is a passing database trouble (a lock, a deadlock, a lost connection),
    after which the same transaction may well succeed."""
    if isinstance(exc, sa.exc.TimeoutError | sa.exc.DisconnectionError):  # pool, connection
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.OperationalError):
        code = getattr(orig, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)
        return "locked" in str(orig) or "busy" in str(orig)
    code = next(iter(getattr(orig, "args", ())), None)  # pymysql: (code, message)
    return isinstance(code, int) and code in TRANSIENT_MYSQL_CODES


IN_LIST_SIZE = 1000  # ids per IN (…) list: bounded statements on every database


def in_batches(ids: Sequence[str], size: int = IN_LIST_SIZE) -> list[list[str]]:
    """`ids` in lists of at most `size`, for `col(...).in_(batch)` queries."""
    return [list(ids[start : start + size]) for start in range(0, len(ids), size)]


# Characters of values one bulk INSERT binds, at most. A character takes at most 4 bytes in
# UTF-8 (2 escaped), so the statement stays within MySQL's smallest default
# max_allowed_packet (4 MB).
INSERT_CHARS = 512 * 1024
_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}  # a positional value


def insert_many(session: Session, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` (each with the same keys) into `table`, a statement per few thousand.

    Per value bound, pymysql spends microseconds of Python escaping it, and SQLAlchemy more on
    each row of an executemany. So a value that every row holds (a job's id, prompt, params,
    timestamps) is bound once per statement and only the others once per row, in a statement
    that goes straight to the driver:

        INSERT INTO t (id, position, job_id) SELECT v.id, v.position, ?
        FROM (SELECT ? AS id, ? AS position UNION ALL VALUES (?, ?), (?, ?) …) AS v

    (a VALUES list cannot name its columns on MariaDB: the first row's SELECT does). MySQL
    takes `UNION ALL SELECT ?, ?` for each further row, which costs MariaDB's server twice
    the time of a VALUES list; SQLite allows only 500 of those. Rows are handled a column at
    a time, each value through its column type's bind processing. A column that is None in
    every row is left out (NULL, as binding None makes), except JSON ones (None binds as
    JSON `null`); JSON values are serialised once per distinct value, into the text `sa.JSON`
    binds."""
    if not rows:
        return
    connection = session.connection()
    shared, varying = _columns(table, rows, connection.dialect)
    chars_upto = list(itertools.accumulate(_row_widths(table, varying, len(rows))))
    most_values = _most_values(connection)
    most_rows = len(rows)
    if most_values is not None:
        most_rows = max((most_values - len(shared)) // len(varying), 1)
    start = 0
    while start < len(rows):
        before = chars_upto[start - 1] if start else 0
        end = min(bisect.bisect_right(chars_upto, before + INSERT_CHARS), start + most_rows)
        end = max(end, start + 1)
        values = itertools.chain.from_iterable(
            zip(*(column[start:end] for column in varying.values()), strict=True)
        )
        _insert_select(connection, table, shared, list(varying), list(values), end - start)
        start = end


def _columns(
    table: sa.Table, rows: Sequence[dict[str, Any]], dialect: sa.Dialect
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The columns of `rows` as the driver takes them: those with the same value in every
    row (JSON ones compared as their text), with that value, and the others, with a value per
    row; never all of the first kind, so that a row of the statement has a column."""
    shared: dict[str, Any] = {}
    varying: dict[str, list[Any]] = {}
    texts: dict[Any, str] = {}
    for column in table.columns:  # what SQLAlchemy's insert fills in: the Python defaults
        if column.name not in rows[0] and (default := _python_default(column)) is not None:
            shared[column.name] = default
    for name in rows[0]:
        values = list(map(operator.itemgetter(name), rows))
        if isinstance(table.columns[name].type, sa.JSON):
            values = _json_texts(values, texts)
        elif values.count(None) == len(values):
            if (default := _python_default(table.columns[name])) is not None:
                shared[name] = default
            continue
        if len(rows) > 1 and values.count(values[0]) == len(values):
            shared[name] = values[0]
        else:
            varying[name] = values
    if not varying:
        name, value = shared.popitem()
        varying[name] = [value] * len(rows)
    for name in (*shared, *varying):
        column = table.columns[name]
        processor = _bind_processor(column, dialect)
        if processor is None or isinstance(column.type, sa.JSON):  # JSON: already its text
            continue
        if name in shared:
            shared[name] = processor(shared[name])
        else:
            varying[name] = list(map(processor, varying[name]))
    return shared, varying


def _python_default(column: sa.Column[Any]) -> Any:
    """The value SQLAlchemy's insert gives `column` when a row has none (e.g. a timestamp's
    `default_factory`), once; None when it has no Python-side default."""
    default = column.default
    if not isinstance(default, sa.ColumnDefault):
        return None
    return default.arg(None) if default.is_callable else default.arg


def _json_texts(values: list[Any], texts: dict[Any, str]) -> list[str]:
    """Each of `values` as JSON text, each distinct one serialised once (into `texts`)."""

    def text_of(value: Any) -> str:
        key = tuple(value) if isinstance(value, list) else id(value)
        if key not in texts:
            texts[key] = json.dumps(value)
        return texts[key]

    if all(map(operator.is_, values, itertools.repeat(values[0]))):  # e.g. a job's params
        return [text_of(values[0])] * len(values)
    return list(map(text_of, values))


def _row_widths(table: sa.Table, varying: dict[str, list[Any]], rows: int) -> list[int]:
    """How many characters each row's values take, at most: a text's length, 32 for a
    number or a date (and for the row's commas)."""
    fixed, lengths = 32, []
    for name, values in varying.items():
        if not isinstance(table.columns[name].type, sa.String | sa.JSON):
            fixed += 32
            continue
        try:
            lengths.append(list(map(len, values)))
        except TypeError:  # a None among them
            lengths.append([len(value) if isinstance(value, str) else 32 for value in values])
    if not lengths:
        return [fixed] * rows
    return [fixed + width for width in map(sum, zip(*lengths, strict=True))]


def _bind_processor(column: sa.Column[Any], dialect: sa.Dialect) -> Callable[[Any], Any] | None:
    """What SQLAlchemy does to a value of `column` before the driver gets it (e.g. SQLite's
    datetimes as text), if anything."""
    processor: Callable[[Any], Any] | None = column.type.dialect_impl(dialect).bind_processor(
        dialect
    )
    return processor


ROWS_PER_UPDATE = 100  # rows one UPDATE of `update_rows` sets


def update_rows(
    connection: sa.Connection,
    table: sa.Table,
    changes: Mapping[Any, Mapping[str, Any]],
    *,
    shared: Mapping[str, Any] | None = None,
    added: Mapping[str, Mapping[Any, Any]] | None = None,
) -> None:
    """Write `changes` (by primary key: each row's columns and their new values; a column a
    row leaves out keeps its value) in one UPDATE per ROWS_PER_UPDATE rows, with `shared`
    values set on every row and `added` amounts (by column, then by row) added to columns.

    Written as SQL text with the columns' own bind processing: building it as an expression
    costs the API more than all the database's work on it."""
    keys = list(changes)
    for start in range(0, len(keys), ROWS_PER_UPDATE):
        batch = {key: changes[key] for key in keys[start : start + ROWS_PER_UPDATE]}
        amounts = {
            name: {key: by_row[key] for key in batch if key in by_row}
            for name, by_row in (added or {}).items()
        }
        sql, params = _update_statement(connection.dialect, table, batch, shared, amounts)
        connection.exec_driver_sql(sql, params)


def write_loaded(session: Any, rows: Sequence[Any]) -> None:
    """What has changed on loaded `rows` of one table, written now by `update_rows` (one
    statement, where the session's flush would send one per row); the rows stay loaded, as
    written."""
    if not rows:
        return
    changes: dict[Any, dict[str, Any]] = {}
    for row in rows:
        state = sa.inspect(row)
        changed = {attr.key: attr.value for attr in state.attrs if attr.history.added}
        for key, value in changed.items():
            sa.orm.attributes.set_committed_value(row, key, value)
        changes[state.identity[0]] = changed
    update_rows(session.connection(), sa.inspect(rows[0]).mapper.local_table, changes)


def _update_statement(
    dialect: sa.Dialect,
    table: sa.Table,
    changes: Mapping[Any, Mapping[str, Any]],
    shared: Mapping[str, Any] | None,
    added: Mapping[str, Mapping[Any, Any]] | None,
) -> tuple[str, tuple[Any, ...]]:
    """`update_rows`' UPDATE and its parameters, in `dialect`'s driver's style. A column
    every row sets to the same value is bound once; the others once per row, `CASE key WHEN
    … THEN …` (binding is most of what the statement costs the API)."""
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    quote = dialect.identifier_preparer.quote
    key = quote(table.primary_key.columns[0].name)
    assignments, params = [], []
    for name in dict.fromkeys(name for values in changes.values() for name in values):
        process = _driver_value(dialect, table.c[name])
        values = {row: process(new[name]) for row, new in changes.items() if name in new}
        value, bound = _each_value(values, quote(name), len(changes), key, mark)
        assignments.append(f"{quote(name)} = {value}")
        params += bound
    for name, amounts in (added or {}).items():
        if amounts:
            value, bound = _each_value(amounts, "0", len(changes), key, mark)
            assignments.append(f"{quote(name)} = {quote(name)} + {value}")
            params += bound
    for name, value in (shared or {}).items():
        assignments.append(f"{quote(name)} = {mark}")
        params.append(_driver_value(dialect, table.c[name])(value))
    params += list(changes)
    where = f"{key} IN ({', '.join([mark] * len(changes))})"
    return f"UPDATE {quote(table.name)} SET {', '.join(assignments)} WHERE {where}", tuple(params)


def _each_value(
    values: Mapping[Any, Any], otherwise: str, rows: int, key: str, mark: str
) -> tuple[str, list[Any]]:
    """An SQL value giving each row in `values` (by `key`) its own, and `otherwise` the rest
    of the statement's `rows`, with its parameters: one when they all share it."""
    first = next(iter(values.values()))
    if len(values) == rows and all(value == first for value in values.values()):
        return mark, [first]
    whens = f"WHEN {mark} THEN {mark} " * len(values)
    return f"CASE {key} {whens}ELSE {otherwise} END", [
        bound for pair in values.items() for bound in pair
    ]


@functools.cache
def _driver_value(dialect: sa.Dialect, column: sa.Column[Any]) -> Callable[[Any], Any]:
    """How `column` hands a value to `dialect`'s driver (JSON as text, SQLite's datetimes as
    text, a str enum as its value)."""
    return _bind_processor(column, dialect) or _as_is


def _as_is(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else value


def _most_values(connection: sa.Connection) -> int | None:
    """How many values one statement may bind: SQLite's limit (999, or 32,766 since 3.32);
    None on MySQL, whose driver writes them into the statement's text."""
    driver = connection.connection.dbapi_connection
    if isinstance(driver, sqlite3.Connection):
        return driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return None


def _insert_select(
    connection: sa.Connection,
    table: sa.Table,
    shared: dict[str, Any],
    varying: Sequence[str],
    values: Sequence[Any],
    rows: int,
) -> None:
    """`INSERT … SELECT` of `rows` rows: `shared` bound once, `values` the `varying` columns'
    values row after row."""
    dialect = connection.dialect
    quote = dialect.identifier_preparer.quote
    mark = _PLACEHOLDER[dialect.paramstyle]
    row = ", ".join([mark] * len(varying))
    if dialect.name == "sqlite" or getattr(dialect, "is_mariadb", False):
        rest = f" UNION ALL VALUES {', '.join([f'({row})'] * (rows - 1))}" if rows > 1 else ""
    else:  # MySQL's VALUES wants ROW(…)
        rest = f" UNION ALL SELECT {row}" * (rows - 1)
    columns = ", ".join(quote(name) for name in (*varying, *shared))
    selected = ", ".join([*(f"v.{quote(name)}" for name in varying), *[mark] * len(shared)])
    first = ", ".join(f"{mark} AS {quote(name)}" for name in varying)
    sql = (
        f"INSERT INTO {dialect.identifier_preparer.format_table(table)} ({columns}) "
        f"SELECT {selected} FROM (SELECT {first}{rest}) AS v"
    )
    connection.exec_driver_sql(sql, (*shared.values(), *values))
