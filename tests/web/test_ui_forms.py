"""The group page's forms without a browser: a refused generate form comes back as typed and
says what is wrong in the form's words (the image by its name, no API field paths); "all N
uploads" means every page's; the form's estimate; the confirmation above the thresholds;
attributes given to a batch of uploads."""

import re

import pytest
from sqlmodel import func, select

from control_plane.models import Job
from control_plane.web.ui import routes as ui_routes
from tests.conftest import png_bytes
from tests.fakes.api import Api
from tests.web.test_ui import Page


def _group_with(api: Api, names: list[str]) -> tuple[str, list[str]]:
    group_id = api.group("forms")
    files = [(name, png_bytes(30 + i, 30)) for i, name in enumerate(names)]
    answer = api.upload(group_id, files)
    assert answer.status_code == 201, answer.text
    return group_id, [image["id"] for image in answer.json()["images"]]


def _jobs(api: Api) -> int:
    with api.session() as session:
        return int(session.exec(select(func.count()).select_from(Job)).one())


def _checked(html: str, name: str) -> list[str]:
    """The values of the ticked checkboxes called `name`."""
    boxes = re.findall(rf'<input type="checkbox" name="{name}" value="([^"]+)"[^>]*>', html)
    ticked = re.findall(rf'<input type="checkbox" name="{name}" value="([^"]+)"[^>]*checked', html)
    return [value for value in boxes if value in ticked]


def test_a_refused_semi_automatic_form_names_the_image_and_keeps_what_was_typed(
    api: Api,
) -> None:
    group_id, (first, second, third) = _group_with(api, ["cat 1.png", "cat 2.png", "cat 3.png"])
    form = {
        "mode": "semi-automatic",
        "images": [first, third],
        f"prompt_{first}": "a cat in a hat",
        f"prompt_{second}": "a cat on a mat",
        "aspect_ratio": "4:3",
        "seed": "9",
        "negative_prompt": "blurry",
    }
    refused = api.client.post(f"/groups/{group_id}/submit", data=form)
    assert refused.status_code == 422
    page = Page(refused.text)
    assert page.alerts == [
        "Image \u2018cat 3.png\u2019 has no prompt: in semi-automatic mode each ticked image "
        "needs its own prompt"
    ]
    html = refused.text
    typed_prompt = 'placeholder="prompt (semi-automatic)" value="a cat in a hat"'
    assert f'name="prompt_{first}" {typed_prompt}' in html
    assert 'value="a cat on a mat"' in html
    assert _checked(html, "images") == [first, third]
    assert '<option value="semi-automatic" selected>' in html
    assert "<option selected>4:3</option>" in html
    assert 'name="seed" type="number" min="0" placeholder="random" value="9"' in html
    assert 'value="blurry"' in html
    label = f'<label class="visually-hidden" for="prompt-{third}">Prompt for cat 3.png</label>'
    assert label in html
    invalid = re.findall(r'name="prompt_(\w+)"[^>]*aria-invalid="true"', html)
    assert invalid == [third]  # the prompt to write, marked (and focused by generate.js)
    assert _jobs(api) == 0


def test_refusals_say_the_fields_label_not_the_api_path(api: Api) -> None:
    group_id, (first, second) = _group_with(api, ["dog.png", "fox.png"])
    cases = [
        (
            {"mode": "semi-automatic", f"prompt_{first}": "x", f"prompt_{second}": " {a, b} "},
            "2 items make 3 prompts",
        ),
        (
            {"mode": "semi-automatic", f"prompt_{first}": "x", "total_images": "8"}
            | {"images_per_set": "3"},
            "Total images (8) must be a multiple of images per set (3).",
        ),
        ({"mode": "automatic", "prompt": "x", "aspect_ratio": "7:3"}, "aspect ratio '7:3'"),
        ({"mode": "automatic", "prompt": ""}, "Prompt is empty: write what to generate."),
        ({"mode": "semi-automatic"}, "No image chosen: tick an image and give it a prompt."),
        (
            {"mode": "semi-automatic", f"prompt_{first}": "{a"},
            "the prompt of image \u2018dog.png\u2019",
        ),
    ]
    for form, expected in cases:
        refused = api.client.post(f"/groups/{group_id}/submit", data=form)
        assert refused.status_code == 422, form
        said = " ".join(Page(refused.text).alerts)
        assert expected in said, said
        assert not re.search(r"items\[|\w_\w|body\.|config\.", said), said
    assert _jobs(api) == 0


