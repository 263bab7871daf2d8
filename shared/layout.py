"""Where every object lives in storage: the one place keys are built and recognised.

    groups/{group}/inputs/{upload}{.png|.jpg|.webp}           an uploaded image
    groups/{group}/inputs/{upload}.thumb.webp                 its thumbnail
    groups/{group}/outputs/{job}/{output}[-{run tag}]{ext}    a generated image
    groups/{group}/outputs/{job}/{output}[-{run tag}].thumb.webp  its thumbnail
    groups/{group}/.../.tmp-*                                 an interrupted local write

The control plane names an output's *stem* (`output_stem`, carried by the job contract's
`WorkItem.output_key`); the worker appends its run tag (`run_stem`) and the extension of
what it got back (`output_key`, `thumbnail_key`). Deleting a group or a job removes one
prefix, and `pixelfleet storage gc` lists `ROOT`, so nothing may be written outside them.

Existing objects are found by these keys: changing a shape strands everything stored
under the old one (tests/test_layout.py pins today's shapes).
"""

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum

from shared.images import EXTENSIONS, FALLBACK_EXTENSION, extension_for
from shared.storage.base import TEMPORARY_PREFIX

ROOT = "groups/"
RUN_TAG_CHARS = 8  # hex digits of sha256(RunPod job id) that make a run's keys its own

_INPUTS = "inputs"
_OUTPUTS = "outputs"
_THUMBNAIL_SUFFIX = ".thumb.webp"
_UPLOAD_EXTENSIONS = frozenset(EXTENSIONS.values())
_OUTPUT_EXTENSIONS = _UPLOAD_EXTENSIONS | {FALLBACK_EXTENSION}
# Platform ids (`shared.ids.new_id`) hold neither '.' nor '-', which keeps the extension and
# the run tag unambiguous when a key is read back.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")
_OUTPUT_NAME = re.compile(rf"(?P<id>{_ID.pattern})(?:-[0-9a-f]{{{RUN_TAG_CHARS}}})?")
_TEMPORARY_NAME = re.compile(rf"{re.escape(TEMPORARY_PREFIX)}[A-Za-z0-9_][A-Za-z0-9._-]*")


class ObjectKind(StrEnum):
    """What a stored object is, as told by its key."""

    UPLOAD = "upload"  # an image a user uploaded (a reference for generation)
    UPLOAD_THUMBNAIL = "upload_thumbnail"  # the WebP preview of an upload
    OUTPUT = "output"  # a generated image, as one worker run wrote it
    OUTPUT_THUMBNAIL = "output_thumbnail"  # the WebP preview of a generated image
    TEMPORARY = "temporary"  # a `.tmp-*` file an interrupted local write left behind


@dataclass(frozen=True)
class StorageObject:
    """A key read back: what it holds and whose it is.

    `item_id` is the upload's or output's id (an output's run tag is not part of it), or for
    a temporary file its file name. `job_id` is set for outputs and their thumbnails, and for
    a temporary file written into a job's outputs.
    """

    kind: ObjectKind
    group_id: str
    job_id: str | None
    item_id: str


def group_prefix(group_id: str) -> str:
    """Everything a group owns: its uploads, its jobs' outputs, their thumbnails."""
    return f"{ROOT}{group_id}/"


def upload_key(group_id: str, upload_id: str, extension: str) -> str:
    """An uploaded image; `extension` includes its dot (e.g. ".png")."""
    return f"{group_prefix(group_id)}{_INPUTS}/{upload_id}{extension}"


def upload_thumbnail_key(group_id: str, upload_id: str) -> str:
    """The thumbnail of an uploaded image."""
    return f"{group_prefix(group_id)}{_INPUTS}/{upload_id}{_THUMBNAIL_SUFFIX}"


def group_outputs_prefix(group_id: str) -> str:
    """Everything the workers wrote for a group's jobs."""
    return f"{group_prefix(group_id)}{_OUTPUTS}/"


def job_outputs_prefix(group_id: str, job_id: str) -> str:
    """Everything a job's workers wrote."""
    return f"{group_outputs_prefix(group_id)}{job_id}/"


def output_stem(group_id: str, job_id: str, output_id: str) -> str:
    """An output's key without run tag or extension: what `WorkItem.output_key` carries."""
    return f"{job_outputs_prefix(group_id, job_id)}{output_id}"


def run_stem(stem: str, run_id: str) -> str:
    """`stem` made one run's own by a tag derived from `run_id` (the RunPod job's id).

    RunPod may run a dispatch twice; with distinct keys a late run can never overwrite the
    files a finished run reported.
    """
    tag = hashlib.sha256(run_id.encode()).hexdigest()[:RUN_TAG_CHARS]
    return f"{stem}-{tag}"


def output_key(stem: str, content_type: str) -> str:
    """A generated image stored under `stem`, with the extension of its content type."""
    return stem + extension_for(content_type)


def thumbnail_key(stem: str) -> str:
    """The thumbnail of the generated image stored under `stem`."""
    return stem + _THUMBNAIL_SUFFIX


def parse(key: str) -> StorageObject | None:
    """What `key` holds, if it is a shape the platform writes; None for anything else."""
    parts = key.removeprefix(ROOT).split("/")
    if not key.startswith(ROOT) or len(parts) < 2:
        return None
    group_id, *folders, name = parts
    if not _ID.fullmatch(group_id) or not all(folders):
        return None
    if _TEMPORARY_NAME.fullmatch(name):
        job_id = folders[1] if len(folders) == 2 and folders[0] == _OUTPUTS else None
        return StorageObject(ObjectKind.TEMPORARY, group_id, job_id, name)
    if folders == [_INPUTS]:
        return _parse_upload(group_id, name)
    if len(folders) == 2 and folders[0] == _OUTPUTS and _ID.fullmatch(folders[1]):
        return _parse_output(group_id, folders[1], name)
    return None


def _parse_upload(group_id: str, name: str) -> StorageObject | None:
    upload_id, suffix = _split_name(name)
    if not _ID.fullmatch(upload_id):
        return None
    if suffix == _THUMBNAIL_SUFFIX:
        return StorageObject(ObjectKind.UPLOAD_THUMBNAIL, group_id, None, upload_id)
    if suffix in _UPLOAD_EXTENSIONS:
        return StorageObject(ObjectKind.UPLOAD, group_id, None, upload_id)
    return None


def _parse_output(group_id: str, job_id: str, name: str) -> StorageObject | None:
    stem, suffix = _split_name(name)
    match = _OUTPUT_NAME.fullmatch(stem)
    if match is None:
        return None
    if suffix == _THUMBNAIL_SUFFIX:
        return StorageObject(ObjectKind.OUTPUT_THUMBNAIL, group_id, job_id, match["id"])
    if suffix in _OUTPUT_EXTENSIONS:
        return StorageObject(ObjectKind.OUTPUT, group_id, job_id, match["id"])
    return None


def _split_name(name: str) -> tuple[str, str]:
    """A file name as (stem, suffix) at its first dot: ".thumb.webp" stays whole."""
    stem, dot, rest = name.partition(".")
    return stem, dot + rest
