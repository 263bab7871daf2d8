"""End to end on real sockets: Midjourney's V2 and 🔄 on the offline worker. A set of 4 is
made, V2 of its second image is a new set of 4 made from that image (the worker reads its
file as the reference), a rerun makes the same prompts with other seeds, and the links show
both ways; the ZIP with inputs carries the image used as reference."""

import hashlib
from typing import Any

from shared.contract import ImageParams
from tests.fakes.stack import Stack, read_zip
from worker.providers.base import GenerationRequest, Reference
from worker.providers.offline import render


def created(stack: Stack, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = stack.http.post(path, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def offline_sha256(reference: bytes, content_type: str, job: dict[str, Any], image: dict) -> str:
    """What the offline provider makes of `image`'s prompt and seed from `reference`."""
    config = job["config"]
    params = ImageParams(
        model=config["model"],
        aspect_ratio=config["aspect_ratio"],
        image_size=config["image_size"],
        negative_prompt=config.get("negative_prompt"),
        seed=image["seed"],
    )
    request = GenerationRequest(image["prompt"], params, [Reference(reference, content_type)])
    return hashlib.sha256(render(request)).hexdigest()


def test_v2_and_a_rerun_of_a_set_end_to_end(stack: Stack) -> None:
    group_id = stack.group()
    [upload] = stack.upload(group_id, 1)
    submitted = created(
        stack,
        "/api/jobs/submit",
        {
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": [upload], "prompt": "a lighthouse at dusk"}],
            "config": {"total_images": 4, "images_per_set": 4, "image_size": "1K"},
        },
    )
    [parent] = stack.wait_for([job["id"] for job in submitted["jobs"]])
    assert parent["status"] == "completed" and parent["progress"]["succeeded"] == 4
    second = parent["images"][1]

    variation_answer = created(stack, f"/api/outputs/{second['id']}/variations", {"count": 4})
    [variation] = stack.wait_for([job["id"] for job in variation_answer["jobs"]])
    assert variation["status"] == "completed" and variation["progress"]["succeeded"] == 4
    assert variation["mode"] == "variation" and variation["parent_output_id"] == second["id"]
    assert all(image["reference_ids"] == [second["id"]] for image in variation["images"])
    reference = stack.http.get(f"/api/outputs/{second['id']}/file")
    assert reference.status_code == 200
    content_type = reference.headers["content-type"]
    assert [image["sha256"] for image in variation["images"]] == [
        offline_sha256(reference.content, content_type, variation, image)
        for image in variation["images"]
    ]
    assert len({image["sha256"] for image in variation["images"]}) == 4

    rerun = created(stack, f"/api/jobs/{parent['id']}/rerun")
    [rerun] = stack.wait_for([rerun["id"]])
    assert rerun["status"] == "completed" and rerun["rerun_of"] == parent["id"]
    assert [i["prompt"] for i in rerun["images"]] == [i["prompt"] for i in parent["images"]]
    assert [i["reference_ids"] for i in rerun["images"]] == [[upload]] * 4
    assert not {i["seed"] for i in rerun["images"]} & {i["seed"] for i in parent["images"]}
    assert not {i["sha256"] for i in rerun["images"]} & {i["sha256"] for i in parent["images"]}

    parent_now = stack.http.get(f"/api/jobs/{parent['id']}").json()
    assert parent_now["reruns"] == [rerun["id"]]
    assert [i["variations"] for i in parent_now["images"]] == [[], [variation["id"]], [], []]
    shown = stack.http.get(f"/api/outputs/{second['id']}").json()
    assert shown["variations"] == [variation["id"]] and shown["job_id"] == parent["id"]

    _, archive, manifest = read_zip(stack, group_id, job_id=variation["id"], include="inputs")
    name = f"inputs/{second['id']}.jpg"  # the offline provider answers JPEG
    assert {line["reference_files"][0] for line in manifest} == {name}
    assert archive.read(name) == reference.content
