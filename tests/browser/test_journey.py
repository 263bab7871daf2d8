"""A new user's whole journey in a real browser, once with the mouse only (desktop) and once
with the keyboard only (Tab, Enter, Space, arrows, Escape; text typed into the field the
keyboard focused; at phone width): a group created, images with a bad file among them
uploaded (dropped, or a folder picked), the page's counts and uploads shown in place, an
automatic job whose progress moves without a reload, a rerun cancelled and its failed images
retried in place, the gallery's lightbox, the ZIP downloaded and checked, a semi-automatic
submission refused for a missing prompt (keeping what was typed) then sent with a prompt per
image, and on its batch page V2 of a set and a rerun, without a reload. axe-core checks every
page visited. And an action the server refuses says why, in place.

The platform is slowed (one dispatch of 2 images in flight at a time, each image 0.8 s) so
that a job of 6 images runs for about 2.4 s: long enough to see it move, and to cancel it."""

import json
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    PHONE,
    horizontal_overflow,
    running_platform,
    screenshot,
    serious_violations,
    slowed,
)
from tests.conftest import png_bytes

SLOW = slowed(800)
IMAGES = 6
MARK = "window.__stillHere = true"
SAME_DOCUMENT = (
    "window.__stillHere === true && performance.getEntriesByType('navigation').length === 1"
)
MOST_TABS = 120
RUN_TIMEOUT = 20_000  # ms: a job of the slowed platform, with others queued before it


@pytest.fixture(scope="module")
def platform_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_platform(tmp_path_factory.mktemp("up-journey"), **SLOW) as url:
        yield url


@dataclass
class Hand:
    """How the user acts: with the mouse only, or with the keyboard only."""

    page: Any
    keyboard: bool

    def press(self, target: Any) -> None:
        """Activate a link or button (a checkbox: tick it)."""
        if not self.keyboard:
            target.click()
            return
        self.focus(target)
        is_box = target.evaluate("e => e.type === 'checkbox'")
        self.page.keyboard.press("Space" if is_box else "Enter")

    def type(self, target: Any, text: str) -> None:
        if self.keyboard:
            self.focus(target)
        else:
            target.click()
        self.page.keyboard.type(text)

    def focus(self, target: Any) -> None:
        """Tab (forwards) until `target` has the focus, as a keyboard user does."""
        if self.keyboard is False:
            raise AssertionError("the mouse does not tab")
        target.wait_for()
        for _ in range(MOST_TABS):
            if target.evaluate("e => e === document.activeElement"):
                return
            self.page.keyboard.press("Tab")
        raise AssertionError(f"Tab never reached {target}")

    def check_page(self, name: str) -> None:
        """What every page visited must be: nothing serious for axe, no horizontal scroll;
        screenshotted as journey_<hand>_<name>."""
        screenshot(self.page, f"journey_{'keyboard' if self.keyboard else 'mouse'}_{name}")
        assert serious_violations(self.page) == []
        assert horizontal_overflow(self.page) == 0
        widths = self.page.locator("[role=progressbar]:visible").evaluate_all(
            "bars => bars.map(bar => bar.getBoundingClientRect().width)"
        )
        assert all(width >= 40 for width in widths), widths  # no bar squeezed to nothing


def _files(root: Path) -> Path:
    """A folder of IMAGES PNGs (some in a subfolder), a broken PNG and a text file."""
    folder = root / "shoot"
    (folder / "more").mkdir(parents=True)
    for i in range(IMAGES):
        where = folder / "more" if i % 3 == 0 else folder
        (where / f"look {i}.png").write_bytes(png_bytes(24 + i, 24, (i * 30, 90, 160)))
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _drop(page: Any, folder: Path) -> None:
    """The folder's files dropped on the drop zone, as a mouse drags them from a file manager."""
    files = [(path.name, list(path.read_bytes())) for path in sorted(folder.rglob("*.*"))]
    transfer = page.evaluate_handle(
        """files => {
            const transfer = new DataTransfer();
            for (const [name, bytes] of files) {
                const type = name.endsWith(".png") ? "image/png" : "text/plain";
                transfer.items.add(new File([new Uint8Array(bytes)], name, {type}));
            }
            return transfer;
        }""",
        files,
    )
    page.dispatch_event("[data-dropzone]", "drop", {"dataTransfer": transfer})


