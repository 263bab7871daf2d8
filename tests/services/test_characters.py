"""Characters and their packs (`control_plane/services/characters.py`), through the API."""

from typing import Any

import pytest
from sqlmodel import col, func, select

from control_plane.models import Character, Dispatch, Job, Output
from control_plane.services.characters import DEFAULT_SCENES, pack_prompt
from tests.fakes.api import Api, finish_job

STYLE = {"aspect_ratio": "3:4", "style_prompt": "35mm film photo, muted colours"}


def create(api: Api, **body: Any) -> dict[str, Any]:
    response = api.client.post("/api/characters", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def character_of(api: Api, references: list[str], **extra: Any) -> dict[str, Any]:
    return create(api, name="Mina", references=references, seed=1234, style=STYLE, **extra)


def pack(api: Api, character_id: str, **body: Any) -> dict[str, Any]:
    response = api.client.post(f"/api/characters/{character_id}/packs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def job_detail(api: Api, job_id: str) -> dict[str, Any]:
    response = api.client.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def rows(api: Api, table: type) -> int:
    with api.session() as session:
        return session.exec(select(func.count()).select_from(table)).one()


def test_create_get_list_and_delete_a_character(api: Api) -> None:
    references = api.upload_ids(api.group(), 2)
    created = character_of(api, references)
    assert created["id"].startswith("chr_") and created["name"] == "Mina"
    assert created["references"] == references and created["seed"] == 1234
    # the look is locked: the model's defaults are stored with what was given
    assert created["style"] == {
        "model": "gemini-2.5-flash-image",
        "aspect_ratio": "3:4",
        "image_size": "1K",
        "style_prompt": "35mm film photo, muted colours",
    }
    shown = api.client.get(f"/api/characters/{created['id']}").json()
    assert shown == {**created, "packs": []}

    second = create(api, name="Jon", references=references[:1])
    assert 0 <= second["seed"] < 2**31  # random when absent, and stored
    assert api.client.get(f"/api/characters/{second['id']}").json()["seed"] == second["seed"]
    listed = api.client.get("/api/characters", params={"limit": 1}).json()
    assert listed["total"] == 2 and [c["id"] for c in listed["data"]] == [second["id"]]
    page_two = api.client.get("/api/characters", params={"limit": 1, "page": 2}).json()
    assert [c["id"] for c in page_two["data"]] == [created["id"]]

    job = pack(api, created["id"])["jobs"][0]
    assert api.client.delete(f"/api/characters/{created['id']}").status_code == 204
    gone = api.client.get(f"/api/characters/{created['id']}")
    assert gone.status_code == 404 and "does not exist" in gone.json()["detail"]
    assert api.client.delete(f"/api/characters/{created['id']}").status_code == 404
    assert job_detail(api, job["id"])["progress"]["total"] == 8  # its pack stays


def test_references_from_several_groups_make_one_character(api: Api) -> None:
    first, second = api.upload_ids(api.group("a"), 1), api.upload_ids(api.group("b"), 1)
    character = character_of(api, first + second)
    assert character["references"] == first + second


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"references": ["img_" + "0" * 26]}, "cannot be used as references: no upload img_000"),
        ({"references": ["img_nope"]}, "not shaped like an upload id"),
        (
            {"references": "FOUR"},
            "gemini-2.5-flash-image takes at most 3 reference images per prompt; got 4",
        ),
        ({"references": []}, "references: List should have at least 1 item"),
        ({"references": "TWICE"}, "references: must each be given once; repeated"),
        ({"style": {"aspect_ratio": "7:3"}}, "does not support aspect_ratio '7:3'; allowed: 1:1"),
        ({"style": {"image_size": "4K"}}, "gemini-2.5-flash-image does not support image_size"),
        ({"style": {"model": "dall-e"}}, "unknown model 'dall-e'; choose one of:"),
        ({"style": {"colour": "red"}}, "style.colour: Extra inputs are not permitted"),
        ({"seed": 2**31}, "seed: Input should be less than 2147483648"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"name": "  "}, "name: String should have at least 1 character"),
    ],
)
def test_a_bad_character_is_refused_and_nothing_written(
    api: Api, body: dict[str, Any], message: str
) -> None:
    uploads = api.upload_ids(api.group(), 4)
    given = body.get("references", uploads[:1])
    named = {"FOUR": uploads, "TWICE": [uploads[0], uploads[0]]}
    body["references"] = named[given] if isinstance(given, str) else given
    answer = api.client.post("/api/characters", json={"name": "Mina", **body})
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["detail"]
    assert rows(api, Character) == 0


