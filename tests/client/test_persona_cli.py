"""`pixelfleet persona create|watch|show` as a user runs them: child processes against the
whole stack (offline provider; Gemini's API faked for a blocked persona)."""

import json
from pathlib import Path

from control_plane.settings import Settings
from tests.fakes.cli import pixelfleet
from tests.fakes.gemini import KEYWORD_UNSAFE, FakeGemini
from tests.fakes.stack import Stack, run_stack

GEMINI_KEY = "persona-cli-gemini-key"


def test_persona_create_watch_show(stack: Stack, tmp_path: Path) -> None:
    api_url = str(stack.http.base_url)
    args = ["persona", "create", "--group", "cast", "--count", "3", "--watch"]
    args += ["--attribute", "gender=female", "--attribute", "age=30", "--seed", "5"]
    done = pixelfleet(*args, api_url=api_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "created group 'cast'" in done.stderr
    assert "created 3 persona(s) in batch bat_" in done.stderr
    assert "3 of 3 persona(s) completed" in done.stdout
    assert done.stdout.count("): completed") == 3
    persona_id = done.stdout.split("persona ")[1].split()[0]

    shown = pixelfleet("persona", "show", persona_id, api_url=api_url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "completed, stage variations" in shown.stdout
    assert "  gender: female" in shown.stdout and "  age: 30" in shown.stdout
    assert shown.stdout.count(": succeeded http") == 5  # base and 4 variations, with URLs

    batch_id = done.stderr.split("in batch ")[1].split(":")[0]
    watched = pixelfleet("persona", "watch", batch_id, "--json", api_url=api_url, cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    answer = json.loads(watched.stdout)
    assert answer["exit_code"] == 0 and len(answer["personas"]) == 3
    assert {p["status"] for p in answer["personas"]} == {"completed"}

    bad = pixelfleet("persona", "create", "--attribute", "female", api_url=api_url, cwd=tmp_path)
    assert bad.returncode == 2 and "--attribute takes key=value" in bad.stderr
    refused = pixelfleet(
        "persona", "create", "--attribute", "age_range=40-20", api_url=api_url, cwd=tmp_path
    )
    assert refused.returncode == 2 and "attributes.age_range" in refused.stderr


def test_a_failed_persona_exits_1_with_its_error_log(settings: Settings, tmp_path: Path) -> None:
    with FakeGemini(api_key=GEMINI_KEY) as fake:
        stack_of = run_stack(
            settings, provider="gemini", gemini_api_key=GEMINI_KEY, gemini_base_url=fake.base_url
        )
        stack = next(stack_of)
        try:
            result = pixelfleet(
                *("persona", "create", "--count", "1", "--watch", "--json"),
                *("--brief", f"{KEYWORD_UNSAFE} people"),
                api_url=str(stack.http.base_url),
                cwd=tmp_path,
            )
        finally:
            stack_of.close()
    assert result.returncode == 1, result.stderr
    [persona] = json.loads(result.stdout)["personas"]
    assert persona["status"] == "failed" and persona["stage"] == "data"
    assert persona["error_log"] == ["persona data blocked: answer blocked: SAFETY"]
