"""The local RunPod endpoint over real HTTP: lifecycle, policies, webhooks, auth, runpod client."""

import asyncio
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from PIL import Image

from shared.contract import DispatchInput, DispatchOutput, ImageParams, ResultStatus, WorkItem
from shared.storage import LocalStorage
from tests.fakes.servers import run_server
from worker.local_endpoint import (
    JobHandler,
    RunPodStatus,
    build_endpoint_app_from_settings,
    create_endpoint_app,
)
from worker.settings import WorkerSettings

KEY = "test-key"
FINAL = {s.value for s in RunPodStatus if s.is_final}


# --------------------------------------------------------------------------- helpers


@contextmanager
def serve(handler: JobHandler, **options: Any) -> Iterator[httpx.Client]:
    """The endpoint on a real port; a client already pointed at /v2/local and authorised."""
    app = create_endpoint_app(handler, api_key=KEY, **options)
    with (
        run_server(app) as base,
        httpx.Client(
            base_url=f"{base}/v2/local", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
        ) as client,
    ):
        yield client


def eventually(check: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    """Poll until check() returns something truthy; return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.01)


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/run", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "IN_QUEUE"
    return str(response.json()["id"])


def status(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/status/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_status(client: httpx.Client, job_id: str, *wanted: str) -> dict[str, Any]:
    wanted = wanted or tuple(FINAL)
    result: dict[str, Any] = eventually(
        lambda: (body := status(client, job_id))["status"] in wanted and body
    )
    return result


def status_code(client: httpx.Client, job_id: str) -> int:
    return client.get(f"/status/{job_id}").status_code


async def until(event: threading.Event) -> None:
    """Let an async handler wait for the test thread."""
    while not event.is_set():
        await asyncio.sleep(0.005)


class Gate:
    """A handler that records jobs, signals start, and holds until released (or cancelled)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.cancelled = threading.Event()
        self.seen: list[str] = []

    async def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        self.seen.append(job["id"])
        if job["input"].get("block"):
            self.started.set()
            try:
                await until(self.release)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return {"done": job["input"]}


# --------------------------------------------------------------------------- lifecycle


def test_run_then_status_goes_in_progress_then_completed_with_output() -> None:
    gate = Gate()
    with serve(gate) as client:
        job_id = submit(client, {"input": {"block": True, "n": 1}})
        assert gate.started.wait(5)
        running = status(client, job_id)
        assert running["status"] == "IN_PROGRESS"
        assert "output" not in running
        time.sleep(0.05)
        gate.release.set()
        done = wait_status(client, job_id)
    assert done["status"] == "COMPLETED"
    assert done["output"] == {"done": {"block": True, "n": 1}}
    assert done["id"] == job_id
    assert gate.seen == [job_id]
    assert isinstance(done["delayTime"], int)
    assert done["executionTime"] >= 50


def test_status_also_answers_post_and_runsync_waits_for_the_result() -> None:
    gate = Gate()
    with serve(gate) as client:
        body = client.post("/runsync", json={"input": {"n": 2}}).json()
        assert body["status"] == "COMPLETED"
        assert body["output"] == {"done": {"n": 2}}
        assert client.post(f"/status/{body['id']}").json()["status"] == "COMPLETED"

        pending = client.post("/runsync?wait=50", json={"input": {"block": True}}).json()
        assert pending["status"] in ("IN_QUEUE", "IN_PROGRESS")
        gate.release.set()
        assert wait_status(client, pending["id"])["status"] == "COMPLETED"


def test_handler_returning_error_dict_fails_with_that_message() -> None:
    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        return {"error": "invalid input: no prompt", "partial": 1}

    with serve(handler) as client:
        done = wait_status(client, submit(client, {"input": {"x": 1}}))
    assert done["status"] == "FAILED"
    assert done["error"] == "invalid input: no prompt"
    assert "output" not in done


def test_handler_raising_fails_with_runpods_json_error_string() -> None:
    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("boom")

    with serve(handler) as client:
        done = wait_status(client, submit(client, {"input": {"x": 1}}))
    assert done["status"] == "FAILED"
    assert isinstance(done["error"], str)
    error = json.loads(done["error"])
    assert set(error) == {
        "error_type",
        "error_message",
        "error_traceback",
        "hostname",
        "worker_id",
        "runpod_version",
    }
    assert error["error_type"] == "<class 'ValueError'>"
    assert error["error_message"] == "boom"
    assert "ValueError: boom" in error["error_traceback"]
    assert error["runpod_version"] == "1.12.0"


def test_execution_timeout_times_out_and_cancels_the_handler() -> None:
    gate = Gate()
    with serve(gate) as client:
        job_id = submit(client, {"input": {"block": True}, "policy": {"executionTimeout": 200}})
        done = wait_status(client, job_id)
        assert done["status"] == "TIMED_OUT"
        assert 180 <= done["executionTime"] < 2000  # asyncio timers may fire a hair early
        assert gate.cancelled.wait(2)


def test_cancel_in_progress_cancels_the_handler_task() -> None:
    gate = Gate()
    with serve(gate) as client:
        job_id = submit(client, {"input": {"block": True}})
        assert gate.started.wait(5)
        answer = client.post(f"/cancel/{job_id}").json()
        assert answer == {"id": job_id, "status": "CANCELLED"}
        assert gate.cancelled.wait(2)
        assert status(client, job_id)["status"] == "CANCELLED"
        assert client.post("/cancel/no-such-job").status_code == 404


def test_cancel_in_queue_never_runs_the_job() -> None:
    gate = Gate()
    with serve(gate, job_concurrency=1) as client:
        blocker = submit(client, {"input": {"block": True}})
        queued = submit(client, {"input": {"n": 1}})
        assert gate.started.wait(5)
        assert client.post(f"/cancel/{queued}").json()["status"] == "CANCELLED"
        gate.release.set()
        wait_status(client, blocker)
        time.sleep(0.05)
        assert status(client, queued)["status"] == "CANCELLED"
    assert gate.seen == [blocker]


def test_retry_requeues_a_failed_job_and_only_failed_ones() -> None:
    calls: list[str] = []

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        calls.append(job["id"])
        if len(calls) == 1:
            return {"error": "transient"}
        return {"attempt": len(calls)}

    with serve(handler) as client:
        job_id = submit(client, {"input": {"x": 1}})
        assert wait_status(client, job_id)["status"] == "FAILED"
        retried = client.post(f"/retry/{job_id}")
        assert retried.json() == {"id": job_id, "status": "IN_QUEUE"}
        done = wait_status(client, job_id, "COMPLETED")
        assert done["output"] == {"attempt": 2}
        assert "error" not in done
        assert client.post(f"/retry/{job_id}").status_code == 400
        assert client.get("/health").json()["jobs"]["retried"] == 1
    assert calls == [job_id, job_id]


# --------------------------------------------------------------------------- expiry


def test_ttl_counts_from_submit_and_deletes_a_queued_job() -> None:
    gate = Gate()
    with serve(gate, job_concurrency=1) as client:
        blocker = submit(client, {"input": {"block": True}})
        doomed = submit(client, {"input": {"n": 1}, "policy": {"ttl": 300}})
        assert status(client, doomed)["status"] == "IN_QUEUE"
        eventually(lambda: status_code(client, doomed) == 404)
        gate.release.set()
        assert wait_status(client, blocker)["status"] == "COMPLETED"
    assert gate.seen == [blocker]


def test_ttl_applies_to_finished_jobs_too() -> None:
    with serve(Gate()) as client:
        job_id = submit(client, {"input": {"n": 1}, "policy": {"ttl": 300}})
        assert wait_status(client, job_id)["status"] == "COMPLETED"
        eventually(lambda: status_code(client, job_id) == 404)


def test_results_are_deleted_after_the_retention_window() -> None:
    with serve(Gate(), result_retention_s=0.3) as client:
        job_id = submit(client, {"input": {"n": 1}})
        assert wait_status(client, job_id)["status"] == "COMPLETED"
        eventually(lambda: status_code(client, job_id) == 404)
        assert client.get(f"/status/{job_id}").json() == {"error": f"job {job_id} not found"}


# --------------------------------------------------------------------------- queue and health


def test_health_counts_jobs_and_the_worker() -> None:
    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        return await gate(job) if job["input"]["mode"] != "fail" else {"error": "no"}

    gate = Gate()
    with serve(handler, job_concurrency=1) as client:
        assert client.get("/health").json()["workers"]["running"] == 0
        wait_status(client, submit(client, {"input": {"mode": "ok"}}))
        wait_status(client, submit(client, {"input": {"mode": "fail"}}))
        submit(client, {"input": {"mode": "block", "block": True}})
        submit(client, {"input": {"mode": "ok"}})
        assert gate.started.wait(5)
        health = client.get("/health").json()
        gate.release.set()
    assert health["jobs"] == {
        "completed": 1,
        "failed": 1,
        "inProgress": 1,
        "inQueue": 1,
        "retried": 0,
    }
    assert health["workers"]["running"] == 1
    assert health["workers"]["idle"] == 0


def test_purge_queue_removes_only_queued_jobs() -> None:
    gate = Gate()
    with serve(gate, job_concurrency=1) as client:
        blocker = submit(client, {"input": {"block": True}})
        queued = [submit(client, {"input": {"n": n}}) for n in range(3)]
        assert gate.started.wait(5)
        assert client.post("/purge-queue").json() == {"removed": 3, "status": "completed"}
        assert all(status_code(client, job_id) == 404 for job_id in queued)
        assert client.get("/health").json()["jobs"]["inQueue"] == 0
        assert status(client, blocker)["status"] == "IN_PROGRESS"
        gate.release.set()
        assert wait_status(client, blocker)["status"] == "COMPLETED"
    assert gate.seen == [blocker]


def _spans_handler(spans: list[tuple[float, float]], seconds: float) -> JobHandler:
    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        await asyncio.sleep(seconds)
        spans.append((started, time.monotonic()))
        return {"ok": True}

    return handler


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


def test_jobs_run_concurrently_up_to_job_concurrency() -> None:
    spans: list[tuple[float, float]] = []
    with serve(_spans_handler(spans, 0.3), job_concurrency=4) as client:
        ids = [submit(client, {"input": {"n": n}}) for n in range(4)]
        assert all(wait_status(client, i)["status"] == "COMPLETED" for i in ids)
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # all four overlapped


def test_job_concurrency_limits_jobs_in_flight() -> None:
    spans: list[tuple[float, float]] = []
    with serve(_spans_handler(spans, 0.15), job_concurrency=2) as client:
        ids = [submit(client, {"input": {"n": n}}) for n in range(4)]
        assert all(wait_status(client, i)["status"] == "COMPLETED" for i in ids)
    assert _max_overlap(spans) == 2


# --------------------------------------------------------------------------- webhooks


class Receiver:
    """A webhook receiver app that answers `failures` times `failure` (500) before 200."""

    def __init__(self, failures: int = 0, failure: int = 500) -> None:
        self.failures, self.failure = failures, failure
        self.posts: list[dict[str, Any]] = []
        self.app = FastAPI()
        self.app.post("/hook/{token}")(self.receive)

    async def receive(self, token: str, request: Request) -> Response:
        self.posts.append(await request.json())
        return Response(status_code=self.failure if len(self.posts) <= self.failures else 200)


def test_webhook_posts_the_final_state_for_every_final_status() -> None:
    receiver = Receiver()
    gate = Gate()

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        if job["input"]["mode"] == "fail":
            return {"error": "nope"}
        return await gate(job)

    with run_server(receiver.app) as hooks, serve(handler) as client:
        url = f"{hooks}/hook/s3cret"
        ok = submit(client, {"input": {"mode": "ok"}, "webhook": url})
        failed = submit(client, {"input": {"mode": "fail"}, "webhook": url})
        slow = {"input": {"mode": "slow", "block": True}, "webhook": url}
        cancelled = submit(client, slow)
        timed_out = submit(client, {**slow, "policy": {"executionTimeout": 100}})
        eventually(lambda: status(client, timed_out)["status"] == "TIMED_OUT")
        client.post(f"/cancel/{cancelled}")
        eventually(lambda: len(receiver.posts) == 4)
        final = status(client, ok)
    by_id = {post["id"]: post for post in receiver.posts}
    assert set(by_id[ok]) == {
        "id",
        "status",
        "output",
        "delayTime",
        "executionTime",
        "input",
        "webhook",
    }
    assert by_id[ok]["status"] == "COMPLETED"
    assert by_id[ok]["output"] == final["output"] == {"done": {"mode": "ok"}}
    assert by_id[ok]["input"] == {"mode": "ok"}
    assert by_id[ok]["webhook"] == url
    assert by_id[ok]["executionTime"] == final["executionTime"]
    assert (by_id[failed]["status"], by_id[failed]["error"]) == ("FAILED", "nope")
    assert "output" not in by_id[failed]
    assert by_id[cancelled]["status"] == "CANCELLED"
    assert by_id[timed_out]["status"] == "TIMED_OUT"


@pytest.mark.parametrize("failure", [500, 204])  # RunPod retries any answer but 200
def test_webhook_is_retried_until_it_succeeds(failure: int) -> None:
    receiver = Receiver(failures=2, failure=failure)
    with (
        run_server(receiver.app) as hooks,
        serve(Gate(), webhook_retry_delay_s=0.05) as client,
    ):
        job_id = submit(client, {"input": {"n": 1}, "webhook": f"{hooks}/hook/t"})
        eventually(lambda: len(receiver.posts) >= 3)
        time.sleep(0.2)  # room for a wrong 4th attempt
    assert len(receiver.posts) == 3
    assert all(post["id"] == job_id and post["status"] == "COMPLETED" for post in receiver.posts)


def test_webhook_gives_up_after_the_configured_attempts() -> None:
    receiver = Receiver(failures=100)
    with (
        run_server(receiver.app) as hooks,
        serve(Gate(), webhook_attempts=2, webhook_retry_delay_s=0.05) as client,
    ):
        submit(client, {"input": {"n": 1}, "webhook": f"{hooks}/hook/t"})
        eventually(lambda: len(receiver.posts) >= 2)
        time.sleep(0.2)
    assert len(receiver.posts) == 2


def test_an_unreachable_webhook_does_not_hold_up_other_jobs() -> None:
    with serve(Gate(), job_concurrency=1, webhook_retry_delay_s=5) as client:
        # port 9 (discard) on loopback: refused at once, then a 5 s retry wait in the background
        first = submit(client, {"input": {"n": 1}, "webhook": "http://127.0.0.1:9/hook"})
        second = submit(client, {"input": {"n": 2}})
        assert wait_status(client, first)["status"] == "COMPLETED"
        assert wait_status(client, second)["status"] == "COMPLETED"


# --------------------------------------------------------------------------- HTTP surface


def test_auth_endpoint_and_body_checks() -> None:
    with serve(Gate()) as client:
        base = str(client.base_url).rstrip("/")
        body = {"input": {"n": 1}}
        assert httpx.post(f"{base}/run", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(f"{base}/run", json=body, headers=wrong).status_code == 401
        assert httpx.get(f"{base}/health", headers=wrong).status_code == 401
        raw = {"Authorization": KEY}
        assert httpx.post(f"{base}/run", json=body, headers=raw).status_code == 200
        other = base.replace("/v2/local", "/v2/elsewhere")
        assert client.post(f"{other}/run", json=body).status_code == 404
        assert client.get("/status/no-such-job").status_code == 404
        assert client.post("/run", json={"webhook": "http://x"}).status_code == 400
        assert client.post("/run", content=b"{not json").status_code == 400
        bad_policy = {"input": {}, "policy": {"executionTimeout": "soon"}}
        assert client.post("/run", json=bad_policy).status_code == 400


def test_the_official_runpod_client_works_against_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import runpod

    gate = Gate()
    with serve(gate) as client:
        base = str(client.base_url).rstrip("/").removesuffix("/local")
        monkeypatch.setattr(runpod, "api_key", KEY)
        monkeypatch.setattr(runpod, "endpoint_url_base", base)
        endpoint = runpod.Endpoint("local")
        job = endpoint.run({"prompt": "a cat"})
        assert job.status() in {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
        assert job.output(timeout=10) == {"done": {"prompt": "a cat"}}
        assert job.status() == "COMPLETED"
        assert endpoint.run_sync({"prompt": "a dog"}, timeout=10) == {"done": {"prompt": "a dog"}}
        assert endpoint.health()["jobs"]["completed"] == 2
        blocked = endpoint.run({"block": True})
        assert gate.started.wait(5)
        assert blocked.cancel()["status"] == "CANCELLED"
        assert endpoint.purge_queue() == {"removed": 0, "status": "completed"}


# --------------------------------------------------------------------------- the real handler


def _png(size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def test_runs_the_real_pixelfleet_handler(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes("refs/cat.png", _png(), content_type="image/png")
    settings = WorkerSettings(storage_url=str(tmp_path), provider="offline", worker_max_jobs=2)
    dispatch = DispatchInput(
        dispatch_id="d1",
        job_id="j1",
        items=[
            WorkItem(
                output_id="o1",
                prompt="a red cat",
                reference_uris=[storage.uri("refs/cat.png")],
                params=ImageParams(model="gemini-2.5-flash-image", aspect_ratio="1:1", seed=7),
                output_key="jobs/j1/o1",
            )
        ],
    )
    app = build_endpoint_app_from_settings(settings)
    headers = {"Authorization": f"Bearer {settings.endpoint_api_key}"}
    with run_server(app) as base:
        body = {"input": dispatch.model_dump(mode="json")}
        answer = httpx.post(f"{base}/v2/local/runsync", json=body, headers=headers, timeout=30)
    assert answer.status_code == 200
    done = answer.json()
    assert done["status"] == "COMPLETED", done
    output = DispatchOutput.model_validate(done["output"])
    assert output.dispatch_id == "d1"
    [result] = output.results
    assert result.status is ResultStatus.SUCCEEDED, result.error
    assert result.output_uri is not None
    assert storage.exists(storage.key_of(result.output_uri))


# --------------------------------------------------------------------------- webhook hosts


@pytest.mark.parametrize(
    "webhook",
    [
        "https://evil.example/api/webhook/runpod?token=t",
        "http://10.0.0.7:8000/hook",
        "http://127.0.0.1.evil.example/hook",
        "file:///etc/passwd",
        "http:///no-host",
    ],
)
def test_webhooks_outside_loopback_are_refused_by_default(webhook: str) -> None:
    with serve(Gate()) as client:
        for route in ("/run", "/runsync"):
            refused = client.post(route, json={"input": {"n": 1}, "webhook": webhook})
            assert refused.status_code == 400, refused.text
            assert "webhook" in refused.json()["error"]
        assert client.get("/health").json()["jobs"]["inQueue"] == 0  # nothing was queued
        hosted = client.post("/run", json={"input": {"n": 1}, "webhook": "https://evil.example/"})
        assert "PIXELFLEET_ENDPOINT_ALLOW_WEBHOOK_HOSTS" in hosted.json()["error"]


def test_configured_webhook_hosts_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIXELFLEET_ENDPOINT_ALLOW_WEBHOOK_HOSTS", "studio.lan, Evil.Example")
    settings = WorkerSettings(storage_url=str(tmp_path), provider="offline", webhook_attempts=1)
    headers = {"Authorization": f"Bearer {settings.endpoint_api_key}"}
    with run_server(build_endpoint_app_from_settings(settings)) as base:
        for webhook in ("https://evil.example/api/webhook/runpod?token=t", "http://[::1]:9/hook"):
            body = {"input": {"n": 1}, "webhook": webhook}
            answer = httpx.post(f"{base}/v2/local/run", json=body, headers=headers)
            assert answer.status_code == 200, answer.text
        body = {"input": {"n": 1}, "webhook": "https://elsewhere.example/"}
        assert httpx.post(f"{base}/v2/local/run", json=body, headers=headers).status_code == 400
