"""`pixelfleet api --workers N`: several API processes on one port and one MariaDB database,
each with its own sender and user-webhook deliverer (and one relay process beside them), send
every dispatch once and finalise a job exactly once, whichever process each webhook (sent
three times) reaches; SQLite is refused with a plain message."""

import base64
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi import FastAPI, Request
from sqlmodel import Session, col, func, select

from control_plane.db import make_engine
from control_plane.models import (
    AnalyticsEvent,
    Dispatch,
    DispatchStatus,
    Event,
    Job,
    Output,
    WebhookDelivery,
)
from shared import layout
from shared.storage import LocalStorage
from tests.conftest import png_bytes
from tests.fakes.cli import ROOT, answers
from tests.fakes.receiver import run_receiver
from tests.fakes.servers import free_port, run_server

pytestmark = pytest.mark.mysql
WORKERS = 3
IMAGES = 24  # 12 dispatches of 2
SENDS_OF_EACH_WEBHOOK = 3
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@contextmanager
def stub_runpod() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """RunPod's `/run`, taking every job and running none; yields its URL and the bodies."""
    bodies: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/v2/{endpoint}/run")
    async def run(endpoint: str, request: Request) -> dict[str, str]:
        bodies.append(await request.json())
        return {"id": f"rp-{len(bodies)}", "status": "IN_QUEUE"}

    with run_server(app) as url:
        yield url, bodies


