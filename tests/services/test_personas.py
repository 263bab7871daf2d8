"""Persona pipelines through the API with RunPod mocked: each stage's job, the consumer's
transitions, a failure injected in each stage, the answers, listing, ZIP names, deleting."""

import json
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from control_plane.background import Service
from control_plane.models import Job, JobMode, Output, Persona
from control_plane.services.personas import PERSONA_SCHEMA, persona_schema
from tests.fakes.api import Api, answer_text_job, finish_job
from tests.fakes.stack import read_zip
from worker.providers import offline_text

pytestmark = pytest.mark.anyio


def persona_json(name: str = "Amara Mensah", **changes: Any) -> str:
    data = {
        "name": name,
        "age": 29,
        "gender": "female",
        "ethnicity": "Black",
        "bio": "Amara is a nurse from Accra who runs marathons.",
        "appearance": "short curly black hair, dark brown eyes, warm smile",
        "style": "sporty: athleisure and running shoes",
        "tags": ["nurse", "running", "sporty"],
        **changes,
    }
    return json.dumps({key: value for key, value in data.items() if value is not None})


def create(api: Api, group_id: str, **body: Any) -> dict[str, Any]:
    response = api.client.post("/api/personas", json={"group_id": group_id, "count": 1, **body})
    assert response.status_code == 201, response.text
    return response.json()


def persona(api: Api, persona_id: str) -> dict[str, Any]:
    response = api.client.get(f"/api/personas/{persona_id}")
    assert response.status_code == 200, response.text
    return response.json()


def through_data(api: Api, group_id: str, text: str | None = None, **body: Any) -> dict[str, Any]:
    """One persona whose data job has answered `text` (a valid persona by default)."""
    [created] = create(api, group_id, **body)["personas"]
    answer_text_job(api, created["data_job_id"], text or persona_json())
    api.drain()
    return persona(api, created["id"])


def through_base(api: Api, group_id: str, base: str = "succeeded") -> dict[str, Any]:
    data_done = through_data(api, group_id)
    finish_job(api, data_done["base_job_id"], [base])
    api.drain()
    return persona(api, data_done["id"])


def test_creating_writes_one_data_job_per_persona_with_a_text_task(api: Api) -> None:
    group_id = api.group()
    body = {
        "count": 3,
        "brief": "young professionals in Lisbon",
        "attributes": {"gender": "female", "age_range": "25-35"},
    }
    created = create(api, group_id, **body)
    assert created["batch_id"].startswith("bat_")
    personas = created["personas"]
    assert [p["status"] for p in personas] == ["pending"] * 3
    assert {p["stage"] for p in personas} == {"data"}
    assert all(p["attributes"] == body["attributes"] for p in personas)
    api.drain()
    items = [item for run in api.run_bodies for item in run["input"]["items"]]
    assert len(items) == 3 and len(api.run_bodies) == 3  # one job (and dispatch) each
    assert all(run["input"]["version"] == 4 for run in api.run_bodies)
    for item in items:
        assert item["task"] == "text" and item["text_model"] == "gemini-2.5-flash"
        schema = item["response_schema"]
        assert schema["properties"]["gender"]["enum"] == ["female"]
        assert (schema["properties"]["age"]["minimum"], schema["properties"]["age"]["maximum"]) == (
            25,
            35,
        )
        assert "young professionals in Lisbon" in item["prompt"]
    assert len({item["params"]["seed"] for item in items}) == 3
    listed = api.client.get("/api/personas", params={"batch_id": created["batch_id"]}).json()
    assert listed["total"] == 3
    assert [p["id"] for p in listed["data"]] == [p["id"] for p in personas]
    assert {p["status"] for p in listed["data"]} == {"generating-data"}  # their jobs started
    with api.session() as session:
        jobs = session.exec(select(Job).where(Job.batch_id == created["batch_id"])).all()
    assert {job.mode for job in jobs} == {JobMode.PERSONA_DATA}
    assert {job.source_id for job in jobs} == {p["id"] for p in personas}


