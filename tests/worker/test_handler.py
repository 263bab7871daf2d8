"""The RunPod handler (worker/handler.py): input validation, the result contract, runs
that repeat, and the concurrency_modifier that follows the free image slots (also inside
the local endpoint)."""

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from shared.contract import DispatchInput, DispatchOutput, ImageParams, WorkItem
from shared.storage import LocalStorage
from tests.conftest import png_bytes
from tests.fakes.dispatches import make_dispatch
from tests.fakes.servers import run_server
from worker.handler import make_handler
from worker.local_endpoint import (
    EndpointConfig,
    LocalEndpoint,
    RunPodStatus,
    RunRequest,
    build_endpoint_app_from_settings,
)
from worker.providers import GeneratedImage, GenerationRequest, Provider
from worker.settings import WorkerSettings


class EveryCallDifferent(Provider):
    """Like a real model: the same request twice gives two different pictures."""

    name = "offline"

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.calls += 1
        return GeneratedImage(data=png_bytes(32, 32, (self.calls, 0, 0)), content_type="image/png")


def test_a_dispatch_run_twice_never_overwrites_the_first_runs_files(tmp_path: Path) -> None:
    """RunPod may run one dispatch twice (an accepted /run retried after a timeout): each run
    writes under keys of its own, so what the first run reported stays true."""
    storage = LocalStorage(tmp_path)
    handler, _, runner = make_handler(WorkerSettings(storage_url=str(tmp_path)))
    runner.provider = EveryCallDifferent()
    dispatch = {"input": make_dispatch(storage, 2).model_dump(mode="json")}
    first = asyncio.run(handler({"id": "rp-first", **dispatch}))["results"]
    second = asyncio.run(handler({"id": "rp-second", **dispatch}))["results"]
    for old, new in zip(first, second, strict=True):
        assert old["output_uri"] != new["output_uri"] and old["sha256"] != new["sha256"]
        assert old["output_uri"].startswith(storage.uri("groups/g/outputs/job_1/out_"))
        kept = storage.get_bytes(storage.key_of(old["output_uri"]))
        assert hashlib.sha256(kept).hexdigest() == old["sha256"]
        assert storage.exists(storage.key_of(old["thumbnail_uri"]))
    again = asyncio.run(handler({"id": "rp-first", **dispatch}))["results"]
    assert [r["output_uri"] for r in again] == [r["output_uri"] for r in first]  # stable per run


def test_handler_validates_input_and_returns_the_contract(tmp_path: Path) -> None:
    settings = WorkerSettings(storage_url=str(tmp_path), provider="offline", worker_max_jobs=5)
    handler, concurrency_modifier, runner = make_handler(settings)
    assert 1 <= concurrency_modifier(1) <= 5
    bad = asyncio.run(handler({"id": "rp-1", "input": {"version": 4, "items": []}}))
    assert "invalid input" in bad["error"]
    for unknown in (1, 2, 3, 99):  # 1 had no text tasks, 2 no progress, 3 no batch tasks
        future = asyncio.run(handler({"id": "rp-2", "input": {"version": unknown}}))
        assert future["error"] == f"unsupported contract version {unknown}"
    good = asyncio.run(
        handler(
            {"id": "rp-3", "input": json.loads(make_dispatch(runner.storage, 2).model_dump_json())}
        )
    )  # type: ignore[arg-type]
    assert [r.status for r in DispatchOutput.model_validate(good).results] == [
        "succeeded",
        "succeeded",
    ]


# --- the concurrency_modifier follows the free image slots --------------------------------


class GatedProvider(Provider):
    """Holds every image until `gate` is set."""

    name = "offline"

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        await self.gate.wait()
        return GeneratedImage(data=png_bytes(), content_type="image/png")


