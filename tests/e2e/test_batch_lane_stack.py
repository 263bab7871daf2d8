"""The batch lane end to end on the embedded default: control plane, local RunPod endpoint
and worker on real sockets, the worker's offline batch provider standing in for Google's
Batch API (its batches pending, then running, then succeeded, on their own clock)."""

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, col, create_engine, select

from control_plane.app import create_app
from control_plane.models import Dispatch
from control_plane.settings import Settings
from tests.client.test_cli import photos
from tests.fakes.cli import pixelfleet
from tests.fakes.servers import RestartableServer
from tests.fakes.stack import Stack, run_stack
from worker.local_endpoint import build_endpoint_app_from_settings
from worker.settings import WorkerSettings

FAST = {"batch_poll_s": 0.3}


def submit(stack: Stack, n: int, **config: Any) -> str:
    group_id = stack.group()
    images = stack.upload(group_id, n)
    response = stack.http.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "a quiet harbour",
            "images": images,
            "config": {"model": "gemini-2.5-flash-image", **config},
        },
    )
    assert response.status_code == 201, response.text
    job_id: str = response.json()["jobs"][0]["id"]
    return job_id


def dispatches(settings: Settings, job_id: str) -> list[Dispatch]:
    engine = create_engine(settings.database_url)
    try:
        with Session(engine) as session:
            return list(session.exec(select(Dispatch).where(col(Dispatch.job_id) == job_id)))
    finally:
        engine.dispose()


def batches_made(worker_dir: Path) -> list[dict[str, Any]]:
    """The offline batch provider's records: one per batch it created."""
    records = sorted((worker_dir / "offline-batches").glob("*.json"))
    return [json.loads(path.read_text()) for path in records]


def spend_by_lane(stack: Stack) -> tuple[dict[str, float], dict[str, float]]:
    """The recorded spend by lane: the usage report's and /metrics' (read from the analytics
    log, which its consumer writes a moment after the images end)."""
    usage = stack.http.get("/api/usage", params={"group_by": "lane"})
    assert usage.status_code == 200, usage.text
    reported = {b["key"]: round(b["cost_usd"], 6) for b in usage.json()["buckets"]}
    metrics = stack.http.get("/metrics")
    assert metrics.status_code == 200, metrics.text
    scraped = {
        sample.labels["lane"]: round(sample.value, 6)
        for family in text_string_to_metric_families(metrics.text)
        if family.name == "pixelfleet_spend_by_lane_usd"
        for sample in family.samples
    }
    return reported, scraped


