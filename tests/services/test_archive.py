"""The group ZIP (`control_plane/services/archive.py`) when storage no longer matches the rows.

Whole stack on real sockets, on local disk and on GCS (the emulator), on every database.
An object deleted or rewritten before the download becomes a `failed` manifest line and the
rest of the ZIP stays whole; one that changes after the download started ends the transfer
short of its Content-Length, never as a complete-looking 200.
"""

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx
import pytest
from google.api_core.exceptions import NotFound

from control_plane.app import create_app
from control_plane.settings import Settings
from shared import layout
from shared.layout import ObjectKind
from shared.storage import Storage, open_storage
from tests.fakes.gcs_emulator import GCSEmulator
from tests.fakes.servers import run_server
from tests.fakes.stack import Stack, check_zip_against_manifest, read_zip, run_stack

IMAGES = 6
NOT_AN_IMAGE = b"overwritten: not the image the row describes"
stack_on = contextmanager(run_stack)


@pytest.fixture
def gs_settings(settings: Settings, gcs_env: GCSEmulator) -> Iterator[Settings]:
    """`settings` on a fresh bucket of the emulator."""
    bucket = f"pf-zip-{uuid.uuid4().hex[:12]}"
    gcs_env.client.create_bucket(bucket)
    yield settings.model_copy(update={"storage_url": f"gs://{bucket}/pf"})
    with suppress(NotFound):
        gcs_env.client.bucket(bucket).delete(force=True)


@pytest.fixture(params=["local", "gcs"])
def any_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """`settings` on local disk, then on GCS."""
    if request.param == "gcs":
        gcs: Settings = request.getfixturevalue("gs_settings")
        return gcs
    return settings


def finished_group(stack: Stack) -> str:
    """A group whose automatic job has finished with every image succeeded."""
    group_id = stack.group()
    submitted = stack.http.post(
        "/api/jobs/submit",
        json={
            "group_id": group_id,
            "mode": "automatic",
            "prompt": "the same scene in fog",
            "images": stack.upload(group_id, IMAGES),
            "config": {"model": "gemini-3.1-flash-image", "image_size": "512"},
        },
    )
    assert submitted.status_code == 201, submitted.text
    [job] = stack.wait_for([submitted.json()["jobs"][0]["id"]])
    assert job["progress"]["succeeded"] == IMAGES, job
    return group_id


def output_keys(storage: Storage, group_id: str) -> dict[str, str]:
    """Each output's storage key, by image id."""
    keys = {}
    for info in storage.list(layout.group_outputs_prefix(group_id)):
        found = layout.parse(info.key)
        if found is not None and found.kind == ObjectKind.OUTPUT:
            keys[found.item_id] = info.key
    return keys


def test_missing_and_resized_objects_are_failed_lines_in_an_otherwise_whole_zip(
    any_settings: Settings,
) -> None:
    with stack_on(any_settings) as stack:
        group_id = finished_group(stack)
        _, before, manifest = read_zip(stack, group_id)
        files = {line["image_id"]: before.read(line["file"]) for line in manifest}
        storage = open_storage(stack.settings.storage_url)
        keys = output_keys(storage, group_id)
        deleted, resized = manifest[1], manifest[4]
        storage.delete(keys[deleted["image_id"]])
        storage.put_bytes(keys[resized["image_id"]], NOT_AN_IMAGE, content_type="image/png")

        _, archive, manifest = read_zip(stack, group_id)  # 200, full length, testzip clean

    lines = {line["image_id"]: line for line in manifest}
    assert len(manifest) == IMAGES
    assert lines[deleted["image_id"]] == deleted | {
        "status": "failed",
        "error": "file missing from storage",
        "file": None,
    }
    assert lines[resized["image_id"]] == resized | {
        "status": "failed",
        "error": f"stored size {resized['bytes']} does not match the object's "
        f"{len(NOT_AN_IMAGE)} bytes",
        "file": None,
    }
    kept = [line for line in manifest if line["status"] == "succeeded"]
    assert len(kept) == IMAGES - 2
    assert archive.namelist() == ["manifest.jsonl", "metadata.jsonl"] + [line["file"] for line in kept]
    assert all(archive.read(line["file"]) == files[line["image_id"]] for line in kept)
    check_zip_against_manifest(archive, manifest)


def delete(storage: Storage, key: str) -> None:
    storage.delete(key)


def shrink(storage: Storage, key: str) -> None:
    storage.put_bytes(key, NOT_AN_IMAGE, content_type="image/png")


def grow(storage: Storage, key: str) -> None:
    """By more than the rest of the ZIP: not one byte past the promised length may go out."""
    extra = bytes(2 * 1024 * 1024)
    storage.put_bytes(key, storage.get_bytes(key) + extra, content_type="image/png")


@pytest.mark.parametrize(
    ("backend", "change"),
    [("local", delete), ("local", shrink), ("local", grow), ("gcs", delete)],
    ids=["local-deleted", "local-shrunk", "local-grown", "gcs-deleted"],
)
def test_an_object_changed_after_planning_aborts_the_download_and_is_logged(
    request: pytest.FixtureRequest,
    settings: Settings,
    backend: str,
    change: Callable[[Storage, str], None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The Content-Length is sent with the plan: the client must see a cut-off transfer."""
    if backend == "gcs":
        settings = request.getfixturevalue("gs_settings")
    with stack_on(settings) as stack:
        group_id = finished_group(stack)
        storage = open_storage(stack.settings.storage_url)
        victim = max(output_keys(storage, group_id).values())
        read_ahead = storage.iter_many

        def changed_as_streaming_starts(keys: Iterable[str], *args: Any) -> Iterator[Any]:
            change(storage, victim)  # as another client would, just after planning
            return read_ahead(keys, *args)

        monkeypatch.setattr(storage, "iter_many", changed_as_streaming_starts)
        app = create_app(stack.settings, storage=storage, reconcile=False)
        with (
            run_server(app) as url,
            httpx.stream("GET", f"{url}/api/download/{group_id}/zip") as reply,
        ):
            assert reply.status_code == 200
            promised = int(reply.headers["content-length"])
            received = 0
            with pytest.raises(httpx.RemoteProtocolError):
                for chunk in reply.iter_raw():
                    received += len(chunk)
    assert 0 < received < promised
    aborted = [
        record
        for record in caplog.records
        if record.name == "control_plane.web.api.download" and record.levelno == logging.ERROR
    ]
    assert len(aborted) == 1
    assert group_id in aborted[0].getMessage() and victim in aborted[0].getMessage()


def test_storage_that_cannot_list_the_group_answers_503(
    gs_settings: Settings, gcs_env: GCSEmulator
) -> None:
    with stack_on(gs_settings) as stack:
        group_id = finished_group(stack)
        bucket = gs_settings.storage_url.removeprefix("gs://").split("/")[0]
        gcs_env.client.bucket(bucket).delete(force=True)
        reply = stack.http.get(f"/api/download/{group_id}/zip")
    assert reply.status_code == 503
    assert reply.json()["detail"].startswith("could not list the group's files in storage")
