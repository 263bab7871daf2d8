"""The storage layout: every key the platform writes is built, and read back, in one place.

The literal shapes below are what objects already in buckets are stored under: a change to
the layout that fails them would strand those objects.
"""

import asyncio
import hashlib
import tempfile
from pathlib import Path

import pytest

from shared import layout
from shared.contract import DispatchInput, ImageParams, WorkItem
from shared.ids import new_id
from shared.layout import ObjectKind, StorageObject
from shared.storage import LocalStorage
from shared.storage.base import TEMPORARY_PREFIX
from tests.conftest import png_bytes
from worker.providers.offline import OfflineProvider
from worker.runner import Runner

GROUP, JOB, UPLOAD, OUTPUT = "grp_1", "job_2", "img_3", "out_4"
RUN_ID = "a1b2c3d4-runpod-job-e1"
TAG = hashlib.sha256(RUN_ID.encode()).hexdigest()[:8]


def test_keys_keep_their_shapes() -> None:
    stem = layout.output_stem(GROUP, JOB, OUTPUT)
    assert layout.ROOT == "groups/"
    assert layout.group_prefix(GROUP) == "groups/grp_1/"
    assert layout.upload_key(GROUP, UPLOAD, ".jpg") == "groups/grp_1/inputs/img_3.jpg"
    assert layout.upload_thumbnail_key(GROUP, UPLOAD) == "groups/grp_1/inputs/img_3.thumb.webp"
    assert layout.group_outputs_prefix(GROUP) == "groups/grp_1/outputs/"
    assert layout.job_outputs_prefix(GROUP, JOB) == "groups/grp_1/outputs/job_2/"
    assert stem == "groups/grp_1/outputs/job_2/out_4"
    assert layout.run_stem(stem, RUN_ID) == f"groups/grp_1/outputs/job_2/out_4-{TAG}"
    assert layout.output_key(stem, "image/png") == "groups/grp_1/outputs/job_2/out_4.png"
    assert layout.output_key(stem, "image/jpeg") == "groups/grp_1/outputs/job_2/out_4.jpg"
    assert layout.output_key(stem, "image/webp") == "groups/grp_1/outputs/job_2/out_4.webp"
    assert layout.output_key(stem, "image/avif") == "groups/grp_1/outputs/job_2/out_4.bin"
    assert layout.thumbnail_key(stem) == "groups/grp_1/outputs/job_2/out_4.thumb.webp"


def test_every_key_sits_under_its_prefixes() -> None:
    """Deleting a group or a job removes a prefix, and gc lists ROOT: nothing may escape."""
    stem = layout.run_stem(layout.output_stem(GROUP, JOB, OUTPUT), RUN_ID)
    group_keys = [
        layout.upload_key(GROUP, UPLOAD, ".png"),
        layout.upload_thumbnail_key(GROUP, UPLOAD),
    ]
    job_keys = [layout.output_key(stem, "image/png"), layout.thumbnail_key(stem)]
    for key in group_keys + job_keys:
        assert key.startswith(layout.group_prefix(GROUP))
        assert layout.group_prefix(GROUP).startswith(layout.ROOT)
    assert all(key.startswith(layout.job_outputs_prefix(GROUP, JOB)) for key in job_keys)
    assert layout.job_outputs_prefix(GROUP, JOB).startswith(layout.group_outputs_prefix(GROUP))


@pytest.mark.parametrize("extension", [".png", ".jpg", ".webp"])
def test_uploads_round_trip(extension: str) -> None:
    upload_id = new_id("img")
    group_id = new_id("grp")
    assert layout.parse(layout.upload_key(group_id, upload_id, extension)) == StorageObject(
        ObjectKind.UPLOAD, group_id, None, upload_id
    )
    assert layout.parse(layout.upload_thumbnail_key(group_id, upload_id)) == StorageObject(
        ObjectKind.UPLOAD_THUMBNAIL, group_id, None, upload_id
    )


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "image/webp", "x/unknown"])
@pytest.mark.parametrize("run_id", [None, RUN_ID])
def test_outputs_round_trip(content_type: str, run_id: str | None) -> None:
    """With the worker's run tag or without it, the item id is the output's own id."""
    group_id, job_id, output_id = new_id("grp"), new_id("job"), new_id("out")
    stem = layout.output_stem(group_id, job_id, output_id)
    if run_id is not None:
        stem = layout.run_stem(stem, run_id)
    assert layout.parse(layout.output_key(stem, content_type)) == StorageObject(
        ObjectKind.OUTPUT, group_id, job_id, output_id
    )
    assert layout.parse(layout.thumbnail_key(stem)) == StorageObject(
        ObjectKind.OUTPUT_THUMBNAIL, group_id, job_id, output_id
    )


def test_what_the_worker_writes_parses_as_outputs(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    reference = storage.put_bytes(
        layout.upload_key(GROUP, UPLOAD, ".png"), png_bytes(), content_type="image/png"
    )
    dispatch = DispatchInput(
        dispatch_id="dsp_1",
        job_id=JOB,
        items=[
            WorkItem(
                output_id=OUTPUT,
                prompt="a red fox",
                reference_uris=[storage.uri(reference.key)],
                params=ImageParams(model="gemini-2.5-flash-image", seed=1),
                output_key=layout.output_stem(GROUP, JOB, OUTPUT),
            )
        ],
    )
    runner = Runner(OfflineProvider(), storage, concurrency=1)
    output = asyncio.run(runner.run_dispatch(dispatch, run_id=RUN_ID))
    [result] = output.results
    assert result.output_uri and result.thumbnail_uri, result.error
    written = {
        layout.parse(info.key) for info in storage.list(layout.job_outputs_prefix(GROUP, JOB))
    }
    assert written == {
        StorageObject(ObjectKind.OUTPUT, GROUP, JOB, OUTPUT),
        StorageObject(ObjectKind.OUTPUT_THUMBNAIL, GROUP, JOB, OUTPUT),
    }
    run_stem = f"groups/grp_1/outputs/job_2/out_4-{TAG}"
    assert storage.key_of(result.output_uri) == f"{run_stem}.jpg"  # the offline provider's JPEG
    assert storage.key_of(result.thumbnail_uri) == f"{run_stem}.thumb.webp"


@pytest.mark.parametrize(
    ("key", "job_id"),
    [
        ("groups/grp_1/inputs/.tmp-k3j2h1", None),
        ("groups/grp_1/outputs/job_2/.tmp-abc_9x", "job_2"),
        ("groups/grp_1/.tmp-x", None),
        ("groups/grp_1/somewhere/deeper/.tmp-a.b-c", None),
    ],
)
def test_temporary_files_anywhere_under_a_group(key: str, job_id: str | None) -> None:
    name = key.rsplit("/", 1)[1]
    assert layout.parse(key) == StorageObject(ObjectKind.TEMPORARY, "grp_1", job_id, name)


def test_a_real_temporary_file_name_parses(tmp_path: Path) -> None:
    """The name local storage gives a write in progress is one the layout recognises."""
    folder = tmp_path / "groups" / GROUP / "inputs"
    folder.mkdir(parents=True)
    _, path = tempfile.mkstemp(dir=folder, prefix=TEMPORARY_PREFIX)
    key = Path(path).relative_to(tmp_path).as_posix()
    parsed = layout.parse(key)
    assert parsed is not None and parsed.kind == ObjectKind.TEMPORARY
    assert [info.key for info in LocalStorage(tmp_path).list(layout.ROOT)] == [key]


@pytest.mark.parametrize(
    "key",
    [
        "",
        "groups/",
        "groups/grp_1",
        "groups/grp_1/",
        "other/grp_1/inputs/img_3.png",
        "jobs/j1/o1.png",
        "outputs/c1/000001.png",
        "xgroups/grp_1/inputs/img_3.png",
        "groups//inputs/img_3.png",
        "groups/grp_1/inputs/img_3",
        "groups/grp_1/inputs/img_3.gif",
        "groups/grp_1/inputs/img_3.bin",
        "groups/grp_1/inputs/img_3.thumb.png",
        "groups/grp_1/inputs/nested/img_3.png",
        "groups/grp_1/inputs/img_3-1a2b3c4d.png",
        "groups/grp_1/outputs/out_4.png",
        "groups/grp_1/outputs/job_2/out_4",
        "groups/grp_1/outputs/job_2/out_4.gif",
        "groups/grp_1/outputs/job_2/out_4-XYZ.png",
        "groups/grp_1/outputs/job_2/out_4-1a2b3c4.png",
        "groups/grp_1/outputs/job_2/nested/out_4.png",
        "groups/grp_1/outputs/job_2/.thumb.webp",
        "groups/grp_1/outputs/job_2/.tmp-",
        "groups/grp_1/other/img_3.png",
        "groups/grp_1//.tmp-x",
    ],
)
def test_foreign_keys_are_not_recognised(key: str) -> None:
    assert layout.parse(key) is None
