"""End to end on real sockets: the example catalog uploaded as a file, submitted by tag and
count, generated text-to-image by the worker (offline provider) through the local endpoint."""

import json
from pathlib import Path
from typing import Any

from tests.fakes.stack import Stack

EXAMPLE = Path(__file__).parents[2] / "examples" / "model-prompts.json"


def submit(stack: Stack, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = stack.http.post("/api/jobs/submit", json={"mode": "catalog", **body})
    assert response.status_code == 201, response.text
    return stack.wait_for([job["id"] for job in response.json()["jobs"]])


def test_catalog_by_tag_and_count_end_to_end(stack: Stack) -> None:
    with EXAMPLE.open("rb") as handle:
        uploaded = stack.http.post(
            "/api/catalogs", files={"file": ("model-prompts.json", handle, "application/json")}
        )
    assert uploaded.status_code == 201, uploaded.text
    catalog = uploaded.json()
    entries = {entry["id"]: entry for entry in json.loads(EXAMPLE.read_text())["prompts"]}
    group_id = stack.group()
    three = {
        "group_id": group_id,
        "catalog_id": catalog["id"],
        "tags": ["male", "female"],
        "count": 3,
        "config": {"seed": 2024, "image_size": "1K"},
    }

    male, female = submit(stack, three)
    for job, tag in ((male, "male"), (female, "female")):
        assert job["status"] == "completed" and job["config"]["tag"] == tag
        assert job["progress"]["succeeded"] == 3 and len(job["images"]) == 3
        for position, image in enumerate(job["images"]):
            entry = entries[image["prompt_id"]]
            assert image["status"] == "succeeded" and image["url"]
            assert tag in entry["tags"] and image["tags"] == entry["tags"]
            assert image["prompt"] == entry["prompt"] and image["reference_ids"] == []
            assert image["seed"] == 2024 + position and image["provider"] == "offline"
        assert len({image["prompt_id"] for image in job["images"]}) == 3

    again = submit(stack, three)
    assert [[i["prompt_id"] for i in job["images"]] for job in again] == [
        [i["prompt_id"] for i in job["images"]] for job in (male, female)
    ]
    assert [i["sha256"] for i in again[0]["images"]] == [i["sha256"] for i in male["images"]]

    [every] = submit(stack, {**three, "tags": ["female"], "count": "all"})
    assert every["status"] == "completed"
    assert every["progress"]["succeeded"] == catalog["tag_counts"]["female"]
    assert [i["prompt_id"] for i in every["images"]] == [
        entry_id for entry_id, entry in entries.items() if "female" in entry["tags"]
    ]
