"""Whole jobs through the control plane, the local RunPod endpoint and the Gemini provider.

The worker runs the real `GeminiProvider` against `FakeGemini` over real HTTP, so every
layer is exercised: submit → dispatch → the SDK's request body → Google-shaped answers
(blocks, 503s, 429 with RetryInfo, a bad key) → results → API, file routes and ZIP manifest.
"""

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from control_plane.settings import Settings
from shared.images import output_size
from shared.model_table import model_table
from tests.fakes.gemini import (
    KEYWORD_BLOCK_PROMPT,
    KEYWORD_FLAKY,
    KEYWORD_QUOTA,
    KEYWORD_TEXT_ONLY,
    KEYWORD_UNSAFE,
    Answer,
    FakeGemini,
    RecordedCall,
    google_error,
    png_of,
)
from tests.fakes.stack import Stack, run_stack

KEY = "e2e-gemini-key"
FLASH = "gemini-2.5-flash-image"
FLASH_31 = "gemini-3.1-flash-image"
KEYWORD_OVERLOADED = "OVERLOADED"  # always 503: the image fails once retries run out
KEYWORD_UNLUCKY = "UNLUCKY"  # output blocked for even seeds only: a reseed gets it through
MAX_ATTEMPTS = 3


class ScriptedGemini(FakeGemini):
    """FakeGemini plus two scripts of our own: a model that stays overloaded, and a seed-
    dependent output block (the fake's own blocks ignore the seed)."""

    def _answer(self, call: RecordedCall, action: str) -> Answer:
        if self._problem(call, action) is None:
            if KEYWORD_OVERLOADED in call.prompt:
                body = google_error(503, "UNAVAILABLE", "The model is overloaded.")
                return Answer(503, body, "unavailable")
            if KEYWORD_UNLUCKY in call.prompt and (call.seed or 0) % 2 == 0:
                return Answer(200, self._response(call, [], "IMAGE_SAFETY"), "image-safety")
        return super()._answer(call, action)


def _gemini_stack(settings: Settings, **worker: Any) -> Iterator[Stack]:
    """`run_stack` with the Gemini provider."""
    yield from run_stack(settings, provider="gemini", gemini_backoff_s=0.05, **worker)


@pytest.fixture
def fake() -> Iterator[ScriptedGemini]:
    # A tiny RetryInfo delay: the provider honours it with a real sleep on the worker.
    server = ScriptedGemini(api_key=KEY, retry_delay="0.2s", flaky_failures=2)
    with server:
        yield server


@pytest.fixture
def gemini_stack(settings: Settings, fake: ScriptedGemini) -> Iterator[Stack]:
    yield from _gemini_stack(
        settings,
        gemini_api_key=KEY,
        gemini_base_url=fake.base_url,
        gemini_max_attempts=MAX_ATTEMPTS,
        gemini_rpm=60_000,
    )


def _submit(stack: Stack, body: dict[str, Any]) -> list[str]:
    response = stack.http.post("/api/jobs/submit", json=body)
    assert response.status_code == 201, response.text
    return [job["id"] for job in response.json()["jobs"]]


def _manifest(stack: Stack, group_id: str) -> tuple[zipfile.ZipFile, list[dict[str, Any]]]:
    response = stack.http.get(f"/api/download/{group_id}/zip", params={"status": "all"})
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    lines = archive.read("manifest.jsonl").decode().splitlines()
    return archive, [json.loads(line) for line in lines]


