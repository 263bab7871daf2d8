import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from control_plane.schemas import DownloadItem
from control_plane.services import archive, groups
from control_plane.services.uploads import safe_stem
from control_plane.web.deps import GroupId, PlatformDep, SessionDep
from control_plane.web.present import download_item

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/download", tags=["download"])


@router.get("/{group_id}")
def list_downloads(
    group_id: GroupId, request: Request, platform: PlatformDep, session: SessionDep
) -> list[DownloadItem]:
    """The group's finished images with URLs."""
    group = groups.get_group(session, group_id)
    return [
        download_item(request, platform.storage, output)
        for output in archive.finished_outputs(session, group.id)
    ]


@router.get("/{group_id}/zip", response_class=StreamingResponse)
async def download_zip(
    group_id: GroupId, platform: PlatformDep, session: SessionDep
) -> StreamingResponse:
    """The group as a ZIP (streamed): every finished image plus manifest.jsonl."""
    group = await run_in_threadpool(groups.get_group, session, group_id)
    manifest, entries = await run_in_threadpool(archive.plan, session, platform.storage, group.id)
    stream = archive.stream(platform.storage, manifest, entries)
    filename = f"{safe_stem(group.name + '.x') or 'group'}-{group.id}.zip"
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Content-Length": str(len(stream)),
    }
    return StreamingResponse(
        _closing(stream, group.id), media_type="application/zip", headers=headers
    )


async def _closing(stream: archive.Archive, group_id: str) -> AsyncIterator[bytes]:
    """The ZIP's chunks, read in the thread pool; however the response ends (finished, or
    cancelled because the client went away), the storage read-ahead is stopped.

    An object that changed after planning is logged and re-raised: the server then cuts the
    connection short of the promised Content-Length, so the client sees a failed download.
    """
    chunks = iter(stream.zip)
    try:
        while (chunk := await run_in_threadpool(next, chunks, None)) is not None:
            yield chunk
    except archive.ArchiveAborted as exc:
        log.error("ZIP of group %s aborted mid-download: %s", group_id, exc)
        raise
    finally:
        stream.close()