@pytest.mark.refused(422)
@pytest.mark.parametrize("keyboard", [False, True], ids=["mouse", "keyboard"])
def test_a_new_users_journey(page: Any, api: httpx.Client, tmp_path: Path, keyboard: bool) -> None:
    hand = Hand(page, keyboard)
    if keyboard:
        page.set_viewport_size(PHONE)
    name = "journey by keyboard" if keyboard else "journey by mouse"
    group_id = _create_group_and_upload(hand, tmp_path, name)
    job_id = _generate_automatic_and_watch(hand)
    _rerun_cancel_and_retry(hand, api, job_id)
    _gallery_and_lightbox(hand)
    _download_the_zip(hand, api, group_id)
    _semi_automatic_with_a_variation_and_a_rerun(hand, api, group_id)


def _create_group_and_upload(hand: Hand, tmp_path: Path, name: str) -> str:
    page = hand.page
    page.goto("/")
    hand.check_page("index")
    hand.type(page.get_by_label("New group"), name)
    hand.press(page.get_by_role("button", name="Create"))
    page.wait_for_url(re.compile(r"/groups/grp_"))
    group_id = page.url.rsplit("/", 1)[1]
    page.evaluate(MARK)
    expect(page.locator("#group-counts")).to_contain_text("0 uploads")

    folder = _files(tmp_path)
    if hand.keyboard:
        hand.focus(page.get_by_label("Choose a folder"))
        with page.expect_file_chooser() as chooser:
            page.keyboard.press("Enter")
        chooser.value.set_files(folder)
    else:
        _drop(page, folder)
    status = page.locator("[data-upload-status]")
    expect(status).to_have_text(f"Done: {IMAGES} uploaded, 2 not accepted.")
    problems = page.get_by_role("list", name="Files not uploaded")
    expect(problems).to_contain_text("notes.txt: not a PNG, JPEG or WebP image: skipped")
    expect(problems).to_contain_text("broken.png: ")
    # the counts and the uploads grid, in place
    expect(page.locator("#group-counts")).to_contain_text(f"{IMAGES} uploads")
    expect(page.get_by_role("checkbox", name=re.compile(r"look \d\.png"))).to_have_count(IMAGES)
    hand.press(page.get_by_role("link", name="Show the uploads"))
    expect(page.get_by_role("heading", name="Uploads")).to_be_in_viewport()
    assert page.evaluate(SAME_DOCUMENT)
    hand.check_page("group_uploaded")
    return group_id


def _generate_automatic_and_watch(hand: Hand) -> str:
    page = hand.page
    estimate = page.locator("[data-estimate-text]")
    hand.type(page.get_by_label("Prompt (automatic"), "a lighthouse at dusk")
    expect(estimate).to_have_text(f"{IMAGES} images for about $0.23 at the listed prices")
    hand.press(page.get_by_role("button", name="Generate"))
    page.wait_for_url(re.compile(r"/jobs/job_"))
    job_id = page.url.rsplit("/", 1)[1]
    page.evaluate(MARK)
    badge = page.locator("#job-status")
    expect(badge).to_have_text(re.compile("queued|running"))
    expect(page.locator(".tile .badge", has_text="succeeded").first).to_be_visible(
        timeout=RUN_TIMEOUT
    )  # some images done while others still run: the page moved on its own
    expect(badge).to_have_text("completed", timeout=RUN_TIMEOUT)
    expect(page.locator("#job-progress")).to_contain_text(f"{IMAGES} succeeded")
    assert page.evaluate(SAME_DOCUMENT)
    hand.check_page("job_done")
    return str(job_id)