def test_the_whole_pipeline_with_one_variation_failing(api: Api) -> None:
    group_id = api.group()
    [created] = create(api, group_id)["personas"]
    api.drain()
    healthy = api.run_route.side_effect
    api.run_route.mock(return_value=httpx.Response(401, text="not now"))  # the base waits
    answer_text_job(api, created["data_job_id"], persona_json())
    api.drain()
    data_done = persona(api, created["id"])
    assert data_done["status"] == "data-generated" and data_done["stage"] == "base"
    assert data_done["name"] == "Amara Mensah" and data_done["data"]["age"] == 29
    api.run_route.mock(side_effect=healthy)
    api.platform.wake(Service.SENDER)
    api.drain()  # the base job is sent: it has started
    assert persona(api, data_done["id"])["status"] == "generating-images"
    with api.session() as session:
        base_job = session.get(Job, data_done["base_job_id"])
        assert base_job is not None and base_job.mode == JobMode.PERSONA_IMAGES
        assert base_job.source_id == data_done["id"] and base_job.config["stage"] == "base"
    assert "Amara Mensah" in base_job.prompt and "short curly black hair" in base_job.prompt
    base_body = api.run_bodies[-1]["input"]["items"][0]
    assert base_body["task"] == "image" and base_body["reference_uris"] == []

    finish_job(api, data_done["base_job_id"], ["succeeded"])
    api.drain()
    base_done = persona(api, data_done["id"])
    assert base_done["status"] == "generating-images" and base_done["stage"] == "variations"
    assert base_done["images"]["base"]["status"] == "succeeded"
    assert base_done["images"]["base"]["url"]
    assert base_done["base_output_id"] == base_done["images"]["base"]["id"]
    variations = base_done["images"]["variations"]
    assert len(variations) == 4
    assert all(v["reference_ids"] == [base_done["base_output_id"]] for v in variations)
    assert len({v["prompt"] for v in variations}) == 4

    finish_job(api, base_done["variations_job_id"], ["succeeded", "failed", "succeeded", "blocked"])
    api.drain()
    done = persona(api, data_done["id"])
    assert done["status"] == "completed"
    assert done["error_log"] == [
        "variation 2 failed: failed on purpose",
        "variation 4 blocked: blocked on purpose",
    ]
    statuses = [v["status"] for v in done["images"]["variations"]]
    assert statuses == ["succeeded", "failed", "succeeded", "blocked"]


@pytest.mark.parametrize(
    ("status", "text", "logged"),
    [
        ("failed", None, "persona data failed: failed on purpose"),
        ("blocked", None, "persona data blocked: blocked on purpose"),
        ("succeeded", "{not json", "persona data failed: worker result rejected: text is not"),
        ("succeeded", persona_json(bio=None), "persona data failed: worker result rejected: text"),
        ("succeeded", persona_json(age="29"), "persona data is unusable: age is not a whole"),
    ],
)
def test_a_data_stage_that_fails_fails_its_persona(
    api: Api, status: str, text: str | None, logged: str
) -> None:
    group_id = api.group()
    [created] = create(api, group_id)["personas"]
    answer_text_job(api, created["data_job_id"], text, status=status)
    api.drain()
    failed = persona(api, created["id"])
    assert failed["status"] == "failed" and failed["stage"] == "data"
    assert len(failed["error_log"]) == 1 and failed["error_log"][0].startswith(logged)
    assert failed["base_job_id"] is None and failed["data"] is None
    with api.session() as session:
        assert (
            session.exec(select(Job).where(Job.source_id == created["id"])).all()[0].id
            == (created["data_job_id"])
        )


