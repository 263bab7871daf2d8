"""`pixelfleet api` on MariaDB relays events in a process of its own (`pixelfleet relay`,
`control_plane/relaying.py`): events reach their consumers, what its commits wake reaches
the API's services, it is started again should it die and stops with the API. On SQLite the
relay stays in the API's process, and asking for a process of its own is refused."""

import contextlib
import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest
from sqlmodel import Session, select

from control_plane.db import make_engine
from control_plane.models import Job
from shared.storage import LocalStorage
from tests.e2e.test_api_workers import (
    _analytics,
    _submitted,
    api_env,
    api_processes,
    completed_webhooks,
    post_webhook,
    refusal,
    stub_runpod,
    submit,
    wait_until,
)
from tests.fakes.receiver import run_receiver
from tests.fakes.servers import free_port

IMAGES, DISPATCHES = 24, 12


def relay_processes(api_pid: int) -> list[psutil.Process]:
    """The API's live children running `pixelfleet relay`."""
    found = []
    for child in psutil.Process(api_pid).children():
        with contextlib.suppress(psutil.Error):  # gone, or a zombie, meanwhile
            if child.status() != psutil.STATUS_ZOMBIE and "relay" in child.cmdline():
                found.append(child)
    return found


def _alive(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.status() != psutil.STATUS_ZOMBIE
    return False


def finish_job(url: str, receiver_url: str, engine: object, storage: LocalStorage) -> str:
    """A job of IMAGES images submitted and completed by RunPod's webhooks; its id."""
    job_id = submit(url, receiver_url)
    wait_until(lambda: _submitted(engine, job_id) == DISPATCHES, "all sent")
    for params, body in completed_webhooks(engine, storage, job_id):
        post_webhook(url, params, body)
    return job_id


@pytest.mark.parametrize("database_url", ["mysql"], indirect=True)
def test_events_are_relayed_by_a_process_of_their_own(database_url: str, tmp_path: Path) -> None:
    """Timers are an hour apart, so only wakes move things: the relay process's own polls
    relay the job's events, and the user's webhook goes out because the wake its commit
    asked for reached the API (the relay process runs no deliverer). Killed, it is back
    within seconds and relays the next job; stopping the API stops it."""
    engine = make_engine(database_url)
    storage = LocalStorage(tmp_path / "storage")
    port = free_port()
    with stub_runpod() as (runpod_url, _), run_receiver() as receiver:
        env = api_env(database_url, tmp_path, runpod_url, port, reconcile_interval_s=3600)
        with api_processes(tmp_path, env, port, workers=1) as (url, api_pid):
            [relay] = relay_processes(api_pid)
            first = finish_job(url, receiver.url, engine, storage)
            wait_until(lambda: _analytics(engine, first) >= 2 * IMAGES + DISPATCHES + 2, "relayed")
            receiver.wait_for("/hook", 1, timeout=20)

            os.kill(relay.pid, signal.SIGKILL)
            wait_until(
                lambda: [p.pid for p in relay_processes(api_pid)] not in ([], [relay.pid]),
                "a new relay process",
                timeout=20,
            )
            [relay] = relay_processes(api_pid)
            second = finish_job(url, receiver.url, engine, storage)
            wait_until(lambda: _analytics(engine, second) >= 2 * IMAGES + DISPATCHES + 2, "relayed")
            receiver.wait_for("/hook", 2, timeout=20)
        wait_until(lambda: not _alive(relay), "the relay process stopped", timeout=20)
    with Session(engine) as session:
        jobs = session.exec(select(Job.status).where(Job.id.in_([first, second]))).all()  # type: ignore[attr-defined]
    assert jobs == ["completed", "completed"]
    engine.dispose()


def test_on_sqlite_the_relay_stays_in_the_api_process(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "PIXELFLEET_DATA_DIR": str(tmp_path),
        "PIXELFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'pixelfleet.db'}",
        "PIXELFLEET_LOG_LEVEL": "WARNING",
    }
    with api_processes(tmp_path, env, port, workers=1) as (url, api_pid):
        assert relay_processes(api_pid) == []
        assert (
            httpx.post(f"{url}/api/internal/wake", params={"service": "sender"}).status_code == 404
        )
    refused = refusal([], {**env, "PIXELFLEET_RELAY_PROCESS": "true"})
    assert "PIXELFLEET_RELAY_PROCESS needs MySQL/MariaDB" in refused
