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
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.api_core.exceptions import NotFound
from sqlmodel import select

from control_plane import lifecycle
from control_plane.app import create_app
from control_plane.models import Job, JobMode, JobStatus, Output, OutputStatus, Upload
from control_plane.services import archive as archive_service
from control_plane.settings import Settings
from shared import layout
from shared.ids import new_id
from shared.layout import ObjectKind
from shared.model_table import image_price
from shared.storage import Storage, open_storage
from tests.conftest import png_bytes
from tests.fakes.api import Api, finish_job
from tests.fakes.gcs_emulator import GCSEmulator
from tests.fakes.servers import run_server
from tests.fakes.stack import (
    Stack,
    check_zip_against_manifest,
    load_imagefolder,
    read_zip,
    run_stack,
)

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
    price = image_price("gemini-3.1-flash-image", "512")  # what the offline provider reports
    assert price and all(line["cost_usd"] == pytest.approx(price) for line in manifest)
    files_in_order = [line["file"] for line in kept]
    assert archive.namelist() == ["manifest.jsonl", "metadata.jsonl", *files_in_order]
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


# -- what a download selects, and how it names things (in-process app, RunPod mocked) ------

MODEL = "gemini-3.1-flash-image"


def submit(api: Api, body: dict[str, Any]) -> list[str]:
    """Submit through the API; the new jobs' ids."""
    answer = api.client.post("/api/jobs/submit", json={"config": {"model": MODEL}, **body})
    assert answer.status_code == 201, answer.text
    return [job["id"] for job in answer.json()["jobs"]]


def add_job(
    api: Api, group_id: str, mode: JobMode, images: list[dict[str, Any]], **job: Any
) -> str:
    """A job of a mode whose submissions land elsewhere (catalog, import), written as they
    will write it: `lifecycle.add_job`, outputs carrying prompt ids and tags."""
    row = Job(group_id=group_id, batch_id=new_id("bat"), mode=mode, prompt="p", **job)
    outputs = [
        Output(
            job_id=row.id,
            group_id=group_id,
            position=position,
            prompt=image.get("prompt", "a portrait"),
            reference_ids=image.get("references", []),
            prompt_id=image.get("prompt_id"),
            tags=image.get("tags"),
            seed=100 + position,
            params={"model": MODEL, "negative_prompt": image.get("negative_prompt")},
            model=MODEL,
        )
        for position, image in enumerate(images)
    ]
    with api.platform.session_scope() as session:
        lifecycle.add_job(session, row, outputs, chunk_size=len(outputs))
    return row.id


def made_from_images(api: Api, group_id: str, references: list[str]) -> str:
    """A finished job of one image made from generated images (output ids as references), as
    a mode still to come will leave it; the sender cannot send such references yet, so the
    rows are written finished. Its job's id."""
    job = Job(
        group_id=group_id,
        batch_id=new_id("bat"),
        mode=JobMode.IMPORT,
        prompt="p",
        status=JobStatus.COMPLETED,
        total=1,
        succeeded=1,
    )
    output = Output(
        job_id=job.id,
        group_id=group_id,
        position=0,
        prompt="p",
        seed=1,
        reference_ids=references,
        status=OutputStatus.SUCCEEDED,
        provider="offline",
        model=MODEL,
        params={"model": MODEL},
    )
    key = layout.output_key(layout.output_stem(group_id, job.id, output.id), "image/png")
    stored = api.platform.storage.put_bytes(key, png_bytes(), content_type="image/png")
    output.storage_key, output.content_type, output.bytes = key, "image/png", stored.size
    output.sha256, output.width, output.height = stored.sha256, 64, 48
    with api.platform.session_scope() as session:
        session.add(job)
        session.flush()
        session.add(output)
    return job.id


def uploads(api: Api, group_id: str, names: list[str]) -> list[str]:
    files = [(name, png_bytes(40 + i, 30, (i * 40 % 256, 90, 120))) for i, name in enumerate(names)]
    answer = api.upload(group_id, files)
    assert answer.status_code == 201, answer.text
    return [image["id"] for image in answer.json()["images"]]