@contextmanager
def api_processes(
    tmp_path: Path, env: dict[str, str], port: int, workers: int = WORKERS
) -> Iterator[tuple[str, int]]:
    """`pixelfleet api --workers N` until the block ends; yields its URL and pid."""
    log = tmp_path / "api.log"
    command = ["api", "--port", str(port), "--workers", str(workers)]
    with log.open("wb") as output:
        child = subprocess.Popen(
            [sys.executable, "-m", "control_plane.cli", *command],
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not answers(f"{url}/healthz"):
            assert child.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        # the supervisor and its workers (each answers /healthz only once all are up)
        if workers > 1:
            assert len(psutil.Process(child.pid).children()) >= workers, log.read_text()
        yield url, child.pid
    finally:
        child.terminate()
        child.wait(timeout=30)


def api_env(
    database_url: str, tmp_path: Path, runpod_url: str, port: int, reconcile_interval_s: float
) -> dict[str, str]:
    """The API's environment: dispatches of 2 images, no in-flight cap, the poller out of
    the way, the services' timers `reconcile_interval_s` apart."""
    return {
        "PIXELFLEET_DATA_DIR": str(tmp_path),
        "PIXELFLEET_DATABASE_URL": database_url,
        "PIXELFLEET_STORAGE_URL": str(tmp_path / "storage"),
        "PIXELFLEET_RUNPOD_BASE_URL": runpod_url,
        "PIXELFLEET_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PIXELFLEET_DISPATCH_CHUNK_SIZE": "2",
        "PIXELFLEET_MAX_INFLIGHT_DISPATCHES": "0",
        "PIXELFLEET_WEBHOOK_GRACE_S": "3600",
        "PIXELFLEET_RECONCILE_INTERVAL_S": str(reconcile_interval_s),
        "PIXELFLEET_WEBHOOK_SECRET": SECRET,
        "PIXELFLEET_LOG_LEVEL": "WARNING",
    }


def submit(url: str, receiver_url: str) -> str:
    with httpx.Client(base_url=url, timeout=30) as http:
        group_id = http.post("/api/groups", json={"name": "workers"}).json()["id"]
        files = [("files", (f"{i}.png", png_bytes(40, 40, (i * 60, 0, 0)))) for i in range(4)]
        uploaded = http.post("/api/uploads", data={"group_id": group_id}, files=files).json()
        images = [image["id"] for image in uploaded["images"]] * (IMAGES // 4)
        answer = http.post(
            "/api/jobs/submit",
            json={
                "group_id": group_id,
                "mode": "automatic",
                "prompt": "p",
                "images": images,
                "webhook": {"url": f"{receiver_url}/hook"},
            },
        )
        assert answer.status_code == 201, answer.text
        job_id: str = answer.json()["jobs"][0]["id"]
        return job_id


def wait_until(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.2)


def completed_webhooks(engine: Any, storage: LocalStorage, job_id: str) -> list[Any]:
    """Each dispatch's webhook (its URL's query and a COMPLETED body, every image succeeded)."""
    with Session(engine) as session:
        dispatches = session.exec(select(Dispatch).where(Dispatch.job_id == job_id)).all()
        outputs = session.exec(select(Output).where(Output.job_id == job_id)).all()
    webhooks = []
    for dispatch in dispatches:
        results = []
        for output in (o for o in outputs if o.dispatch_id == dispatch.id):
            key = layout.output_key(
                layout.output_stem(output.group_id, output.job_id, output.id), "image/png"
            )
            stored = storage.put_bytes(key, png_bytes(), content_type="image/png")
            results.append(
                {
                    "output_id": output.id,
                    "status": "succeeded",
                    "provider": "offline",
                    "model": "m",
                    "output_uri": storage.uri(key),
                    "content_type": "image/png",
                    "width": 64,
                    "height": 48,
                    "bytes": stored.size,
                    "sha256": stored.sha256,
                    "cost_usd": 0.01,
                }
            )
        body = {
            "id": dispatch.runpod_job_id,
            "status": "COMPLETED",
            "output": {"version": 2, "dispatch_id": dispatch.id, "results": results},
        }
        webhooks.append(({"dispatch": dispatch.id, "token": dispatch.webhook_token}, body))
    return webhooks


def post_webhook(url: str, params: dict[str, str], body: dict[str, Any]) -> None:
    """One webhook on a connection of its own (so the kernel hands it to any process), sent
    again while it is answered 503, as RunPod does."""
    for _ in range(20):
        answer = httpx.post(f"{url}/api/webhook/runpod", params=params, json=body, timeout=30)
        if answer.status_code != 503:
            assert answer.status_code == 200, answer.text
            return
    raise AssertionError(f"webhook of {params['dispatch']} never applied")


@pytest.mark.parametrize("database_url", ["mysql"], indirect=True)
def test_several_api_processes_finalise_one_job_exactly_once(
    database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(database_url)
    storage = LocalStorage(tmp_path / "storage")
    port = free_port()
    with stub_runpod() as (runpod_url, sent), run_receiver() as receiver:
        env = api_env(database_url, tmp_path, runpod_url, port, reconcile_interval_s=0.5)
        with api_processes(tmp_path, env, port) as (url, _):
            job_id = submit(url, receiver.url)
            dispatches = IMAGES // 2
            wait_until(lambda: _submitted(engine, job_id) == dispatches, "all sent")
            webhooks = completed_webhooks(engine, storage, job_id)
            with ThreadPoolExecutor(12) as pool:
                posts = [
                    pool.submit(post_webhook, url, params, body)
                    for params, body in webhooks * SENDS_OF_EACH_WEBHOOK
                ]
                for done in posts:
                    done.result()
            wait_until(lambda: _analytics(engine, job_id) >= 2 * IMAGES + dispatches + 2, "relayed")
            receiver.wait_for("/hook", 1)
            time.sleep(1.5)  # three more relay and delivery passes: anything twice would show

        sent_dispatches = [body["input"]["dispatch_id"] for body in sent]
        assert sorted(sent_dispatches) == sorted(set(sent_dispatches))  # each sent once
        assert len(sent_dispatches) == dispatches
        assert len(receiver.at("/hook")) == 1
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.succeeded, job.failed, job.blocked) == ("completed", IMAGES, 0, 0)
        assert job.cost_usd == pytest.approx(IMAGES * 0.01)
        events = session.exec(select(Event.kind, Event.output_id).where(Event.job_id == job_id))
        kinds = [kind for kind, _ in events]
        assert kinds.count("output_succeeded") == IMAGES
        assert kinds.count("dispatch_completed") == dispatches
        assert kinds.count("job_finished") == 1
        succeeded = session.exec(
            select(AnalyticsEvent.output_id).where(
                AnalyticsEvent.job_id == job_id, AnalyticsEvent.type == "generation_completed"
            )
        ).all()
        assert len(succeeded) == len(set(succeeded)) == IMAGES
        deliveries = session.exec(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
        ).one()
        assert deliveries == 1
    engine.dispose()


def _submitted(engine: Any, job_id: str) -> int:
    with Session(engine) as session:
        count: int = session.exec(
            select(func.count())
            .select_from(Dispatch)
            .where(Dispatch.job_id == job_id, col(Dispatch.status) == DispatchStatus.SUBMITTED)
        ).one()
        return count


def _analytics(engine: Any, job_id: str) -> int:
    with Session(engine) as session:
        count: int = session.exec(
            select(func.count()).select_from(AnalyticsEvent).where(AnalyticsEvent.job_id == job_id)
        ).one()
        return count


def test_several_api_processes_on_sqlite_are_refused_with_a_message(tmp_path: Path) -> None:
    env = {
        "PIXELFLEET_DATA_DIR": str(tmp_path),
        "PIXELFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'pixelfleet.db'}",
    }
    assert "--workers needs MySQL/MariaDB" in refusal(["--workers", "2"], env)


def refusal(options: list[str], env: dict[str, str]) -> str:
    """What `pixelfleet api --no-migrate OPTIONS` says as it refuses to start (exit code 2,
    no traceback)."""
    done = subprocess.run(
        [sys.executable, "-m", "control_plane.cli", "api", "--no-migrate", *options],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr
