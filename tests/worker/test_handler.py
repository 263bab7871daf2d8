"""The RunPod handler (worker/handler.py): input validation, the result contract, runs
that repeat, and the concurrency_modifier that follows the free image slots (also inside
the local endpoint)."""

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx

from shared.contract import DispatchInput, DispatchOutput, ImageParams, WorkItem
from shared.storage import LocalStorage
from tests.conftest import png_bytes
from tests.fakes.dispatches import make_dispatch
from tests.fakes.servers import run_server
from worker.handler import make_handler
from worker.local_endpoint import build_endpoint_app_from_settings
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
    bad = asyncio.run(handler({"id": "rp-1", "input": {"version": 2, "items": []}}))
    assert "invalid input" in bad["error"]
    for unknown in (1, 99):  # version 1 had no text tasks: a worker of 2 refuses it too
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
            prompt="p",
            params=ImageParams(model="gemini-2.5-flash-image", seed=n),
            output_key=f"out/{name}_{n}",
        )
        for n in range(size)
    ]
    dispatch = DispatchInput(dispatch_id=name, job_id="j", items=items)
    return {"id": name, "input": dispatch.model_dump(mode="json")}


def test_concurrency_modifier_follows_what_the_image_slots_can_take(tmp_path: Path) -> None:
    settings = WorkerSettings(
        storage_url=str(tmp_path), provider="offline", worker_concurrency=4, worker_max_jobs=8
    )
    handler, modifier, runner = make_handler(settings)
    provider = GatedProvider()
    runner.provider = provider

    async def scenario() -> list[int]:
        seen = [modifier(1)]  # fresh: dispatches assumed of 16, one fills 4 slots, +1 waiting
        tasks = []
        for name in ("a", "b", "c"):  # dispatches of 2 images on 4 slots
            tasks.append(asyncio.create_task(handler(_dispatch_of(name, 2))))
            await asyncio.sleep(0.01)
            seen.append(modifier(seen[-1]))
        seen.append(runner.job_capacity(2))  # bounded by worker_max_jobs
        provider.gate.set()
        outputs = await asyncio.gather(*tasks)
        assert all(r["status"] == "succeeded" for o in outputs for r in o["results"])
        seen.append(modifier(seen[-2]))
        return seen

    # Two dispatches of 2 fill 4 slots, one more waits; steady however busy the slots are,
    # since runpod drains the worker before applying a changed value.
    assert asyncio.run(scenario()) == [2, 3, 3, 3, 2, 3]

    small = WorkerSettings(storage_url=str(tmp_path), provider="offline", worker_concurrency=1)
    handler, modifier, runner = make_handler(small)
    asyncio.run(handler(_dispatch_of("big", 3)))
    assert modifier(5) == 2  # a dispatch bigger than the slots, and one waiting
    semi = WorkerSettings(storage_url=str(tmp_path), provider="offline", worker_concurrency=32)
    handler, modifier, runner = make_handler(semi)
    asyncio.run(handler(_dispatch_of("set", 4)))
    assert modifier(1) == 8  # sets of 4: 8 fill 32 slots, +1 waiting, capped by max jobs 8


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
    assert peak == 2  # one dispatch fills the 2 slots, one waits; the other two stay queued