def statuses(manifest: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    return [(line["job_id"], line["position"], line["status"]) for line in manifest]


def test_status_and_job_filters_choose_the_lines_and_the_files(api: Api) -> None:
    group_id = api.group()
    images = uploads(api, group_id, ["a.png", "b.png", "c.png"])
    [auto] = submit(
        api, {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": images}
    )
    finish_job(api, auto, ["succeeded", "failed", "blocked"])
    [semi] = submit(
        api,
        {
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": images[:1], "prompt": "q"}],
            "config": {"model": MODEL, "total_images": 2, "images_per_set": 2},
        },
    )
    finish_job(api, semi, ["succeeded", "succeeded"])
    first, second = sorted([auto, semi])  # the ZIP's order: job creation
    every = {
        auto: [(auto, 0, "succeeded"), (auto, 1, "failed"), (auto, 2, "blocked")],
        semi: [(semi, 0, "succeeded"), (semi, 1, "succeeded")],
    }
    expected = every[first] + every[second]

    def lines(**query: str | list[str]) -> list[tuple[str, int, str]]:
        _, archive, manifest = read_zip(api.client, group_id, **query)
        check_zip_against_manifest(archive, manifest)
        return statuses(manifest)

    succeeded = [line for line in expected if line[2] == "succeeded"]
    assert lines() == lines(status="succeeded") == succeeded
    assert lines(status="all") == lines(status="succeeded,failed,blocked") == expected
    assert lines(status=["failed", "blocked"]) == [(auto, 1, "failed"), (auto, 2, "blocked")]
    assert lines(status="blocked,all") == expected
    assert lines(job_id=semi) == every[semi]
    assert lines(job_id=auto, status="all") == every[auto]
    assert lines(job_id=[auto, semi]) == lines(job_id=f"{semi},{auto}") == succeeded
    _, archive, _ = read_zip(api.client, group_id, status="failed")
    assert archive.namelist() == ["manifest.jsonl", "metadata.jsonl"]
    assert archive.read("metadata.jsonl") == b""


def test_a_selection_that_names_nothing_real_is_refused_by_name(api: Api) -> None:
    group_id, other_group = api.group(), api.group("other")
    [theirs] = submit(
        api,
        {
            "group_id": other_group,
            "mode": "automatic",
            "prompt": "p",
            "images": uploads(api, other_group, ["x.png"]),
        },
    )
    unknown_job = "job_" + "0" * 26

    def refusal(query: str) -> str:
        answer = api.client.get(f"/api/download/{group_id}/zip?{query}")
        assert answer.status_code == 422, answer.text
        detail: str = answer.json()["detail"]
        return detail

    assert refusal(f"job_id={theirs}") == f"job_id {theirs}: not a job of group {group_id}"
    assert refusal(f"job_id={unknown_job}&job_id={theirs}") == (
        f"job_id {unknown_job}, {theirs}: not a job of group {group_id}"
    )
    assert refusal("job_id=JOB_1").startswith("job_id JOB_1: not shaped like a job id")
    assert refusal("status=done") == (
        "unknown status 'done'; choose from: succeeded, failed, blocked, all"
    )
    assert refusal("status=succeeded,pending") == (
        "unknown status 'pending'; choose from: succeeded, failed, blocked, all"
    )
    assert refusal("include=outputs") == "unknown include 'outputs'; choose from: inputs"
    assert refusal("jobs=x") == (
        "unknown query parameter 'jobs'; the ZIP takes: job_id, status, include"
    )
    many = "&".join(f"job_id={new_id('job')}" for _ in range(1001))
    assert refusal(many) == "1001 job_id values; at most 1000 at once"
    blank = api.client.get(f"/api/download/{group_id}/zip?status=&include=&job_id=")
    assert blank.status_code == 200  # empty values are no values: the defaults


def test_inputs_go_in_once_each_and_a_missing_one_is_named(api: Api) -> None:
    group_id = api.group()
    shared, own, lost = uploads(api, group_id, ["shared one.png", "own.png", "lost.png"])
    [semi] = submit(
        api,
        {
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": [shared, own], "prompt": "both"}],
            "config": {"model": MODEL, "total_images": 2, "images_per_set": 2},
        },
    )
    finish_job(api, semi, ["succeeded", "succeeded"])
    [auto] = submit(
        api, {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": [shared, lost]}
    )
    finish_job(api, auto, ["succeeded", "failed"])
    with api.session() as session:
        made = session.exec(select(Output).where(Output.job_id == semi)).first()
        lost_key = session.get(Upload, lost).storage_key  # type: ignore[union-attr]
    assert made is not None
    derived = made_from_images(api, group_id, [made.id, "out_" + "0" * 26])
    api.platform.storage.delete(lost_key)

    _, archive, manifest = read_zip(api.client, group_id, include="inputs", status="all")
    check_zip_against_manifest(archive, manifest)
    inputs = [name for name in archive.namelist() if name.startswith("inputs/")]
    assert inputs == [
        f"inputs/{shared}_shared-one.png",
        f"inputs/{own}_own.png",
        f"inputs/{made.id}.png",
    ]  # in order of first use, once each
    for upload_id, name in zip([shared, own], inputs, strict=False):
        original = api.client.get(f"/api/uploads/{upload_id}/file").content
        assert archive.read(name) == original
    assert archive.read(inputs[2]) == api.platform.storage.get_bytes(made.storage_key or "")
    by_image = {(line["job_id"], line["position"]): line for line in manifest}
    assert by_image[semi, 0]["reference_files"] == inputs[:2]
    assert by_image[semi, 0]["reference_errors"] == {}
    assert by_image[auto, 1]["status"] == "failed"  # its references are in the ZIP too
    assert by_image[auto, 1]["reference_files"] == []
    assert by_image[auto, 1]["reference_errors"] == {lost: "file missing from storage"}
    assert by_image[derived, 0]["reference_files"] == [inputs[2]]
    assert by_image[derived, 0]["reference_errors"] == {
        "out_" + "0" * 26: "no upload or image has this id"
    }

    _, without, manifest = read_zip(api.client, group_id)
    check_zip_against_manifest(without, manifest)
    assert not [name for name in without.namelist() if name.startswith("inputs/")]
    assert all(line["reference_files"] == line["reference_ids"] for line in manifest)
    assert all(line["reference_errors"] == {} for line in manifest)


def test_each_mode_names_its_files_and_no_name_escapes_or_splits(api: Api, tmp_path: Path) -> None:
    """Split words (test, dev, …) anywhere in a path would make `datasets` see a test or
    validation split and no train split: they are capitalised, and the folder still loads."""
    group_id = api.group()
    [source] = uploads(api, group_id, ["../../test.png"])
    [auto] = submit(
        api, {"group_id": group_id, "mode": "automatic", "prompt": "p", "images": [source]}
    )
    [semi] = submit(
        api,
        {
            "group_id": group_id,
            "mode": "semi-automatic",
            "items": [{"images": [source], "prompt": "q"}],
            "config": {"model": MODEL, "total_images": 1, "images_per_set": 1},
        },
    )
    catalog = add_job(
        api,
        group_id,
        JobMode.CATALOG,
        [
            {"prompt_id": "m-01", "tags": ["male", "studio"], "negative_prompt": "blur"},
            {"prompt_id": "../../etc/passwd", "tags": ["male"]},
            {"prompt_id": None, "tags": ["male"]},
        ],
        config={"tag": "male"},
    )
    odd_tag = add_job(
        api,
        group_id,
        JobMode.CATALOG,
        [{"prompt_id": "dev.1", "tags": ["a/b"]}],
        config={"tag": "../test"},
        id="job_0000000000000000000003dev5",
    )
    imported = add_job(
        api,
        group_id,
        JobMode.IMPORT,
        [{"prompt_id": "row-12"}, {"prompt_id": "my id: ü"}, {"prompt_id": ".."}],
    )
    for job_id in (auto, semi, catalog, odd_tag, imported):
        with api.session() as session:
            total = session.get(Job, job_id).total  # type: ignore[union-attr]
        finish_job(api, job_id, ["succeeded"] * total)

    content, archive, manifest = read_zip(api.client, group_id, include="inputs")
    check_zip_against_manifest(archive, manifest)
    names = {line["image_id"]: line["file"] for line in manifest}
    expected = {
        f"{auto}/00000_Test.png",
        f"{semi}/00000.png",
        f"{catalog}/male/m-01_00000.png",
        f"{catalog}/male/etc-passwd_00001.png",
        f"{catalog}/male/00002.png",
        "job_0000000000000000000003Dev5/Test/Dev.1_00000.png",
        f"{imported}/row-12_00000.png",
        f"{imported}/my-id_00001.png",
        f"{imported}/00002.png",
    }
    assert set(names.values()) == expected
    assert [name for name in archive.namelist() if name.startswith("inputs/")] == [
        f"inputs/{source}_Test.png"
    ]
    dataset = load_imagefolder(content, tmp_path / "dataset")
    assert dataset.num_rows == len(expected)
    rows = {row["image_id"]: row for row in dataset}
    first = next(line for line in manifest if line["prompt_id"] == "m-01")
    assert rows[first["image_id"]]["tags"] == ["male", "studio"]
    assert rows[first["image_id"]]["negative_prompt"] == "blur"
    assert rows[first["image_id"]]["image"].size == (64, 48)


def test_a_zip_planned_a_little_at_a_time_is_the_zip_planned_at_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning reads a job's images FINISHED_BATCH at a time, spools its lines to a file past
    SPOOL_MEMORY and keeps LISTINGS_KEPT listings of storage: at their smallest (an image a
    batch, files from the first line, one listing) the ZIP holds the same files, byte for
    byte, over two jobs, their references and every status."""
    with stack_on(settings) as stack:
        group_id = finished_group(stack)
        uploads = [
            upload["id"]
            for upload in stack.http.get(f"/api/groups/{group_id}/uploads").json()["data"]
        ]
        again = stack.http.post(
            "/api/jobs/submit",
            json={
                "group_id": group_id,
                "mode": "automatic",
                "prompt": "in snow",
                "images": uploads[:3],
            },
        )
        assert again.status_code == 201, again.text
        stack.wait_for([again.json()["jobs"][0]["id"]])
        query = {"status": "all", "include": "inputs"}
        _, at_once, manifest = read_zip(stack, group_id, **query)
        monkeypatch.setattr(archive_service, "FINISHED_BATCH", 1)
        monkeypatch.setattr(archive_service, "SPOOL_MEMORY", 1)
        monkeypatch.setattr(archive_service, "LISTINGS_KEPT", 1)
        _, little, _ = read_zip(stack, group_id, **query)
    assert len(manifest) == IMAGES + 3
    assert len([name for name in at_once.namelist() if name.startswith("inputs/")]) == IMAGES
    assert little.namelist() == at_once.namelist()
    assert all(little.read(name) == at_once.read(name) for name in at_once.namelist())


def _archive_of(pieces: Iterable[bytes]) -> archive_service.Archive:
    """An Archive whose ZIP is `pieces` (its bodies and plan unused)."""
    plan = archive_service.Plan(archive_service.Spool(), archive_service.Spool(), [])
    return archive_service.Archive(pieces, iter(()), plan)  # type: ignore[arg-type]


def test_a_zip_goes_out_in_blocks_and_a_big_piece_as_it_is() -> None:
    """Headers and directory records (a few dozen bytes each) are gathered into blocks of at
    least BLOCK bytes; a piece that big goes out as it came, not copied."""
    big = b"d" * archive_service.BLOCK
    pieces = [b"header", big, *[b"record-%05d" % n for n in range(20_000)], b"end"]
    blocks = list(_archive_of(pieces).blocks())
    assert b"".join(blocks) == b"".join(pieces)
    assert blocks[1] is big
    assert all(len(block) >= archive_service.BLOCK for block in blocks[2:-1])
    assert len(blocks) < 10


def test_what_came_before_an_aborted_object_still_goes_out() -> None:
    def pieces() -> Iterator[bytes]:
        yield b"manifest"
        yield b"metadata"
        raise archive_service.ArchiveAborted("changed")

    blocks = _archive_of(pieces()).blocks()
    assert next(blocks) == b"manifestmetadata"
    with pytest.raises(archive_service.ArchiveAborted):
        next(blocks)
