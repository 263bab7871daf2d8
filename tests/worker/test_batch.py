"""The batch tasks of contract 4 (worker/batch.py) through the handler: against a fake Gemini
Batch API on a real socket, driven by the real google-genai SDK, and with the offline batch
provider of the embedded default."""

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from google.genai import _api_client as genai_api_client
from pydantic import ValidationError

from shared.contract import (
    BatchOutput,
    BatchState,
    DispatchInput,
    DispatchOutput,
    DispatchTask,
    ImageParams,
    Task,
    WorkItem,
)
from shared.images import output_size
from shared.model_table import model_table
from shared.storage import LocalStorage
from tests.conftest import png_bytes
from tests.fakes.gemini import KEYWORD_BLOCK_PROMPT, KEYWORD_UNSAFE, google_error
from tests.fakes.gemini_batch import KEYWORD_FAIL_REQUEST, FakeGeminiBatch
from tests.fakes.receiver import run_receiver
from tests.fakes.servers import run_server
from worker.batch import NO_RESULT, batch_key
from worker.handler import Handler, make_handler
from worker.local_endpoint import build_endpoint_app_from_settings
from worker.providers import gemini_batch
from worker.providers.offline import OfflineProvider
from worker.providers.offline_batch import OfflineBatchProvider
from worker.settings import WorkerSettings

KEY = "AIzaBATCH-test-key-never-logged"
FLASH_31 = "gemini-3.1-flash-image"


@pytest.fixture
def fake() -> Iterator[FakeGeminiBatch]:
    with FakeGeminiBatch(api_key=KEY) as server:
        yield server


_loops: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(autouse=True)
def _close_loops() -> Iterator[None]:
    yield
    while _loops:
        _loops.pop().close()


