"""A local server that speaks RunPod's serverless cloud API, running our handler in-process.

runpod's own `--rp_serve_api` is not faithful (see docs/runpod.md), so this module
reimplements the parts of `https://api.runpod.ai/v2/{endpoint_id}/…` that pixelfleet relies on:
`run`, `runsync`, `status`, `cancel`, `retry`, `health`, `purge-queue`, execution timeouts,
ttl, result retention and webhooks with retries. Handler results are interpreted exactly as
`runpod.serverless` does (`rp_job.run_job`), so the same handler behaves the same here and
on RunPod.

Things deliberately not emulated: rate limits (429), `/stream`, `progress_update`, the
shorter retention of `/runsync` results, and multiple workers. This is one worker that runs
at most `job_concurrency` jobs at once; given the handler's concurrency_modifier, it takes
jobs as the worker's scaler does (`worker/scaling.py`, runpod's JobScaler applying the value
at once): it asks the modifier before taking a job, takes one only while fewer jobs are
running than it returns, and when full asks again as soon as one of the handler's images
ends (`SlotModifier.freed`), or `full_poll_s` later (1 s, runpod's cadence, for any other
modifier).

Run it with `python -m worker.local_endpoint --port 8001` (reads WorkerSettings).
"""

import argparse
import asyncio
import contextlib
import copy
import hmac
import importlib.metadata
import inspect
import json
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from shared.hosts import is_loopback
from shared.logs import configure_logging
from shared.tls import tls_context
from shared.waiting import wait_at_most
from worker.handler import SlotModifier, make_handler
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

JobHandler = Callable[[dict[str, Any]], Awaitable[Any]]
ConcurrencyModifier = Callable[[int], int]

RUN_BODY_LIMIT = 10 * 1024 * 1024  # RunPod refuses larger /run bodies
RUNSYNC_BODY_LIMIT = 20 * 1024 * 1024  # and larger /runsync bodies
WEBHOOK_TIMEOUT_S = 10.0  # per delivery attempt
SWEEP_INTERVAL_S = 1.0  # background expiry sweep; requests also sweep before answering
FULL_POLL_S = 1.0  # a full worker asks the concurrency_modifier again at least this often


class RunPodStatus(StrEnum):
    """A job's status as RunPod reports it.

    IN_QUEUE → IN_PROGRESS → one of the final states COMPLETED, FAILED, CANCELLED, TIMED_OUT.
    `/retry` moves FAILED or TIMED_OUT back to IN_QUEUE.
    """

    IN_QUEUE = "IN_QUEUE"  # accepted, waiting for a free slot
    IN_PROGRESS = "IN_PROGRESS"  # the handler is running
    COMPLETED = "COMPLETED"  # the handler returned; `output` holds what it returned
    FAILED = "FAILED"  # the handler returned {"error": …} or raised; `error` says why
    CANCELLED = "CANCELLED"  # `/cancel` arrived before the job ended
    TIMED_OUT = "TIMED_OUT"  # the handler ran longer than policy.executionTimeout

    @property
    def is_final(self) -> bool:
        return self not in (RunPodStatus.IN_QUEUE, RunPodStatus.IN_PROGRESS)


class EndpointError(Exception):
    """Answered as `{"error": message}` with the given HTTP status."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class EndpointConfig:
    endpoint_id: str = "local"
    api_key: str | None = None
    job_concurrency: int = 8
    webhook_attempts: int = 3
    webhook_retry_delay_s: float = 10.0
    result_retention_s: float = 1800.0
    default_execution_timeout_ms: int = 600_000
    default_ttl_ms: int = 86_400_000
    runsync_wait_ms: int = 90_000
    webhook_hosts: frozenset[str] = frozenset()  # beyond loopback, which is always allowed
    full_poll_s: float = FULL_POLL_S


@dataclass(frozen=True)
class RunRequest:
    """A parsed `/run` or `/runsync` body."""

    input: Any
    webhook: str | None
    execution_timeout_ms: int
    ttl_ms: int


@dataclass
class RunPodJob:
    id: str
    input: Any
    webhook: str | None
    execution_timeout_s: float
    ttl_s: float
    submitted_at: float  # time.monotonic(); reset by /retry
    status: RunPodStatus = RunPodStatus.IN_QUEUE
    result: dict[str, Any] = field(default_factory=dict)  # "output" and/or "error"
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 0
    task: "asyncio.Task[dict[str, Any]] | None" = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def delay_ms(self, now: float) -> int:
        until = self.started_at or self.finished_at or now
        return round((until - self.submitted_at) * 1000)

    def execution_ms(self, now: float) -> int:
        if self.started_at is None:
            return 0
        return round(((self.finished_at or now) - self.started_at) * 1000)

    def status_body(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "delayTime": self.delay_ms(now),
            "executionTime": self.execution_ms(now),
            **self.result,
        }

    def webhook_body(self, now: float) -> dict[str, Any]:
        return {**self.status_body(now), "input": self.input, "webhook": self.webhook}


# --------------------------------------------------------------------------- handler results


def _runpod_version() -> str:
    try:
        return importlib.metadata.version("runpod")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def exception_result(err: Exception) -> dict[str, Any]:
    """What runpod's worker reports for a handler that raised: a JSON-encoded string."""
    info = {
        "error_type": str(type(err)),
        "error_message": str(err),
        "error_traceback": traceback.format_exc(),
        "hostname": os.environ.get("RUNPOD_POD_HOSTNAME", socket.gethostname()),
        "worker_id": os.environ.get("RUNPOD_POD_ID", "local"),
        "runpod_version": _runpod_version(),
    }
    return {"error": json.dumps(info)}


def returned_result(value: Any) -> dict[str, Any]:
    """Interpret a handler's return value the way `runpod.serverless` (rp_job.run_job) does.

    A dict loses its "error" and "refresh_worker" keys; a truthy "error" makes the job FAILED.
    An empty dict or None means no `output` at all. On FAILED only `error` is reported.
    """
    if not isinstance(value, dict):
        return {} if value is None else {"output": value}
    output = dict(value)
    error = output.pop("error", None)
    output.pop("refresh_worker", None)
    if error:
        return {"error": error}
    return {"output": output} if output else {}


async def call_handler(handler: JobHandler, job: dict[str, Any]) -> dict[str, Any]:
    """Run the handler once; never raises except asyncio.CancelledError."""
    try:
        returned = handler(job)
        value = await returned if inspect.isawaitable(returned) else returned
    except Exception as err:
        log.warning("handler raised on job %s: %r", job["id"], err)
        return exception_result(err)
    return returned_result(value)


# --------------------------------------------------------------------------- request parsing


def _positive_int(policy: dict[str, Any], key: str, default: int) -> int:
    value = policy.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise EndpointError(400, f"policy.{key} must be a positive integer (milliseconds)")
    return value