def test_invalid_json_is_refused_by_the_results_check(api: Api) -> None:
    """A text that is not JSON fails its output at the control plane's check, with why."""
    group_id = api.group()
    [created] = create(api, group_id)["personas"]
    answer_text_job(api, created["data_job_id"], "{not json")
    api.drain()
    with api.session() as session:
        output = session.exec(select(Output).where(Output.job_id == created["data_job_id"])).one()
    assert output.status == "failed" and output.text is None
    assert output.error and output.error.startswith("worker result rejected: text is not valid")


def test_data_against_the_requested_attributes_fails_the_persona(api: Api) -> None:
    group_id = api.group()
    done = through_data(api, group_id, persona_json(gender="male"), attributes={"gender": "female"})
    assert done["status"] == "failed"
    assert done["error_log"] == [
        "persona data is unusable: gender is 'male', not the requested 'female'"
    ]


@pytest.mark.parametrize("outcome", ["blocked", "failed"])
def test_a_base_portrait_that_does_not_succeed_fails_its_persona(api: Api, outcome: str) -> None:
    group_id = api.group()
    failed = through_base(api, group_id, outcome)
    assert failed["status"] == "failed" and failed["stage"] == "base"
    assert failed["error_log"] == [f"base portrait {outcome}: {outcome} on purpose"]
    assert failed["variations_job_id"] is None and failed["base_output_id"] is None
    assert failed["images"]["base"]["status"] == outcome
    assert failed["data"]["name"] == "Amara Mensah"  # what succeeded is kept


def test_a_retried_base_takes_its_persona_on(api: Api) -> None:
    group_id = api.group()
    failed = through_base(api, group_id, "failed")
    assert api.client.post(f"/api/jobs/{failed['base_job_id']}/retry").status_code == 200
    finish_job(api, failed["base_job_id"], ["succeeded"])
    api.drain()
    again = persona(api, failed["id"])
    assert again["status"] == "generating-images" and again["variations_job_id"]
    assert again["error_log"] == ["base portrait failed: failed on purpose"]  # history kept


def test_each_stage_happens_once_whatever_the_events_replayed(api: Api) -> None:
    """Re-running the consumer over every event (a restart before its cursor moved) writes
    no second stage job."""
    group_id = api.group()
    done = through_base(api, group_id)
    with api.session() as session:
        before = session.exec(select(Job.id).where(Job.source_id == done["id"])).all()
    api.platform.relay.run_pass()
    with api.session() as session:
        assert session.exec(select(Job.id).where(Job.source_id == done["id"])).all() == before
    assert len(before) == 3


def test_refusals_write_nothing(api: Api) -> None:
    group_id = api.group()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"count": 0}, 422, "count"),
        ({"count": 21}, 422, "count"),
        ({"brief": "x" * 2001}, 422, "brief"),
        ({"attributes": {"look": {"hair": "red"}}}, 422, "must be flat"),
        ({"attributes": {"age_range": "35-25"}}, 422, "age_range"),
        ({"attributes": {"age": "old"}}, 422, "attributes.age"),
        ({"config": {"model": "nope"}}, 422, "unknown model"),
        ({"group_id": "grp_00000000000000000000000000"}, 404, "does not exist"),
        ({"group_id": "not-a-group"}, 404, "does not exist"),
    ]
    for body, code, words in cases:
        response = api.client.post("/api/personas", json={"group_id": group_id, "count": 1, **body})
        assert response.status_code == code, (body, response.text)
        assert words in response.text, (body, response.text)
    with api.session() as session:
        assert session.exec(select(Persona)).all() == []
        assert session.exec(select(Job)).all() == []
    assert api.client.get("/api/personas/per_00000000000000000000000000").status_code == 404
    assert api.client.get("/api/personas/nope").status_code == 404


