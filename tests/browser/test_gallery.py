"""The gallery, its lightbox and a semi-automatic batch's page, in a real browser: filters,
the lightbox with the keyboard (arrows across the page boundary, Escape back to the
thumbnail), the download, V2 and rerun of a set, and each page at phone width and by axe."""

import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.browser.conftest import PHONE, horizontal_overflow, screenshot, serious_violations
from tests.conftest import png_bytes

UPLOADS, PER_UPLOAD = 4, 2  # 8 images, and the batch's 8
SETS, PER_SET = 2, 4
PER_PAGE = 12  # the gallery's pages here: two of them


@dataclass(frozen=True)
class Made:
    group_id: str
    automatic_job: str
    batch_id: str
    sets: list[str]  # the batch's jobs by set


def _finished(api: httpx.Client, job_ids: list[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = [api.get(f"/api/jobs/{job_id}").json()["status"] for job_id in job_ids]
        if all(status not in ("queued", "processing") for status in statuses):
            return
        time.sleep(0.2)
    pytest.fail(f"jobs still running: {statuses}")


@pytest.fixture(scope="module")
def made(platform_url: str) -> Made:
    """A group with an automatic job of a gallery page's worth of images, then a
    semi-automatic submission of two sets of four (the gallery shows it first)."""
    with httpx.Client(base_url=platform_url, timeout=30) as api:
        group_id = api.post("/api/groups", json={"name": "gallery"}).json()["id"]
        files = [
            ("files", (f"ref{i}.png", png_bytes(40 + i, 40), "image/png")) for i in range(UPLOADS)
        ]
        uploaded = api.post("/api/uploads", data={"group_id": group_id}, files=files)
        images = [image["id"] for image in uploaded.json()["images"]]
        automatic = api.post(
            "/api/jobs/submit",
            json={
                "group_id": group_id,
                "mode": "automatic",
                "prompt": "a lighthouse in watercolour",
                "images": images,
                "config": {"outputs_per_image": PER_UPLOAD},
            },
        )
        assert automatic.status_code == 201, automatic.text
        batch = api.post(
            "/api/jobs/submit",
            json={
                "group_id": group_id,
                "mode": "semi-automatic",
                "items": [
                    {"images": [images[0]], "prompt": "a fox at dawn"},
                    {"images": [images[1]], "prompt": "a heron in fog"},
                ],
                "config": {"total_images": SETS * PER_SET, "images_per_set": PER_SET},
            },
        )
        assert batch.status_code == 201, batch.text
        sets = [job["id"] for job in batch.json()["jobs"]]
        automatic_job = automatic.json()["jobs"][0]["id"]
        _finished(api, [automatic_job, *sets])
        return Made(group_id, automatic_job, batch.json()["batch_id"], sets)


def _thumbnails(page: Any) -> Any:
    return page.locator("[data-gallery] a[data-lightbox]")


def test_the_gallery_filters_and_its_lightbox_works_by_keyboard(page: Any, made: Made) -> None:
    page.goto(f"/groups/{made.group_id}/gallery?limit={PER_PAGE}")
    assert _thumbnails(page).count() == PER_PAGE
    assert _thumbnails(page).first.locator("img").get_attribute("loading") == "lazy"
    assert serious_violations(page) == []

    page.get_by_label("Job").select_option(made.sets[1])
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"job=job_"))
    assert _thumbnails(page).count() == PER_SET
    page.get_by_label("Prompt contains").fill("lighthouse")
    page.get_by_label("Job").select_option("")
    page.get_by_label("Prompt contains").press("Enter")
    page.wait_for_url(re.compile(r"prompt=lighthouse"))
    labels = _thumbnails(page).evaluate_all("links => links.map(link => link.ariaLabel)")
    assert len(labels) == UPLOADS * PER_UPLOAD
    assert all("lighthouse" in label for label in labels)

    page.goto(f"/groups/{made.group_id}/gallery?limit={PER_PAGE}")
    _thumbnails(page).first.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    assert dialog.get_attribute("aria-modal") == "true"
    dialog.get_by_role("heading", name=re.compile("Image #3")).wait_for()  # a set's last
    assert re.search("a heron in fog|a fox at dawn", dialog.inner_text())
    assert dialog.get_by_role("img", name=re.compile("reference")).count() == 1
    assert serious_violations(page) == []
    screenshot(page, "gallery_lightbox")

    for _ in range(8):  # the dialog keeps the keyboard's focus
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.closest('dialog') !== null")
    page.keyboard.press("ArrowRight")
    dialog.get_by_role("heading", name=re.compile("Image #2")).wait_for()
    page.keyboard.press("Escape")
    assert not dialog.is_visible()
    # Chromium first gives the focus back to the thumbnail that opened the dialog; the
    # dialog's close event (a task later) moves it to the image shown last
    shown_last = _thumbnails(page).nth(1).get_attribute("data-lightbox")
    page.wait_for_function(
        "shown => document.activeElement.dataset.lightbox === shown", arg=shown_last
    )


