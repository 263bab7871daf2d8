"""Live pages in a real browser: the job page, the group page's jobs and the jobs dashboard
update in place while jobs run (no reload: the navigation count stays 1 and a marker object
on `window` survives), with focus and typed input untouched; each image shows queued,
running and succeeded as it happens; the dashboard filters and pages; every page fits a phone
and axe-core has nothing serious to say.

The platform here is slow on purpose (one dispatch of 2 images in flight at a time, each
image 0.6 s): a job of 10 images keeps its last images queued for about 2.4 s."""

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser.conftest import (
    PHONE,
    horizontal_overflow,
    running_platform,
    screenshot,
    serious_violations,
    slowed,
)
from tests.conftest import png_bytes

SLOW = slowed(600)
IDLE_POLL_S = 1  # how often a page with nothing running asks for changes, here
MARK = "window.__stillHere = {since: performance.now()}"
HIDE = """() => {
    Object.defineProperty(document, "hidden", {configurable: true, get: () => HIDDEN});
    document.dispatchEvent(new Event("visibilitychange"));
}"""
SAME_DOCUMENT = (
    "window.__stillHere !== undefined && performance.getEntriesByType('navigation').length === 1"
)


@pytest.fixture(scope="module")
def platform_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`pixelfleet up` in an empty folder, slowed down so that images stay queued a while."""
    idle = {"PIXELFLEET_UI_IDLE_POLL_S": str(IDLE_POLL_S)}
    with running_platform(tmp_path_factory.mktemp("up-live"), **SLOW, **idle) as url:
        yield url


def _group_with_images(api: httpx.Client, name: str, n: int) -> tuple[str, list[str]]:
    group_id = api.post("/api/groups", json={"name": name}).json()["id"]
    files = [("files", (f"{name} {i}.png", png_bytes(40 + i, 32), "image/png")) for i in range(n)]
    answer = api.post("/api/uploads", data={"group_id": group_id}, files=files)
    assert answer.status_code == 201, answer.text
    return group_id, [image["id"] for image in answer.json()["images"]]


def _submit(api: httpx.Client, group_id: str, images: list[str], prompt: str) -> str:
    body = {"group_id": group_id, "mode": "automatic", "prompt": prompt, "images": images}
    answer = api.post("/api/jobs/submit", json=body)
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["jobs"][0]["id"]
    return job_id


def _serious_within(page: Any, selector: str) -> list[str]:
    """What axe-core finds serious or critical inside `selector` only."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, context=selector).response
    return [
        f"{violation['id']}: {', '.join(map(str, node['target']))}"
        for violation in results["violations"]
        if violation["impact"] in ("serious", "critical")
        for node in violation["nodes"]
    ]


