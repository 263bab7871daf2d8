"""Prompt catalogs (control_plane/services/catalogs.py) and catalog submissions
(services/submissions.py) through the HTTP API: creating from a JSON body or a file, listing,
reading, deleting; planning one job per tag; refusing bad input without writing anything."""

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import func, select

from control_plane.models import Catalog, Dispatch, Job, Output
from tests.fakes.api import Api

EXAMPLE = Path(__file__).parents[2] / "examples" / "model-prompts.json"
MiB = 2**20


def entry(entry_id: str, tags: list[str], **fields: Any) -> dict[str, Any]:
    return {"id": entry_id, "tags": tags, "prompt": f"portrait {entry_id}", **fields}


def small_catalog() -> dict[str, Any]:
    """5 male and 4 female entries (f-04 also tagged male), two with negative prompts."""
    males = [entry(f"m-{n}", ["male", "studio"]) for n in range(1, 6)]
    females = [entry(f"f-{n}", ["female"]) for n in range(1, 4)]
    males[0]["negative_prompt"] = "sunglasses"
    females[1]["attributes"] = {"age": 31, "ethnicity": "Kenyan", "smiling": True, "x": None}
    both = entry("f-04", ["female", "male"], negative_prompt="hats")
    return {"name": "models", "prompts": [*males, *females, both]}


