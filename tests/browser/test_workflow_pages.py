"""The workflow pages in the browser: each one clean by axe-core and as wide as a phone at
390 px; a preset's examples asked for with the keyboard only, landing on their job;
personas made from the overview's form, shown in its live table without a reload."""

import json
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import (
    DESKTOP,
    PHONE,
    horizontal_overflow,
    screenshot,
    serious_violations,
)
from tests.conftest import png_bytes


def created(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(path, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def workflows(api: httpx.Client) -> tuple[str, list[str]]:
    """A pool group (two uploads of each gender) and one of each workflow; (group, pages)."""
    group_id = created(api, "/api/groups", {"name": "pool"})["id"]
    references = []
    for gender, shade in (("female", 40), ("male", 160)):
        files = [
            ("files", (f"{gender}{i}.png", png_bytes(24, 24, (shade + i, 9, 9)))) for i in (0, 1)
        ]
        data = {"group_id": group_id, "attributes": json.dumps({"gender": gender})}
        answer = api.post("/api/uploads", data=data, files=files)
        references += [image["id"] for image in answer.json()["images"]]
    entries = [{"id": "a", "tags": ["studio"], "prompt": "a portrait in a studio"}]
    catalog = created(api, "/api/catalogs", {"name": "looks", "prompts": entries})
    preset = created(api, "/api/presets", {"name": "golden", "prompt": "at golden hour"})
    character = created(api, "/api/characters", {"name": "Mina", "references": references[:1]})
    personas = created(api, "/api/personas", {"group_id": group_id, "count": 1})
    pages = [
        "/workflows",
        f"/catalogs/{catalog['id']}",
        f"/presets/{preset['id']}",
        f"/characters/{character['id']}",
        f"/personas/{personas['personas'][0]['id']}",
    ]
    return group_id, pages


def test_workflow_pages_are_accessible_and_fit_a_phone(page: Any, api: httpx.Client) -> None:
    _, pages = workflows(api)
    for path in pages:
        for viewport in (DESKTOP, PHONE):
            page.set_viewport_size(viewport)
            page.goto(path)
            assert serious_violations(page) == [], (path, viewport)
            assert horizontal_overflow(page) == 0, (path, viewport)
            screenshot(page, f"{path.split('/')[1]}-{viewport['width']}")


def test_preset_examples_asked_for_with_the_keyboard(page: Any, api: httpx.Client) -> None:
    group_id, pages = workflows(api)
    page.goto(pages[2])
    page.get_by_label("Pool group").focus()
    page.keyboard.press("Tab")  # Examples
    page.keyboard.press("Control+A")
    page.keyboard.type("4")
    page.keyboard.press("Tab")  # Balance by attribute
    page.keyboard.type("gender")
    page.keyboard.press("Tab")  # Seed
    page.keyboard.press("Tab")  # Make examples
    assert page.evaluate("document.activeElement.textContent") == "Make examples"
    page.keyboard.press("Enter")
    page.wait_for_url("**/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    job = api.get(f"/api/jobs/{job_id}").json()
    assert job["mode"] == "preset" and job["group_id"] == group_id
    assert job["progress"]["total"] == 4


def test_personas_are_made_from_the_form_without_a_reload(page: Any, api: httpx.Client) -> None:
    created(api, "/api/groups", {"name": "people"})
    page.goto("/workflows")
    page.evaluate("window.__stillHere = true")
    page.get_by_label("How many").fill("1")
    page.get_by_label("Brief").fill("sailors at dawn")
    page.get_by_role("button", name="Create personas").click()
    expect(page.get_by_role("status").filter(has_text="Personas started")).to_be_visible()
    personas = page.get_by_role("table", name="Personas")
    expect(personas).to_contain_text("sailors at dawn")  # the live table, in place
    expect(page.get_by_label("Brief")).to_have_value("sailors at dawn")
    assert page.evaluate(
        "window.__stillHere === true && performance.getEntriesByType('navigation').length === 1"
    )
    assert serious_violations(page) == []
