"""What ships: the Docker images' entry points, the RunPod worker under the real SDK, the docs."""

import ast
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import typer

from control_plane.settings import Settings
from shared.contract import DispatchInput, ImageParams, WorkItem
from shared.storage import LocalStorage
from tests.conftest import png_bytes
from tests.fakes.cli import answers
from tests.fakes.servers import free_port
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent


def _dockerfile(name: str) -> str:
    return (ROOT / name).read_text()


@pytest.mark.parametrize("name", ["Dockerfile.api", "Dockerfile.worker"])
def test_dockerfiles_are_pinned_and_copy_what_exists(name: str) -> None:
    text = _dockerfile(name)
    base = re.search(r"^FROM (\S+)", text, re.M)
    assert base and re.search(r":\d+\.\d+\.\d+", base.group(1)), "base image must be pinned"
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"{name} copies missing {path}"


def _api_image_script() -> str:
    """The shell script the API image's CMD (`["sh", "-c", script]`) runs."""
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", _dockerfile("Dockerfile.api"), re.M).group(1))  # type: ignore[union-attr]
    assert cmd[:2] == ["sh", "-c"] and len(cmd) == 3, cmd
    return str(cmd[2])


def test_api_image_entry_point_imports() -> None:
    """The image runs `pixelfleet migrate`, then `pixelfleet api` (whose logging masks secrets)
    with options the installed `pixelfleet` script has."""
    steps = [step.strip() for step in _api_image_script().split("&&")]
    assert steps[1].startswith("exec "), "the server gets the container's signals"
    commands = [shlex.split(step.removeprefix("exec ")) for step in steps]
    assert [command[:2] for command in commands] == [
        ["pixelfleet", "migrate"],
        ["pixelfleet", "api"],
    ]
    scripts = re.search(r'pixelfleet = "([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text())
    assert scripts
    cli = typer.main.get_group(getattr(importlib.import_module(scripts.group(1)), scripts.group(2)))
    for command in commands:
        subcommand = cli.commands[command[1]]
        options = {
            name for param in subcommand.params for name in param.opts + param.secondary_opts
        }
        used = {word for word in command[2:] if word.startswith("--")}
        assert used <= options, f"{command[1]} has no {used - options}"


def test_the_api_images_command_masks_webhook_tokens(tmp_path: Path) -> None:
    """The CMD as the image's shell runs it (on SQLite, in development mode): the access
    line for a webhook (control_plane/web/requestlog.py, in place of uvicorn's) shows
    `token=***`, never the token, and the client a trusted proxy (loopback by default)
    forwarded."""
    port, token = free_port(), "Zq3-webhook-token-0123456789abcdef"
    venv_bin = str(Path(sys.executable).parent)  # where the `pixelfleet` script is installed
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "PIXELFLEET_ENVIRONMENT": "development",
        "PIXELFLEET_DATA_DIR": str(tmp_path / "data"),
        "PIXELFLEET_DATABASE_URL": "",
        "PIXELFLEET_STORAGE_URL": str(tmp_path / "storage"),
        "PIXELFLEET_API_PASSWORD": "correct-horse-battery-staple",
        "PIXELFLEET_LOG_LEVEL": "INFO",
    }
    output = tmp_path / "api.log"
    with output.open("wb") as sink:
        server = subprocess.Popen(
            ["sh", "-c", _api_image_script()], env=env, cwd=tmp_path, stdout=sink, stderr=sink
        )
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz", server, output)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/api/webhook/runpod",
            params={"dispatch": "dsp_0123456789abcdef", "token": token},
            headers={"X-Forwarded-For": "203.0.113.7"},
            json={},
            timeout=10,
        )
        assert answer.status_code in (401, 403, 404), answer.text
        server.terminate()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    written = output.read_text()
    assert token not in written
    access = [line for line in written.splitlines() if "/api/webhook/runpod" in line]
    assert any(
        "control_plane.access" in line and "203.0.113.7" in line and "token=***" in line
        for line in access
    ), written


def _wait_for(url: str, server: subprocess.Popen[bytes], output: Path) -> None:
    deadline = time.monotonic() + 60
    while not answers(url):
        assert server.poll() is None, f"the API exited: {output.read_text()}"
        assert time.monotonic() < deadline, f"the API did not answer: {output.read_text()}"
        time.sleep(0.2)


def test_worker_image_runs_the_handler_under_the_real_runpod_sdk(tmp_path: Path) -> None:
    """`python -m worker.main` (the worker image's CMD) with runpod's --test_input local mode."""
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", _dockerfile("Dockerfile.worker"), re.M).group(1))  # type: ignore[union-attr]
    assert cmd[-2:] == ["-m", "worker.main"]
    storage = LocalStorage(tmp_path)
    reference = storage.put_bytes("groups/g/inputs/r.png", png_bytes(), content_type="image/png")
    dispatch = DispatchInput(
        dispatch_id="dsp_x",
        job_id="job_x",
        items=[
            WorkItem(
                output_id=f"out_{i}",
                prompt="runpod local test",
                reference_uris=[storage.uri(reference.key)],
                params=ImageParams(model="gemini-3.1-flash-image", seed=i, image_size="512"),
                output_key=f"groups/g/outputs/job_x/out_{i}",
            )
            for i in range(2)
        ],
    )
    env = {**os.environ, "PIXELFLEET_STORAGE_URL": str(tmp_path), "PIXELFLEET_PROVIDER": "offline"}
    env.pop("GEMINI_API_KEY", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.main",
            "--test_input",
            json.dumps({"input": dispatch.model_dump(mode="json")}),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed successfully" in result.stdout + result.stderr
    names = sorted(p.name for p in (tmp_path / "groups/g/outputs/job_x").iterdir())
    run = names[0].removeprefix("out_0-").removesuffix(".jpg")  # this run's tag
    assert re.fullmatch(r"[0-9a-f]{8}", run), names
    assert names == [
        f"out_0-{run}.jpg",
        f"out_0-{run}.thumb.webp",
        f"out_1-{run}.jpg",
        f"out_1-{run}.thumb.webp",
    ]


def test_control_plane_does_not_import_runpod() -> None:
    """`import runpod` costs ~1.5 s and reconfigures logging: only the worker entry point may."""
    code = "import sys, control_plane.app, control_plane.cli; print('runpod' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    names = {f"PIXELFLEET_{field.upper()}" for field in Settings.model_fields}
    names |= {
        f"PIXELFLEET_{field.upper()}"
        for field in WorkerSettings.model_fields
        if field != "gemini_api_key"
    }
    names |= {
        "GEMINI_API_KEY",
        "PIXELFLEET_MODELS_FILE",
        "PIXELFLEET_TEST_MYSQL_URL",
        "PIXELFLEET_REQUIRE_MYSQL",
    }
    missing = sorted(name for name in names if f"`{name}`" not in readme)
    assert not missing, f"README's configuration table lacks {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and re.search(r"^make test$", ci, re.M)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PIXELFLEET_WORKER_CONCURRENCY": "many"}, "PIXELFLEET_WORKER_CONCURRENCY"),
        ({"PIXELFLEET_STORAGE_URL": "gs://Not_A_Bucket/x"}, "invalid GCS"),
    ],
)
def test_the_worker_image_explains_bad_configuration_and_exits_2(
    env: dict[str, str], named: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker.main"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("configuration error:") and named in result.stderr
    assert "Traceback" not in result.stderr


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; `from a import b` counts a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _code() -> dict[str, set[str]]:
    return {
        _module_name(path): _imports(path)
        for package in ("control_plane", "worker", "shared", "client")
        for path in (ROOT / package).rglob("*.py")
    }


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


IMPORT_RULES = [
    # (modules the rule is about, what they may not import, why)
    ("control_plane.services", ("control_plane.web", "fastapi", "starlette"), "web"),
    ("control_plane.lifecycle", ("control_plane.web", "control_plane.runpod"), "no transport"),
    ("control_plane.events", ("control_plane.web", "control_plane.runpod"), "no transport"),
    ("control_plane.services", ("control_plane.runpod",), "RunPod stays in its package"),
    ("control_plane.web.ui", ("control_plane.web.api",), "front ends are siblings"),
    ("control_plane.web.api", ("control_plane.web.ui",), "front ends are siblings"),
    ("shared", ("control_plane", "worker", "client"), "shared depends on neither side"),
    ("worker", ("control_plane", "client"), "the worker knows only the contract"),
    ("client", ("worker",), "the client talks to the API only"),
]


@pytest.mark.parametrize(("scope", "forbidden", "why"), IMPORT_RULES)
def test_import_rules(scope: str, forbidden: tuple[str, ...], why: str) -> None:
    broken = sorted(
        f"{module} imports {name}"
        for module, names in _code().items()
        if _within(module, scope)
        for name in names
        if any(_within(name, rule) for rule in forbidden)
    )
    assert not broken, f"{why}: {broken}"


def test_the_client_and_the_control_plane_meet_only_at_the_api() -> None:
    """The client knows the API's bodies (control_plane.schemas) and nothing else of the
    control plane; the control plane imports the client only to register its commands."""
    code = _code()
    broken = sorted(
        f"{module} imports {name}"
        for module, names in code.items()
        for name in names
        if _crosses_the_api(module, name)
    )
    assert not broken, broken
    assert "client.cli.register" in code["control_plane.cli"]
    assert "control_plane.schemas" in code["client.api"]


def _crosses_the_api(module: str, name: str) -> bool:
    if _within(module, "client"):
        return _within(name, "control_plane") and not _within(name, "control_plane.schemas")
    return (
        _within(module, "control_plane")
        and module != "control_plane.cli"
        and (_within(name, "client"))
    )


def test_only_the_runpod_package_knows_runpods_wire_format() -> None:
    broken = sorted(
        f"{module} imports {name}"
        for module, names in _code().items()
        if not _within(module, "control_plane.runpod")
        for name in names
        if _within(name, "control_plane.runpod.wire")
    )
    assert not broken, broken
    # and the webhook route takes RunPod's body through the package, never the schema itself
    route = (ROOT / "control_plane/web/api/webhook.py").read_text()
    assert "RunPodJobState" not in route


def test_the_import_rules_see_real_imports() -> None:
    """The rules above would pass vacuously if the scanner found nothing."""
    code = _code()
    assert "control_plane.lifecycle" in code["control_plane.runpod.sender"]
    assert "control_plane.runpod.wire.run_body" in code["control_plane.runpod.sender"]
    assert any(_within(n, "fastapi") for n in code["control_plane.web.api.jobs"])