def test_the_lightbox_crosses_the_page_boundary_and_downloads(page: Any, made: Made) -> None:
    page.goto(f"/groups/{made.group_id}/gallery?limit={PER_PAGE}")
    _thumbnails(page).last.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("heading", name=re.compile("Image #")).wait_for()
    page.keyboard.press("ArrowRight")  # the next page's first image, loaded in place
    loaded = _thumbnails(page).nth(PER_PAGE)
    loaded.wait_for(state="attached")
    shown = loaded.get_attribute("aria-label") or ""
    position = shown.split(",")[0].removeprefix("Image ")
    dialog.get_by_role("heading", name=re.compile(f"Image {position}")).wait_for()

    with page.expect_download() as download:
        dialog.get_by_role("link", name="Download").click()
    extension = download.value.suggested_filename.rpartition(".")[2]
    with open(download.value.path(), "rb") as file:
        assert file.read(3) == {"jpg": b"\xff\xd8\xff", "png": b"\x89PN"}[extension]

    page.set_viewport_size(PHONE)
    assert horizontal_overflow(page) == 0
    screenshot(page, "gallery_lightbox_phone")
    dialog.get_by_role("button", name="Close").click()
    assert horizontal_overflow(page) == 0
    assert serious_violations(page) == []


def test_the_job_page_tiles_open_the_lightbox_and_its_page_stands_alone(
    page: Any, made: Made
) -> None:
    page.goto(f"/jobs/{made.sets[0]}")
    page.locator("a[data-lightbox]").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("heading", name=re.compile("Image #0")).wait_for()
    assert "a fox at dawn" in dialog.inner_text()

    viewer = page.locator("a[data-lightbox]").first.get_attribute("data-lightbox")
    page.goto(viewer or "")  # the lightbox's content as a page: the link without JavaScript
    assert page.get_by_role("heading", name=re.compile("Image #0")).is_visible()
    assert serious_violations(page) == []
    page.set_viewport_size(PHONE)
    assert horizontal_overflow(page) == 0


def test_the_group_pages_uploads_open_in_the_lightbox(page: Any, made: Made) -> None:
    page.goto(f"/groups/{made.group_id}")
    uploads = page.locator("#group-uploads a[data-lightbox]")
    assert uploads.count() == UPLOADS
    uploads.first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("heading", name=re.compile(r"ref\d\.png")).wait_for()
    first = dialog.get_by_role("heading").first.inner_text()
    assert re.search("4[0-3]\N{MULTIPLICATION SIGN}40 px", dialog.inner_text())
    assert dialog.get_by_role("link", name="Download").count() == 1
    assert serious_violations(page) == []
    screenshot(page, "group_upload_lightbox")

    page.keyboard.press("ArrowRight")  # the next upload
    page.wait_for_function(
        "shown => document.querySelector('dialog h1').textContent !== shown", arg=first
    )
    page.keyboard.press("Escape")
    shown_last = uploads.nth(1).get_attribute("data-lightbox")
    page.wait_for_function(
        "shown => document.activeElement.dataset.lightbox === shown", arg=shown_last
    )


def test_a_batch_shows_its_sets_with_variations_and_reruns(
    page: Any, made: Made, api: httpx.Client
) -> None:
    page.goto(f"/groups/{made.group_id}")
    page.get_by_role("link", name="set 1", exact=True).click()
    page.wait_for_url(f"**/batches/{made.batch_id}")
    sets = page.locator("section.set")
    assert sets.count() == SETS
    assert sets.first.locator("a[data-lightbox]").count() == PER_SET
    assert serious_violations(page) == []
    screenshot(page, "batch")
    page.set_viewport_size(PHONE)
    assert horizontal_overflow(page) == 0
    assert serious_violations(page) == []
    screenshot(page, "batch_phone")

    sets.first.get_by_role("button", name=re.compile("^V2")).click()  # answered in place
    sets.first.get_by_role("link", name="Open them").click()
    page.wait_for_url(re.compile(r"/jobs/job_"))
    variation = api.get(f"/api/jobs/{page.url.rsplit('/', 1)[1]}").json()
    parent = api.get(f"/api/outputs/{variation['parent_output_id']}").json()
    assert (variation["mode"], parent["job_id"], parent["position"]) == (
        "variation",
        made.sets[0],
        1,
    )

    page.goto(f"/batches/{made.batch_id}")
    page.get_by_role("button", name="Rerun set 2").click()
    sets.nth(1).get_by_role("link", name="Open the rerun").click()
    page.wait_for_url(re.compile(r"/jobs/job_"))
    rerun = api.get(f"/api/jobs/{page.url.rsplit('/', 1)[1]}").json()
    assert rerun["rerun_of"] == made.sets[1]
