"""The pages as a browser shows them: styled from the control plane's own stylesheet under
its Content-Security-Policy, usable at phone width, and clean by axe-core."""

from typing import Any

from tests.browser.conftest import PHONE, horizontal_overflow, serious_violations


def test_the_index_is_styled_accessible_and_fits_a_phone(page: Any) -> None:
    page.goto("/")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(247, 248, 251)"  # pixelfleet.css arrived and applied
    assert serious_violations(page) == []
    page.set_viewport_size(PHONE)
    assert horizontal_overflow(page) == 0


def test_a_group_made_with_the_mouse(page: Any) -> None:
    page.goto("/")
    page.get_by_label("New group").fill("cats")
    page.get_by_role("button", name="Create").click()
    page.wait_for_url("**/groups/*")
    assert page.get_by_role("heading", level=1).inner_text().startswith("cats")