def _dispatch_of(name: str, size: int) -> dict[str, Any]:
    items = [
        WorkItem(
            output_id=f"{name}_{n}",
            prompt=f"{name}_{n}",
            params=ImageParams(model="gemini-2.5-flash-image", seed=n),
            output_key=f"out/{name}_{n}",
        )
        for n in range(size)
    ]
    dispatch = DispatchInput(dispatch_id=name, job_id="j", items=items)
    return {"id": name, "input": dispatch.model_dump(mode="json")}


class PerImageProvider(Provider):
    """Holds each image until its own gate (by prompt) is set; `started` lists the prompts
    being generated, in order."""

    name = "offline"

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []

    def gate(self, prompt: str) -> asyncio.Event:
        return self.gates.setdefault(prompt, asyncio.Event())

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.started.append(request.prompt)
        await self.gate(request.prompt).wait()
        return GeneratedImage(data=png_bytes(), content_type="image/png")


async def _settle() -> None:
    for _ in range(20):  # let every task run until it waits on a gate
        await asyncio.sleep(0)


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (storing runs in threads) until `condition` holds; fail after 10 s."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def test_concurrency_modifier_takes_jobs_by_free_image_slots(tmp_path: Path) -> None:
    """Sets of 2 on 4 image slots: the worker holds what fills the slots plus half the
    slots' worth waiting (one set); when a set is down to one slow image, its freed slot
    takes a new set."""
    settings = WorkerSettings(
        storage_url=str(tmp_path), provider="offline", worker_concurrency=4, worker_max_jobs=8
    )
    handler, modifier, runner = make_handler(settings)
    provider = PerImageProvider()
    runner.provider = provider

    async def scenario() -> None:
        assert modifier(1) == 1  # fresh: dispatches assumed of 16, one fills the 4 slots
        tasks = {}
        for name, wanted_after in (("a", 3), ("b", 3), ("c", 3)):
            tasks[name] = asyncio.create_task(handler(_dispatch_of(name, 2)))
            await _settle()
            assert modifier(1) == wanted_after
        # a and b fill the 4 slots, c waits: no more jobs (the queue keeps them for others)
        assert sorted(provider.started) == ["a_0", "a_1", "b_0", "b_1"]
        assert runner.job_capacity(2) == 2  # bounded by worker_max_jobs
        for prompt in ("a_0", "b_0", "b_1"):  # a is down to its slow a_1; b is done
            provider.gate(prompt).set()
        await tasks["b"]
        await _until(lambda: runner.unfinished == 3)
        assert set(provider.started) == {"a_0", "a_1", "b_0", "b_1", "c_0", "c_1"}
        assert modifier(1) == 3  # a (1 image left) and c hold 3 slots: one more set
        tasks["d"] = asyncio.create_task(handler(_dispatch_of("d", 2)))
        await _settle()
        assert provider.started[-1] == "d_0"  # the slot a's slow image left free is used
        assert modifier(1) == 3  # full again, one image waiting: take nothing more
        for gate in ("a_1", "c_0", "c_1", "d_0", "d_1"):
            provider.gate(gate).set()
        outputs = await asyncio.gather(*tasks.values())
        assert all(r["status"] == "succeeded" for o in outputs for r in o["results"])
        assert (runner.held, runner.unfinished) == (0, 0)
        assert modifier(1) == 3  # idle: 4 slots and one set waiting, of 2 each

    asyncio.run(scenario())

    semi = WorkerSettings(storage_url=str(tmp_path), provider="offline", worker_concurrency=32)
    handler, modifier, runner = make_handler(semi)
    asyncio.run(handler(_dispatch_of("set", 4)))
    assert modifier(1) == 12  # sets of 4: 8 fill 32 slots, 4 wait (half the slots' worth)