def _expected_png(fake: FakeGemini, prompt: str, seed: int, ratio: str, size: str | None) -> bytes:
    """The exact PNG the fake sends for this prompt and seed (not its thought image)."""
    width, height = output_size(ratio, size)
    shape = (max(8, width // fake.scale), max(8, height // fake.scale))
    return png_of(shape, f"{prompt}|{seed}")


def _inline_images(call: RecordedCall) -> list[tuple[str, bytes]]:
    parts = [part for content in call.body["contents"] for part in content["parts"]]
    assert "text" in parts[-1], "the prompt goes last, after the references"
    inline = [part["inlineData"] for part in parts if "inlineData" in part]
    return [
        (blob.get("mimeType") or blob["mime_type"], base64.urlsafe_b64decode(blob["data"]))
        for blob in inline
    ]


def _check_downloads(stack: Stack, image: dict[str, Any], expected: bytes) -> None:
    original = stack.http.get(image["url"])
    assert original.status_code == 200
    assert original.content == expected
    assert hashlib.sha256(original.content).hexdigest() == image["sha256"]
    assert original.headers["content-type"] == "image/png"
    thumbnail = stack.http.get(image["thumbnail_url"])
    assert thumbnail.status_code == 200
    assert Image.open(io.BytesIO(thumbnail.content)).format == "WEBP"


def test_mixed_outcomes_end_to_end(gemini_stack: Stack, fake: ScriptedGemini) -> None:
    stack = gemini_stack
    group_id = stack.group()
    refs = stack.upload(group_id, 5)
    prompts = [
        ("a red kite over dunes", refs[:2]),
        (f"{KEYWORD_UNSAFE} harbour", refs[:1]),
        (f"{KEYWORD_BLOCK_PROMPT} harbour", []),
        (f"{KEYWORD_TEXT_ONLY} harbour", [refs[2]]),
        (f"{KEYWORD_FLAKY} harbour", refs[:1]),
        (f"{KEYWORD_QUOTA} harbour", []),
        (f"{KEYWORD_OVERLOADED} harbour", []),
    ]
    semi_ids = _submit(
        stack,
        {
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"prompt": prompt, "images": images} for prompt, images in prompts],
            "config": {
                "total_images": len(prompts),
                "images_per_set": 1,
                "model": FLASH_31,
                "aspect_ratio": "16:9",
                "image_size": "512",
                "seed": 1000,
            },
        },
    )
    auto_ids = _submit(
        stack,
        {
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "same scene as a watercolour",
            "images": refs[2:],
            "config": {"model": FLASH, "aspect_ratio": "3:4", "seed": 500},
        },
    )
    jobs = stack.wait_for(semi_ids + auto_ids, timeout=90)
    semi = {job["prompt"]: job for job in jobs[: len(prompts)]}
    [auto] = jobs[len(prompts) :]

    # --- what each image ended as, via GET /api/jobs/{id} ---------------------------------
    expected_attempts = {"a red kite": 1, KEYWORD_FLAKY: 3, KEYWORD_QUOTA: 2}
    for index, (prompt, images) in enumerate(prompts):
        job = semi[prompt]
        [image] = job["images"]
        assert image["provider"] == "gemini" and image["model"] == FLASH_31
        assert image["seed"] == 1000 + index and image["reference_ids"] == images
        succeeded = next((n for key, n in expected_attempts.items() if key in prompt), None)
        if succeeded is not None:
            assert job["status"] == "completed", job
            assert image["status"] == "succeeded", image
            assert image["attempts"] == succeeded
            assert image["cost_usd"] == model_table()[FLASH_31].price_for("512") == 0.045
            expected = _expected_png(fake, prompt, 1000 + index, "16:9", "512")
            assert (image["width"], image["height"]) == Image.open(io.BytesIO(expected)).size
            _check_downloads(stack, image, expected)  # the real image, not the thought one
        else:
            assert job["status"] == "failed" and job["error"] == image["error"]
            assert image["url"] is None and image["sha256"] is None
    by_keyword = {prompt.split()[0]: semi[prompt]["images"][0] for prompt, _ in prompts}
    assert by_keyword[KEYWORD_UNSAFE]["status"] == "blocked"
    assert by_keyword[KEYWORD_UNSAFE]["error"] == "output blocked: IMAGE_SAFETY"
    assert by_keyword[KEYWORD_BLOCK_PROMPT]["status"] == "blocked"
    assert by_keyword[KEYWORD_BLOCK_PROMPT]["error"] == "prompt blocked: SAFETY"
    assert by_keyword[KEYWORD_TEXT_ONLY]["status"] == "blocked"
    assert by_keyword[KEYWORD_TEXT_ONLY]["error"].startswith(
        "output blocked: NO_IMAGE; model said: I can only describe"
    )
    overloaded = by_keyword[KEYWORD_OVERLOADED]
    assert overloaded["status"] == "failed" and overloaded["attempts"] == MAX_ATTEMPTS
    assert overloaded["error"].startswith(f"Gemini failed {MAX_ATTEMPTS} times, last: 503")
    for key in (KEYWORD_UNSAFE, KEYWORD_BLOCK_PROMPT, KEYWORD_TEXT_ONLY):
        assert by_keyword[key]["attempts"] == 1  # no reseed by default, no retry of a block
    assert semi[prompts[1][0]]["progress"]["blocked"] == 1

    assert auto["status"] == "completed" and auto["progress"]["succeeded"] == 3
    for position, image in enumerate(auto["images"]):
        assert image["status"] == "succeeded" and image["model"] == FLASH
        assert image["provider"] == "gemini" and image["attempts"] == 1
        assert image["cost_usd"] == model_table()[FLASH].price_usd
        assert image["reference_ids"] == [refs[2 + position]]
        expected = _expected_png(fake, auto["prompt"], 500 + position, "3:4", None)
        _check_downloads(stack, image, expected)

    # --- what Gemini was sent ---------------------------------------------------------------
    assert {(c.api_version, c.api_key) for c in fake.calls} == {("v1beta", KEY)}
    [kite] = fake.calls_for("a red kite")
    assert kite.model == FLASH_31
    assert kite.body["generationConfig"] == {
        "responseModalities": ["IMAGE"],
        "imageConfig": {"aspectRatio": "16:9", "imageSize": "512"},
        "seed": 1000,
    }
    sources = [_original(stack, ref_id) for ref_id in refs[:2]]
    assert _inline_images(kite) == [("image/png", data) for data in sources]
    assert _inline_images(fake.calls_for(KEYWORD_BLOCK_PROMPT)[0]) == []
    watercolour = fake.calls_for("watercolour")
    assert sorted(c.seed or 0 for c in watercolour) == [500, 501, 502]
    for call in watercolour:
        assert call.model == FLASH
        # one size only: no imageSize is sent to gemini-2.5-flash-image
        assert call.body["generationConfig"]["imageConfig"] == {"aspectRatio": "3:4"}
        [(_, reference)] = _inline_images(call)
        assert reference in {_original(stack, ref_id) for ref_id in refs[2:]}
    assert [c.status for c in fake.calls_for(KEYWORD_FLAKY)] == [503, 503, 200]
    assert [c.status for c in fake.calls_for(KEYWORD_QUOTA)] == [429, 200]
    assert [c.status for c in fake.calls_for(KEYWORD_OVERLOADED)] == [503] * MAX_ATTEMPTS
    for key in (KEYWORD_UNSAFE, KEYWORD_BLOCK_PROMPT, KEYWORD_TEXT_ONLY):
        assert len(fake.calls_for(key)) == 1

    # --- the ZIP lists every image; only successes have files -------------------------------
    archive, manifest = _manifest(stack, group_id)
    assert len(manifest) == len(prompts) + 3
    all_images = {image["id"]: image for job in jobs for image in job["images"]}
    files = set(archive.namelist()) - {"manifest.jsonl", "metadata.jsonl"}
    assert files == {line["file"] for line in manifest if line["file"]}
    for line in manifest:
        image = all_images[line["image_id"]]
        assert (line["status"], line["error"]) == (image["status"], image["error"])
        assert (line["provider"], line["model"], line["seed"]) == (
            "gemini",
            image["model"],
            image["seed"],
        )
        if line["status"] == "succeeded":
            assert hashlib.sha256(archive.read(line["file"])).hexdigest() == line["sha256"]
        else:
            assert line["file"] is None and line["sha256"] is None and line["error"]
    statuses = sorted(line["status"] for line in manifest)
    assert statuses == ["blocked"] * 3 + ["failed"] + ["succeeded"] * 6


