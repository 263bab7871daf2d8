"""The group page's forms in a browser: a folder of images (one broken, one not an image)
uploaded in parallel batches with progress, the refusals with their reasons and a retry of
the files a server error kept out; a drop of files with attributes; the cost before Generate
as the form changes and the confirmation above the threshold; a refused form keeping what
was typed; the page at phone width and by axe-core."""

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Route, expect

from tests.browser.conftest import (
    PHONE,
    horizontal_overflow,
    screenshot,
    serious_violations,
)
from tests.conftest import png_bytes


def _group(api: httpx.Client, name: str, images: int = 0) -> tuple[str, list[str]]:
    group_id = api.post("/api/groups", json={"name": name}).json()["id"]
    if not images:
        return group_id, []
    files = [
        ("files", (f"{name} {i}.png", png_bytes(30 + i, 30), "image/png")) for i in range(images)
    ]
    answer = api.post("/api/uploads", data={"group_id": group_id}, files=files)
    assert answer.status_code == 201, answer.text
    return group_id, [image["id"] for image in answer.json()["images"]]


def _folder(root: Path, images: int) -> Path:
    """A folder of `images` PNGs (some in a subfolder), a broken PNG and a text file."""
    folder = root / "shoot"
    (folder / "more").mkdir(parents=True)
    for i in range(images):
        where = folder / "more" if i % 4 == 0 else folder
        (where / f"photo {i}.png").write_bytes(png_bytes(20 + i, 20, (i * 5, 100, 150)))
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.refused(422, 503)
def test_a_folder_uploads_in_batches_with_refusals_and_a_retry(
    page: Any, api: httpx.Client, tmp_path: Path
) -> None:
    _upload_a_folder_then_drop_files(page, api, tmp_path)


def _upload_a_folder_then_drop_files(page: Any, api: httpx.Client, tmp_path: Path) -> None:
    group_id, _ = _group(api, "folder")
    failed_once: list[str] = []

    def first_request_fails(route: Route) -> None:
        if not failed_once:
            failed_once.append(route.request.url)
            route.fulfill(status=503, json={"detail": "busy, try again"})
        else:
            route.continue_()

    page.route("**/api/uploads", first_request_fails)
    page.goto(f"/groups/{group_id}")
    page.get_by_label("Choose a folder").set_input_files(_folder(tmp_path, 40))

    status = page.locator("[data-upload-status]")
    expect(status).to_contain_text("Done:")
    expect(status).to_contain_text("failed (retry them)")
    problems = page.get_by_role("list", name="Files not uploaded")
    expect(problems).to_contain_text("shoot/notes.txt: not a PNG, JPEG or WebP image: skipped")
    expect(problems).to_contain_text("not uploaded: the server answered 503: busy, try again")

    page.get_by_role("button", name=re.compile(r"Retry \d+ failed files")).click()
    expect(status).to_have_text("Done: 40 uploaded, 2 not accepted.")
    expect(page.get_by_role("progressbar", name="Upload progress")).to_have_attribute(
        "aria-valuenow", "100"
    )
    expect(problems).to_contain_text("shoot/broken.png: ")
    expect(problems).not_to_contain_text("not uploaded")
    assert len(failed_once) == 1
    assert serious_violations(page) == []
    page.set_viewport_size(PHONE)
    assert horizontal_overflow(page) == 0

    # Files dropped (not a folder) with attributes for a reference pool.
    page.get_by_label("Attributes for these images").fill("pool=hats, size=2")
    drop = page.evaluate_handle(
        """() => {
            const transfer = new DataTransfer();
            const text = new File([new Uint8Array([1, 2, 3])], "x.txt", {type: "text/plain"});
            transfer.items.add(text);
            return transfer;
        }"""
    )
    png = png_bytes(90, 90, (1, 2, 3))
    page.evaluate(
        "([transfer, bytes]) => transfer.items.add(new File([new Uint8Array(bytes)], 'hat.png', "
        "{type: 'image/png'}))",
        [drop, list(png)],
    )
    page.dispatch_event("[data-dropzone]", "drop", {"dataTransfer": drop})
    expect(status).to_have_text("Done: 41 uploaded, 3 not accepted.")

    # A file chosen with the keyboard only.
    page.get_by_label("Attributes for these images").press("Tab")  # to "Choose images"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(
        files=[{"name": "cap.png", "mimeType": "image/png", "buffer": png_bytes(70, 50)}]
    )
    expect(status).to_have_text("Done: 42 uploaded, 3 not accepted.")
    screenshot(page, "group_page_after_uploads")
    page.get_by_role("link", name="Show the uploads").press("Enter")
    expect(page.get_by_role("checkbox", name="hat.png")).to_be_visible()
    uploads = api.get(f"/api/groups/{group_id}/uploads", params={"limit": 100}).json()["data"]
    assert len(uploads) == 42
    assert [u["attributes"] for u in uploads if u["filename"] == "hat.png"] == [
        {"pool": "hats", "size": 2}
    ]