def _wait_until_ended(api: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while api.get(f"/api/jobs/{job_id}").json()["status"] in ("queued", "processing"):
        assert time.monotonic() < deadline, f"job {job_id} did not end"
        time.sleep(0.1)


def _clean_on_desktop_and_phone(page: Any, name: str) -> None:
    """axe-core clean at desktop size (screenshotted as `name`) and at phone width, which
    the page fits (the test's own screenshot at its end shows the phone)."""
    assert serious_violations(page) == []
    screenshot(page, f"{name}_desktop")
    page.set_viewport_size(PHONE)
    assert horizontal_overflow(page) == 0
    assert serious_violations(page) == []


def test_the_job_page_follows_each_image_without_reloading(page: Any, api: httpx.Client) -> None:
    group_id, images = _group_with_images(api, "live job", 10)
    job_id = _submit(api, group_id, images, "a lighthouse at dusk, in gouache")
    page.goto(f"/jobs/{job_id}")
    page.evaluate(MARK)
    last = page.locator(".tile").nth(9)
    assert last.locator(".badge").inner_text() == "queued"  # not yet handed to RunPod
    screenshot(page, "job_page_running")
    rerun = page.get_by_role("button", name="Rerun")
    rerun.focus()

    progress = page.get_by_role("progressbar")
    page.locator('[role=progressbar]:not([aria-valuenow="0"])').wait_for()
    assert int(progress.get_attribute("aria-valuenow")) < 10  # moved while the job still runs
    last.locator(".badge", has_text="succeeded").wait_for()
    last.locator("img").wait_for()  # its thumbnail appeared in place
    page.locator("#job-status", has_text="completed").wait_for()

    assert page.evaluate(SAME_DOCUMENT)
    assert page.evaluate("document.activeElement.textContent.trim()") == "Rerun"
    assert progress.get_attribute("aria-valuenow") == "10"
    assert "completed: 10 of 10 images done" in page.locator("[data-announcer]").inner_text()
    assert page.locator(".tile .badge", has_text="succeeded").count() == 10
    assert page.get_by_role("button", name="Cancel").count() == 0
    _clean_on_desktop_and_phone(page, "job_page")


def test_polling_pauses_while_the_tab_is_hidden_and_catches_up_on_return(
    page: Any, api: httpx.Client
) -> None:
    group_id, images = _group_with_images(api, "hidden tab", 6)
    job_id = _submit(api, group_id, images, "in pastel")
    page.goto(f"/jobs/{job_id}")
    polls: list[str] = []
    page.on("request", lambda asked: polls.append(asked.url) if "/live/" in asked.url else None)
    page.evaluate(HIDE.replace("HIDDEN", "true"))
    asked_while_hidden = len(polls)  # at most the one request already on its way
    _wait_until_ended(api, job_id)
    assert len(polls) <= asked_while_hidden + 1
    assert page.locator("#job-status").inner_text() != "completed"  # not followed while hidden
    page.evaluate(HIDE.replace("HIDDEN", "false"))
    page.locator("#job-status", has_text="completed").wait_for()  # caught up at once
    assert page.evaluate(SAME_DOCUMENT.replace("window.__stillHere !== undefined && ", ""))


def test_the_group_page_counts_and_jobs_update_while_typing(page: Any, api: httpx.Client) -> None:
    group_id, images = _group_with_images(api, "live group", 4)
    job_id = _submit(api, group_id, images, "as a linocut")
    page.goto(f"/groups/{group_id}")
    page.evaluate(MARK)
    prompt = page.locator("textarea").first
    prompt.click()
    page.keyboard.type("a new prompt, typed while the job runs")

    row = page.locator(f"#group-job-{job_id}")
    row.locator(".badge", has_text="completed").wait_for()
    page.locator("#group-counts", has_text="4 generated").wait_for()
    assert page.evaluate(SAME_DOCUMENT)
    assert page.evaluate("document.activeElement === document.querySelector('textarea')")
    assert prompt.input_value() == "a new prompt, typed while the job runs"
    page.keyboard.type(" and more")  # the caret is still where it was
    assert prompt.input_value().endswith("runs and more")
    assert _serious_within(page, "#jobs-section") == []  # the forms above are ui-forms'
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.querySelector('#group-jobs').scrollWidth") <= PHONE["width"]
    assert _serious_within(page, "#jobs-section") == []


def test_an_idle_group_page_shows_a_job_started_elsewhere(page: Any, api: httpx.Client) -> None:
    """Nothing runs on the page, so it asks for changes only every idle period: a job
    submitted elsewhere (from the CLI, another tab) still appears, and runs, without a
    reload."""
    group_id, images = _group_with_images(api, "idle group", 2)
    page.goto(f"/groups/{group_id}")
    page.evaluate(MARK)
    assert page.locator("[data-live-running]").count() == 0
    page.wait_for_timeout(IDLE_POLL_S * 1500)  # an idle poll or two find nothing new
    job_id = _submit(api, group_id, images, "started from the CLI")
    row = page.locator(f"#group-job-{job_id}")
    row.wait_for(timeout=IDLE_POLL_S * 5000)
    assert page.locator("#group-jobs-empty").count() == 0
    row.locator(".badge", has_text="completed").wait_for(timeout=20_000)  # polled while it ran
    assert page.evaluate(SAME_DOCUMENT)


def test_the_dashboard_filters_pages_and_follows_jobs(page: Any, api: httpx.Client) -> None:
    group_id, images = _group_with_images(api, "dashboard", 3)
    other_id, others = _group_with_images(api, "elsewhere", 1)
    mine = [_submit(api, group_id, [image], f"dashboard {i}") for i, image in enumerate(images)]
    _submit(api, other_id, others, "another group's job")

    page.goto(f"/jobs?group_id={group_id}&limit=2")
    page.evaluate(MARK)
    rows = page.locator("#dashboard-jobs tr")
    assert rows.count() == 2
    newest = page.locator(f"#dashboard-job-{mine[2]}")
    newest.locator(".badge", has_text="completed").wait_for(timeout=20_000)  # live, no reload
    assert newest.get_by_text("100%").count() == 1  # its success rate
    assert page.evaluate(SAME_DOCUMENT)

    page.get_by_role("link", name="older jobs →").click()  # with the mouse
    page.wait_for_url("**cursor=*")
    assert [row.get_attribute("id") for row in rows.all()] == [f"dashboard-job-{mine[0]}"]
    page.get_by_role("link", name="← newer jobs").click()
    page.wait_for_url(lambda url: "cursor" not in url)
    assert rows.count() == 2

    page.goto("/jobs")  # every job; then the group filter with the keyboard only
    page.get_by_label("Group").focus()
    page.get_by_label("Group").select_option(label="elsewhere")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the Apply button
    page.wait_for_url(f"**group_id={other_id}*")
    assert rows.count() == 1 and "another group's job" in rows.first.inner_text()

    page.goto(f"/jobs?status=failed&group_id={group_id}")
    assert "No jobs match these filters" in rows.first.inner_text()
    page.goto("/jobs")
    _clean_on_desktop_and_phone(page, "jobs_dashboard")


def test_the_index_is_live_and_every_page_fits_a_phone(page: Any, api: httpx.Client) -> None:
    group_id, images = _group_with_images(api, "index live", 2)
    job_id = _submit(api, group_id, images, "in charcoal")
    page.goto("/")
    page.evaluate(MARK)
    page.locator(f"#group-row-{group_id}", has_text="2 ok").wait_for()
    assert page.evaluate(SAME_DOCUMENT)
    _clean_on_desktop_and_phone(page, "index")
    page.goto(f"/jobs/{job_id}")
    assert horizontal_overflow(page) == 0
