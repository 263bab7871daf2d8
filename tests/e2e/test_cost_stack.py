"""A whole job's estimate against what it actually cost: the control plane, the local RunPod
endpoint and the real Gemini provider (against `FakeGemini`), which reports each image's
price as Gemini bills it (the offline provider reports the same prices: its own tests)."""

from collections.abc import Iterator
from typing import Any

import pytest

from control_plane.settings import Settings
from tests.fakes.gemini import FakeGemini
from tests.fakes.stack import Stack, run_stack

KEY = "e2e-cost-gemini-key"

PRO = "gemini-3-pro-image"
FLASH_31 = "gemini-3.1-flash-image"


def _post(stack: Stack, path: str, body: dict[str, Any], status: int) -> Any:
    response = stack.http.post(path, json=body)
    assert response.status_code == status, response.text
    return response.json()


@pytest.fixture
def gemini_stack(settings: Settings) -> Iterator[Stack]:
    with FakeGemini(api_key=KEY) as fake:
        yield from run_stack(
            settings,
            provider="gemini",
            gemini_api_key=KEY,
            gemini_base_url=fake.base_url,
            gemini_rpm=60_000,
        )


def test_the_estimate_equals_the_sum_of_actual_costs_of_the_finished_jobs(
    gemini_stack: Stack,
) -> None:
    stack = gemini_stack
    group_id = stack.group()
    refs = stack.upload(group_id, 2)
    bodies = [
        {
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "a {watercolour, charcoal} study",
            "images": refs,
            "config": {"model": FLASH_31, "image_size": "2K", "seed": 3},
        },
        {
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"prompt": "a lighthouse at dusk", "images": refs[:1]}],
            "config": {"model": PRO, "image_size": "4K", "total_images": 2, "images_per_set": 2},
        },
    ]
    estimated, job_ids = 0.0, []
    for body in bodies:
        estimate = _post(stack, "/api/jobs/estimate", body, 200)
        submitted = _post(stack, "/api/jobs/submit", body, 201)
        assert submitted["estimate"]["by_model"] == estimate["by_model"]
        estimated += estimate["cost_usd"]
        job_ids += [job["id"] for job in submitted["jobs"]]
    jobs = stack.wait_for(job_ids)
    assert all(job["status"] == "completed" and job["progress"]["succeeded"] for job in jobs)
    actual = [image["cost_usd"] for job in jobs for image in job["images"]]
    assert len(actual) == 4 * 1 + 2 and None not in actual
    assert sum(actual) == pytest.approx(estimated)
    assert sum(job["cost_usd"] for job in jobs) == pytest.approx(estimated)
    assert sum(job["estimate_usd"] for job in jobs) == pytest.approx(estimated)
    assert estimated == pytest.approx(4 * 0.101 + 2 * 0.24)
    usage = stack.http.get("/api/usage", params={"group_by": "model"}).json()
    assert usage["cost_usd"] == pytest.approx(estimated)
    group = stack.http.get(f"/api/groups/{group_id}").json()
    assert group["counts"]["cost_usd"] == pytest.approx(estimated)