def test_a_pack_carries_the_references_the_seed_and_a_scene_per_image(api: Api) -> None:
    group_id = api.group()
    references = api.upload_ids(group_id, 2)
    character = character_of(api, references)
    answer = pack(api, character["id"])
    [job] = answer["jobs"]
    assert answer["batch_id"] == job["batch_id"]
    assert job["mode"] == "character-pack" and job["group_id"] == group_id  # its first reference's
    assert job["status"] == "queued" and job["progress"]["total"] == 8
    assert job["config"]["character_id"] == character["id"] and job["config"]["seed"] == 1234
    images = job_detail(api, job["id"])["images"]
    assert [image["seed"] for image in images] == list(range(1234, 1242))
    assert all(image["reference_ids"] == references for image in images)
    assert [image["prompt"] for image in images] == [
        pack_prompt("Mina", scene, STYLE["style_prompt"]) for scene in DEFAULT_SCENES[:8]
    ]
    assert images[0]["prompt"] == (
        "Mina, close-up portrait, looking at the camera, soft natural light, plain background. "
        "The same person as in the reference images: same face, hair, skin tone, eye colour, "
        "build and apparent age; only the pose, expression, clothing and setting change. "
        "Style: 35mm film photo, muted colours."
    )
    with api.session() as session:
        source = session.exec(select(Job.source_id).where(Job.id == job["id"])).one()
        assert source == character["id"]

    api.drain()  # the whole pack in one dispatch (chunks of dispatch_chunk_size 16)
    [sent] = api.run_bodies
    items = sent["input"]["items"]
    assert [item["params"]["seed"] for item in items] == list(range(1234, 1242))
    assert all(len(item["reference_uris"]) == 2 for item in items)
    assert {item["params"]["aspect_ratio"] for item in items} == {"3:4"}


def test_scenes_of_the_request_are_used_in_turn_in_the_group_asked_for(api: Api) -> None:
    character = character_of(api, api.upload_ids(api.group(), 1))
    elsewhere = api.group("elsewhere")
    [job] = pack(
        api, character["id"], size=5, scenes=["on a boat", "in a library."], group_id=elsewhere
    )["jobs"]
    assert job["group_id"] == elsewhere
    prompts = [image["prompt"] for image in job_detail(api, job["id"])["images"]]
    scenes = ["on a boat", "in a library", "on a boat", "in a library", "on a boat"]
    assert prompts == [pack_prompt("Mina", scene, STYLE["style_prompt"]) for scene in scenes]
    assert prompts[1].startswith("Mina, in a library. The same person")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"size": 4}, 422, "size: Input should be greater than or equal to 5"),
        ({"size": 11}, 422, "size: Input should be less than or equal to 10"),
        ({"scenes": []}, 422, "scenes: List should have at least 1 item"),
        ({"scenes": ["ok", "  "]}, 422, "scenes.1: String should have at least 1 character"),
        ({"scenes": ["x" * 501]}, 422, "scenes.0: String should have at most 500 characters"),
        ({"scenes": ["a"] * 9}, 422, "9 scenes for a pack of 8 images: give at most 8 scenes"),
        ({"group_id": "grp_" + "0" * 26}, 404, "group grp_00000000000000000000000000 does not"),
        ({"group_id": "nope"}, 404, "group nope does not exist"),
        ({"seed": 3}, 422, "seed: Extra inputs are not permitted"),
    ],
)
def test_a_bad_pack_is_refused_and_nothing_written(
    api: Api, body: dict[str, Any], status: int, message: str
) -> None:
    character = character_of(api, api.upload_ids(api.group(), 1))
    answer = api.client.post(f"/api/characters/{character['id']}/packs", json=body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]
    assert (rows(api, Job), rows(api, Output), rows(api, Dispatch)) == (0, 0, 0)


def test_a_pack_of_an_unknown_character_is_404(api: Api) -> None:
    for character_id in ("chr_" + "0" * 26, "chr_x", "img_" + "0" * 26):
        answer = api.client.post(f"/api/characters/{character_id}/packs", json={})
        assert answer.status_code == 404 and "character" in answer.json()["detail"]
    assert rows(api, Job) == 0


def test_a_character_whose_references_were_deleted_makes_no_pack(api: Api) -> None:
    kept, doomed = api.group("kept"), api.group("doomed")
    character = character_of(api, api.upload_ids(doomed, 1) + api.upload_ids(kept, 1))
    assert api.client.delete(f"/api/groups/{doomed}").status_code == 204
    no_group = api.client.post(f"/api/characters/{character['id']}/packs", json={})
    assert no_group.status_code == 409 and "give group_id" in no_group.json()["detail"]
    answer = api.client.post(f"/api/characters/{character['id']}/packs", json={"group_id": kept})
    assert answer.status_code == 409
    assert (
        "cannot make a pack: 1 image id(s) cannot be used as references: no upload img_"
        in (answer.json()["detail"])
    )
    assert rows(api, Job) == 0