def create(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post("/api/catalogs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def upload_file(api: Api, content: bytes, name: str = "catalog.json") -> httpx.Response:
    return api.client.post("/api/catalogs", files={"file": (name, content, "application/json")})


def rows(api: Api, table: type) -> int:
    with api.session() as session:
        return session.exec(select(func.count()).select_from(table)).one()


def test_the_example_catalog_is_accepted_as_a_file(api: Api) -> None:
    response = upload_file(api, EXAMPLE.read_bytes(), "model-prompts.json")
    assert response.status_code == 201, response.text
    created = response.json()
    example = json.loads(EXAMPLE.read_text())
    assert created["name"] == "Model photos"
    assert created["prompt_count"] == len(example["prompts"])
    assert {"male", "female", "studio", "outdoor"} <= set(created["tags"])
    assert created["tag_counts"]["male"] >= 20 and created["tag_counts"]["female"] >= 20
    assert created["id"].startswith("cat_") and "prompts" not in created
    detail = api.client.get(f"/api/catalogs/{created['id']}").json()
    assert [p["id"] for p in detail["prompts"]] == [p["id"] for p in example["prompts"]]
    first = detail["prompts"][0]
    assert first["negative_prompt"] and first["attributes"]["age"] == 28
    assert {"camera", "lens", "ethnicity"} <= set(first["attributes"])


def test_create_list_get_and_delete(api: Api) -> None:
    created = create(api, small_catalog())
    assert created["tags"] == ["female", "male", "studio"]
    assert created["tag_counts"] == {"female": 4, "male": 6, "studio": 5}
    assert created["prompt_count"] == 9
    detail = api.client.get(f"/api/catalogs/{created['id']}").json()
    assert detail["prompts"][6]["attributes"] == {
        "age": 31,
        "ethnicity": "Kenyan",
        "smiling": True,
        "x": None,
    }
    assert {k: v for k, v in detail.items() if k != "prompts"} == created
    newer = [create(api, {**small_catalog(), "name": f"n{i}"})["id"] for i in range(2)]
    page = api.client.get("/api/catalogs", params={"limit": 2}).json()
    assert page["total"] == 3 and [c["id"] for c in page["data"]] == newer[::-1]
    assert page["data"][0]["tag_counts"] == {"female": 4, "male": 6, "studio": 5}
    second = api.client.get("/api/catalogs", params={"limit": 2, "page": 2}).json()
    assert [c["id"] for c in second["data"]] == [created["id"]]

    assert api.client.delete(f"/api/catalogs/{created['id']}").status_code == 204
    gone = api.client.get(f"/api/catalogs/{created['id']}")
    assert gone.status_code == 404
    assert gone.json()["detail"] == f"catalog {created['id']} does not exist"
    assert api.client.delete(f"/api/catalogs/{created['id']}").status_code == 404
    assert rows(api, Catalog) == 2


def test_malformed_catalog_ids_are_refused_at_the_edge(api: Api) -> None:
    created = create(api, small_catalog())
    for bad in (created["id"] + " ", created["id"].upper(), "cat_x'--"):
        answer = api.client.get(f"/api/catalogs/{bad}")
        assert answer.status_code == 404
        assert answer.json()["detail"] == f"catalog {bad} does not exist"
        assert api.client.delete(f"/api/catalogs/{bad}").status_code == 404
    assert rows(api, Catalog) == 1


def replace(index: int, **fields: Any) -> dict[str, Any]:
    body = small_catalog()
    body["prompts"][index] = {**body["prompts"][index], **fields}
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            replace(3, tags=[]),
            "prompts[3] (id 'm-4'): tags must not be empty: give every prompt at least one tag",
        ),
        (
            replace(6, id="m-2"),
            "prompts[6] (id 'm-2'): id is already used by prompts[1] (id 'm-2')",
        ),
        (replace(6, id="M-2"), "prompts[6] (id 'M-2'): id is already used by prompts[1]"),
        (
            replace(2, id="../etc"),
            "prompts[2] (id '../etc'): id '../etc' is not a safe name: use 1 to 100 letters, "
            "digits, '.', '_' or '-', starting with a letter or digit "
            "([A-Za-z0-9][A-Za-z0-9._-]{0,99}), as it names files in the ZIP",
        ),
        (replace(0, tags=["male", "a/b"]), "prompts[0] (id 'm-1'): tags[1] 'a/b' is not a safe"),
        (replace(4, prompt="   "), "prompts[4] (id 'm-5'): prompt: String should have at least"),
        (replace(4, prompt="p" * 10_001), "prompt: String should have at most 10000 characters"),
        (replace(1, negative_prompt="n" * 2_001), "(id 'm-2'): negative_prompt: String should"),
        (
            replace(5, attributes={"look": {"eyes": "green"}}),
            "prompts[5] (id 'f-1'): attributes must be flat: 'look' is an object",
        ),
        (replace(5, gender="f"), "prompts[5] (id 'f-1'): gender: Extra inputs are not permitted"),
        (replace(5, id=7), "prompts[5]: id: Input should be a valid string"),
        ({**small_catalog(), "name": " "}, "name: String should have at least 1 character"),
        ({**small_catalog(), "name": "n" * 201}, "name: String should have at most 200"),
        ({"name": "empty", "prompts": []}, "prompts: List should have at least 1 item"),
        ({"prompts": []}, "name: Field required"),
    ],
)
def test_bad_catalogs_are_refused_naming_the_entry(
    api: Api, body: dict[str, Any], message: str
) -> None:
    response = api.client.post("/api/catalogs", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert rows(api, Catalog) == 0


def test_every_bad_entry_is_named_up_to_a_bound(api: Api) -> None:
    body = {"name": "many", "prompts": [entry(f"p{n}", []) for n in range(50)]}
    detail = api.client.post("/api/catalogs", json=body).json()["detail"]
    assert detail.count("tags must not be empty") == 20
    assert detail.startswith("prompts[0] (id 'p0'): tags") and detail.endswith("… and 30 more")
    assert rows(api, Catalog) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"name": "x", "prompts": [', "the file 'bad.json' is not valid JSON: Expecting value"),
        (b"\xff\xfe\x00garbage", "the file 'bad.json' is not valid JSON"),
        (b'{"name": "x", "prompts": [{"id": "a", "tags": ["t"], "prompt": NaN}]}', "NaN"),
        (b"[1, 2]", "the file 'bad.json' must be a JSON object {\"name\""),
        (b"[" * 100_000, "the file 'bad.json' is nested too deeply to be a catalog"),
        (b'{"name": "x", "prompts": {"id": "a"}}', "prompts: Input should be a valid list"),
    ],
)
def test_a_file_that_is_not_a_catalog_is_refused(api: Api, content: bytes, message: str) -> None:
    response = upload_file(api, content, "bad.json")
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert rows(api, Catalog) == 0


