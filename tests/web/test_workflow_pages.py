"""The workflow pages (control_plane/web/ui/workflows.py): catalogs, presets, characters and
personas listed and shown, and their forms making what the JSON API makes — or showing the
refusal in words with what was typed kept, and nothing written."""

import json
from typing import Any

from sqlmodel import func, select

from control_plane.models import Job, JobMode, Persona, PersonaStatus
from tests.conftest import png_bytes
from tests.fakes.api import Api


def created(api: Api, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post(path, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def pool(api: Api, group_id: str) -> list[str]:
    """Four uploads, two of each gender."""
    files = [
        ("files", (f"{i}.png", png_bytes(24, 24, (40 * i, 9, 9)), "image/png")) for i in range(4)
    ]
    ids = []
    for gender, chunk in (("female", files[:2]), ("male", files[2:])):
        response = api.client.post(
            "/api/uploads",
            data={"group_id": group_id, "attributes": json.dumps({"gender": gender})},
            files=chunk,
        )
        assert response.status_code == 201, response.text
        ids += [image["id"] for image in response.json()["images"]]
    return ids


def jobs(api: Api) -> int:
    with api.session() as session:
        return session.exec(select(func.count()).select_from(Job)).one()


def form(api: Api, path: str, data: dict[str, str]) -> Any:
    return api.client.post(path, data=data, follow_redirects=False)


def test_the_overview_lists_every_workflow_with_links(api: Api) -> None:
    group_id = api.group("pool")
    references = pool(api, group_id)
    catalog = created(
        api,
        "/api/catalogs",
        {"name": "looks", "prompts": [{"id": "a", "tags": ["studio"], "prompt": "in a studio"}]},
    )
    preset = created(api, "/api/presets", {"name": "golden", "prompt": "at golden hour"})
    character = created(api, "/api/characters", {"name": "Mina", "references": references[:1]})
    personas = created(api, "/api/personas", {"group_id": group_id, "count": 1, "brief": "hikers"})
    page = api.client.get("/workflows")
    assert page.status_code == 200
    for link, name in (
        (f"/catalogs/{catalog['id']}", "looks"),
        (f"/presets/{preset['id']}", "golden"),
        (f"/characters/{character['id']}", "Mina"),
        (f"/personas/{personas['personas'][0]['id']}", personas["personas"][0]["id"]),
    ):
        assert f'href="{link}">{name}</a>' in page.text
        shown = api.client.get(link)
        assert shown.status_code == 200, link
    catalog_page = api.client.get(f"/catalogs/{catalog['id']}").text
    assert "in a studio" in catalog_page and "studio 1" in catalog_page
    persona_page = api.client.get(f"/personas/{personas['personas'][0]['id']}").text
    data_job = personas["personas"][0]["data_job_id"]
    assert '<li class="current">' in persona_page and f'href="/jobs/{data_job}"' in persona_page
    assert "not started" in persona_page  # base and variations


def test_preset_examples_from_the_form_and_a_dry_pool_refused(api: Api) -> None:
    group_id = api.group("pool")
    pool(api, group_id)
    preset = created(api, "/api/presets", {"name": "golden", "prompt": "at golden hour"})
    fields = {"pool_group_id": group_id, "count": "4", "balance_by": "gender", "seed": "7"}
    made = form(api, f"/presets/{preset['id']}/examples", fields)
    assert made.status_code == 303
    job = api.client.get(made.headers["location"].replace("/jobs/", "/api/jobs/")).json()
    assert job["mode"] == JobMode.PRESET and job["progress"]["total"] == 4

    before = jobs(api)
    dry = form(api, f"/presets/{preset['id']}/examples", fields)
    assert dry.status_code == 409
    assert "female 0 of 2 needed, male 0 of 2 needed" in dry.text
    assert 'value="gender"' in dry.text and 'value="7"' in dry.text  # kept as typed
    assert jobs(api) == before


def test_a_pack_from_the_form_and_a_bad_size_refused(api: Api) -> None:
    group_id = api.group("refs")
    [reference] = api.upload_ids(group_id, 1)
    character = created(api, "/api/characters", {"name": "Mina", "references": [reference]})
    made = form(
        api, f"/characters/{character['id']}/packs", {"size": "5", "scenes": "a café\n\nrain\n"}
    )
    assert made.status_code == 303
    job_id = made.headers["location"].removeprefix("/jobs/")
    with api.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.mode == JobMode.CHARACTER_PACK and job.total == 5
    page = api.client.get(f"/characters/{character['id']}").text
    assert f'href="/jobs/{job_id}"' in page and "0 of 5 images succeeded" in page

    before = jobs(api)
    bad = form(api, f"/characters/{character['id']}/packs", {"size": "3", "scenes": "a café"})
    assert bad.status_code == 422
    assert "greater than or equal to 5" in bad.text and "a café</textarea>" in bad.text
    assert jobs(api) == before


def test_personas_from_the_form_and_a_bad_count_refused(api: Api) -> None:
    group_id = api.group("people")
    made = form(api, "/personas", {"group_id": group_id, "count": "2", "brief": "climbers"})
    assert made.status_code == 303
    with api.session() as session:
        personas = session.exec(select(Persona)).all()
    assert len(personas) == 2 and {p.brief for p in personas} == {"climbers"}

    bad = form(api, "/personas", {"group_id": group_id, "count": "50", "brief": "divers"})
    assert bad.status_code == 422
    assert "less than or equal to 20" in bad.text and "divers</textarea>" in bad.text
    with api.session() as session:
        assert session.exec(select(func.count()).select_from(Persona)).one() == 2


def test_the_personas_fragment_runs_while_a_persona_is_being_made(api: Api) -> None:
    empty = api.client.get("/live/personas")
    assert empty.status_code == 200 and empty.headers["x-pixelfleet-running"] == "0"
    assert '<span id="personas-total" data-part class="muted">(0)</span>' in empty.text
    page = api.client.get("/workflows")
    assert 'data-live-src="/live/personas">' in page.text  # nothing to follow yet
    group_id = api.group("people")
    made = form(api, "/personas", {"group_id": group_id, "count": "2", "brief": "climbers"})
    assert made.status_code == 303

    making = api.client.get("/live/personas")
    assert making.headers["x-pixelfleet-running"] == "1" and "<html" not in making.text
    assert "(2)</span>" in making.text and making.text.count(">climbers</td>") == 2
    assert 'data-live-src="/live/personas" data-live-running>' in api.client.get("/workflows").text
    with api.session() as session:
        for persona in session.exec(select(Persona)).all():
            persona.status = PersonaStatus.COMPLETED
            session.add(persona)
        session.commit()
    assert api.client.get("/live/personas").headers["x-pixelfleet-running"] == "0"