def test_the_local_endpoint_leaves_jobs_queued_while_the_image_slots_are_full(
    tmp_path: Path,
) -> None:
    """p8's situation, small: 2 image slots, 4 jobs of 2 images of 0.3 s each."""
    settings = WorkerSettings(
        storage_url=str(tmp_path),
        provider="offline",
        worker_concurrency=2,
        worker_max_jobs=8,
        offline_latency_ms=300,
        endpoint_api_key="k",
    )
    with (
        run_server(build_endpoint_app_from_settings(settings)) as url,
        httpx.Client(
            base_url=f"{url}/v2/local", headers={"Authorization": "Bearer k"}, timeout=10
        ) as client,
    ):
        ids = [
            client.post("/run", json={"input": _dispatch_of(f"d{n}", 2)["input"]}).json()["id"]
            for n in range(4)
        ]
        peak, deadline = 0, time.monotonic() + 20
        while True:
            statuses = [client.get(f"/status/{job_id}").json()["status"] for job_id in ids]
            peak = max(peak, statuses.count("IN_PROGRESS"))
            if all(status == "COMPLETED" for status in statuses) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    assert statuses == ["COMPLETED"] * 4
    # One dispatch fills the 2 slots, one waits, the others stay queued. The next is taken
    # the moment a dispatch's last image ends, which shows IN_PROGRESS until its handler
    # returns: 3 at most, never all four.
    assert peak in (2, 3)


def test_a_full_worker_hears_as_soon_as_an_image_ends(tmp_path: Path) -> None:
    """`SlotModifier.freed` returns when one of the worker's images ends, else after its
    timeout: a scaler that found the worker full asks again at once, not a second later."""
    settings = WorkerSettings(storage_url=str(tmp_path), provider="offline", worker_concurrency=2)
    handler, modifier, runner = make_handler(settings)
    provider = PerImageProvider()
    runner.provider = provider

    async def scenario() -> None:
        started = time.monotonic()
        await modifier.freed(0.05)  # nothing runs: the timeout
        assert time.monotonic() - started >= 0.05
        task = asyncio.create_task(handler(_dispatch_of("a", 2)))
        await _settle()
        freed = asyncio.create_task(modifier.freed(60))
        await _settle()
        assert not freed.done()
        provider.gate("a_0").set()
        await asyncio.wait_for(freed, 10)
        assert runner.unfinished == 1
        provider.gate("a_1").set()
        await task

    asyncio.run(scenario())


def test_the_local_endpoint_takes_a_job_as_soon_as_its_slots_free(tmp_path: Path) -> None:
    """The endpoint, full, takes the next job when an image ends, not on its poll cadence
    (here a minute): as the worker's SlotScaler does on RunPod."""
    settings = WorkerSettings(
        storage_url=str(tmp_path), provider="offline", worker_concurrency=2, worker_max_jobs=8
    )
    handler, modifier, runner = make_handler(settings)
    provider = PerImageProvider()
    runner.provider = provider

    async def scenario() -> None:
        engine = LocalEndpoint(handler, EndpointConfig(job_concurrency=8, full_poll_s=60), modifier)
        await engine.start()
        try:
            jobs = [
                engine.submit(
                    RunRequest(
                        input=_dispatch_of(name, 2)["input"],
                        webhook=None,
                        execution_timeout_ms=60_000,
                        ttl_ms=60_000,
                    )
                )
                for name in ("a", "b", "c")
            ]
            await _until(lambda: runner.held == 2)
            await _settle()
            # a fills the 2 slots, b waits for them, c stays queued: full
            assert sorted(provider.started) == ["a_0", "a_1"]
            assert [job.status for job in jobs][1:] == [
                RunPodStatus.IN_PROGRESS,
                RunPodStatus.IN_QUEUE,
            ]
            provider.gate("a_0").set()
            provider.gate("a_1").set()
            # Taken once a's images end (fails after 10 s; the poll is a minute).
            await _until(lambda: jobs[2].status is RunPodStatus.IN_PROGRESS)
            assert runner.held >= 2
            for gate in ("b_0", "b_1", "c_0", "c_1"):
                provider.gate(gate).set()
            await asyncio.wait_for(asyncio.gather(*(job.finished.wait() for job in jobs)), 10)
            assert [job.status for job in jobs] == [RunPodStatus.COMPLETED] * 3
        finally:
            await engine.stop()

    asyncio.run(scenario())
