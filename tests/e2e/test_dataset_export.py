"""Training-ready exports end to end: real server, local RunPod endpoint, offline worker.

An automatic and a semi-automatic job, one image failed on purpose (its reference deleted
before the submission, as a disk fault would); the ZIP downloaded with each filter, read
back against its manifest, unzipped and loaded with Hugging Face `datasets` exactly as a
user would: `load_dataset("imagefolder", data_dir=…, split="train")`.
"""

from pathlib import Path
from typing import Any

from shared.storage import open_storage
from tests.fakes.stack import (
    Stack,
    check_zip_against_manifest,
    load_imagefolder,
    read_zip,
)

CONFIG = {"model": "gemini-3.1-flash-image", "image_size": "512", "negative_prompt": "text"}


def submit(stack: Stack, body: dict[str, Any]) -> list[str]:
    answer = stack.http.post(
        "/api/jobs/submit", json={**body, "config": {**CONFIG, **body.get("config", {})}}
    )
    assert answer.status_code == 201, answer.text
    return [job["id"] for job in answer.json()["jobs"]]


def test_the_zip_loads_with_datasets_whatever_its_filters(stack: Stack, tmp_path: Path) -> None:
    group_id = stack.group()
    images = stack.upload(group_id, 4)
    storage = open_storage(stack.settings.storage_url)
    broken = next(
        info.key
        for info in storage.list(f"groups/{group_id}/inputs/")
        if images[3] in info.key and "thumb" not in info.key
    )
    storage.delete(broken)
    [auto] = submit(
        stack, {"group_id": group_id, "mode": "automatic", "prompt": "in fog", "images": images[1:]}
    )
    semi = submit(
        stack,
        {
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": images[:2], "prompt": "both, side by side"}],
            "config": {"total_images": 4, "images_per_set": 2, "seed": 7},
        },
    )
    jobs = stack.wait_for([auto, *semi])
    assert [job["progress"]["succeeded"] for job in jobs] == [2, 2, 2]
    assert jobs[0]["progress"]["failed"] == 1  # the image of the deleted reference

    # default: the succeeded images, their metadata, no inputs
    content, archive, manifest = read_zip(stack, group_id)
    check_zip_against_manifest(archive, manifest)
    assert len(manifest) == 6 and {line["status"] for line in manifest} == {"succeeded"}
    dataset = load_imagefolder(content, tmp_path / "all")
    assert dataset.num_rows == 6
    assert {
        "image",
        "prompt",
        "negative_prompt",
        "seed",
        "model",
        "tags",
        "prompt_id",
        "job_id",
        "reference_files",
    } <= set(dataset.column_names)
    assert sorted(dataset["prompt"]) == ["both, side by side"] * 4 + ["in fog"] * 2
    assert set(dataset["negative_prompt"]) == {"text"}
    assert dataset[0]["image"].size == (512, 512)
    assert all(
        files == refs
        for files, refs in zip(
            dataset["reference_files"], [line["reference_ids"] for line in manifest], strict=True
        )
    )

    # one job, every status: the failed image is in the manifest, not in the ZIP or dataset
    content, archive, manifest = read_zip(stack, group_id, job_id=auto, status="all")
    check_zip_against_manifest(archive, manifest)
    assert [line["status"] for line in manifest] == ["succeeded", "succeeded", "failed"]
    assert "reference unreadable" in manifest[2]["error"]
    dataset = load_imagefolder(content, tmp_path / "automatic")
    assert dataset.num_rows == 2 and set(dataset["job_id"]) == {auto}

    # with the inputs: paired data, each reference once, the deleted one named
    content, archive, manifest = read_zip(
        stack, group_id, job_id=[auto, *semi], status="all", include="inputs"
    )
    check_zip_against_manifest(archive, manifest)
    inputs = sorted(name for name in archive.namelist() if name.startswith("inputs/"))
    assert [name.split("/")[1].split("_photo-")[0] for name in inputs] == sorted(images[:3])
    failed = next(line for line in manifest if line["status"] == "failed")
    assert failed["reference_errors"] == {images[3]: "file missing from storage"}
    for upload_id in images[:3]:
        [name] = [name for name in inputs if upload_id in name]
        assert archive.read(name) == stack.http.get(f"/api/uploads/{upload_id}/file").content
    dataset = load_imagefolder(content, tmp_path / "paired")
    assert dataset.num_rows == 6
    for row in dataset:
        assert row["reference_files"] and set(row["reference_files"]) <= set(inputs)
        assert all((tmp_path / "paired" / path).is_file() for path in row["reference_files"])
