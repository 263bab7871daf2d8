"""`pixelfleet character create|pack|show` (client/cli.py) as child processes against the
whole stack on real sockets (offline provider; Gemini's API faked for a failing image)."""

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.settings import Settings
from tests.fakes.cli import pixelfleet
from tests.fakes.gemini import KEYWORD_TEXT_ONLY, FakeGemini
from tests.fakes.stack import Stack, run_stack

GEMINI_KEY = "character-cli-gemini-key"


def create_character(stack: Stack, tmp_path: Path, *extra: str) -> str:
    references = stack.upload(stack.group(), 2)
    refs = [arg for ref in references for arg in ("--ref", ref)]
    created = pixelfleet(
        "character", "create", "--name", "Mina", *refs, *extra, "--json",
        api_url=str(stack.http.base_url), cwd=tmp_path,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    character = json.loads(created.stdout)
    assert character["references"] == references
    return str(character["id"])


def test_create_a_character_and_watch_a_pack_into_a_zip(stack: Stack, tmp_path: Path) -> None:
    api_url = str(stack.http.base_url)
    references = stack.upload(stack.group(), 2)
    created = pixelfleet(
        "character", "create", "--name", "Mina", "--ref", references[0], "--ref", references[1],
        "--seed", "11", "--style-prompt", "film photo", "--aspect-ratio", "3:4",
        api_url=api_url, cwd=tmp_path,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "2 reference(s), seed 11" in created.stdout and '"aspect_ratio": "3:4"' in created.stdout
    character_id = created.stdout.split()[1]

    packed = pixelfleet(
        "character", "pack", character_id, "--size", "5", "--scene", "on a boat",
        "--scene", "in a library", "--out", "mina.zip", api_url=api_url, cwd=tmp_path,
    )  # fmt: skip
    assert packed.returncode == 0, packed.stderr
    assert "Traceback" not in packed.stderr
    assert packed.stdout.splitlines()[-1] == "5 of 5 images succeeded"
    assert "saved 5 image(s) to mina.zip" in packed.stdout
    with zipfile.ZipFile(tmp_path / "mina.zip") as archive:
        assert len([n for n in archive.namelist() if not n.endswith(".jsonl")]) == 5

    shown = pixelfleet("character", "show", character_id, api_url=api_url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "completed  5 of 5 images succeeded" in shown.stdout
    detail = stack.http.get(f"/api/characters/{character_id}").json()
    [pack] = detail["packs"]
    job = stack.http.get(f"/api/jobs/{pack['id']}").json()
    assert [image["seed"] for image in job["images"]] == [11, 12, 13, 14, 15]
    assert all(image["reference_ids"] == references for image in job["images"])


def test_a_pack_without_watch_is_queued_and_named(stack: Stack, tmp_path: Path) -> None:
    character_id = create_character(stack, tmp_path)
    queued = pixelfleet(
        "character", "pack", character_id, api_url=str(stack.http.base_url), cwd=tmp_path
    )
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.startswith("pack job_") and "8 image(s) queued" in queued.stdout
    assert "pixelfleet jobs watch job_" in queued.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["pack", "chr_" + "0" * 26],
            "404: character chr_00000000000000000000000000 does not exist",
        ),
        (["pack", "CHARACTER", "--size", "11"], "size: Input should be less than or equal to 10"),
        (
            ["create", "--name", "Mina", "--ref", "img_" + "0" * 26],
            "cannot be used as references: no upload img_0",
        ),
        (["create", "--name", "Mina"], "Missing option '--ref'"),
    ],
)
def test_refusals_exit_2_with_the_reason(
    stack: Stack, tmp_path: Path, args: list[str], says: str
) -> None:
    if "CHARACTER" in args:
        args = [create_character(stack, tmp_path) if a == "CHARACTER" else a for a in args]
    result = pixelfleet("character", *args, api_url=str(stack.http.base_url), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def gemini_stack(settings: Settings) -> Iterator[Stack]:
    """The stack with the Gemini provider against a fake Gemini (no image for a keyword)."""
    with FakeGemini(api_key=GEMINI_KEY) as fake:
        yield from run_stack(
            settings, provider="gemini", gemini_api_key=GEMINI_KEY, gemini_base_url=fake.base_url
        )


def test_a_partly_failed_pack_says_7_of_8_and_exits_1(gemini_stack: Stack, tmp_path: Path) -> None:
    character_id = create_character(gemini_stack, tmp_path, "--seed", "5")
    scenes = [f"scene {i}" for i in range(7)] + [f"a harbour {KEYWORD_TEXT_ONLY}"]
    args = [arg for scene in scenes for arg in ("--scene", scene)]
    result = pixelfleet(
        "character", "pack", character_id, *args, "--watch",
        api_url=str(gemini_stack.http.base_url), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "7 of 8 images succeeded"
    assert "7 succeeded, 0 failed, 1 blocked" in result.stdout  # no image: the model said why
    assert "NO_IMAGE; model said: I can only describe" in result.stdout
    [pack] = gemini_stack.http.get(f"/api/characters/{character_id}").json()["packs"]
    assert pack["summary"] == "7 of 8 images succeeded, 1 blocked"
    assert pack["status"] == "completed"
