"""Variation sets and reruns (control_plane/services/variations.py, reruns.py) through the
HTTP API: what the new jobs ask the worker for, their refusals with nothing written, and the
links both ways (`parent_output_id`/`variations`, `rerun_of`/`reruns`)."""

from typing import Any

import pytest
from sqlmodel import col, func, select

from control_plane.models import Dispatch, Job, Output
from control_plane.services.variations import STRENGTH_WORDING
from tests.fakes.api import Api, finish_job


def submit(api: Api, body: dict[str, Any]) -> list[dict[str, Any]]:
    answer = api.client.post("/api/jobs/submit", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()["jobs"]


def semi_automatic_set(api: Api, group_id: str, statuses: list[str]) -> dict[str, Any]:
    """A finished set of len(statuses) images (one upload, prompt "a red fox"): its detail."""
    [upload] = api.upload_ids(group_id, 1)
    [job] = submit(
        api,
        {
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": [upload], "prompt": "a red fox"}],
            "config": {
                "total_images": len(statuses),
                "images_per_set": len(statuses),
                "aspect_ratio": "16:9",
                "negative_prompt": "blur",
            },
        },
    )
    finish_job(api, job["id"], statuses)
    return api.client.get(f"/api/jobs/{job['id']}").json()


def vary(api: Api, output_id: str, **body: Any) -> dict[str, Any]:
    answer = api.client.post(f"/api/outputs/{output_id}/variations", json=body)
    assert answer.status_code == 201, answer.text
    [job] = answer.json()["jobs"]
    assert answer.json()["batch_id"] == job["batch_id"]
    return job


def job_count(api: Api) -> int:
    with api.session() as session:
        return session.exec(select(func.count()).select_from(Job)).one()


def sent_items(api: Api, job_id: str) -> list[dict[str, Any]]:
    api.drain()
    bodies = [body for body in api.run_bodies if body["input"]["job_id"] == job_id]
    return [item for body in bodies for item in body["input"]["items"]]


def storage_uri(api: Api, output_id: str) -> str:
    with api.session() as session:
        output = session.get(Output, output_id)
        assert output is not None and output.storage_key
        return api.platform.storage.uri(output.storage_key)


def test_v2_of_a_set_makes_four_images_from_that_image(api: Api) -> None:
    group_id = api.group()
    parent = semi_automatic_set(api, group_id, ["succeeded"] * 4)
    second = parent["images"][1]
    job = vary(api, second["id"])
    assert job["mode"] == "variation" and job["parent_output_id"] == second["id"]
    assert job["group_id"] == group_id and job["prompt"] == "a red fox"
    assert job["progress"]["total"] == 4 and job["config"]["strength"] == "strong"
    items = sent_items(api, job["id"])
    assert len(api.run_bodies[-1]["input"]["items"]) == 4  # one dispatch, as a set
    assert {tuple(item["reference_uris"]) for item in items} == {(storage_uri(api, second["id"]),)}
    assert {item["prompt"] for item in items} == {f"{STRENGTH_WORDING['strong']}\n\na red fox"}
    params = [item["params"] for item in items]
    assert {(p["model"], p["aspect_ratio"], p["negative_prompt"]) for p in params} == {
        (parent["config"]["model"], "16:9", "blur")
    }
    assert {p["image_size"] for p in params} == {parent["config"]["image_size"]}
    seeds = [p["seed"] for p in params]
    assert len(set(seeds)) == 4 and seeds == [seeds[0] + i for i in range(4)]
    assert job["config"]["seed"] == seeds[0]
    detail = api.client.get(f"/api/jobs/{job['id']}").json()
    assert {tuple(image["reference_ids"]) for image in detail["images"]} == {(second["id"],)}

    shown = api.client.get(f"/api/outputs/{second['id']}").json()
    assert shown["job_id"] == parent["id"] and shown["group_id"] == group_id
    assert shown["variations"] == [job["id"]] and shown["url"]
    again = vary(api, second["id"], count=2)
    assert api.client.get(f"/api/outputs/{second['id']}").json()["variations"] == [
        job["id"],
        again["id"],
    ]
    images = api.client.get(f"/api/jobs/{parent['id']}").json()["images"]
    assert [image["variations"] for image in images] == [[], [job["id"], again["id"]], [], []]


def test_a_given_prompt_and_a_subtle_strength(api: Api) -> None:
    group_id = api.group()
    first = semi_automatic_set(api, group_id, ["succeeded"])["images"][0]
    job = vary(api, first["id"], count=2, prompt="  a grey fox ", strength="subtle")
    assert job["prompt"] == "a grey fox" and job["config"]["count"] == 2
    items = sent_items(api, job["id"])
    assert [item["prompt"] for item in items] == [f"{STRENGTH_WORDING['subtle']}\n\na grey fox"] * 2


def test_variations_of_a_variation_keep_the_sets_own_prompt(api: Api) -> None:
    group_id = api.group()
    first = semi_automatic_set(api, group_id, ["succeeded"])["images"][0]
    child = vary(api, first["id"], count=1, strength="subtle")
    finish_job(api, child["id"], ["succeeded"])
    [grandchild_image] = api.client.get(f"/api/jobs/{child['id']}").json()["images"]
    grandchild = vary(api, grandchild_image["id"], count=1)
    assert grandchild["prompt"] == "a red fox"
    [item] = sent_items(api, grandchild["id"])
    assert item["prompt"] == f"{STRENGTH_WORDING['strong']}\n\na red fox"


def test_only_succeeded_images_can_be_varied(api: Api) -> None:
    group_id = api.group()
    done = semi_automatic_set(api, group_id, ["succeeded", "failed"])
    good, failed = (image["id"] for image in done["images"])
    [upload] = api.upload_ids(group_id, 1)
    [running_job] = submit(
        api, {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": [upload]}
    )
    api.drain()
    [running] = api.client.get(f"/api/jobs/{running_job['id']}").json()["images"]
    before = job_count(api)
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        (failed, {}, 409, f"image {failed} has not succeeded (status failed)"),
        (running["id"], {}, 409, "has not succeeded (status running)"),
        ("out_" + "0" * 26, {}, 404, "does not exist"),
        ("out_nope", {}, 404, "does not exist"),
        (upload, {}, 404, "does not exist"),
        (good, {"count": 0}, 422, "count"),
        (good, {"count": 17}, 422, "count"),
        (good, {"strength": "medium"}, 422, "strength"),
        (good, {"prompt": ""}, 422, "prompt"),
        (good, {"seed": 1}, 422, "seed"),
    ]
    for output_id, body, status, needle in cases:
        answer = api.client.post(f"/api/outputs/{output_id}/variations", json=body)
        assert answer.status_code == status, (output_id, body, answer.text)
        assert needle in answer.json()["detail"], answer.text
    assert job_count(api) == before
    assert api.client.get("/api/outputs/out_nope").status_code == 404
    assert api.client.get(f"/api/outputs/{'out_' + '0' * 26}").status_code == 404


def test_a_rerun_repeats_prompts_references_and_settings_with_new_seeds(api: Api) -> None:
    group_id = api.group()
    uploads = api.upload_ids(group_id, 2)
    [original] = submit(
        api,
        {
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "a {cat, dog}",
            "images": uploads,
            "config": {"seed": 7, "aspect_ratio": "4:3", "negative_prompt": "text"},
        },
    )
    finish_job(api, original["id"], ["succeeded", "failed", "succeeded", "blocked"])
    answer = api.client.post(f"/api/jobs/{original['id']}/rerun")
    assert answer.status_code == 201, answer.text
    rerun = answer.json()
    assert rerun["rerun_of"] == original["id"] and rerun["mode"] == "automatic"
    assert rerun["prompt"] == "a {cat, dog}" and rerun["batch_id"] != original["batch_id"]
    assert rerun["status"] == "queued" and rerun["progress"]["total"] == 4
    assert {k: v for k, v in rerun["config"].items() if k != "seed"} == {
        k: v for k, v in original["config"].items() if k != "seed"
    }
    old = api.client.get(f"/api/jobs/{original['id']}").json()["images"]
    new = api.client.get(f"/api/jobs/{rerun['id']}").json()["images"]
    same = ("position", "prompt", "reference_ids")
    assert [{k: i[k] for k in same} for i in new] == [{k: i[k] for k in same} for i in old]
    assert [i["seed"] for i in new] == [rerun["config"]["seed"] + p for p in range(4)]
    assert [i["seed"] for i in new] != [i["seed"] for i in old]
    items = sent_items(api, rerun["id"])
    assert [item["output_id"] for item in items] == [i["id"] for i in new]
    assert {item["params"]["aspect_ratio"] for item in items} == {"4:3"}
    assert {item["params"]["negative_prompt"] for item in items} == {"text"}

    assert api.client.get(f"/api/jobs/{original['id']}").json()["reruns"] == [rerun["id"]]
    second = api.client.post(f"/api/jobs/{original['id']}/rerun").json()  # while one runs
    listing = api.client.get("/api/jobs", params={"group_id": group_id}).json()["data"]
    by_id = {job["id"]: job for job in listing}
    assert by_id[original["id"]]["reruns"] == [rerun["id"], second["id"]]
    assert by_id[rerun["id"]]["reruns"] == [] and by_id[second["id"]]["rerun_of"] == original["id"]
    retried = api.client.post(f"/api/jobs/{original['id']}/retry").json()
    assert retried["reruns"] == [rerun["id"], second["id"]]


def test_a_set_reruns_as_one_set_and_a_variation_set_as_a_variation(api: Api) -> None:
    group_id = api.group()
    parent = semi_automatic_set(api, group_id, ["succeeded"] * 3)
    rerun = api.client.post(f"/api/jobs/{parent['id']}/rerun").json()
    assert rerun["mode"] == "semi-automatic" and rerun["set_index"] == parent["set_index"]
    assert len(api.run_bodies[-1]["input"]["items"]) == 3 and sent_items(api, rerun["id"])
    image = parent["images"][0]["id"]
    variation = vary(api, image, count=3)
    again = api.client.post(f"/api/jobs/{variation['id']}/rerun").json()
    assert again["mode"] == "variation" and again["parent_output_id"] == image
    assert len(sent_items(api, again["id"])) == 3
    assert len(api.run_bodies[-1]["input"]["items"]) == 3
    assert api.client.get(f"/api/outputs/{image}").json()["variations"] == [
        variation["id"],
        again["id"],
    ]
    finish_job(api, again["id"], ["succeeded", "failed", "failed"])
    assert api.client.post(f"/api/jobs/{again['id']}/retry").status_code == 200
    api.drain()
    with api.session() as session:
        dispatches = session.exec(
            select(Dispatch).where(Dispatch.job_id == again["id"]).order_by(col(Dispatch.id))
        ).all()
    assert len(dispatches) == 2  # the set, then its two failed images as one retry


def test_catalog_and_import_jobs_rerun_the_same_prompts(api: Api) -> None:
    group_id = api.group()
    entries = [{"id": f"e-{n}", "tags": ["t"], "prompt": f"prompt {n}"} for n in range(6)]
    catalog = api.client.post("/api/catalogs", json={"name": "c", "prompts": entries}).json()
    [picked] = submit(
        api,
        {
            "group_id": group_id,
            "mode": "catalog",
            "catalog_id": catalog["id"],
            "tags": ["t"],
            "count": 3,
        },
    )
    imported = api.client.post(
        "/api/jobs/import",
        data={"group_id": group_id},
        files={"file": ("rows.csv", b"id,prompt,count\nr1,one,2\nr2,two,1\n", "text/csv")},
    ).json()["jobs"][0]
    for original in (picked, imported):
        rerun = api.client.post(f"/api/jobs/{original['id']}/rerun").json()
        assert rerun["config"]["seed"] != original["config"]["seed"]
        old, new = (
            api.client.get(f"/api/jobs/{job['id']}").json()["images"] for job in (original, rerun)
        )
        kept = ("prompt", "prompt_id", "tags")
        assert [[i[k] for k in kept] for i in new] == [[i[k] for k in kept] for i in old]
        assert [i["prompt_id"] for i in new] != [None] * len(new)


def test_a_rerun_whose_reference_is_gone_is_refused(api: Api) -> None:
    group_id = api.group()
    parent = semi_automatic_set(api, group_id, ["succeeded"])
    image = parent["images"][0]["id"]
    [child] = submit(
        api, {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": [image]}
    )
    finish_job(api, child["id"], ["succeeded"])
    assert api.client.delete(f"/api/jobs/{parent['id']}").status_code == 204
    before = job_count(api)
    answer = api.client.post(f"/api/jobs/{child['id']}/rerun")
    assert answer.status_code == 409
    assert answer.json()["detail"] == (
        f"job {child['id']} cannot be rerun: 1 of its reference images can no longer be used: "
        f"no image {image}"
    )
    assert job_count(api) == before
    assert api.client.post(f"/api/jobs/job_{'0' * 26}/rerun").status_code == 404
    assert api.client.post("/api/jobs/job_x/rerun").status_code == 404


@pytest.mark.parametrize("mode", ["persona-data", "persona-images"])
def test_a_personas_stages_are_not_rerun(api: Api, mode: str) -> None:
    group_id = api.group()
    [upload] = api.upload_ids(group_id, 1)
    [job] = submit(
        api, {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": [upload]}
    )
    with api.session() as session:
        stored = session.get(Job, job["id"])
        assert stored is not None
        stored.mode = mode
        session.add(stored)
        session.commit()
    answer = api.client.post(f"/api/jobs/{job['id']}/rerun")
    assert answer.status_code == 409 and "create a new persona" in answer.json()["detail"]


def test_variations_and_reruns_take_an_idempotency_key(api: Api) -> None:
    group_id = api.group()
    parent = semi_automatic_set(api, group_id, ["succeeded"])
    image = parent["images"][0]["id"]
    for path, body in (
        (f"/api/outputs/{image}/variations", {"count": 2}),
        (f"/api/jobs/{parent['id']}/rerun", None),
    ):
        before = job_count(api)
        headers = {"Idempotency-Key": f"key for {path}"}
        first = api.client.post(path, json=body, headers=headers)
        again = api.client.post(path, json=body, headers=headers)
        assert first.status_code == again.status_code == 201, again.text
        assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
        assert job_count(api) == before + 1