def test_packs_are_listed_newest_first_with_their_progress(api: Api) -> None:
    character = character_of(api, api.upload_ids(api.group(), 2))
    first = pack(api, character["id"])["jobs"][0]
    finish_job(api, first["id"], ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 4)
    second = pack(api, character["id"], size=5)["jobs"][0]
    finish_job(api, second["id"], ["succeeded", "blocked", "failed", "succeeded", "succeeded"])
    third = pack(api, character["id"], size=6)["jobs"][0]

    packs = api.client.get(f"/api/characters/{character['id']}").json()["packs"]
    assert [p["id"] for p in packs] == [third["id"], second["id"], first["id"]]
    assert [p["summary"] for p in packs] == [
        "0 of 6 images succeeded, 6 pending",
        "3 of 5 images succeeded, 1 failed, 1 blocked",
        "7 of 8 images succeeded, 1 failed",
    ]
    assert packs[2]["progress"] == {
        "total": 8,
        "succeeded": 7,
        "failed": 1,
        "blocked": 0,
        "pending": 0,
    }
    assert packs[0]["status"] in ("queued", "processing")  # the sender may have sent it
    assert [p["status"] for p in packs[1:]] == ["completed", "completed"]
    assert packs[2]["completed_at"] and packs[0]["completed_at"] is None
    # the partial success is the job's own answer too
    detail = job_detail(api, first["id"])
    assert detail["status"] == "completed" and detail["progress"]["failed"] == 1
    assert [image["status"] for image in detail["images"]].count("succeeded") == 7


def test_a_character_lists_only_its_own_packs(api: Api) -> None:
    references = api.upload_ids(api.group(), 1)
    mina, jon = character_of(api, references), create(api, name="Jon", references=references)
    pack(api, mina["id"])
    [jons] = pack(api, jon["id"], size=5)["jobs"]
    assert [p["id"] for p in api.client.get(f"/api/characters/{jon['id']}").json()["packs"]] == [
        jons["id"]
    ]
    with api.session() as session:
        assert session.exec(select(func.count()).where(col(Job.source_id) == mina["id"])).one() == 1


def test_a_character_and_a_pack_sent_twice_with_one_key_are_made_once(api: Api) -> None:
    body = {"name": "Mina", "references": api.upload_ids(api.group(), 1)}
    key = {"Idempotency-Key": "character-1"}
    first = api.client.post("/api/characters", json=body, headers=key)
    again = api.client.post("/api/characters", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    path = f"/api/characters/{first.json()['id']}/packs"
    packs = [api.client.post(path, json={"size": 5}, headers=key) for _ in range(2)]
    assert [p.status_code for p in packs] == [201, 201] and packs[0].json() == packs[1].json()
    changed = api.client.post(path, json={"size": 6}, headers=key)
    assert changed.status_code == 422 and "Idempotency-Key" in changed.json()["detail"]
    assert (rows(api, Character), rows(api, Job)) == (1, 1)


def test_a_succeeded_image_is_a_reference_of_a_character(api: Api) -> None:
    """An output of another group's pack, and an upload: the pack goes to the output's group
    (the first reference's) and sends the output's file."""
    first_group = api.group("first")
    upload = api.upload_ids(first_group, 1)
    [made] = pack(api, character_of(api, upload)["id"], size=5)["jobs"]
    finish_job(api, made["id"], ["succeeded"] * 4 + ["failed"])
    images = job_detail(api, made["id"])["images"]
    failed, succeeded = images[4]["id"], images[0]["id"]

    refused = api.client.post("/api/characters", json={"name": "Ana", "references": [failed]})
    assert refused.status_code == 422
    assert f"{failed} has not succeeded (status failed)" in refused.json()["detail"]
    other_upload = api.upload_ids(api.group("second"), 1)
    character = create(api, name="Ana", references=[succeeded, *other_upload], seed=3)
    [job] = pack(api, character["id"], size=5)["jobs"]
    assert job["group_id"] == first_group
    assert {tuple(image["reference_ids"]) for image in job_detail(api, job["id"])["images"]} == {
        (succeeded, *other_upload)
    }
    api.drain()
    [output] = [o for o in api.outputs(made["id"]) if o.id == succeeded]
    sent = [body for body in api.run_bodies if body["input"]["job_id"] == job["id"]]
    [uri, _] = sent[0]["input"]["items"][0]["reference_uris"]
    assert uri == api.platform.storage.uri(output.storage_key or "")