def test_the_cost_before_generate_and_a_confirmation_above_the_threshold(
    page: Any, api: httpx.Client
) -> None:
    group_id, _ = _group(api, "costs", images=3)
    page.goto(f"/groups/{group_id}")
    estimate = page.locator("[data-estimate-text]")
    expect(estimate).to_have_text(
        "3 images for about $0.12 at the listed prices; write the prompt before you generate"
    )
    page.get_by_label("Prompt (automatic").fill("a hat")
    expect(estimate).to_have_text("3 images for about $0.12 at the listed prices")
    page.get_by_label("Model", exact=True).select_option("gemini-3-pro-image")
    expect(estimate).to_have_text("3 images for about $0.40 at the listed prices")
    page.get_by_label("Image size", exact=True).select_option("4K")
    expect(estimate).to_have_text("3 images for about $0.72 at the listed prices")
    page.get_by_role("checkbox", name="costs 1.png").check()
    expect(estimate).to_have_text("1 image for about $0.24 at the listed prices")

    expect(page.get_by_label("Prompt for costs 1.png")).to_be_hidden()  # semi-automatic's
    page.get_by_label("Mode", exact=True).select_option("semi-automatic")
    expect(page.get_by_label("Prompt (automatic")).to_be_hidden()
    expect(estimate).to_contain_text("has no prompt")
    page.get_by_label("Prompt for costs 1.png").fill("a red hat")
    page.get_by_label("Total images", exact=True).fill("40")
    expect(estimate).to_have_text("40 images for about $9.60 at the listed prices")

    page.get_by_role("button", name="Generate").click()
    dialog = page.get_by_role("dialog", name="Generate these images?")
    expect(dialog).to_contain_text("This will generate 40 images for about $9.60.")
    assert serious_violations(page) == []
    screenshot(page, "generate_confirmation_dialog")
    page.keyboard.press("Escape")  # changed our mind: nothing is submitted
    expect(dialog).to_be_hidden()
    assert api.get("/api/jobs", params={"group_id": group_id}).json()["data"] == []

    page.get_by_role("button", name="Generate").focus()  # and now with the keyboard only
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    expect(page.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("button", name="Generate 40 images")).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/groups/{group_id}#jobs")
    jobs = api.get("/api/jobs", params={"group_id": group_id}).json()["data"]
    assert len(jobs) == 10 and {job["prompt"] for job in jobs} == {"a red hat"}
    assert sum(job["progress"]["total"] for job in jobs) == 40


@pytest.mark.refused(422)
def test_a_refused_form_keeps_what_was_typed_and_names_the_image(
    page: Any, api: httpx.Client
) -> None:
    group_id, images = _group(api, "typed", images=2)
    earlier = {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images[:1]}
    assert api.post("/api/jobs/submit", json=earlier).status_code == 201  # a row under Jobs
    page.goto(f"/groups/{group_id}")
    page.get_by_label("Mode", exact=True).select_option("semi-automatic")
    page.get_by_role("checkbox", name="typed 0.png").check()
    page.get_by_role("checkbox", name="typed 1.png").check()
    page.get_by_label("Prompt for typed 0.png").fill("a blue coat")
    page.get_by_label("Seed", exact=True).fill("42")
    page.get_by_role("button", name="Generate").click()

    expect(page.get_by_role("alert")).to_have_text(
        "Image \u2018typed 1.png\u2019 has no prompt: in semi-automatic mode each ticked image "
        "needs its own prompt"
    )
    expect(page.get_by_label("Prompt for typed 0.png")).to_have_value("a blue coat")
    expect(page.get_by_role("checkbox", name="typed 1.png")).to_be_checked()
    expect(page.get_by_label("Mode", exact=True)).to_have_value("semi-automatic")
    expect(page.get_by_label("Seed", exact=True)).to_have_value("42")
    expect(page.get_by_label("Total images", exact=True)).to_be_visible()
    assert serious_violations(page) == []
    page.set_viewport_size(PHONE)
    assert horizontal_overflow(page) == 0
    assert serious_violations(page) == []