def _rerun_cancel_and_retry(hand: Hand, api: httpx.Client, job_id: str) -> None:
    page = hand.page
    hand.press(page.get_by_role("button", name="Rerun"))
    notice = page.locator("[data-action-notice]")
    expect(notice).to_contain_text("Rerun started")
    expect(page.locator("#job-reruns")).to_contain_text("reruns: job_")  # refreshed in place
    assert page.evaluate(SAME_DOCUMENT)  # the rerun is another job: a link to it, in place
    hand.press(notice.get_by_role("link", name="Open the rerun"))
    page.wait_for_url(lambda url: "/jobs/job_" in url and job_id not in url)
    rerun_id = page.url.rsplit("/", 1)[1]
    page.evaluate(MARK)

    hand.press(page.get_by_role("button", name="Cancel"))
    expect(page.locator("[data-action-notice]")).to_contain_text("Cancelled")
    expect(page.locator("[data-action-notice] p")).to_be_focused()  # not lost with the button
    retry = page.get_by_role("button", name=re.compile(r"Retry \d+ failed"))
    expect(retry).to_be_visible()
    assert api.get(f"/api/jobs/{rerun_id}").json()["progress"]["failed"] > 0
    hand.press(retry)
    expect(page.locator("[data-action-notice]")).to_contain_text("Retrying")
    expect(page.locator("#job-status")).to_have_text("completed", timeout=RUN_TIMEOUT)
    expect(page.locator("#job-progress")).to_contain_text(f"{IMAGES} succeeded · 0 failed")
    expect(page.locator("[data-action-notice]")).to_have_text(
        "The retried images have ended: their counts are above."
    )  # no longer "Retrying"
    assert page.evaluate(SAME_DOCUMENT)
    hand.check_page("job_retried")


def _gallery_and_lightbox(hand: Hand) -> None:
    page = hand.page
    hand.press(page.locator(".crumbs").get_by_role("link", name="gallery"))
    page.wait_for_url(re.compile(r"/gallery"))
    hand.check_page("gallery")
    first = page.locator("[data-gallery] a[data-lightbox]").first
    dialog = page.get_by_role("dialog")
    hand.press(first)
    expect(dialog.get_by_role("heading", name=re.compile("Image #"))).to_be_visible()
    expect(dialog).to_contain_text("a lighthouse at dusk")
    hand.check_page("lightbox")
    if hand.keyboard:
        shown = dialog.get_by_role("heading").first.inner_text()
        page.keyboard.press("ArrowRight")
        expect(dialog.get_by_role("heading").first).not_to_have_text(shown)
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        assert page.evaluate("document.activeElement.matches('a[data-lightbox]')")
    else:
        dialog.get_by_role("button", name="Close").click()
        expect(dialog).to_be_hidden()


def _download_the_zip(hand: Hand, api: httpx.Client, group_id: str) -> None:
    page = hand.page
    hand.press(page.locator(".crumbs").get_by_role("link"))
    page.wait_for_url(re.compile(rf"/groups/{group_id}$"))
    with page.expect_download() as download:
        hand.press(page.get_by_role("link", name="Download ZIP"))
    with zipfile.ZipFile(download.value.path()) as archive:
        names = archive.namelist()
        manifest = archive.read("manifest.jsonl").decode().splitlines()
    succeeded = api.get(f"/api/groups/{group_id}").json()["counts"]["succeeded"]
    assert succeeded == 2 * IMAGES  # the job and its rerun
    assert len(manifest) == succeeded
    lines = [json.loads(line) for line in manifest]
    assert {line["status"] for line in lines} == {"succeeded"}
    pictures = [name for name in names if name.endswith((".png", ".jpg"))]
    assert len(pictures) == succeeded
    assert {line["file"] for line in lines} == set(pictures)


