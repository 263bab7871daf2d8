"""A request that finds the database busy (a lock held past MariaDB's lock wait, a deadlock,
a lost connection) is answered 503 with Retry-After and changes nothing; sent again once
the database is free, it succeeds."""

import time
from urllib.parse import quote

import httpx
import pytest

from client import Client
from control_plane.db import make_engine
from control_plane.settings import Settings
from tests.fakes.api import Api, submit_one_dispatch

LOCK_WAIT_S = 1


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The API's connections wait 1 s for a row lock (MariaDB's default is 50 s)."""
    if settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite waits up to 30 s for its write lock; MariaDB's wait is set to 1 s")
    wait = quote(f"SET innodb_lock_wait_timeout = {LOCK_WAIT_S}")
    return settings.model_copy(
        update={"database_url": f"{settings.database_url}?init_command={wait}"}
    )


def test_a_cancel_that_waits_too_long_for_a_lock_is_answered_503_and_changes_nothing(
    api: Api, database_url: str
) -> None:
    api.runpod.post(url__regex=r".*/cancel/.*").mock(return_value=httpx.Response(200, json={}))
    job_id, dispatch = submit_one_dispatch(api)
    engine = make_engine(database_url)
    try:
        with engine.connect() as other:  # another writer holds the job's dispatch
            other.exec_driver_sql(
                "SELECT id FROM dispatches WHERE id = %s FOR UPDATE", (dispatch.id,)
            )
            busy = api.client.post(f"/api/jobs/{job_id}/cancel")
            other.rollback()
    finally:
        engine.dispose()
    assert busy.status_code == 503, busy.text
    assert busy.headers["retry-after"] == "1"
    assert busy.json()["detail"].endswith("nothing was changed, try again")
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "processing"

    again = api.client.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 200, again.text
    assert api.client.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled"


def test_the_client_asks_again_when_the_database_was_busy(api: Api, database_url: str) -> None:
    """A cancel is never sent twice after a lost answer, but a 503 with Retry-After says
    nothing was done: the client (`client/api.py`) waits as asked and sends it again."""
    api.runpod.post(url__regex=r".*/cancel/.*").mock(return_value=httpx.Response(200, json={}))
    job_id, dispatch = submit_one_dispatch(api)
    engine = make_engine(database_url)
    other = engine.connect()
    other.exec_driver_sql("SELECT id FROM dispatches WHERE id = %s FOR UPDATE", (dispatch.id,))
    started = time.monotonic()
    try:
        statuses: list[int] = []

        def through(request: httpx.Request) -> httpx.Response:
            answer = _through_the_app(api, request)
            statuses.append(answer.status_code)
            if len(statuses) == 1:
                other.rollback()  # the lock held until the first answer, however slow
            return answer

        transport = httpx.MockTransport(through)
        with Client(str(api.client.base_url), transport=transport) as client:
            cancelled = client.cancel(job_id)
    finally:
        other.close()
        engine.dispose()
    assert cancelled.status == "cancelled"
    assert statuses == [503, 200]  # refused while the lock was held, then asked again
    assert time.monotonic() - started >= 2 * LOCK_WAIT_S  # a lock wait, then Retry-After


def _through_the_app(api: Api, request: httpx.Request) -> httpx.Response:
    """`request` answered by the app of `api` (its test client's transport streams answers
    in a way httpx's plain client does not take)."""
    path = request.url.raw_path.decode()
    answer = api.client.request(
        request.method, path, content=request.read(), headers=dict(request.headers)
    )
    return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)