def _original(stack: Stack, upload_id: str) -> bytes:
    response = stack.http.get(f"/api/uploads/{upload_id}/file")
    assert response.status_code == 200
    return response.content


def test_reseed_after_a_blocked_output_reports_the_seed_used(
    settings: Settings, fake: ScriptedGemini
) -> None:
    for stack in _gemini_stack(
        settings,
        gemini_api_key=KEY,
        gemini_base_url=fake.base_url,
        gemini_reseed_on_block=True,
    ):
        group_id = stack.group()
        prompts = [f"{KEYWORD_UNLUCKY} lighthouse", f"{KEYWORD_UNSAFE} lighthouse"]
        job_ids = _submit(
            stack,
            {
                "group_id": group_id,
                "mode": "semi-automatic",
                "items": [{"prompt": prompt} for prompt in prompts],
                "config": {
                    "total_images": 2,
                    "images_per_set": 1,
                    "model": FLASH,
                    "aspect_ratio": "1:1",
                    "seed": 2000,
                },
            },
        )
        lucky, unsafe = (job["images"][0] for job in stack.wait_for(job_ids))
        assert [c.seed for c in fake.calls_for(KEYWORD_UNLUCKY)] == [2000, 2001]
        assert lucky["status"] == "succeeded" and lucky["attempts"] == 2
        assert lucky["seed"] == 2001  # the seed that made the image, not the one asked for
        _check_downloads(stack, lucky, _expected_png(fake, prompts[0], 2001, "1:1", None))
        assert unsafe["status"] == "blocked" and unsafe["attempts"] == 2
        assert unsafe["error"] == "output blocked: IMAGE_SAFETY"
        assert [c.seed for c in fake.calls_for(KEYWORD_UNSAFE)] == [2001, 2002]
        _, manifest = _manifest(stack, group_id)
        assert [line["seed"] for line in manifest] == [2001, 2001]


