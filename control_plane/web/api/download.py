import logging
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from control_plane.errors import InvalidRequest
from control_plane.platform import Platform
from control_plane.schemas import DownloadItem
from control_plane.services import archive, groups
from control_plane.services.uploads import safe_name
from control_plane.web.deps import GroupId, PlatformDep, SessionDep, ViewerDep
from control_plane.web.present import download_item

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/download", tags=["download"])
NDJSON = "application/x-ndjson"


@router.get(
    "/{group_id}",
    response_model=list[DownloadItem],
    responses={200: {"content": {NDJSON: {}}}},
)
def list_downloads(
    group_id: GroupId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> StreamingResponse:
    """The group's finished images with URLs, by job and position, streamed: a JSON array,
    or JSON lines (one image a line) with `Accept: application/x-ndjson`."""
    group = groups.get_group(session, group_id, viewer)
    batches = _item_batches(request, platform, group.id)
    if NDJSON in request.headers.get("accept", ""):
        lines = ("".join(item + "\n" for item in batch) for batch in batches)
        return StreamingResponse(lines, media_type=NDJSON)
    return StreamingResponse(_json_array(batches), media_type="application/json")


def _item_batches(request: Request, platform: Platform, group_id: str) -> Iterator[list[str]]:
    """The items in JSON, a batch of images at a time (one chunk of the answer each)."""
    for batch in archive.finished_outputs(platform.session, group_id):
        yield [
            download_item(request, platform.storage, output).model_dump_json() for output in batch
        ]


def _json_array(batches: Iterator[list[str]]) -> Iterator[str]:
    yield "["
    for index, batch in enumerate(batches):
        yield ("," if index else "") + ",".join(batch)
    yield "]"


ZIP_PARAMETERS = ("job_id", "status", "include")
JobFilter = Annotated[
    list[str] | None,
    Query(description="only these jobs of the group (repeat it, or separate ids with commas)"),
]
StatusFilter = Annotated[
    list[str] | None,
    Query(description="images of these statuses: succeeded (default), failed, blocked, all"),
]
Include = Annotated[
    list[str] | None,
    Query(description="inputs: also the reference images, under inputs/"),
]


@router.get("/{group_id}/zip", response_class=StreamingResponse)
async def download_zip(
    group_id: GroupId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    job_id: JobFilter = None,
    status: StatusFilter = None,
    include: Include = None,
) -> StreamingResponse:
    """The group as a ZIP (streamed): the selected images, manifest.jsonl (every selected
    image) and metadata.jsonl (Hugging Face imagefolder), with the reference images under
    inputs/ when asked."""
    _refuse_unknown_parameters(request)
    group = await run_in_threadpool(groups.get_group, session, group_id, viewer)
    chosen = await run_in_threadpool(
        archive.selection, session, group.id, job_id or [], status or [], include or []
    )
    planned = await run_in_threadpool(archive.plan, session, platform.storage, group.id, chosen)
    stream = archive.stream(platform.storage, planned)
    filename = f"{safe_name(group.name) or 'group'}-{group.id}.zip"
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Content-Length": str(len(stream)),
    }
    return StreamingResponse(
        _closing(stream, group.id), media_type="application/zip", headers=headers
    )


def _refuse_unknown_parameters(request: Request) -> None:
    """A misspelt filter would otherwise download the whole group without a word."""
    unknown = sorted(set(request.query_params) - set(ZIP_PARAMETERS))
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter {', '.join(repr(name[:40]) for name in unknown[:10])}; "
            f"the ZIP takes: {', '.join(ZIP_PARAMETERS)}"
        )


async def _closing(stream: archive.Archive, group_id: str) -> AsyncIterator[bytes]:
    """The ZIP's chunks, read in the thread pool; however the response ends (finished, or
    cancelled because the client went away), the storage read-ahead is stopped.

    An object that changed after planning is logged and re-raised: the server then cuts the
    connection short of the promised Content-Length, so the client sees a failed download.
    """
    chunks = stream.blocks()
    try:
        while (chunk := await run_in_threadpool(next, chunks, None)) is not None:
            yield chunk
    except archive.ArchiveAborted as exc:
        log.error("ZIP of group %s aborted mid-download: %s", group_id, exc)
        raise
    finally:
        stream.close()