def test_bodies_and_forms_that_are_not_catalogs_are_refused(api: Api) -> None:
    not_json = api.client.post(
        "/api/catalogs", content=b"name=x", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    assert not_json.json()["detail"].startswith("the request body is not valid JSON")
    string = api.client.post("/api/catalogs", json="catalog")
    assert string.json()["detail"].startswith(
        'the request body must be a JSON object {"name": "…", "prompts"'
    )
    assert string.json()["detail"].endswith("not a string")
    no_file = api.client.post("/api/catalogs", files={"other": ("a.json", b"{}")})
    assert no_file.status_code == 422
    assert no_file.json()["detail"] == "form field file is required: the catalog as a JSON file"
    as_text = api.client.post("/api/catalogs", data={"file": "{}"})  # a field, not a file
    assert as_text.status_code == 422
    assert rows(api, Catalog) == 0


def test_ten_thousand_prompts_fit_and_more_are_refused(api: Api) -> None:
    prompts = [entry(f"p{n:05d}", ["t", f"g{n % 7}"]) for n in range(10_000)]
    for item in prompts:
        item["prompt"] += " " + "detail " * 140  # about 1,000 characters each
    body = {"name": "big", "prompts": prompts}
    assert len(json.dumps(body)) > 10_000_000
    created = api.client.post("/api/catalogs", json=body)
    assert created.status_code == 201, created.text[:300]
    assert created.json()["prompt_count"] == 10_000
    assert created.json()["tag_counts"]["t"] == 10_000
    assert len(api.client.get(f"/api/catalogs/{created.json()['id']}").json()["prompts"]) == 10_000
    too_many = api.client.post(
        "/api/catalogs",
        json={"name": "n", "prompts": [entry(f"p{n}", ["t"]) for n in range(10_001)]},
    )
    assert too_many.status_code == 422
    assert "prompts: List should have at most 10000 items" in too_many.json()["detail"]
    assert rows(api, Catalog) == 1


def test_catalogs_over_their_size_limits_are_refused(api: Api) -> None:
    huge = {"name": "x", "prompts": [entry("a", ["t"], prompt="p" * 17 * MiB)]}
    response = api.client.post("/api/catalogs", json=huge)
    assert response.status_code == 413
    assert response.json()["detail"] == (
        "request body too large: the limit for a catalog is 16,777,216 bytes (16.0 MiB); "
        "split it into several catalogs"
    )
    # Within the body limit, but every "é" is stored as \u00e9: 15 MB in the database.
    wide = {"name": "x", "prompts": [entry(f"p{n}", ["t"], prompt="é" * 6_000) for n in range(420)]}
    stored = api.client.post("/api/catalogs", json=wide)
    assert stored.status_code == 413
    assert stored.json()["detail"].endswith(
        "the limit is 12,582,912 bytes: split it into several catalogs"
    )
    assert rows(api, Catalog) == 0


# Catalog submissions ------------------------------------------------------------------


def submit(api: Api, body: dict[str, Any]) -> httpx.Response:
    return api.client.post("/api/jobs/submit", json={"mode": "catalog", **body})


def picked(api: Api, job_id: str) -> list[str]:
    return [image["prompt_id"] for image in api.client.get(f"/api/jobs/{job_id}").json()["images"]]


def test_catalog_submit_plans_one_text_to_image_job_per_tag(api: Api) -> None:
    group_id = api.group()
    catalog = create(api, small_catalog())
    response = submit(
        api,
        {
            "group_id": group_id,
            "catalog_id": catalog["id"],
            "tags": ["male", "female"],
            "count": 3,
            "config": {"seed": 11, "negative_prompt": "blur"},
        },
    )
    assert response.status_code == 201, response.text
    male, female = response.json()["jobs"]
    assert male["batch_id"] == female["batch_id"]
    assert (male["mode"], male["prompt"]) == ("catalog", "catalog models, tag male")
    assert female["prompt"] == "catalog models, tag female"
    assert male["config"]["tag"] == "male" and female["config"]["tag"] == "female"
    assert male["config"]["catalog_id"] == catalog["id"] and male["config"]["count"] == 3
    assert male["config"]["seed"] == 11 and male["progress"]["total"] == 3
    by_id = {p["id"]: p for p in small_catalog()["prompts"]}
    for job, tag in ((male, "male"), (female, "female")):
        images = api.client.get(f"/api/jobs/{job['id']}").json()["images"]
        assert len({image["prompt_id"] for image in images}) == 3  # without replacement
        for position, image in enumerate(images):
            chosen = by_id[image["prompt_id"]]
            assert tag in chosen["tags"] and image["tags"] == chosen["tags"]
            assert image["prompt"] == chosen["prompt"] and image["reference_ids"] == []
            assert image["seed"] == 11 + position
    api.drain()
    sent = {item["prompt"]: item for body in api.run_bodies for item in body["input"]["items"]}
    assert len(sent) == 6 and all(item["reference_uris"] == [] for item in sent.values())
    for prompt, item in sent.items():
        own = by_id[prompt.removeprefix("portrait ")].get("negative_prompt")
        assert item["params"]["negative_prompt"] == (own or "blur")


def test_the_same_seed_picks_the_same_prompts_in_the_same_order(api: Api) -> None:
    group_id = api.group()
    catalog_id = create(api, small_catalog())["id"]
    base = {"group_id": group_id, "catalog_id": catalog_id, "count": 3}

    def picks(tags: list[str], seed: int) -> list[list[str]]:
        response = submit(api, {**base, "tags": tags, "config": {"seed": seed}})
        assert response.status_code == 201, response.text
        return [picked(api, job["id"]) for job in response.json()["jobs"]]

    first = picks(["male", "female"], 11)
    assert picks(["male", "female"], 11) == first
    assert picks(["female"], 11) == first[1:]  # a tag's picks do not depend on the others
    assert len({tuple(picks(["male"], seed)[0]) for seed in range(12, 20)}) > 1


def test_count_all_takes_every_prompt_of_the_tag_in_catalog_order(api: Api) -> None:
    group_id = api.group()
    catalog_id = create(api, small_catalog())["id"]
    response = submit(
        api, {"group_id": group_id, "catalog_id": catalog_id, "tags": ["female"], "count": "all"}
    )
    assert response.status_code == 201, response.text
    [job] = response.json()["jobs"]
    assert job["config"]["count"] == "all" and isinstance(job["config"]["seed"], int)
    assert picked(api, job["id"]) == ["f-1", "f-2", "f-3", "f-04"]


def test_an_entry_with_permutations_makes_one_image_per_prompt(api: Api) -> None:
    group_id = api.group()
    body = {
        "name": "colours",
        "prompts": [
            entry("bird", ["animal"], prompt="a {red, blue} bird"),
            entry("odd", ["broken"], prompt="a {red bird"),
        ],
    }
    catalog_id = create(api, body)["id"]
    base = {"group_id": group_id, "catalog_id": catalog_id, "count": "all"}
    response = submit(api, {**base, "tags": ["animal"], "config": {"seed": 5}})
    assert response.status_code == 201, response.text
    [job] = response.json()["jobs"]
    images = api.client.get(f"/api/jobs/{job['id']}").json()["images"]
    assert [(i["prompt_id"], i["prompt"], i["seed"]) for i in images] == [
        ("bird", "a red bird", 5),
        ("bird", "a blue bird", 6),
    ]
    refused = submit(api, {**base, "tags": ["broken"]})
    assert refused.status_code == 422 and "catalog entry 'odd'" in refused.json()["detail"]
    assert rows(api, Job) == 1


def test_outputs_of_other_modes_have_no_prompt_id_or_tags(api: Api) -> None:
    group_id = api.group()
    images = api.upload_ids(group_id, 1)
    job = api.client.post(
        "/api/jobs/submit",
        json={"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images},
    ).json()["jobs"][0]
    [image] = api.client.get(f"/api/jobs/{job['id']}").json()["images"]
    assert image["prompt_id"] is None and image["tags"] is None


def test_bad_catalog_submissions_write_nothing(api: Api) -> None:
    group_id = api.group()
    catalog_id = create(api, small_catalog())["id"]
    base = {"group_id": group_id, "catalog_id": catalog_id, "tags": ["male"], "count": 2}
    cases: list[tuple[dict[str, Any], int, str]] = [
        (
            {"tags": ["male", "elf", "dwarf"]},
            422,
            f"catalog {catalog_id} ('models') has no prompt tagged 'elf', 'dwarf'; "
            "its tags are: female, male, studio",
        ),
        (
            {"tags": ["female"], "count": 5},
            422,
            f"count 5 is more than the 4 prompt(s) tagged 'female' in catalog {catalog_id}: "
            'ask for at most 4, or "all"',
        ),
        ({"catalog_id": "cat_00000000000000000000000000"}, 404, "catalog cat_0000"),
        ({"catalog_id": catalog_id + " "}, 404, f"catalog {catalog_id}  does not exist"),
        ({"tags": ["male", "male"]}, 422, "tags: must each be given once; repeated: 'male'"),
        ({"tags": []}, 422, "tags: List should have at least 1 item"),
        ({"count": 0}, 422, 'catalog.count: must be a whole number from 1 to 10,000, or "all"'),
        ({"count": "some"}, 422, "catalog.count: must be a whole number from 1 to 10,000, or"),
        ({"config": {"aspect_ratio": "7:3"}}, 422, "does not support aspect_ratio '7:3'"),
        ({"group_id": "grp_00000000000000000000000000"}, 404, "group grp_0000"),
    ]
    for change, status, message in cases:
        response = submit(api, {**base, **change})
        assert response.status_code == status, (change, response.text)
        assert message in response.json()["detail"], (change, response.text)
    assert (rows(api, Job), rows(api, Output), rows(api, Dispatch)) == (0, 0, 0)


def test_a_submission_over_the_image_limit_is_refused(api: Api) -> None:
    api.platform.settings.submit_max_images = 5
    group_id = api.group()
    catalog_id = create(api, small_catalog())["id"]
    response = submit(
        api,
        {"group_id": group_id, "catalog_id": catalog_id, "tags": ["male", "female"], "count": 3},
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "6 images in one submission; the limit is 5"
    assert rows(api, Job) == 0


def test_deleting_a_catalog_keeps_the_jobs_made_from_it(api: Api) -> None:
    group_id = api.group()
    catalog_id = create(api, small_catalog())["id"]
    job = submit(
        api, {"group_id": group_id, "catalog_id": catalog_id, "tags": ["male"], "count": 2}
    ).json()["jobs"][0]
    assert api.client.delete(f"/api/catalogs/{catalog_id}").status_code == 204
    assert len(picked(api, job["id"])) == 2


def test_the_api_documents_both_ways_to_send_a_catalog(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    content = spec["paths"]["/api/catalogs"]["post"]["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    body = content["application/json"]["schema"]
    assert body["required"] == ["name", "prompts"]
    entries = body["properties"]["prompts"]["items"]["$ref"].removeprefix("#/components/schemas/")
    assert spec["components"]["schemas"][entries]["required"] == ["id", "tags", "prompt"]