def wait_until(check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return found


def test_a_20_image_batch_job_ends_succeeded_at_half_the_online_price(
    settings: Settings, tmp_path: Path
) -> None:
    worker = {"data_dir": tmp_path / "worker"}
    worker |= {"offline_batch_pending_s": 0.5, "offline_batch_running_s": 0.5}
    with contextmanager(run_stack)(settings.model_copy(update=FAST), **worker) as stack:
        online = submit(stack, 20)
        batch = submit(stack, 20, lane="batch")
        seen = wait_until(
            lambda: (job := stack.http.get(f"/api/jobs/{batch}").json())["batch"] and job
        )
        assert seen["lane"] == "batch"
        assert seen["batch"]["state"] in ("submitting", "pending at Google", "running")
        [online_job, batch_job] = stack.wait_for([online, batch])
        assert batch_job["status"] == "completed"
        assert batch_job["progress"]["succeeded"] == 20
        assert batch_job["estimate_usd"] == round(online_job["estimate_usd"] / 2, 6)
        assert batch_job["estimate_usd"] == round(20 * 0.0195, 6)
        assert batch_job["fallback"] is None and batch_job["batch"] is None
        assert {image["status"] for image in batch_job["images"]} == {"succeeded"}
        assert online_job["cost_usd"] == round(20 * 0.039, 6)  # what Gemini would bill
        assert batch_job["cost_usd"] == round(online_job["cost_usd"] / 2, 6)
        assert {image["cost_usd"] for image in batch_job["images"]} == {0.0195}
        spent = {"online": 0.78, "batch": 0.39}
        wait_until(lambda: spend_by_lane(stack) == (spent, spent), timeout=10)
        sent = wait_until(  # the collect's progress posts may end the images first
            lambda: (
                (found := dispatches(stack.settings, batch))
                and {d.status for d in found} == {"completed"}
                and found
            )
        )
        assert {d.task for d in sent} == {"batch_collect"}  # ended by its collect
        assert len(batches_made(tmp_path / "worker")) == len(sent) == 1  # one batch, not 2 chunks
        assert len(dispatches(stack.settings, online)) == 2  # online: chunks of 16


def test_the_cli_generates_a_folder_in_the_batch_lane(settings: Settings, tmp_path: Path) -> None:
    worker = {"data_dir": tmp_path / "worker"}
    worker |= {"offline_batch_pending_s": 0.2, "offline_batch_running_s": 0.2}
    with contextmanager(run_stack)(settings.model_copy(update=FAST), **worker) as stack:
        folder = photos(tmp_path / "harbour", 3)
        args = ("generate", str(folder), "--prompt", "at dusk", "--lane", "batch", "--json")
        url = str(stack.http.base_url)
        result = pixelfleet(*args, "--batch-deadline-s", "600", api_url=url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        [job] = json.loads(result.stdout)["jobs"]
        assert (job["status"], job["succeeded"]) == ("completed", 3)
        assert job["cost_usd"] == round(3 * 0.0195, 6)
        detail = stack.http.get(f"/api/jobs/{job['id']}").json()
        assert detail["lane"] == "batch" and detail["config"]["batch_deadline_s"] == 600
        shown = pixelfleet("jobs", "show", job["id"], api_url=url, cwd=tmp_path)
        assert "lane: batch\n" in shown.stdout and "cost $0.0585" in shown.stdout
        wrong = pixelfleet(
            "generate", str(folder), "--prompt", "p", "--lane", "slow", api_url=url, cwd=tmp_path
        )
        assert wrong.returncode == 2 and "lane" in wrong.stderr


def test_a_batch_google_never_finishes_ends_online_by_the_deadline(
    settings: Settings, tmp_path: Path
) -> None:
    worker = {"data_dir": tmp_path / "worker", "offline_batch_pending_s": 3600}
    with contextmanager(run_stack)(settings.model_copy(update=FAST), **worker) as stack:
        started = time.monotonic()
        job_id = submit(stack, 6, lane="batch", batch_deadline_s=5)
        wait_until(
            lambda: (
                (stack.http.get(f"/api/jobs/{job_id}").json()["batch"] or {}).get("state")
                == "pending at Google"
            )
        )
        [job] = stack.wait_for([job_id], timeout=60)
        assert time.monotonic() - started >= 5
        assert job["status"] == "completed" and job["progress"]["succeeded"] == 6
        assert job["fallback"] == {"the batch was not done by the job's batch deadline": 6}
        assert job["cost_usd"] == job["estimate_usd"] == round(6 * 0.039, 6)  # online price
        shown = pixelfleet("jobs", "show", job_id, api_url=str(stack.http.base_url), cwd=tmp_path)
        assert "lane: batch\n" in shown.stdout
        deadline = "the batch was not done by the job's batch deadline"
        assert f"went online: 6 image(s): {deadline}" in shown.stdout
        [record] = batches_made(tmp_path / "worker")
        wait_until(lambda: batches_made(tmp_path / "worker")[0]["cancelled_at"] is not None)
        ended = dispatches(stack.settings, job_id)
        assert {(d.task, d.status) for d in ended} == {
            ("batch_cancel", "completed"),
            ("generate", "completed"),
        }
        assert record["requests"] == 6


def test_cancelling_a_batch_job_cancels_its_batch(settings: Settings, tmp_path: Path) -> None:
    worker = {"data_dir": tmp_path / "worker", "offline_batch_pending_s": 3600}
    with contextmanager(run_stack)(settings.model_copy(update=FAST), **worker) as stack:
        job_id = submit(stack, 3, lane="batch")
        wait_until(lambda: batches_made(tmp_path / "worker"))
        wait_until(
            lambda: (
                (stack.http.get(f"/api/jobs/{job_id}").json()["batch"] or {}).get("state")
                == "pending at Google"
            )
        )
        shown = pixelfleet("jobs", "show", job_id, api_url=str(stack.http.base_url), cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert (
            "lane: batch, pending at Google (1 batch(es), 0 of 3 request(s) done)" in shown.stdout
        )
        response = stack.http.post(f"/api/jobs/{job_id}/cancel")
        assert response.status_code == 200, response.text
        wait_until(lambda: batches_made(tmp_path / "worker")[0]["cancelled_at"] is not None)
        job = stack.http.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["progress"]["failed"] == 3
        cancel = wait_until(
            lambda: [
                d
                for d in dispatches(stack.settings, job_id)
                if d.task == "batch_cancel" and d.status == "completed"
            ]
        )
        assert cancel[0].batch_state == "cancelled"


@contextmanager
def restartable(settings: Settings, worker_dir: Path) -> Iterator[tuple[RestartableServer, Stack]]:
    """The stack with a control plane that can be stopped and started again on the same
    database and port (a process restart)."""
    worker = WorkerSettings(
        storage_url=settings.storage_url,
        data_dir=worker_dir,
        provider="offline",
        worker_concurrency=16,
        worker_max_jobs=4,
        webhook_retry_delay_s=0.1,
        offline_batch_pending_s=2.0,
        offline_batch_running_s=1.0,
    )
    with RestartableServer(lambda: build_endpoint_app_from_settings(worker)) as endpoint:
        control: list[Settings] = []
        api = RestartableServer(lambda: create_app(control[0]))
        control.append(
            settings.model_copy(
                update={"runpod_base_url": endpoint.url, "public_url": api.url, **FAST}
            )
        )
        with api, httpx.Client(base_url=api.url, timeout=60) as http:
            yield api, Stack(http, control[0], endpoint)


def test_a_restart_between_submit_and_collect_loses_nothing_and_submits_once(
    settings: Settings, tmp_path: Path
) -> None:
    with restartable(settings, tmp_path / "worker") as (api, stack):
        job_id = submit(stack, 8, lane="batch")
        wait_until(lambda: all(d.batch_name for d in dispatches(stack.settings, job_id)))
        api.stop()
        time.sleep(1.0)
        api.start()
        [job] = stack.wait_for([job_id], timeout=60)
        assert job["status"] == "completed" and job["progress"]["succeeded"] == 8
        assert job["fallback"] is None
        sent = dispatches(stack.settings, job_id)
        assert len(batches_made(tmp_path / "worker")) == len(sent) == 1