def _semi_automatic_with_a_variation_and_a_rerun(
    hand: Hand, api: httpx.Client, group_id: str
) -> None:
    page = hand.page
    mode = page.get_by_label("Mode", exact=True)
    if hand.keyboard:
        hand.focus(mode)
        page.keyboard.press("ArrowDown")  # the next choice: semi-automatic
    else:
        mode.select_option("semi-automatic")
    expect(mode).to_have_value("semi-automatic")
    hand.press(page.get_by_role("checkbox", name="look 1.png"))
    hand.press(page.get_by_role("checkbox", name="look 2.png"))
    hand.type(page.get_by_label("Prompt for look 1.png"), "a red kite")
    hand.press(page.get_by_role("button", name="Generate"))

    alert = page.get_by_role("alert")  # look 2.png has no prompt: the form comes back as typed
    expect(alert).to_contain_text("Image \u2018look 2.png\u2019 has no prompt")
    expect(page.get_by_label("Prompt for look 1.png")).to_have_value("a red kite")
    expect(page.get_by_role("checkbox", name="look 2.png")).to_be_checked()
    expect(mode).to_have_value("semi-automatic")
    lacking = page.get_by_label("Prompt for look 2.png")
    expect(lacking).to_have_attribute("aria-invalid", "true")
    expect(lacking).to_be_focused()  # where to type next, for the keyboard too
    hand.check_page("form_error")
    hand.type(page.get_by_label("Prompt for look 2.png"), "a blue kite")
    hand.press(page.get_by_role("button", name="Generate"))
    page.wait_for_url(re.compile(r"#jobs$"))

    hand.press(page.get_by_role("link", name="set 1"))
    page.wait_for_url(re.compile(r"/batches/bat_"))
    page.evaluate(MARK)
    first_set = page.locator("section.set").first
    vary = first_set.get_by_role("button", name=re.compile(r"^V2:"))
    expect(vary).to_be_visible(timeout=RUN_TIMEOUT)  # the set finished: shown in place
    hand.press(vary)
    expect(first_set.locator("[data-action-notice]")).to_contain_text("V2 started")
    expect(first_set.get_by_role("link", name="variations 1")).to_be_visible()
    second_set = page.locator("section.set").nth(1)
    hand.press(second_set.get_by_role("button", name="Rerun set 2"))
    expect(second_set.locator("[data-action-notice]")).to_contain_text("Set 2 rerun started")
    expect(second_set.get_by_role("link", name="Open the rerun")).to_be_visible()
    assert page.evaluate(SAME_DOCUMENT)
    hand.check_page("batch")
    semi = api.get("/api/jobs", params={"group_id": group_id, "mode": "variation"}).json()
    assert len(semi["data"]) == 1


def test_an_action_is_said_even_when_the_page_replaced_its_button_meanwhile(
    page: Any, api: httpx.Client
) -> None:
    """The cancel's answer is held back while the live page catches up with the cancelled
    job and replaces the actions it was pressed among: its notice is still said."""
    job_id = _four_image_job(api, "replaced")

    def answer_late(route: Any) -> None:  # the cancel is done; its answer waits
        answer = route.fetch(max_redirects=0)
        time.sleep(3)  # the page polls every second while the job runs
        route.fulfill(response=answer)

    page.route("**/cancel", answer_late)
    page.goto(f"/jobs/{job_id}")
    page.evaluate("window.__pressed = document.querySelector('form[action$=\"/cancel\"]')")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("[data-action-notice]")).to_contain_text("Cancelled", timeout=10_000)
    assert page.evaluate("window.__pressed.isConnected") is False  # replaced meanwhile


@pytest.mark.refused(409)
def test_a_refused_action_says_why_in_place(page: Any, api: httpx.Client) -> None:
    job_id = _four_image_job(api, "refused")
    held: list[Any] = []

    def hold(route: Any) -> None:  # the page does not learn what happens meanwhile
        held.append(route)

    page.route("**/live/jobs/**", hold)
    page.goto(f"/jobs/{job_id}")
    page.evaluate(MARK)
    assert api.post(f"/api/jobs/{job_id}/cancel").status_code < 300  # cancelled elsewhere

    page.get_by_role("button", name="Cancel").click()
    notice = page.locator("[data-action-notice] p.error")
    expect(notice).to_contain_text(f"job {job_id} is already")
    assert page.evaluate(SAME_DOCUMENT)
    assert serious_violations(page) == []


def _four_image_job(api: httpx.Client, name: str) -> str:
    """A new group's automatic job over four new uploads (it runs a while: the platform is
    slowed); its id."""
    group_id = api.post("/api/groups", json={"name": name}).json()["id"]
    files = [("files", (f"{name}{i}.png", png_bytes(30 + i, 30), "image/png")) for i in range(4)]
    images = api.post("/api/uploads", data={"group_id": group_id}, files=files).json()["images"]
    body = {"group_id": group_id, "mode": "automatic", "prompt": "p"}
    submitted = api.post("/api/jobs/submit", json={**body, "images": [i["id"] for i in images]})
    job_id: str = submitted.json()["jobs"][0]["id"]
    return job_id
