"""`pixelfleet generate --webhook URL` against the whole stack: the job is told at that URL,
signed (a folder's automatic job and a CSV import); a URL the API refuses exits 2."""

import base64
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.settings import Settings
from tests.conftest import png_bytes
from tests.fakes.cli import pixelfleet
from tests.fakes.receiver import Receiver, run_receiver, verify
from tests.fakes.stack import Stack

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_secret": SECRET})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with run_receiver() as receiver:
        yield receiver


def test_generate_passes_its_webhook_on(stack: Stack, receiver: Receiver, tmp_path: Path) -> None:
    folder = tmp_path / "cats"
    folder.mkdir()
    for i in range(2):
        (folder / f"cat{i}.png").write_bytes(png_bytes(40 + i, 30))
    (tmp_path / "rows.csv").write_text("prompt\na red bird\n")
    api_url = str(stack.http.base_url)
    runs = {
        "/folder": ["generate", str(folder), "--prompt", "a watercolour"],
        "/rows": ["generate", "--csv", "rows.csv"],
    }
    for path, args in runs.items():
        result = pixelfleet(
            *args, "--webhook", f"{receiver.url}{path}", "--json", api_url=api_url, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        [told] = receiver.wait_for(path, 1)
        verify(SECRET, told.headers, told.body)
        assert told.json["type"] == "job.completed"
        assert told.json["data"]["job"]["mode"] == ("automatic" if path == "/folder" else "import")

    refused = pixelfleet(
        *runs["/folder"], "--webhook", "ftp://example.com/", api_url=api_url, cwd=tmp_path
    )
    assert refused.returncode == 2
    assert "not an http(s) URL" in refused.stderr and "Traceback" not in refused.stderr