def test_listing_pages_and_filters(api: Api) -> None:
    first, second = api.group("one"), api.group("two")
    batch_a = api.client.post("/api/personas", json={"group_id": first, "count": 3}).json()
    api.client.post("/api/personas", json={"group_id": second, "count": 2})
    page = api.client.get("/api/personas", params={"group_id": first, "limit": 2}).json()
    assert page["total"] == 3 and len(page["data"]) == 2
    rest = api.client.get("/api/personas", params={"group_id": first, "limit": 2, "page": 2})
    ids = [p["id"] for p in page["data"] + rest.json()["data"]]
    assert ids == [p["id"] for p in batch_a["personas"]]
    assert api.client.get("/api/personas").json()["total"] == 5
    by_batch = api.client.get("/api/personas", params={"batch_id": batch_a["batch_id"]}).json()
    assert by_batch["total"] == 3


def test_zip_names_persona_images_by_name_unique_per_group(api: Api) -> None:
    group_id = api.group()
    first, second = through_base(api, group_id), through_base(api, group_id)  # same name
    for done in (first, second):
        finish_job(api, done["variations_job_id"], ["succeeded"] * 4)
    api.drain()
    _, archive, manifest = read_zip(api.client, group_id)
    names = sorted(archive.namelist()[2:])
    folder_two = f"Amara-Mensah_{second['id']}"
    assert names == sorted(
        [
            *(f"Amara-Mensah/{n}.png" for n in ("base", *(f"variation_{i}" for i in range(1, 5)))),
            *(f"{folder_two}/{n}.png" for n in ("base", *(f"variation_{i}" for i in range(1, 5)))),
        ]
    )
    assert all(line["mode"] == "persona-images" for line in manifest)  # no text answers


def test_deleting_a_group_deletes_its_personas(api: Api) -> None:
    group_id = api.group()
    failed = through_data(api, group_id, "{}")
    assert failed["status"] == "failed"
    assert api.client.delete(f"/api/groups/{group_id}").status_code == 204
    assert api.client.get(f"/api/personas/{failed['id']}").status_code == 404
    with api.session() as session:
        assert session.exec(select(Persona)).all() == []
        assert session.exec(select(Output).where(col(Output.group_id) == group_id)).all() == []


def test_the_offline_writer_answers_the_persona_schema_within_the_attributes() -> None:
    schema = persona_schema({"gender": "male", "age_range": "40-45", "ethnicity": "Hispanic"})
    answers = [json.loads(offline_text.write(f"persona {i}", i, schema)) for i in range(20)]
    for answer in answers:
        assert set(answer) == set(PERSONA_SCHEMA["required"])
        assert answer["gender"] == "male" and answer["ethnicity"] == "Hispanic"
        assert 40 <= answer["age"] <= 45 and 3 <= len(answer["tags"]) <= 8
        assert answer["name"].split()[0] in offline_text.FIRST_NAMES["male"]
        assert answer["name"].split()[0] in answer["bio"]
    assert len({answer["name"] for answer in answers}) > 5
    assert offline_text.write("persona 1", 1, schema) == offline_text.write("persona 1", 1, schema)
    assert offline_text.write("persona 1", 1, schema) != offline_text.write("persona 1", 2, schema)


def test_the_data_jobs_answer_shows_as_its_text_and_a_key_answers_once(api: Api) -> None:
    group_id = api.group()
    body = {"group_id": group_id, "count": 2}
    key = {"Idempotency-Key": "personas-once"}
    first = api.client.post("/api/personas", json=body, headers=key)
    again = api.client.post("/api/personas", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert api.client.get("/api/personas").json()["total"] == 2
    data_job_id = first.json()["personas"][0]["data_job_id"]
    answer_text_job(api, data_job_id, persona_json())
    job = api.client.get(f"/api/jobs/{data_job_id}").json()
    assert job["mode"] == "persona-data" and job["status"] == "completed"
    [answer] = job["images"]
    assert answer["kind"] == "text" and json.loads(answer["text"])["name"] == "Amara Mensah"
    assert answer["url"] is None and answer["model"] == "gemini-2.5-flash"
