"""What ships: the Docker images' entry points, the RunPod worker under the real SDK, the docs."""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.settings import Settings
from shared.contract import DispatchInput, ImageParams, WorkItem
from shared.storage import LocalStorage
from tests.conftest import png_bytes
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


def test_api_image_entry_point_imports() -> None:
    text = _dockerfile("Dockerfile.api")
    assert "pixelfleet migrate" in text
    target = re.search(r"uvicorn (\S+):(\S+) --factory", text)
    assert target, "the API image runs uvicorn with an app factory"
    factory = getattr(importlib.import_module(target.group(1)), target.group(2))
    assert callable(factory)
    scripts = re.search(r'pixelfleet = "([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text())
    assert scripts and callable(
        getattr(importlib.import_module(scripts.group(1)), scripts.group(2))
    )


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
