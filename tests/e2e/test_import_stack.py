"""End to end on real sockets: a CSV import with a template, text-to-image rows mixed with
rows of an uploaded image, through the local RunPod endpoint and the offline worker."""

import json

from shared.images import output_size
from tests.conftest import png_bytes
from tests.fakes.stack import Stack, check_zip_against_manifest, read_zip


def test_a_csv_import_with_a_template_runs_to_completion(stack: Stack) -> None:
    group_id = stack.group()
    uploaded = stack.http.post(
        "/api/uploads",
        data={"group_id": group_id},
        files=[
            ("files", ("cat.png", png_bytes(60, 40, (200, 100, 50)), "image/png")),
            ("files", ("dog.png", png_bytes(40, 60, (50, 100, 200)), "image/png")),
        ],
    )
    assert uploaded.status_code == 201, uploaded.text
    cat, dog = (image["id"] for image in uploaded.json()["images"])
    rows = (
        "id,subject,image,count,seed,aspect_ratio\n"
        "cat-row,a cat,cat.png,2,40,16:9\n"
        f"dog-row,a dog,{dog},,,\n"
        'sky-row,"the sky at {dawn, dusk}",,1,900,4:3\n'
    )
    template = "{{ subject }}{% if image %}, as in the photo{% endif %}, watercolour"
    answer = stack.http.post(
        "/api/jobs/import",
        data={
            "group_id": group_id,
            "template": template,
            "config": json.dumps(
                {
                    "model": "gemini-3.1-flash-image",
                    "image_size": "512",
                    "seed": 7,
                    "outputs_per_image": 3,
                }
            ),
        },
        files={"file": ("rows.csv", rows.encode(), "text/csv")},
    )
    assert answer.status_code == 201, answer.text
    [submitted] = answer.json()["jobs"]
    assert submitted["mode"] == "import" and submitted["prompt"] == template
    [job] = stack.wait_for([submitted["id"]])
    assert job["status"] == "completed"
    assert job["progress"]["total"] == job["progress"]["succeeded"] == 2 + 3 + 2
    expected = [
        ("a cat, as in the photo, watercolour", [cat], 40, "16:9"),
        ("a cat, as in the photo, watercolour", [cat], 41, "16:9"),
        ("a dog, as in the photo, watercolour", [dog], 7 + 2, "1:1"),
        ("a dog, as in the photo, watercolour", [dog], 7 + 3, "1:1"),
        ("a dog, as in the photo, watercolour", [dog], 7 + 4, "1:1"),
        ("the sky at dawn, watercolour", [], 900, "4:3"),
        ("the sky at dusk, watercolour", [], 901, "4:3"),
    ]
    images = job["images"]
    assert [(image["prompt"], image["reference_ids"], image["seed"]) for image in images] == [
        (prompt, refs, seed) for prompt, refs, seed, _ in expected
    ]
    assert [(image["width"], image["height"]) for image in images] == [
        output_size(ratio, "512") for *_, ratio in expected
    ]
    assert len({image["sha256"] for image in images}) == 7  # each its own prompt or seed

    _, archive, manifest = read_zip(stack, group_id)
    check_zip_against_manifest(archive, manifest)
    assert [line["params"]["aspect_ratio"] for line in manifest] == [r for *_, r in expected]
    assert {line["params"]["image_size"] for line in manifest} == {"512"}
    assert [line["seed"] for line in manifest] == [seed for _, _, seed, _ in expected]