def parse_run_request(raw: bytes, *, limit: int, config: EndpointConfig) -> RunRequest:
    if len(raw) > limit:
        raise EndpointError(413, f"request body over {limit} bytes")
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise EndpointError(400, f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("input") is None:
        raise EndpointError(400, "body must be a JSON object with an 'input'")
    webhook = body.get("webhook")
    if webhook is not None and not isinstance(webhook, str):
        raise EndpointError(400, "webhook must be a URL string")
    if webhook:
        _check_webhook(webhook, config.webhook_hosts)
    policy = body.get("policy") or {}
    if not isinstance(policy, dict):
        raise EndpointError(400, "policy must be an object")
    return RunRequest(
        input=body["input"],
        webhook=webhook or None,
        execution_timeout_ms=_positive_int(
            policy, "executionTimeout", config.default_execution_timeout_ms
        ),
        ttl_ms=_positive_int(policy, "ttl", config.default_ttl_ms),
    )


def _check_webhook(url: str, allowed_hosts: frozenset[str]) -> None:
    """Refuse webhooks to anywhere but loopback and the configured hosts: whoever can call
    `/run` must not make this machine post job results (and reach hosts it can reach)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointError(400, f"webhook must be an http(s) URL, not {url!r}")
    host = parts.hostname
    if not (is_loopback(host) or host in allowed_hosts):
        raise EndpointError(
            400,
            f"webhook host {host!r} is not loopback: add it to "
            "PIXELFLEET_ENDPOINT_ALLOW_WEBHOOK_HOSTS to let this endpoint post there",
        )


# --------------------------------------------------------------------------- the engine


class LocalEndpoint:
    """Queue, job table and workers of one endpoint; lives on one asyncio loop."""

    def __init__(
        self,
        handler: JobHandler,
        config: EndpointConfig,
        concurrency_modifier: ConcurrencyModifier | None = None,
    ) -> None:
        self.handler = handler
        self.config = config
        self.concurrency_modifier = concurrency_modifier
        self.concurrency = 1  # what the modifier last returned (runpod starts at 1)
        self.running = 0  # handler tasks not yet done
        self._taking = asyncio.Lock()
        self.jobs: dict[str, RunPodJob] = {}
        self.counters = {"completed": 0, "failed": 0, "retried": 0}
        self._queue: asyncio.Queue[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._webhooks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    # lifecycle

    @property
    def queue(self) -> "asyncio.Queue[str]":
        if self._queue is None:
            raise RuntimeError("endpoint not started (the app's lifespan starts it)")
        return self._queue

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("endpoint not started (the app's lifespan starts it)")
        return self._client

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, verify=tls_context())
        self._tasks = [
            asyncio.create_task(self._worker()) for _ in range(self.config.job_concurrency)
        ]
        self._tasks.append(asyncio.create_task(self._sweeper()))

    async def stop(self) -> None:
        running = [job.task for job in self.jobs.values() if job.task and not job.task.done()]
        pending: list[asyncio.Task[Any]] = [*self._tasks, *self._webhooks, *running]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # API operations

    def submit(self, request: RunRequest, *, prefix: str = "") -> RunPodJob:
        job = RunPodJob(
            id=f"{prefix}{uuid.uuid4()}-u1",
            input=request.input,
            webhook=request.webhook,
            execution_timeout_s=request.execution_timeout_ms / 1000,
            ttl_s=request.ttl_ms / 1000,
            submitted_at=time.monotonic(),
        )
        self.jobs[job.id] = job
        self.queue.put_nowait(job.id)
        log.info("job %s queued", job.id)
        return job

    def get(self, job_id: str) -> RunPodJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise EndpointError(404, f"job {job_id} not found")
        return job

    def cancel(self, job_id: str) -> RunPodJob:
        job = self.get(job_id)
        if job.status.is_final:
            return job
        if job.task is not None:
            job.task.cancel()
        self._finish(job, RunPodStatus.CANCELLED, {})
        return job

    def retry(self, job_id: str) -> RunPodJob:
        job = self.get(job_id)
        if job.status not in (RunPodStatus.FAILED, RunPodStatus.TIMED_OUT):
            raise EndpointError(
                400, f"job {job_id} is {job.status.value}: only FAILED or TIMED_OUT"
            )
        job.status, job.result, job.task = RunPodStatus.IN_QUEUE, {}, None
        job.submitted_at, job.started_at, job.finished_at = time.monotonic(), None, None
        job.finished = asyncio.Event()
        self.counters["retried"] += 1
        self.queue.put_nowait(job.id)
        log.info("job %s re-queued", job.id)
        return job

    def purge_queue(self) -> int:
        queued = [job.id for job in self.jobs.values() if job.status is RunPodStatus.IN_QUEUE]
        for job_id in queued:
            del self.jobs[job_id]
        return len(queued)

    def health(self) -> dict[str, Any]:
        statuses = [job.status for job in self.jobs.values()]
        running = statuses.count(RunPodStatus.IN_PROGRESS)
        busy = 1 if running else 0
        return {
            "jobs": {
                "completed": self.counters["completed"],
                "failed": self.counters["failed"],
                "inProgress": running,
                "inQueue": statuses.count(RunPodStatus.IN_QUEUE),
                "retried": self.counters["retried"],
            },
            "workers": {
                "idle": 1 - busy,
                "initializing": 0,
                "ready": 1 - busy,
                "running": busy,
                "throttled": 0,
                "unhealthy": 0,
            },
        }

    async def wait(self, job: RunPodJob, timeout_s: float) -> None:
        await wait_at_most(job.finished.wait(), timeout_s)

    def sweep(self) -> None:
        """Delete jobs past their ttl (cancelling any still running) or past retention."""
        now = time.monotonic()
        for job in list(self.jobs.values()):
            expired = now - job.submitted_at >= job.ttl_s
            retained_out = (
                job.finished_at is not None
                and now - job.finished_at >= self.config.result_retention_s
            )
            if expired or retained_out:
                if job.task is not None and not job.task.done():
                    job.task.cancel()
                del self.jobs[job.id]
                log.info("job %s deleted (%s)", job.id, "ttl" if expired else "retention")

    # execution

    async def _worker(self) -> None:
        while True:
            async with self._taking:  # one worker at a time checks capacity and takes a job
                await self._wait_for_capacity()
                job_id = await self.queue.get()
                job = self.jobs.get(job_id)
                if job is None or job.status is not RunPodStatus.IN_QUEUE:
                    continue
                task, attempt = self._start(job), job.attempt
                await asyncio.sleep(0)  # the handler's first step records its dispatch size
            await self._execute(job, attempt, task)

    async def _wait_for_capacity(self) -> None:
        """Return once fewer jobs run than the concurrency_modifier allows (if there is one)."""
        modifier = self.concurrency_modifier
        if modifier is None:
            return
        while True:
            allowed = max(1, min(self.config.job_concurrency, modifier(self.concurrency)))
            self.concurrency = allowed
            if self.running < allowed:
                return
            if isinstance(modifier, SlotModifier):  # as worker/scaling.py's SlotScaler
                await modifier.freed(self.config.full_poll_s)
            else:
                await asyncio.sleep(self.config.full_poll_s)

    def _start(self, job: RunPodJob) -> "asyncio.Task[dict[str, Any]]":
        job.status, job.started_at = RunPodStatus.IN_PROGRESS, time.monotonic()
        job.attempt += 1
        payload = {"id": job.id, "input": copy.deepcopy(job.input)}
        task = asyncio.create_task(call_handler(self.handler, payload))
        job.task = task
        self.running += 1
        task.add_done_callback(self._handler_done)
        return task

    def _handler_done(self, task: "asyncio.Task[dict[str, Any]]") -> None:
        self.running -= 1

    async def _execute(
        self, job: RunPodJob, attempt: int, task: "asyncio.Task[dict[str, Any]]"
    ) -> None:
        done, _ = await asyncio.wait({task}, timeout=job.execution_timeout_s)
        if not self._still_running(job, attempt):
            await asyncio.wait({task})  # cancelled elsewhere (/cancel, ttl): let it unwind
            return
        if not done:
            self._finish(job, RunPodStatus.TIMED_OUT, {})
            task.cancel()
            await asyncio.wait({task})
            return
        result = task.result()
        self._finish(
            job, RunPodStatus.FAILED if "error" in result else RunPodStatus.COMPLETED, result
        )

    def _still_running(self, job: RunPodJob, attempt: int) -> bool:
        return (
            self.jobs.get(job.id) is job
            and job.attempt == attempt
            and job.status is RunPodStatus.IN_PROGRESS
        )

    def _finish(self, job: RunPodJob, status: RunPodStatus, result: dict[str, Any]) -> None:
        job.status, job.result, job.finished_at = status, result, time.monotonic()
        if status is RunPodStatus.COMPLETED:
            self.counters["completed"] += 1
        elif status in (RunPodStatus.FAILED, RunPodStatus.TIMED_OUT):
            self.counters["failed"] += 1
        job.finished.set()
        log.info("job %s %s", job.id, status.value)
        if job.webhook:
            self._spawn_webhook(job.webhook, job.webhook_body(job.finished_at))

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.sweep()

    # webhooks

    def _spawn_webhook(self, url: str, body: dict[str, Any]) -> None:
        task = asyncio.create_task(self._deliver(url, body))
        self._webhooks.add(task)
        task.add_done_callback(self._webhooks.discard)

    async def _deliver(self, url: str, body: dict[str, Any]) -> None:
        attempts = max(1, self.config.webhook_attempts)
        for attempt in range(1, attempts + 1):
            if await self._post_webhook(url, body, attempt):
                return
            if attempt < attempts:
                await asyncio.sleep(self.config.webhook_retry_delay_s)
        log.error("webhook for job %s to %s gave up after %d attempts", body["id"], url, attempts)

    async def _post_webhook(self, url: str, body: dict[str, Any], attempt: int) -> bool:
        try:
            response = await self.client.post(url, json=body)
        except httpx.HTTPError as exc:
            log.warning("webhook for job %s attempt %d failed: %r", body["id"], attempt, exc)
            return False
        if response.status_code == 200:  # RunPod retries any other answer, 204 included
            return True
        log.warning(
            "webhook for job %s attempt %d answered HTTP %d",
            body["id"],
            attempt,
            response.status_code,
        )
        return False


# --------------------------------------------------------------------------- HTTP layer


def _authorizer(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    async def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else header.strip()
        if not hmac.compare_digest(presented.encode(), api_key.encode()):
            raise EndpointError(401, "unauthorized: send 'Authorization: Bearer <api key>'")

    return authorize


def _endpoint_checker(expected: str) -> Callable[[str], Awaitable[None]]:
    async def check(endpoint_id: str) -> None:
        if endpoint_id != expected:
            raise EndpointError(404, f"endpoint {endpoint_id} not found")

    return check


def _sweep_dependency(engine: "LocalEndpoint") -> Callable[[], Awaitable[None]]:
    async def sweep() -> None:  # async: runs on the loop, not in FastAPI's threadpool
        engine.sweep()

    return sweep


def _build_router(engine: LocalEndpoint) -> APIRouter:
    config = engine.config
    router = APIRouter(
        prefix="/v2/{endpoint_id}",
        dependencies=[
            Depends(_authorizer(config.api_key)),
            Depends(_endpoint_checker(config.endpoint_id)),
            Depends(_sweep_dependency(engine)),
        ],
    )

    @router.post("/run")
    async def run(request: Request) -> dict[str, Any]:
        parsed = parse_run_request(await request.body(), limit=RUN_BODY_LIMIT, config=config)
        job = engine.submit(parsed)
        return {"id": job.id, "status": job.status.value}

    @router.post("/runsync")
    async def runsync(
        request: Request, wait: int | None = Query(None, ge=0, description="ms to wait")
    ) -> dict[str, Any]:
        parsed = parse_run_request(await request.body(), limit=RUNSYNC_BODY_LIMIT, config=config)
        job = engine.submit(parsed, prefix="sync-")
        await engine.wait(job, (config.runsync_wait_ms if wait is None else wait) / 1000)
        return engine.get(job.id).status_body(time.monotonic())

    @router.api_route("/status/{job_id}", methods=["GET", "POST"])
    async def status(job_id: str) -> dict[str, Any]:
        return engine.get(job_id).status_body(time.monotonic())

    @router.post("/cancel/{job_id}")
    async def cancel(job_id: str) -> dict[str, Any]:
        job = engine.cancel(job_id)
        return {"id": job.id, "status": job.status.value}

    @router.post("/retry/{job_id}")
    async def retry(job_id: str) -> dict[str, Any]:
        job = engine.retry(job_id)
        return {"id": job.id, "status": job.status.value}

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return engine.health()

    @router.post("/purge-queue")
    async def purge_queue() -> dict[str, Any]:
        return {"removed": engine.purge_queue(), "status": "completed"}

    return router


async def _endpoint_error(request: Request, exc: Exception) -> JSONResponse:
    message = exc.message if isinstance(exc, EndpointError) else str(exc)
    status_code = exc.status_code if isinstance(exc, EndpointError) else 500
    return JSONResponse({"error": message}, status_code=status_code)


def create_endpoint_app(
    handler: JobHandler,
    *,
    endpoint_id: str = "local",
    api_key: str | None = None,
    job_concurrency: int = 8,
    webhook_attempts: int = 3,
    webhook_retry_delay_s: float = 10.0,
    result_retention_s: float = 1800.0,
    default_execution_timeout_ms: int = 600_000,
    default_ttl_ms: int = 86_400_000,
    runsync_wait_ms: int = 90_000,
    concurrency_modifier: ConcurrencyModifier | None = None,
    webhook_hosts: Collection[str] = (),
) -> FastAPI:
    """A FastAPI app serving `/v2/{endpoint_id}/…` like RunPod, running `handler` per job.

    At most `job_concurrency` jobs run at once, and with a `concurrency_modifier` only as
    many as it returns when asked before each job is taken. Webhooks go to loopback hosts
    and `webhook_hosts` (lower case) only.
    """
    config = EndpointConfig(
        endpoint_id=endpoint_id,
        api_key=api_key,
        job_concurrency=max(1, job_concurrency),
        webhook_attempts=webhook_attempts,
        webhook_retry_delay_s=webhook_retry_delay_s,
        result_retention_s=result_retention_s,
        default_execution_timeout_ms=default_execution_timeout_ms,
        default_ttl_ms=default_ttl_ms,
        runsync_wait_ms=runsync_wait_ms,
        webhook_hosts=frozenset(webhook_hosts),
    )
    engine = LocalEndpoint(handler, config, concurrency_modifier)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title=f"local RunPod endpoint {endpoint_id}", lifespan=lifespan)
    app.state.endpoint = engine
    app.add_exception_handler(EndpointError, _endpoint_error)
    app.include_router(_build_router(engine))
    return app


def build_endpoint_app_from_settings(settings: WorkerSettings) -> FastAPI:
    """The local endpoint running pixelfleet's real handler, configured from WorkerSettings."""
    handler, concurrency_modifier, _ = make_handler(settings)
    return create_endpoint_app(
        handler,
        endpoint_id=settings.endpoint_id,
        api_key=settings.endpoint_api_key or None,
        job_concurrency=settings.worker_max_jobs,  # the most the modifier ever allows
        concurrency_modifier=concurrency_modifier,  # asked before each job, as runpod does
        webhook_attempts=settings.webhook_attempts,
        webhook_retry_delay_s=settings.webhook_retry_delay_s,
        result_retention_s=settings.result_retention_s,
        webhook_hosts=settings.endpoint_webhook_hosts,
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve the RunPod API locally.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    settings = WorkerSettings()  # fields come from the environment
    configure_logging(settings.log_level, settings.secrets(), settings.log_format)
    uvicorn.run(
        build_endpoint_app_from_settings(settings),
        host=args.host,
        port=args.port,
        log_config=None,  # uvicorn's loggers go through configure_logging's redacting handler
    )


if __name__ == "__main__":
    main()