def test_all_uploads_means_every_page_of_them(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ui_routes, "UPLOADS_PER_PAGE", 2)
    group_id, ids = _group_with(api, [f"{i}.png" for i in range(5)])
    page = api.client.get(f"/groups/{group_id}")
    assert len(Page(page.text).inputs["images"]) == 2
    assert "Select all 5 uploads (every page)" in Page(page.text).all_text

    form = {"mode": "automatic", "prompt": "p", "images": [ids[0]], "all_uploads": "1"}
    estimate = api.client.post(f"/groups/{group_id}/estimate", data=form)
    assert estimate.json()["images"] == 5
    submitted = api.client.post(f"/groups/{group_id}/submit", data=form, follow_redirects=False)
    assert submitted.status_code == 303, submitted.text
    job_id = submitted.headers["location"].removeprefix("/jobs/")
    assert api.client.get(f"/api/jobs/{job_id}").json()["progress"]["total"] == 5

    semi = {"mode": "semi-automatic", "all_uploads": "1", f"prompt_{ids[0]}": "p"}
    refused = api.client.post(f"/groups/{group_id}/submit?page=2", data=semi)
    assert refused.status_code == 422
    assert "Images \u20181.png\u2019, \u20182.png\u2019, \u20183.png\u2019 and \u20184.png\u2019 " \
        "have no prompt" in " ".join(Page(refused.text).alerts)  # fmt: skip
    assert 'name="all_uploads" value="1" data-all-uploads checked' in refused.text
    # the prompt typed on page 1 rides along, hidden, on page 2
    assert f'<input type="hidden" name="prompt_{ids[0]}" value="p">' in refused.text
    assert _checked(refused.text, "images") == ids[2:4]


def test_the_forms_estimate_and_the_confirmation_above_the_thresholds(api: Api) -> None:
    group_id, ids = _group_with(api, ["a.png", "b.png", "c.png"])
    small = api.client.post(
        f"/groups/{group_id}/estimate",
        data={"mode": "automatic", "prompt": "", "model": "gemini-2.5-flash-image"},
    )
    assert small.status_code == 200
    assert small.json() == {
        "images": 3,
        "cost_usd": pytest.approx(0.117),
        "summary": "3 images for about $0.12",
        "confirm": False,
        "note": "write the prompt before you generate",
    }
    large = {
        "mode": "semi-automatic",
        f"prompt_{ids[0]}": "p",
        "total_images": "200",
        "model": "gemini-2.5-flash-image",
    }
    answer = api.client.post(f"/groups/{group_id}/estimate", data=large).json()
    assert answer["summary"] == "200 images for about $7.80" and answer["confirm"] is True
    api.platform.settings.ui_confirm_above_usd = 10.0  # PIXELFLEET_UI_CONFIRM_ABOVE_USD
    assert api.client.post(f"/groups/{group_id}/estimate", data=large).json()["confirm"] is False
    api.platform.settings.ui_confirm_above_images = 199
    assert api.client.post(f"/groups/{group_id}/estimate", data=large).json()["confirm"] is True
    api.platform.settings.ui_confirm_above_usd = 5.0
    api.platform.settings.ui_confirm_above_images = 1_000
    wrong = api.client.post(f"/groups/{group_id}/estimate", data={"mode": "semi-automatic"})
    assert wrong.status_code == 200
    assert wrong.json() == {"problem": "No image chosen: tick an image and give it a prompt."}
    assert api.client.post("/groups/grp_nope/estimate", data={}).status_code == 404

    asked = api.client.post(f"/groups/{group_id}/submit", data=large)
    assert asked.status_code == 200 and _jobs(api) == 0
    assert "This will generate 200 images for about $7.80. Press Generate again to go ahead." in (
        Page(asked.text).alerts
    )
    assert '<input type="hidden" name="confirmed" value="1">' in asked.text
    confirmed = api.client.post(
        f"/groups/{group_id}/submit", data={**large, "confirmed": "1"}, follow_redirects=False
    )
    assert confirmed.status_code == 303 and _jobs(api) == 50  # one job per set of 4


def test_attributes_for_a_batch_of_uploads(api: Api) -> None:
    group_id = api.group("pool")
    files = [("files", (f"{i}.png", png_bytes(30 + i), "image/png")) for i in range(2)]
    posted = api.client.post(
        f"/groups/{group_id}/uploads",
        data={"attributes": "gender=female, age=30, smiling: true"},
        files=files,
        follow_redirects=False,
    )
    assert posted.status_code == 303, posted.text
    listed = api.client.get(f"/api/groups/{group_id}/uploads").json()["data"]
    expected = {"gender": "female", "age": 30, "smiling": True}
    assert [upload["attributes"] for upload in listed] == [expected, expected]

    refused = api.client.post(
        f"/groups/{group_id}/uploads", data={"attributes": "gender"}, files=files
    )
    assert refused.status_code == 422
    assert "Attributes: 'gender' is not a key=value pair" in " ".join(Page(refused.text).alerts)
    assert 'name="attributes" value="gender"' in refused.text
