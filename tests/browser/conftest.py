"""Browser tests: Playwright driving Debian's Chromium against the platform started as the README
says (`pixelfleet up` on embedded defaults, in an empty folder), one per test process.

Without Chromium or Playwright the tests skip with the reason; in CI (PIXELFLEET_REQUIRE_BROWSER=1)
they fail instead. Each test's page is screenshotted when the test ends, into
`test-artifacts/screenshots/` (PIXELFLEET_TEST_ARTIFACTS moves it).
"""

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.cli import start_up, wait_until_up
from tests.fakes.servers import free_port

REQUIRE_BROWSER = os.environ.get("PIXELFLEET_REQUIRE_BROWSER") == "1"
ARTIFACTS = Path(os.environ.get("PIXELFLEET_TEST_ARTIFACTS", "test-artifacts"))
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
SERIOUS = ("serious", "critical")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_problem() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Playwright is not installed (make setup installs it)"
    if _chromium() is None:
        return "Chromium is not installed (apt-get install chromium; .ci/run does)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for a test module. Not for the whole session: while Playwright's
    synchronous API is open, the main thread has an event loop running, and every async test
    that the same test process runs later would fail (`asyncio.run()` cannot be called from a
    running event loop)."""
    problem = _browser_problem()
    if problem:
        if REQUIRE_BROWSER:
            pytest.fail(problem)
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def slowed(latency_ms: int) -> dict[str, str]:
    """`running_platform`'s environment for a platform whose images stay queued and running
    long enough to be seen: one dispatch of two images in flight, each taking `latency_ms`."""
    return {
        "PIXELFLEET_OFFLINE_LATENCY_MS": str(latency_ms),
        "PIXELFLEET_DISPATCH_CHUNK_SIZE": "2",
        "PIXELFLEET_MAX_INFLIGHT_DISPATCHES": "1",
    }


@contextmanager
def running_platform(folder: Path, **env: str) -> Iterator[str]:
    """`pixelfleet up` in `folder` (`env` added to its environment) until the block ends;
    yields its address."""
    api_port, endpoint_port = free_port(), free_port()
    log = folder / "up.log"
    child = start_up(folder, api_port, endpoint_port, log, **env)
    try:
        wait_until_up(child, api_port, endpoint_port, log)
        yield f"http://127.0.0.1:{api_port}"
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()


@pytest.fixture(scope="session")
def platform_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The platform's address: `pixelfleet up` in an empty folder, as a newcomer starts it."""
    with running_platform(tmp_path_factory.mktemp("up")) as url:
        yield url


@pytest.fixture
def api(platform_url: str) -> Iterator[httpx.Client]:
    """A client of the platform's JSON API, for setting up what a test's page shows."""
    with httpx.Client(base_url=platform_url, timeout=30) as http:
        yield http


@pytest.fixture
def page(browser: Any, platform_url: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A desktop-sized page of a fresh browser context (own cookies), addresses relative to
    the platform; screenshotted (full page) when the test ends, passed or failed. Any console
    error (a script's, a CSP refusal, a failed load) fails the test, except answers with the
    statuses a `@pytest.mark.refused(422, …)` test means to provoke."""
    marker = request.node.get_closest_marker("refused")
    refused = "|".join(str(code) for code in (marker.args if marker else ()))
    expected = re.compile(rf"Failed to load resource: .* status of ({refused}) .*")
    context = browser.new_context(base_url=platform_url, viewport=DESKTOP)
    context.set_default_timeout(10_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # File choosers are caught from the start: Playwright turns that on for a page's first
    # listener without waiting for the browser, so an `expect_file_chooser` just before the
    # key that opens one could lose the race under load and wait for nothing.
    opened.on("filechooser", lambda _chooser: None)
    try:
        yield opened
    finally:
        screenshot(opened, request.node.name)
        context.close()
    unexpected = [error for error in errors if not (refused and expected.fullmatch(error))]
    assert unexpected == []  # no script errors, no CSP refusals, no failed loads


def screenshot(page: Any, name: str) -> Path:
    """The page as a PNG under the artifacts folder (named after `name`)."""
    path = ARTIFACTS / "screenshots" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not page.is_closed():
        page.screenshot(path=path, full_page=True)
    return path


def serious_violations(page: Any) -> list[str]:
    """What axe-core finds serious or critical on the page as it stands: 'rule: target' each."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page).response
    return [
        f"{violation['id']}: {', '.join(map(str, node['target']))}"
        for violation in results["violations"]
        if violation["impact"] in SERIOUS
        for node in violation["nodes"]
    ]


def horizontal_overflow(page: Any) -> int:
    """How many CSS pixels the page is wider than its viewport (0: no horizontal scroll)."""
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))
