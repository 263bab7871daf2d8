"""Persona pipelines end to end on real sockets: the control plane writes each stage as the
last one ends, the worker answers the data as a text task and draws the portraits (offline
provider; then the Gemini provider against the fake Gemini: JSON mode and images), and the
group's ZIP names each persona's images."""

import time
from collections.abc import Iterator
from typing import Any

import pytest

from control_plane.settings import Settings
from tests.fakes.gemini import FakeGemini
from tests.fakes.stack import Stack, check_zip_against_manifest, read_zip, run_stack

GEMINI_KEY = "persona-e2e-gemini-key"


def wait_for_batch(stack: Stack, batch_id: str, timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        listed = stack.http.get("/api/personas", params={"batch_id": batch_id}).json()["data"]
        if all(persona["status"] in ("completed", "failed") for persona in listed):
            return [stack.http.get(f"/api/personas/{p['id']}").json() for p in listed]
        assert time.monotonic() < deadline, [(p["status"], p["stage"]) for p in listed]
        time.sleep(0.2)


def create(stack: Stack, group_id: str, **body: Any) -> str:
    response = stack.http.post("/api/personas", json={"group_id": group_id, **body})
    assert response.status_code == 201, response.text
    return response.json()["batch_id"]


def check_completed(persona: dict[str, Any]) -> None:
    assert persona["status"] == "completed" and persona["error_log"] == [], persona
    base, variations = persona["images"]["base"], persona["images"]["variations"]
    assert base["status"] == "succeeded" and base["url"] and base["reference_ids"] == []
    assert len(variations) == 4
    for variation in variations:
        assert variation["status"] == "succeeded" and variation["url"]
        assert variation["reference_ids"] == [base["id"]]
        assert persona["data"]["name"] in variation["prompt"]


def test_three_personas_end_completed_with_a_base_and_four_variations(stack: Stack) -> None:
    group_id = stack.group()
    batch_id = create(
        stack,
        group_id,
        count=3,
        brief="friendly neighbourhood shop owners",
        attributes={"gender": "female", "age_range": "25-35"},
        config={"seed": 11},
    )
    personas = wait_for_batch(stack, batch_id)
    assert len(personas) == 3
    for persona in personas:
        check_completed(persona)
        assert persona["data"]["gender"] == "female" and 25 <= persona["data"]["age"] <= 35
    assert len({persona["data"]["bio"] for persona in personas}) == 3

    _, archive, manifest = read_zip(stack, group_id)
    check_zip_against_manifest(archive, manifest)
    expected = set()
    for persona in personas:
        folder = stack.http.get(f"/api/jobs/{persona['base_job_id']}").json()["config"]["folder"]
        names = ["base", *(f"variation_{n}" for n in range(1, 5))]
        expected |= {f"{folder}/{name}.jpg" for name in names}  # the offline provider's JPEG
    assert set(archive.namelist()[2:]) == expected and len(expected) == 15


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=GEMINI_KEY, retry_delay="0.2s") as fake:
        yield fake


def test_personas_through_the_gemini_provider_against_a_fake_gemini(
    settings: Settings, fake_gemini: FakeGemini
) -> None:
    stack_of = run_stack(
        settings,
        provider="gemini",
        gemini_api_key=GEMINI_KEY,
        gemini_base_url=fake_gemini.base_url,
        gemini_backoff_s=0.05,
        gemini_rpm=60_000,
    )
    stack = next(stack_of)
    try:
        group_id = stack.group()
        [persona] = wait_for_batch(stack, create(stack, group_id, count=1))
        check_completed(persona)
        text_calls = [c for c in fake_gemini.calls if c.model == "gemini-2.5-flash"]
        assert len(text_calls) == 1
        config = text_calls[0].body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseSchema"]["required"][0] == "name"
        images = [c for c in fake_gemini.calls if c.model == "gemini-2.5-flash-image"]
        assert len(images) == 5
        with_reference = [c for c in images if "inlineData" in str(c.body["contents"])]
        assert len(with_reference) == 4  # the variations carry the base portrait
    finally:
        stack_of.close()
