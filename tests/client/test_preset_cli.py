"""`pixelfleet upload --attribute` and `pixelfleet preset create|examples|show|reset` as a
user runs them: child processes against the whole stack on real sockets (offline provider)."""

import json
import subprocess
import time
from pathlib import Path

from tests.conftest import png_bytes
from tests.fakes.cli import pixelfleet
from tests.fakes.stack import Stack


def faces(folder: Path, n: int, shade: int) -> Path:
    folder.mkdir()
    for i in range(n):
        (folder / f"face {i}.png").write_bytes(png_bytes(36, 36, (shade, 20 * i, 120)))
    return folder


def wait_for_gallery(stack: Stack, preset_id: str, examples: int) -> None:
    """Until the consumer (which follows the job's events) has filled the gallery."""
    deadline = time.monotonic() + 30
    while stack.http.get(f"/api/presets/{preset_id}").json()["examples"] < examples:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def run(stack: Stack, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = pixelfleet(*args, api_url=str(stack.http.base_url), cwd=tmp_path)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def test_a_pool_and_a_preset_from_the_command_line(stack: Stack, tmp_path: Path) -> None:
    for gender, shade in (("female", 10), ("male", 200)):
        folder = faces(tmp_path / gender, 3, shade)
        uploaded = run(
            stack, tmp_path, "upload", str(folder), "--group", "models",
            "--attribute", f"gender={gender}", "--attribute", "age=30",
        )  # fmt: skip
        assert uploaded.returncode == 0, uploaded.stderr
        assert "uploads: 3 uploaded, 0 already in the group (skipped)" in uploaded.stdout
    [group] = stack.http.get("/api/groups").json()["data"]
    listed = stack.http.get(f"/api/groups/{group['id']}/uploads").json()["data"]
    assert sorted(u["attributes"]["gender"] for u in listed) == ["female"] * 3 + ["male"] * 3
    assert {u["attributes"]["age"] for u in listed} == {30}

    created = run(
        stack, tmp_path, "preset", "create", "--name", "beach", "--prompt", "on a beach",
        "--examples-per-reference", "2", "--aspect-ratio", "3:4", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    preset = json.loads(created.stdout)
    assert preset["config"]["aspect_ratio"] == "3:4" and preset["examples_per_reference"] == 2

    watched = run(
        stack, tmp_path, "preset", "examples", preset["id"], "--pool", "models",
        "--count", "2", "--balance-by", "gender", "--watch",
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    assert "2 reference(s) (female 1, male 1), 4 image(s)" in watched.stderr
    assert "4 succeeded, 0 failed, 0 blocked" in watched.stdout

    submitted = run(
        stack, tmp_path, "preset", "examples", preset["id"], "--pool", group["id"],
        "--count", "4", "--balance-by", "gender", "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    answer = json.loads(submitted.stdout)
    assert answer["split"] == {"female": 2, "male": 2}
    stack.wait_for([answer["jobs"][0]["id"]])
    wait_for_gallery(stack, preset["id"], 12)

    dry = run(stack, tmp_path, "preset", "examples", preset["id"], "--pool", "models")
    assert dry.returncode == 2
    assert "not enough unused references in pool" in dry.stderr and "0 of 20 needed" in dry.stderr

    shown = run(stack, tmp_path, "preset", "show", preset["id"], "--limit", "3")
    assert shown.returncode == 0, shown.stderr
    assert "references: 6 used, 0 reserved by running jobs" in shown.stdout
    assert "gallery: 12 example(s); page 1, newest first:" in shown.stdout
    assert len([line for line in shown.stdout.splitlines() if line.startswith("  out_")]) == 3
    reset = run(stack, tmp_path, "preset", "reset", preset["id"], "--json")
    assert reset.returncode == 0 and json.loads(reset.stdout)["kept_reserved"] == 0


def test_bad_attributes_and_unknown_presets_exit_2(stack: Stack, tmp_path: Path) -> None:
    folder = faces(tmp_path / "pool", 1, 50)
    bad = run(stack, tmp_path, "upload", str(folder), "--attribute", "gender")
    assert bad.returncode == 2 and "--attribute takes key=value" in bad.stderr
    unknown = run(stack, tmp_path, "preset", "show", "pre_nope", "--json")
    assert unknown.returncode == 2 and json.loads(unknown.stdout)["error"]["status"] == 404
    no_pool = run(stack, tmp_path, "preset", "examples", "pre_nope", "--pool", "nowhere")
    assert no_pool.returncode == 2 and "no group is named 'nowhere'" in no_pool.stderr
