from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlmodel import col, select

from control_plane.api.deps import PlatformDep, SessionDep
from control_plane.api.present import file_url
from control_plane.errors import NotFound
from control_plane.models import Group, Output, OutputStatus
from control_plane.schemas import DownloadItem
from control_plane.services import archive
from control_plane.services.uploads import safe_stem

router = APIRouter(prefix="/api/download", tags=["download"])


def _group(session: SessionDep, group_id: str) -> Group:
    group = session.get(Group, group_id)
    if group is None:
        raise NotFound(f"group {group_id} does not exist")
    return group


@router.get("/{group_id}")
def list_downloads(
    group_id: str, request: Request, platform: PlatformDep, session: SessionDep
) -> list[DownloadItem]:
    """The group's finished images with URLs."""
    _group(session, group_id)
    outputs = session.exec(
        select(Output)
        .where(Output.group_id == group_id, Output.status == OutputStatus.SUCCEEDED)
        .order_by(col(Output.job_id), col(Output.position))
    ).all()
    storage = platform.storage
    return [
        DownloadItem(
            **output.model_dump(),
            url=file_url(request, storage, "output_file", output.storage_key, output_id=output.id)
            or "",
            thumbnail_url=file_url(
                request, storage, "output_thumbnail", output.thumbnail_key, output_id=output.id
            ),
        )
        for output in outputs
    ]


@router.get("/{group_id}/zip", response_class=StreamingResponse)
async def download_zip(
    group_id: str, platform: PlatformDep, session: SessionDep
) -> StreamingResponse:
    """The group as a ZIP (streamed): every finished image plus manifest.jsonl."""
    group = await run_in_threadpool(_group, session, group_id)
    manifest, entries = await run_in_threadpool(archive.plan, session, group_id)
    stream = archive.stream(platform.storage, manifest, entries)
    filename = f"{safe_stem(group.name + '.x') or 'group'}-{group.id}.zip"
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Content-Length": str(len(stream)),
    }
    return StreamingResponse(_closing(stream), media_type="application/zip", headers=headers)


async def _closing(stream: archive.Archive) -> AsyncIterator[bytes]:
    """The ZIP's chunks, read in the thread pool; however the response ends (finished, or
    cancelled because the client went away), the storage read-ahead is stopped."""
    chunks = iter(stream.zip)
    try:
        while (chunk := await run_in_threadpool(next, chunks, None)) is not None:
            yield chunk
    finally:
        stream.close()
