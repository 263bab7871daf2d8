"""Prompt permutations (control_plane/services/prompts.py): braces, nesting, escapes, the cap,
and the errors, as pure functions; then the preview route."""

import pytest

from control_plane.errors import InvalidRequest
from control_plane.services.prompts import MAX_COMBINATIONS, expand, parse
from tests.fakes.api import Api


def test_every_combination_in_order_leftmost_brace_slowest() -> None:
    assert expand("a {red, blue} bird {--ar 1:1, --ar 16:9}") == [
        "a red bird --ar 1:1",
        "a red bird --ar 16:9",
        "a blue bird --ar 1:1",
        "a blue bird --ar 16:9",
    ]
    assert parse("a {red, blue} bird {--ar 1:1, --ar 16:9}").count == 4


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a plain prompt, with commas", ["a plain prompt, with commas"]),
        ("{a {b, c}, d}", ["a b", "a c", "d"]),
        ("{x{1,2}y, z}!", ["x1y!", "x2y!", "z!"]),
        ("a {  red  ,blue   } bird", ["a red bird", "a blue bird"]),
        ("a {red} bird", ["a red bird"]),
        ("a {, big} dog", ["a  dog", "a big dog"]),
        ("{a, b}{c, d}", ["ac", "ad", "bc", "bd"]),
        ("{{a, b}, {c, {d, e}}}", ["a", "b", "c", "d", "e"]),
        ("  {a, b}  ", ["a", "b"]),
    ],
)
def test_nesting_trimming_and_no_braces(prompt: str, expected: list[str]) -> None:
    assert expand(prompt) == expected
    assert parse(prompt).count == len(expected)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (r"json \{\"key\": 1\}", ['json {\\"key\\": 1}']),
        (r"\{a, b\}", ["{a, b}"]),
        (r"{1\,000, 2\,000} people", ["1,000 people", "2,000 people"]),
        (r"{\{, \}} brace", ["{ brace", "} brace"]),
        (r"a \, b \n c", [r"a \, b \n c"]),  # outside braces only braces are escapes
        ("back\\", ["back\\"]),
    ],
)
def test_a_backslash_escapes_braces_and_commas_in_options(prompt: str, expected: list[str]) -> None:
    assert expand(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [
        ("a {red, blue bird", "the '{' at position 3 is never closed"),
        ("a red} bird", "the '}' at position 6 closes no '{'"),
        ("{a, {b, c}", "the '{' at position 1 is never closed"),
        ("{a}}", "the '}' at position 4 closes no '{'"),
        ("{, }", "makes an empty prompt"),
        ("{ {}, x}", "makes an empty prompt"),
        ("{" * 21 + "x" + "}" * 21, "nested more than 20 deep at position 21"),
    ],
)
def test_unusable_prompts_are_refused_with_a_reason(prompt: str, needle: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(prompt)
    assert needle in raised.value.message
    assert raised.value.status_code == 422


def test_the_cap_is_checked_on_the_count_without_building_the_list() -> None:
    at_cap = "{1,2,3,4,5,6,7,8,9,10}" * 3
    assert parse(at_cap).count == MAX_COMBINATIONS == 1_000
    assert len(set(expand(at_cap))) == 1_000
    with pytest.raises(InvalidRequest) as raised:
        parse(at_cap + "{a, b}")
    assert raised.value.message == (
        "prompt permutations: the braces make 2,000 prompts; the limit is 1,000 per prompt"
    )
    # 2^3000 combinations: building them would never end; counting them is instant
    with pytest.raises(InvalidRequest) as huge:
        parse("{a, b}" * 3000)
    assert "about 10^903 prompts; the limit is 1,000" in huge.value.message


def test_nested_counts_add_options_and_multiply_braces() -> None:
    assert parse("{a {1, 2, 3}, b} {x, y}").count == (3 + 1) * 2
    assert parse("{" * 20 + "a, b" + "}" * 20).count == 2


def test_the_preview_route_expands_or_says_why_not(api: Api) -> None:
    answer = api.client.post("/api/prompts/expand", json={"prompt": "a {red, blue} bird"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"prompts": ["a red bird", "a blue bird"], "count": 2}
    over = api.client.post("/api/prompts/expand", json={"prompt": "{a,b}" * 11})
    assert over.status_code == 422
    assert over.json()["detail"] == (
        "prompt permutations: the braces make 2,048 prompts; the limit is 1,000 per prompt"
    )
    unbalanced = api.client.post("/api/prompts/expand", json={"prompt": "a {b"})
    assert unbalanced.status_code == 422 and "never closed" in unbalanced.json()["detail"]
    assert api.client.post("/api/prompts/expand", json={"prompt": ""}).status_code == 422
