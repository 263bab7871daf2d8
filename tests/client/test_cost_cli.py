"""`pixelfleet generate` and money: the estimate shown before submitting, the confirmation
above --confirm-above (--yes skips it), and a spend cap's 402 said plainly with exit code 1."""

import subprocess
from pathlib import Path

from control_plane.db import make_engine, session_scope
from control_plane.models import UserTier
from control_plane.services import users
from shared.model_table import DEFAULT_MODEL, model_table
from tests.conftest import png_bytes
from tests.fakes.cli import pixelfleet
from tests.fakes.stack import Stack

PRICE = model_table()[DEFAULT_MODEL].price_for(None)


def photos(folder: Path, n: int) -> Path:
    folder.mkdir(exist_ok=True)
    for i in range(n):
        (folder / f"cat {i}.png").write_bytes(png_bytes(40 + i, 30))
    return folder


def api_url(stack: Stack) -> str:
    return str(stack.http.base_url)


def check_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def jobs_of(stack: Stack) -> int:
    return len(stack.http.get("/api/jobs").json()["data"])


def test_generate_shows_the_estimate_and_asks_above_the_threshold(
    stack: Stack, tmp_path: Path
) -> None:
    folder = photos(tmp_path / "cats", 2)
    args = ["generate", str(folder), "--prompt", "as ink", "--confirm-above", "0.05"]
    declined = pixelfleet(*args, api_url=api_url(stack), cwd=tmp_path, stdin_text="n\n")
    check_no_traceback(declined)
    assert declined.returncode == 1, declined.stderr
    assert f"estimate: 2 images, about ${2 * PRICE:.2f} ({DEFAULT_MODEL}: 2 x $" in (
        declined.stderr
    )
    assert "submit for about $0.08 (above $0.05)?" in declined.stderr
    assert "nothing submitted" in declined.stderr and jobs_of(stack) == 0

    no_answer = pixelfleet(*args, api_url=api_url(stack), cwd=tmp_path)  # stdin closed
    assert no_answer.returncode == 1 and jobs_of(stack) == 0

    accepted = pixelfleet(*args, api_url=api_url(stack), cwd=tmp_path, stdin_text="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert jobs_of(stack) == 1

    skipped = pixelfleet(*args, "--yes", api_url=api_url(stack), cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    assert "submit for about" not in skipped.stderr and jobs_of(stack) == 2

    below = pixelfleet(*args[:-1], "1", api_url=api_url(stack), cwd=tmp_path)
    assert below.returncode == 0 and "submit for about" not in below.stderr


def test_a_submission_over_the_cap_is_said_plainly_and_exits_1(
    stack: Stack, tmp_path: Path
) -> None:
    with session_scope(make_engine(stack.settings.database_url)) as session:
        user = users.add_user(session, "dee", UserTier.FREE)
        users.set_cap(session, user, 0.05)
        _, key = users.create_key(session, user)
    folder = photos(tmp_path / "cats", 2)
    result = pixelfleet(
        "generate",
        str(folder),
        "--prompt",
        "as ink",
        api_url=api_url(stack),
        cwd=tmp_path,
        PIXELFLEET_API_PASSWORD=key,
    )
    check_no_traceback(result)
    assert result.returncode == 1, result.stderr
    assert (
        "not submitted: this submission's 2 images cost about $0.08; you have spent $0.00 of "
        "your $0.05 monthly cap, $0.00 of it in flight; nothing was submitted"
    ) in result.stderr
    assert "the API answered" not in result.stderr


def test_rerun_asks_too(stack: Stack, tmp_path: Path) -> None:
    folder = photos(tmp_path / "dogs", 1)
    made = pixelfleet(
        "generate", str(folder), "--prompt", "ink", api_url=api_url(stack), cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    [job] = stack.http.get("/api/jobs").json()["data"]
    args = ["rerun", job["id"], "--confirm-above", "0"]
    declined = pixelfleet(*args, api_url=api_url(stack), cwd=tmp_path, stdin_text="n\n")
    assert declined.returncode == 1, declined.stderr
    assert f"estimate: 1 images, about ${PRICE:.2f}" in declined.stderr
    assert jobs_of(stack) == 1
    accepted = pixelfleet(*args, "--yes", api_url=api_url(stack), cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert jobs_of(stack) == 2