def test_wrong_api_key_fails_every_image_fast(settings: Settings, fake: ScriptedGemini) -> None:
    wrong = "not-the-right-key"
    # Three calls in flight at most: a fourth needs a call slot, which only an answered call
    # frees, and the refusal is noted before its slot is. (With more slots, how many calls
    # leave before the first refusal is back depends on the machine's load: the rate
    # limit's spacing is 0.12 s.)
    for stack in _gemini_stack(
        settings, gemini_api_key=wrong, gemini_base_url=fake.base_url, gemini_concurrency=3
    ):
        group_id = stack.group()
        images = stack.upload(group_id, 40)  # three dispatches (chunks of 16) run at once
        [job_id] = _submit(
            stack,
            {
                "group_id": group_id,
                "mode": "automatic",
                "prompt": "a quiet street",
                "images": images,
                "config": {"model": FLASH},
            },
        )
        [job] = stack.wait_for([job_id], timeout=60)
        assert job["status"] == "failed"
        assert job["progress"]["failed"] == 40
        for image in job["images"]:
            assert image["status"] == "failed"
            assert image["error"].startswith("Gemini rejected the API key (400 INVALID_ARGUMENT")
            assert "API key not valid" in image["error"] and "GEMINI_API_KEY" in image["error"]
            assert wrong not in image["error"]
        assert job["error"] == job["images"][0]["error"]
        # fail fast: the first refusal stops the rest; no per-image retries
        assert 1 <= len(fake.calls) <= 3
        assert {(c.api_key, c.outcome) for c in fake.calls} == {(wrong, "bad-key")}
        assert sum(image["attempts"] for image in job["images"]) == len(fake.calls)


@pytest.mark.parametrize(
    ("model", "config", "references", "message"),
    [
        (FLASH, {}, 4, f"{FLASH} takes at most 3 reference images per prompt; got 4"),
        (FLASH, {"image_size": "4K"}, 1, f"{FLASH} does not support image_size '4K'; allowed: 1K"),
        (
            "gemini-3-pro-image",
            {"aspect_ratio": "1:8"},
            0,
            "gemini-3-pro-image does not support aspect_ratio '1:8'; allowed: 1:1, 2:3,",
        ),
    ],
)
def test_submit_rejects_what_the_model_cannot_do(
    gemini_stack: Stack,
    fake: ScriptedGemini,
    model: str,
    config: dict[str, str],
    references: int,
    message: str,
) -> None:
    group_id = gemini_stack.group()
    refs = gemini_stack.upload(group_id, references) if references else []
    response = gemini_stack.http.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"prompt": "a portrait", "images": refs}],
            "config": {"model": model, **config},
        },
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(message)
    listed = gemini_stack.http.get("/api/jobs", params={"group_id": group_id}).json()
    assert listed["data"] == [] and fake.calls == []