class Worker:
    """The handler on its settings, with a storage holding one reference image. Its tasks
    run on one event loop, as on a worker (the provider's HTTP connections belong to it)."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.loop = asyncio.new_event_loop()
        _loops.append(self.loop)
        self.storage = LocalStorage(tmp_path / "storage")
        self.settings = WorkerSettings(
            storage_url=str(tmp_path / "storage"), data_dir=tmp_path, **settings
        )
        self.handler: Handler = make_handler(self.settings)[0]
        key = "groups/g/inputs/ref.png"
        stored = self.storage.put_bytes(key, png_bytes(), content_type="image/png")
        self.reference = self.storage.uri(stored.key)
        self.runs = 0

    def items(self, *prompts: str, model: str = FLASH_31, size: str = "512") -> list[WorkItem]:
        return [
            WorkItem(
                output_id=f"out_{n}",
                prompt=prompt,
                reference_uris=[self.reference],
                params=ImageParams(model=model, seed=n, image_size=size, aspect_ratio="16:9"),
                output_key=f"groups/g/outputs/job_1/out_{n}",
            )
            for n, prompt in enumerate(prompts)
        ]

    def run(
        self,
        task: DispatchTask,
        items: list[WorkItem] | None = None,
        batch: str | None = None,
        dispatch_id: str = "dsp_1",
    ) -> dict[str, Any]:
        dispatch = DispatchInput(
            dispatch_id=dispatch_id, job_id="job_1", task=task, items=items or [], batch=batch
        )
        self.runs += 1
        job = {"id": f"rp-{self.runs}", "input": json.loads(dispatch.model_dump_json())}
        return self.loop.run_until_complete(self.handler(job))

    def submit(self, items: list[WorkItem], dispatch_id: str = "dsp_1") -> BatchOutput:
        return BatchOutput.model_validate(
            self.run(DispatchTask.BATCH_SUBMIT, items, dispatch_id=dispatch_id)
        )

    def poll(self, name: str) -> BatchOutput:
        return BatchOutput.model_validate(self.run(DispatchTask.BATCH_POLL, batch=name))

    def collect(self, items: list[WorkItem], name: str) -> DispatchOutput:
        return DispatchOutput.model_validate(self.run(DispatchTask.BATCH_COLLECT, items, name))


def gemini_worker(tmp_path: Path, fake: FakeGeminiBatch, **settings: Any) -> Worker:
    return Worker(
        tmp_path,
        provider="gemini",
        gemini_api_key=KEY,
        gemini_base_url=fake.base_url,
        **settings,
    )


def test_a_batch_with_mixed_results_is_collected_as_online_results_at_batch_price(
    tmp_path: Path, fake: FakeGeminiBatch
) -> None:
    worker = gemini_worker(tmp_path, fake)
    prompts = ["a lighthouse", f"a {KEYWORD_UNSAFE} scene", KEYWORD_BLOCK_PROMPT]
    items = worker.items(*prompts, f"{KEYWORD_FAIL_REQUEST} please")
    submitted = worker.submit(items)
    assert submitted.task == "batch_submit" and submitted.results == []
    info = submitted.batch
    assert info is not None and info.created and info.input == "inline"
    assert info.state == BatchState.PENDING and info.requests == 4 and info.pending == 4
    sent = fake.only_batch()
    assert sent.display_name == batch_key("dsp_1") and sent.model == FLASH_31
    assert [key for key, _ in sent.requests] == [item.output_id for item in items]
    first = sent.requests[0][1]  # built as the online provider builds a request
    assert first["generationConfig"] == {
        "seed": 0,
        "responseModalities": ["IMAGE"],
        "imageConfig": {"aspectRatio": "16:9", "imageSize": "512"},
    }
    inline = first["contents"][0]["parts"][0]["inlineData"]
    assert inline["data"] and inline["mime_type"] == "image/png"  # as the SDK sends it

    fake.set_state(info.name, "BATCH_STATE_RUNNING")
    assert worker.poll(info.name).batch.state == BatchState.RUNNING  # type: ignore[union-attr]
    fake.finish(info.name)
    done = worker.poll(info.name).batch
    assert done is not None and done.state == BatchState.SUCCEEDED
    assert (done.requests, done.succeeded, done.failed) == (4, 3, 1)

    collected = worker.collect(items, info.name)
    image, unsafe, refused, failed = collected.results
    assert image.status == "succeeded" and image.provider == "gemini" and image.seed == 0
    assert image.cost_usd == model_table()[FLASH_31].batch_price_for("512") == 0.0225
    assert image.usage is not None and image.usage["candidatesTokenCount"] == 1290
    assert image.output_uri is not None and image.thumbnail_uri is not None
    stored = worker.storage.get_bytes(worker.storage.key_of(image.output_uri))
    assert hashlib.sha256(stored).hexdigest() == image.sha256 and len(stored) == image.bytes
    assert (image.width, image.height) == (42, 24)  # 512 px at 16:9, the fake at 1/16
    assert worker.storage.exists(worker.storage.key_of(image.thumbnail_uri))
    assert image.output_uri.startswith(worker.storage.uri("groups/g/outputs/job_1/out_0-"))
    assert (unsafe.status, unsafe.error) == ("blocked", "output blocked: IMAGE_SAFETY")
    assert (refused.status, refused.error) == ("blocked", "prompt blocked: SAFETY")
    assert failed.status == "failed" and failed.cost_usd is None
    assert failed.error == "Gemini batch request failed: 13 Internal error encountered."
    assert not fake.calls  # nothing went to the online generateContent


def test_a_submit_run_again_finds_its_batch_and_creates_no_second_one(
    tmp_path: Path, fake: FakeGeminiBatch
) -> None:
    worker = gemini_worker(tmp_path, fake)
    items = worker.items("a fox", "an owl")
    first = worker.submit(items).batch
    assert first is not None and first.created
    for other in ("dsp_2", "dsp_3", "dsp_4"):  # newer batches: ours is on the list's 2nd page
        worker.submit(worker.items("a bee"), dispatch_id=other)
    assert fake.created == 4
    again = worker.submit(items).batch
    assert again is not None and not again.created and again.input is None
    assert again.name == first.name and again.requests == 2
    assert fake.created == 4 and len(fake.batches) == 4


def test_requests_beyond_the_inline_limit_go_as_a_jsonl_file(
    tmp_path: Path, fake: FakeGeminiBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(genai_api_client, "CHUNK_SIZE", 256)  # the SDK's chunks, 8 MB, smaller
    worker = gemini_worker(tmp_path, fake, gemini_batch_inline_max_bytes=600)
    items = worker.items("a fox", f"an {KEYWORD_UNSAFE} owl")
    info = worker.submit(items).batch
    assert info is not None and info.input == "file" and info.requests == 2
    (upload,) = fake.uploads.values()
    assert upload.final and upload.mime_type == "jsonl" and upload.chunks == 4  # 934 bytes
    assert upload.display_name == "pixelfleet-dsp_1"
    lines = [json.loads(line) for line in bytes(upload.data).decode().splitlines()]
    assert [line["key"] for line in lines] == ["out_0", "out_1"]
    assert lines[0]["request"]["generation_config"]["seed"] == 0  # Google's file examples
    assert fake.only_batch().input == "file"

    fake.finish(info.name)
    image, unsafe = worker.collect(items, info.name).results
    assert image.status == "succeeded" and image.cost_usd == 0.0225
    assert worker.storage.exists(worker.storage.key_of(image.output_uri or ""))
    assert unsafe.status == "blocked"


def test_two_runs_of_one_submit_at_once_in_a_worker_create_one_batch(
    tmp_path: Path, fake: FakeGeminiBatch
) -> None:
    worker = gemini_worker(tmp_path, fake)
    dispatch = DispatchInput(
        dispatch_id="dsp_1", job_id="job_1", task="batch_submit", items=worker.items("a fox")
    )
    body = json.loads(dispatch.model_dump_json())

    async def both() -> list[dict[str, Any]]:
        runs = ({"id": f"rp-{n}", "input": body} for n in (1, 2))
        return list(await asyncio.gather(*map(worker.handler, runs)))

    first, second = map(BatchOutput.model_validate, worker.loop.run_until_complete(both()))
    assert first.batch is not None and second.batch is not None
    assert first.batch.name == second.batch.name and fake.created == 1
    assert sorted([first.batch.created, second.batch.created]) == [False, True]


def test_collect_posts_its_results_as_progress_as_generate_does(
    tmp_path: Path, fake: FakeGeminiBatch
) -> None:
    worker = gemini_worker(tmp_path, fake)
    items = worker.items("a fox", KEYWORD_BLOCK_PROMPT)
    name = worker.submit(items).batch.name  # type: ignore[union-attr]
    fake.finish(name)
    with run_receiver() as receiver:
        dispatch = DispatchInput(
            dispatch_id="dsp_1",
            job_id="job_1",
            task="batch_collect",
            items=items,
            batch=name,
            progress_url=f"{receiver.url}/progress",
        )
        job = {"id": "rp-c", "input": json.loads(dispatch.model_dump_json())}
        output = DispatchOutput.model_validate(worker.loop.run_until_complete(worker.handler(job)))
        posted = [
            result["output_id"]
            for request in receiver.at("/progress")
            for result in request.json["results"]
        ]
    assert sorted(posted) == ["out_0", "out_1"]
    assert [r.status for r in output.results] == ["succeeded", "blocked"]


def test_requests_beyond_the_files_api_cap_create_nothing(
    tmp_path: Path, fake: FakeGeminiBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gemini_batch, "FILE_MAX_BYTES", 1_000)  # 2 GB at Google
    worker = gemini_worker(tmp_path, fake, gemini_batch_inline_max_bytes=600)
    refused = worker.run(DispatchTask.BATCH_SUBMIT, worker.items("a fox", "an owl", "a bee"))
    assert "split the dispatch over several batches" in refused["error"]
    assert fake.created == 0 and not fake.uploads


def test_a_small_batch_goes_inline_under_the_limit(tmp_path: Path, fake: FakeGeminiBatch) -> None:
    worker = gemini_worker(tmp_path, fake, gemini_batch_inline_max_bytes=100_000)
    info = worker.submit(worker.items("a fox")).batch
    assert info is not None and info.input == "inline" and not fake.uploads


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("BATCH_STATE_PENDING", BatchState.PENDING),
        ("BATCH_STATE_RUNNING", BatchState.RUNNING),
        ("BATCH_STATE_SUCCEEDED", BatchState.SUCCEEDED),
        ("BATCH_STATE_FAILED", BatchState.FAILED),
        ("BATCH_STATE_CANCELLED", BatchState.CANCELLED),
        ("BATCH_STATE_EXPIRED", BatchState.EXPIRED),
        ("BATCH_STATE_UNSPECIFIED", BatchState.PENDING),
    ],
)
def test_poll_maps_googles_states(
    tmp_path: Path, fake: FakeGeminiBatch, raw: str, state: BatchState
) -> None:
    worker = gemini_worker(tmp_path, fake)
    name = worker.submit(worker.items("a fox")).batch.name  # type: ignore[union-attr]
    fake.set_state(name, raw)
    polled = worker.poll(name)
    assert polled.task == "batch_poll" and polled.batch is not None
    assert polled.batch.state == state and polled.batch.requests == 1


def test_a_batch_that_ends_without_results_fails_each_image_with_why(
    tmp_path: Path, fake: FakeGeminiBatch
) -> None:
    worker = gemini_worker(tmp_path, fake)
    items = worker.items("a fox", "an owl")
    name = worker.submit(items).batch.name  # type: ignore[union-attr]
    early = worker.run(DispatchTask.BATCH_COLLECT, items, name)
    assert early == {"error": f"batch {name} is pending: there is nothing to collect yet"}
    fake.set_state(name, "BATCH_STATE_FAILED", message="Quota of batch jobs exceeded")
    polled = worker.poll(name).batch
    assert polled is not None and polled.error == "13 Quota of batch jobs exceeded"
    results = worker.collect(items, name).results
    assert [r.status for r in results] == ["failed", "failed"]
    assert results[0].error == "the Gemini batch failed: 13 Quota of batch jobs exceeded"
    assert results[0].attempts == 0 and results[0].output_id == "out_0"
    fake.set_state(name, "BATCH_STATE_EXPIRED")
    assert worker.collect(items, name).results[1].error.startswith("the Gemini batch expired")  # type: ignore[union-attr]


def test_an_item_missing_from_the_results_fails_and_a_bad_reference_is_left_out(
    tmp_path: Path, fake: FakeGeminiBatch
) -> None:
    worker = gemini_worker(tmp_path, fake)
    items = worker.items("a fox", "an owl")
    items[1].reference_uris = [worker.storage.uri("groups/g/inputs/missing.png")]
    submitted = worker.submit(items)
    (left_out,) = submitted.results
    assert left_out.output_id == "out_1" and left_out.status == "failed"
    assert left_out.error is not None and left_out.error.startswith("reference unreadable")
    assert [key for key, _ in fake.only_batch().requests] == ["out_0"]
    name = submitted.batch.name  # type: ignore[union-attr]
    fake.finish(name)
    fox, owl = worker.collect(items, name).results
    assert fox.status == "succeeded" and (owl.status, owl.error) == ("failed", NO_RESULT)


def test_cancel_cancels_the_batch_once_and_leaves_an_ended_one_alone(
    tmp_path: Path, fake: FakeGeminiBatch
) -> None:
    worker = gemini_worker(tmp_path, fake)
    name = worker.submit(worker.items("a fox")).batch.name  # type: ignore[union-attr]
    cancelled = BatchOutput.model_validate(worker.run(DispatchTask.BATCH_CANCEL, batch=name))
    assert cancelled.task == "batch_cancel" and cancelled.batch is not None
    assert cancelled.batch.state == BatchState.CANCELLED
    assert fake.only_batch().state == "BATCH_STATE_CANCELLED"
    again = BatchOutput.model_validate(worker.run(DispatchTask.BATCH_CANCEL, batch=name))
    assert again.batch is not None and again.batch.state == BatchState.CANCELLED
    other = worker.submit(worker.items("an owl"), dispatch_id="dsp_2").batch
    assert other is not None
    fake.finish(other.name)
    kept = BatchOutput.model_validate(worker.run(DispatchTask.BATCH_CANCEL, batch=other.name))
    assert kept.batch is not None and kept.batch.state == BatchState.SUCCEEDED


def test_batch_service_trouble_fails_the_task_never_leaking_the_key(
    tmp_path: Path, fake: FakeGeminiBatch
) -> None:
    worker = gemini_worker(tmp_path, fake)
    missing = worker.run(DispatchTask.BATCH_POLL, batch="batches/nope")
    assert missing["error"].startswith("Gemini batch lookup failed (404 NOT_FOUND")
    assert "not a Gemini batch name" in worker.run(DispatchTask.BATCH_POLL, batch="x/y")["error"]
    wrong = Worker(
        tmp_path / "wrong",
        provider="gemini",
        gemini_api_key="bad-key",
        gemini_base_url=fake.base_url,
    )
    refused = wrong.run(DispatchTask.BATCH_SUBMIT, wrong.items("a fox"))
    assert "Gemini batch list failed (400" in refused["error"] and KEY not in refused["error"]
    assert fake.created == 0


def test_transient_trouble_at_google_fails_the_task_with_what_failed(tmp_path: Path) -> None:
    """respx on the wire: Google's 503, a 429 and a dropped connection each fail the task
    (the control plane asks again: a re-run submit finds a batch the failed one created)."""
    base = "https://gemini.test"
    worker = Worker(tmp_path, provider="gemini", gemini_api_key=KEY, gemini_base_url=base)
    unavailable = google_error(503, "UNAVAILABLE", "The service is currently unavailable.")
    quota = google_error(429, "RESOURCE_EXHAUSTED", "Too many batches.")
    with respx.mock(base_url=base) as google:
        google.get("/v1beta/batches/b1").respond(503, json=unavailable)
        google.get("/v1beta/batches/b2").mock(side_effect=httpx.ConnectError("refused"))
        google.get("/v1beta/batches").respond(200, json={"operations": []})
        google.post(url__regex=r"/v1beta/models/.*:batchGenerateContent$").respond(429, json=quota)
        polled = worker.run(DispatchTask.BATCH_POLL, batch="batches/b1")
        dropped = worker.run(DispatchTask.BATCH_POLL, batch="batches/b2")
        refused = worker.run(DispatchTask.BATCH_SUBMIT, worker.items("a fox"))
    assert polled == {
        "error": "Gemini batch lookup failed (503 UNAVAILABLE: The service is currently "
        "unavailable.)"
    }
    assert dropped == {"error": "Gemini batch lookup failed: ConnectError: refused"}
    assert refused == {
        "error": "Gemini batch creation failed (429 RESOURCE_EXHAUSTED: Too many batches.)"
    }


def test_the_contract_checks_the_fields_of_each_task() -> None:
    item = WorkItem(
        output_id="o", prompt="p", params=ImageParams(model=FLASH_31, seed=1), output_key="k"
    )
    text = item.model_copy(update={"task": Task.TEXT, "text_model": "gemini-2.5-flash"})
    other_model = item.model_copy(
        update={"params": ImageParams(model="gemini-2.5-flash-image", seed=2)}
    )
    ok = DispatchInput(dispatch_id="d", job_id="j", items=[item])
    assert ok.task == DispatchTask.GENERATE and ok.batch is None
    bad: list[dict[str, Any]] = [
        {"task": "batch_poll"},  # no batch named
        {"task": "batch_poll", "batch": "batches/1", "items": [item]},  # items on a poll
        {"task": "generate", "items": [item], "batch": "batches/1"},
        {"task": "batch_submit", "items": [item], "batch": "batches/1"},
        {"task": "batch_collect", "batch": "batches/1"},  # nothing to collect into
        {"task": "batch_submit", "items": [item, text]},
        {"task": "batch_submit", "items": [item, other_model]},
        {"task": "generate"},
    ]
    for fields in bad:
        with pytest.raises(ValidationError):
            DispatchInput(dispatch_id="d", job_id="j", **fields)
    DispatchInput(dispatch_id="d", job_id="j", task="batch_cancel", batch="batches/1")


# --- the offline batch provider (the embedded default) ------------------------------------


def test_the_offline_batch_provider_end_to_end_through_the_handler(tmp_path: Path) -> None:
    worker = Worker(
        tmp_path, provider="offline", offline_batch_pending_s=0, offline_batch_running_s=0
    )
    items = worker.items("a harbour", "a market")
    info = worker.submit(items).batch
    assert info is not None and info.created and info.requests == 2
    again = worker.submit(items).batch  # a re-run: the same batch, none created
    assert again is not None and again.name == info.name and not again.created
    assert len(list((tmp_path / "offline-batches").glob("*.json"))) == 1
    polled = worker.poll(info.name).batch
    assert polled is not None and polled.state == BatchState.SUCCEEDED and polled.succeeded == 2
    results = worker.collect(items, info.name).results
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    for result in results:
        assert result.provider == "offline" and result.model_version == "offline-1"
        assert result.cost_usd == model_table()[FLASH_31].batch_price_for("512") == 0.0225
        data = worker.storage.get_bytes(worker.storage.key_of(result.output_uri or ""))
        assert hashlib.sha256(data).hexdigest() == result.sha256
        assert worker.storage.exists(worker.storage.key_of(result.thumbnail_uri or ""))
    assert (results[0].width, results[0].height) == output_size("16:9", "512")  # as online


def test_the_offline_batch_moves_on_its_own_clock_and_can_be_cancelled(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    provider = OfflineBatchProvider(
        OfflineProvider(), tmp_path, pending_s=10, running_s=20, clock=lambda: now[0]
    )
    params = ImageParams(model=FLASH_31, seed=1)
    from worker.providers.base import BatchRequest, GenerationRequest

    async def requests(n: int) -> Any:
        for index in range(n):
            yield BatchRequest(f"k{index}", GenerationRequest(f"p{index}", params))

    async def scenario() -> None:
        info = await provider.create("pixelfleet-d", FLASH_31, requests(4))
        assert info is not None and info.state == BatchState.PENDING and info.pending == 4
        assert await provider.create("pixelfleet-e", FLASH_31, requests(0)) is None
        assert (await provider.results(info.name, {"k0": params})).outcomes is None
        now[0] += 15
        running = await provider.get(info.name)
        assert running.state == BatchState.RUNNING and running.succeeded == 1
        now[0] += 15
        done = await provider.get(info.name)
        assert (done.state, done.succeeded, done.pending) == (BatchState.SUCCEEDED, 4, 0)
        assert (await provider.cancel(info.name)).state == BatchState.SUCCEEDED
        found = await provider.results(info.name, {"k1": params, "k3": params})
        assert found.outcomes is not None
        assert [key async for key, _ in found.outcomes] == ["k1", "k3"]
        other = await provider.create("pixelfleet-f", FLASH_31, requests(1))
        assert other is not None
        assert (await provider.cancel(other.name)).state == BatchState.CANCELLED
        now[0] += 100
        assert (await provider.get(other.name)).state == BatchState.CANCELLED
        assert (await provider.find("pixelfleet-f")) == await provider.get(other.name)

    asyncio.run(scenario())


def test_an_offline_batch_through_the_local_runpod_endpoint(tmp_path: Path) -> None:
    """The embedded default's path: each batch task a RunPod job of the local endpoint."""
    settings = WorkerSettings(
        storage_url=str(tmp_path / "storage"),
        data_dir=tmp_path,
        provider="offline",
        offline_batch_pending_s=0,
        offline_batch_running_s=0,
    )
    storage = LocalStorage(tmp_path / "storage")
    storage.put_bytes("refs/cat.png", png_bytes(), content_type="image/png")
    item = WorkItem(
        output_id="o1",
        prompt="a red cat",
        reference_uris=[storage.uri("refs/cat.png")],
        params=ImageParams(model="gemini-2.5-flash-image", aspect_ratio="1:1", seed=7),
        output_key="jobs/j1/o1",
    )
    headers = {"Authorization": f"Bearer {settings.endpoint_api_key}"}

    def run(base: str, task: str, **fields: Any) -> dict[str, Any]:
        dispatch = DispatchInput(dispatch_id="d1", job_id="j1", task=task, **fields)
        body = {"input": json.loads(dispatch.model_dump_json())}
        answer = httpx.post(f"{base}/v2/local/runsync", json=body, headers=headers, timeout=30)
        assert answer.status_code == 200 and answer.json()["status"] == "COMPLETED", answer.text
        output: dict[str, Any] = answer.json()["output"]
        return output

    with run_server(build_endpoint_app_from_settings(settings)) as base:
        submitted = BatchOutput.model_validate(run(base, "batch_submit", items=[item]))
        assert submitted.batch is not None
        name = submitted.batch.name
        polled = BatchOutput.model_validate(run(base, "batch_poll", batch=name))
        collected = DispatchOutput.model_validate(
            run(base, "batch_collect", items=[item], batch=name)
        )
    assert polled.batch is not None and polled.batch.state == BatchState.SUCCEEDED
    [result] = collected.results
    assert result.status == "succeeded" and result.output_uri is not None
    assert storage.exists(storage.key_of(result.output_uri))
