"""`pixelfleet vary` and `pixelfleet rerun` as a user runs them: child processes against the
whole stack on real sockets (offline provider)."""

import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

from tests.fakes.cli import pixelfleet
from tests.fakes.stack import Stack


def run(stack: Stack, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = pixelfleet(*args, api_url=str(stack.http.base_url), cwd=tmp_path)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def finished_set(stack: Stack) -> dict[str, Any]:
    group_id = stack.group()
    [upload] = stack.upload(group_id, 1)
    answer = stack.http.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": [upload], "prompt": "a paper boat"}],
            "config": {"total_images": 4, "images_per_set": 4},
        },
    )
    assert answer.status_code == 201, answer.text
    [job] = stack.wait_for([answer.json()["jobs"][0]["id"]])
    return job


def test_vary_and_rerun_from_the_command_line(stack: Stack, tmp_path: Path) -> None:
    parent = finished_set(stack)
    second = parent["images"][1]["id"]
    varied = run(
        stack, tmp_path, "vary", second, "--count", "2", "--strength", "subtle",
        "--out", "v2.zip", "--json",
    )  # fmt: skip
    assert varied.returncode == 0, varied.stderr
    answer = json.loads(varied.stdout)
    [job] = answer["jobs"]
    assert job["status"] == "completed" and job["succeeded"] == 2
    assert answer["zip"]["path"] == "v2.zip" and answer["exit_code"] == 0
    with zipfile.ZipFile(tmp_path / "v2.zip") as archive:
        manifest = [json.loads(line) for line in archive.read("manifest.jsonl").splitlines()]
    assert [line["reference_ids"] for line in manifest] == [[second], [second]]
    shown = stack.http.get(f"/api/outputs/{second}").json()
    assert shown["variations"] == [job["id"]]

    queued = run(stack, tmp_path, "vary", second, "--prompt", "a paper plane")
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.startswith("variation set job_") and "4 image(s)" in queued.stdout
    assert "pixelfleet jobs watch job_" in queued.stderr

    rerun = run(stack, tmp_path, "rerun", parent["id"], "--watch")
    assert rerun.returncode == 0, rerun.stderr
    [again] = stack.http.get(f"/api/jobs/{parent['id']}").json()["reruns"]
    assert f"rerun {again} of {parent['id']}: 4 image(s)" in rerun.stderr
    assert stack.http.get(f"/api/jobs/{again}").json()["status"] == "completed"


def test_vary_and_rerun_say_why_they_cannot(stack: Stack, tmp_path: Path) -> None:
    unknown = run(stack, tmp_path, "vary", "out_" + "0" * 26)
    assert unknown.returncode == 2 and "does not exist" in unknown.stderr
    bad_strength = run(stack, tmp_path, "vary", "out_" + "0" * 26, "--strength", "huge")
    assert bad_strength.returncode == 2 and "huge" in bad_strength.stderr
    missing = run(stack, tmp_path, "rerun", "job_nope", "--json")
    assert missing.returncode == 2 and json.loads(missing.stdout)["error"]["status"] == 404
