"""The client commands (client/cli.py) as a user runs them: `pixelfleet` child processes
against the whole stack on real sockets (offline provider; Gemini's API faked for blocks)."""

import json
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from control_plane.settings import Settings
from tests.conftest import jpeg_bytes, png_bytes
from tests.fakes.cli import pixelfleet, start_pixelfleet
from tests.fakes.gemini import KEYWORD_UNSAFE, FakeGemini
from tests.fakes.servers import free_port
from tests.fakes.stack import Stack, run_stack

GEMINI_KEY = "client-cli-gemini-key"


def photos(folder: Path, n: int) -> Path:
    folder.mkdir(exist_ok=True)
    for i in range(n):
        maker, suffix = (png_bytes, ".png") if i % 2 else (jpeg_bytes, ".jpg")
        (folder / f"cat {i:02d}{suffix}").write_bytes(maker(40 + i, 30, (i * 11 % 256, 60, 90)))
    return folder


def api_url(stack: Stack) -> str:
    return str(stack.http.base_url)


def zip_images(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return [name for name in archive.namelist() if not name.endswith(".jsonl")]


def check_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def test_generate_turns_a_folder_into_a_zip_and_resumes(stack: Stack, tmp_path: Path) -> None:
    folder = photos(tmp_path / "cats", 4)
    args = ["generate", str(folder), "--prompt", "as a watercolour", "--out", "cats.zip"]
    first = pixelfleet(*args, "--seed", "7", api_url=api_url(stack), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    check_no_traceback(first)
    assert "created group 'cats'" in first.stderr
    assert "uploads: 4 uploaded, 0 already in the group (skipped)" in first.stdout
    assert "4 succeeded, 0 failed, 0 blocked" in first.stdout
    assert "saved 4 image(s) to cats.zip" in first.stdout
    assert len(zip_images(tmp_path / "cats.zip")) == 4

    again = pixelfleet(*args, api_url=api_url(stack), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "group 'cats'" in again.stderr and "created" not in again.stderr
    assert "4 of 4 file(s) already in the group: skipped" in again.stderr
    assert "uploads: 0 uploaded, 4 already in the group (skipped)" in again.stdout
    [group] = stack.http.get("/api/groups").json()["data"]
    counts = stack.http.get(f"/api/groups/{group['id']}").json()["counts"]
    assert counts["uploads"] == 4 and counts["jobs"] == 2
    second_job = again.stderr.split("submitted 1 job(s): ")[1].split()[0]
    names = zip_images(tmp_path / "cats.zip")  # the second job's images only
    assert len(names) == 4 and all(name.startswith(f"{second_job}/") for name in names)


def test_generate_json_output(stack: Stack, tmp_path: Path) -> None:
    folder = photos(tmp_path / "dogs", 2)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    result = pixelfleet(
        "generate",
        str(folder),
        "--prompt",
        "in the rain",
        "--group",
        "wet dogs",
        "--aspect-ratio",
        "16:9",
        "--outputs-per-image",
        "2",
        "--json",
        api_url=api_url(stack),
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr  # one input was rejected
    answer = json.loads(result.stdout)
    assert answer["group"]["name"] == "wet dogs" and answer["exit_code"] == 1
    [job] = answer["jobs"]
    assert (job["status"], job["total"], job["succeeded"], job["failed"]) == ("completed", 4, 4, 0)
    assert job["cost_usd"] == round(4 * 0.039, 6)  # the job's recorded cost: what Gemini bills
    assert answer["uploads"]["uploaded"] == 2
    assert [r["file"].endswith("broken.jpg") for r in answer["uploads"]["rejected"]] == [True]
    assert answer["zip"]["path"] == "wet-dogs.zip"
    assert (tmp_path / "wet-dogs.zip").stat().st_size == answer["zip"]["bytes"]
    detail = stack.http.get(f"/api/jobs/{job['id']}").json()
    assert detail["config"]["aspect_ratio"] == "16:9"


@pytest.fixture
def blocking_stack(settings: Settings) -> Iterator[Stack]:
    """The stack with the Gemini provider against a fake Gemini (blocks on a keyword)."""
    with FakeGemini(api_key=GEMINI_KEY) as fake:
        yield from run_stack(
            settings, provider="gemini", gemini_api_key=GEMINI_KEY, gemini_base_url=fake.base_url
        )


def test_blocked_images_exit_1_and_say_why(blocking_stack: Stack, tmp_path: Path) -> None:
    folder = photos(tmp_path / "risky", 3)
    result = pixelfleet(
        "generate",
        str(folder),
        "--prompt",
        f"something {KEYWORD_UNSAFE}",
        api_url=api_url(blocking_stack),
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    check_no_traceback(result)
    assert "0 succeeded, 0 failed, 3 blocked" in result.stdout
    assert "  3 blocked: " in result.stdout  # grouped by reason
    reason = result.stdout.split("  3 blocked: ")[1].splitlines()[0]
    assert reason and reason != "no reason given"
    assert (tmp_path / "risky.zip").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "give one source"),
        (["generate", "{dir}"], "a folder needs --prompt"),
        (["generate", "{dir}", "--csv", "rows.csv"], "not DIR and --csv"),
        (["generate", "--catalog", "c.json", "--tag", "male", "--count", "x"], "--count must be"),
        (["generate", "{empty}", "--prompt", "p"], "no images"),
        (["jobs", "show"], "Missing argument"),
    ],
)
def test_bad_usage_exits_2_without_a_traceback(tmp_path: Path, args: list[str], says: str) -> None:
    photos(tmp_path / "dir", 1)
    (tmp_path / "empty").mkdir()
    args = [arg.format(dir=tmp_path / "dir", empty=tmp_path / "empty") for arg in args]
    result = pixelfleet(*(args or ["generate"]), api_url="http://127.0.0.1:9", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    check_no_traceback(result)
    assert says in result.stderr


def test_an_unreachable_api_exits_2_and_says_how_to_start_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = pixelfleet("jobs", "ls", api_url=url, cwd=tmp_path)
    assert result.returncode == 2
    check_no_traceback(result)
    assert f"cannot reach the pixelfleet API at {url}" in result.stderr
    assert "pixelfleet up" in result.stderr


def test_api_errors_exit_2_with_the_servers_message(stack: Stack, tmp_path: Path) -> None:
    folder = photos(tmp_path / "odd", 1)
    result = pixelfleet(
        "generate", str(folder), "--prompt", "p", "--aspect-ratio", "7:3",
        api_url=api_url(stack), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    check_no_traceback(result)
    assert "the API answered 422" in result.stderr and "7:3" in result.stderr
    as_json = pixelfleet("jobs", "show", "job_nope", "--json", api_url=api_url(stack), cwd=tmp_path)
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["error"]["status"] == 404


@contextmanager
def slow(settings: Settings) -> Iterator[Stack]:
    """A stack whose images take a while: two at a time, 0.6 s each."""
    yield from run_stack(settings, offline_latency_ms=600, worker_concurrency=2)


def _submit(stack: Stack, n: int, prompt: str = "slowly") -> str:
    group_id = stack.group()
    images = stack.upload(group_id, n)
    body = {"group_id": group_id, "mode": "automatic", "prompt": prompt, "images": images}
    submitted = stack.http.post("/api/jobs/submit", json=body)
    assert submitted.status_code == 201, submitted.text
    return str(submitted.json()["jobs"][0]["id"])


def test_jobs_ls_show_cancel_retry_watch_and_download(settings: Settings, tmp_path: Path) -> None:
    # slow enough that the job is still running after two commands on a loaded machine
    with contextmanager(run_stack)(
        settings, offline_latency_ms=1200, worker_concurrency=2
    ) as stack:
        url = api_url(stack)
        job_id = _submit(stack, 12)
        listed = pixelfleet("jobs", "ls", "--group", "e2e dataset", api_url=url, cwd=tmp_path)
        assert listed.returncode == 0 and listed.stdout.startswith(job_id), listed.stderr
        assert "1 of 1 job(s)" in listed.stderr
        as_json = pixelfleet("jobs", "ls", "--json", api_url=url, cwd=tmp_path)
        assert [job["id"] for job in json.loads(as_json.stdout)["data"]] == [job_id]

        cancelled = pixelfleet("jobs", "cancel", job_id, api_url=url, cwd=tmp_path)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"job {job_id}: cancelled" in cancelled.stdout
        shown = pixelfleet("jobs", "show", job_id, api_url=url, cwd=tmp_path)
        assert shown.returncode == 0 and "prompt: slowly" in shown.stdout
        assert "failed: cancelled" in shown.stdout

        retried = pixelfleet("jobs", "retry", job_id, "--json", api_url=url, cwd=tmp_path)
        assert retried.returncode == 0, retried.stderr
        assert json.loads(retried.stdout)["status"] in ("queued", "processing")
        watched = pixelfleet("jobs", "watch", job_id, api_url=url, cwd=tmp_path)
        assert watched.returncode == 0, watched.stderr
        assert "12 succeeded, 0 failed, 0 blocked" in watched.stdout

        out = tmp_path / "all.zip"
        downloaded = pixelfleet(
            "download", "e2e dataset", "--job", job_id, "--include-inputs", "--out", str(out),
            api_url=url, cwd=tmp_path,
        )  # fmt: skip
        assert downloaded.returncode == 0, downloaded.stderr
        assert f"saved group 'e2e dataset' to {out}" in downloaded.stdout
        names = zip_images(out)
        assert len([name for name in names if name.startswith(f"{job_id}/")]) == 12
        assert len([name for name in names if name.startswith("inputs/")]) == 12
        missing = pixelfleet("download", "no such group", api_url=url, cwd=tmp_path)
        assert missing.returncode == 2 and "no group is named 'no such group'" in missing.stderr


def _wait_for_text(path: Path, text: str, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while text not in path.read_text():
        assert child.poll() is None, path.read_text()
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.1)


def test_ctrl_c_while_watching_leaves_the_job_running(settings: Settings, tmp_path: Path) -> None:
    with slow(settings) as stack:
        folder = photos(tmp_path / "slow", 10)
        log = tmp_path / "generate.log"
        child = start_pixelfleet(
            "generate", str(folder), "--prompt", "take your time",
            api_url=api_url(stack), cwd=tmp_path, log=log,
        )  # fmt: skip
        try:
            _wait_for_text(log.with_suffix(".err"), "submitted 1 job(s): ", child)
            time.sleep(0.5)
            child.send_signal(signal.SIGINT)
            assert child.wait(timeout=30) == 130
        finally:
            if child.poll() is None:
                child.kill()
        stderr = log.with_suffix(".err").read_text()
        assert "Traceback" not in stderr
        job_id = stderr.split("submitted 1 job(s): ")[1].split()[0]
        assert f"Watch again with: pixelfleet jobs watch {job_id}" in stderr
        job: dict[str, Any] = stack.http.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "processing" and job["progress"]["pending"] > 0
        [finished] = stack.wait_for([job_id])
        assert finished["status"] == "completed" and finished["progress"]["succeeded"] == 10
        assert not (tmp_path / "slow.zip").exists()


EXAMPLE_CATALOG = Path(__file__).parents[2] / "examples" / "model-prompts.json"


def test_generate_from_a_catalog_by_tag_and_count(stack: Stack, tmp_path: Path) -> None:
    args = ["generate", "--catalog", str(EXAMPLE_CATALOG), "--tag", "male", "--tag", "female"]
    first = pixelfleet(
        *args, "--count", "2", "--seed", "11", "--out", "models.zip", "--json",
        api_url=api_url(stack), cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["group"]["name"] == "model-prompts"
    assert [(job["mode"], job["succeeded"]) for job in answer["jobs"]] == [("catalog", 2)] * 2
    names = zip_images(tmp_path / "models.zip")
    assert len(names) == 4 and {name.split("/")[1] for name in names} == {"male", "female"}
    assert "created catalog 'Model photos'" in first.stderr

    again = pixelfleet(*args, "--count", "1", api_url=api_url(stack), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "the same prompts, reused" in again.stderr
    assert len(stack.http.get("/api/catalogs").json()["data"]) == 1
    assert again.stdout.count("1 succeeded, 0 failed, 0 blocked") == 2
    unknown = pixelfleet(
        "generate", "--catalog", str(EXAMPLE_CATALOG), "--tag", "robot", "--count", "1",
        api_url=api_url(stack), cwd=tmp_path,
    )  # fmt: skip
    assert unknown.returncode == 2 and "robot" in unknown.stderr
    check_no_traceback(unknown)


def test_generate_from_csv_rows_with_a_template(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "pets"
    folder.mkdir()
    (folder / "cat.png").write_bytes(png_bytes(60, 40, (200, 100, 50)))
    (folder / "dog.png").write_bytes(png_bytes(40, 60, (50, 100, 200)))
    rows = tmp_path / "rows.csv"
    rows.write_text("subject,image\na cat,cat.png\na dog,dog.png\nthe sky,\n")
    args = ["generate", "--csv", str(rows), "--images", str(folder)]
    template = ["--template", "{{ subject }}, watercolour", "--outputs-per-image", "2"]
    result = pixelfleet(*args, *template, api_url=api_url(stack), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "uploads: 2 uploaded" in result.stdout
    assert "(import, completed): 6 image(s): 6 succeeded" in result.stdout
    assert len(zip_images(tmp_path / "pets.zip")) == 6

    rows.write_text("subject,image,aspect_ratio\na cat,nope.png,1:1\na dog,dog.png,7:3\n")
    bad = pixelfleet(*args, *template, api_url=api_url(stack), cwd=tmp_path)
    assert bad.returncode == 2
    check_no_traceback(bad)
    assert "2 rows have errors; nothing was imported" in bad.stderr
    assert "row 1, column image: " in bad.stderr and "nope.png" in bad.stderr
    assert "row 2, column aspect_ratio: " in bad.stderr and "7:3" in bad.stderr
    assert len(stack.http.get("/api/jobs").json()["data"]) == 1

    lines = tmp_path / "birds.jsonl"
    lines.write_text('{"prompt": "a red bird"}\n{"prompt": "a blue bird", "count": 2}\n')
    jsonl = pixelfleet(
        "generate", "--csv", str(lines), "--json", api_url=api_url(stack), cwd=tmp_path
    )
    assert jsonl.returncode == 0, jsonl.stderr
    answer = json.loads(jsonl.stdout)
    assert answer["group"]["name"] == "birds" and answer["jobs"][0]["succeeded"] == 3
