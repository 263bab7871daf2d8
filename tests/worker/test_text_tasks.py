"""Text tasks (contract version 2) on the worker: the contract's round trip, the handler and
runner with the offline provider (nothing stored), and a provider that writes no text."""

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from control_plane.services.personas import persona_schema
from shared.contract import (
    CONTRACT_VERSION,
    DispatchInput,
    DispatchOutput,
    ImageParams,
    ItemResult,
    Task,
    WorkItem,
)
from shared.storage import LocalStorage
from tests.fakes.dispatches import make_dispatch
from worker.handler import make_handler
from worker.providers import GeneratedImage, GenerationRequest, Provider
from worker.runner import Runner
from worker.settings import WorkerSettings

SCHEMA = persona_schema({"gender": "non-binary", "age": 40})


def text_item(output_id: str = "out_t", prompt: str = "persona 1 of 2", seed: int = 5) -> WorkItem:
    return WorkItem(
        output_id=output_id,
        task=Task.TEXT,
        prompt=prompt,
        params=ImageParams(model="gemini-2.5-flash", seed=seed),
        output_key=f"groups/g/outputs/job_1/{output_id}",
        text_model="gemini-2.5-flash",
        response_schema=SCHEMA,
    )


def test_contract_version_4_round_trips_text_tasks_and_results() -> None:
    assert CONTRACT_VERSION == 4
    dispatch = DispatchInput(dispatch_id="dsp_1", job_id="job_1", items=[text_item()])
    wire = json.loads(dispatch.model_dump_json())
    assert wire["version"] == 4 and wire["items"][0]["task"] == "text"
    assert wire["task"] == "generate"
    assert DispatchInput.model_validate(wire) == dispatch
    result = ItemResult(
        output_id="out_t", status="succeeded", provider="offline", model="m", text='{"a": 1}'
    )
    output = DispatchOutput(dispatch_id="dsp_1", results=[result])
    assert DispatchOutput.model_validate(json.loads(output.model_dump_json())) == output
    image = WorkItem.model_validate(
        {"output_id": "o", "prompt": "p", "params": {"model": "m", "seed": 1}, "output_key": "k"}
    )
    assert image.task == Task.IMAGE  # the default: image items read as in version 1
    with pytest.raises(ValidationError, match="needs text_model"):
        WorkItem.model_validate({**wire["items"][0], "text_model": None})
    with pytest.raises(ValidationError, match="for text tasks only"):
        WorkItem.model_validate({**image.model_dump(), "response_schema": {"type": "object"}})
    with pytest.raises(ValidationError):
        DispatchInput.model_validate({**wire, "version": 1})


def test_the_offline_provider_answers_text_tasks_beside_images(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    dispatch = make_dispatch(storage, 1)
    dispatch.items += [text_item("out_a", seed=1), text_item("out_b", seed=2)]
    handler, _, _ = make_handler(WorkerSettings(storage_url=str(tmp_path), provider="offline"))
    answer = asyncio.run(handler({"id": "rp-1", "input": dispatch.model_dump(mode="json")}))
    output = DispatchOutput.model_validate(answer)
    image, first, second = output.results
    assert image.status == "succeeded" and image.output_uri and image.text is None
    for result in (first, second):
        assert result.status == "succeeded" and result.model == "gemini-2.5-flash"
        assert result.output_uri is None and result.content_type is None
        persona = json.loads(result.text or "")
        assert set(persona) == set(SCHEMA["required"])
        assert persona["gender"] == "non-binary" and persona["age"] == 40
    assert first.text != second.text  # another seed, another persona
    again = asyncio.run(handler({"id": "rp-2", "input": dispatch.model_dump(mode="json")}))
    assert DispatchOutput.model_validate(again).results[1].text == first.text  # deterministic
    stored = [path.name for path in tmp_path.rglob("*") if path.is_file()]
    assert not any("out_a" in name or "out_b" in name for name in stored)


class ImagesOnly(Provider):
    name = "images-only"

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        raise AssertionError("not called")


def test_a_provider_that_writes_no_text_fails_the_task_with_why(tmp_path: Path) -> None:
    runner = Runner(ImagesOnly(), LocalStorage(tmp_path), concurrency=2)
    dispatch = DispatchInput(dispatch_id="dsp_1", job_id="job_1", items=[text_item()])
    [result] = asyncio.run(runner.run_dispatch(dispatch)).results
    assert result.status == "failed" and result.text is None
    assert result.error == "the images-only provider does not answer text tasks"
