from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from control_plane.api.deps import PlatformDep, SessionDep
from control_plane.api.present import upload_public
from control_plane.errors import InvalidRequest, NotFound, PayloadTooLarge
from control_plane.models import Group, Upload
from control_plane.schemas import UploadRejected, UploadResult
from control_plane.services import uploads

router = APIRouter(prefix="/api/uploads", tags=["uploads"])

MULTIPART_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["group_id", "files"],
                    "properties": {
                        "group_id": {"type": "string"},
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=MULTIPART_DOC,
    responses={413: {"description": "every file was over the size limit"}},
)
async def upload_images(
    request: Request, platform: PlatformDep, session: SessionDep
) -> UploadResult:
    """Upload many images at once (field `files`, repeated) into a group (field `group_id`)."""
    settings = platform.settings
    try:
        form = await request.form(max_files=settings.upload_max_files, max_fields=100)
    except MultiPartException as exc:
        raise InvalidRequest(f"could not read the multipart body: {exc.message}") from exc
    try:
        group_id = form.get("group_id")
        if not isinstance(group_id, str) or not group_id:
            raise InvalidRequest("form field group_id is required")
        if await run_in_threadpool(session.get, Group, group_id) is None:
            raise NotFound(f"group {group_id} does not exist")
        files = [item for item in form.getlist("files") if isinstance(item, UploadFile)]
        if not files:
            raise InvalidRequest("no files: send one or more images in the form field `files`")
        stored, rejected = await _store_all(platform, group_id, files)
    finally:
        await form.close()
    if not stored:
        too_large = all(r.reason.startswith("file is") for r in rejected)
        raise (PayloadTooLarge if too_large else InvalidRequest)(
            "no image was accepted: "
            + "; ".join(f"{r.filename}: {r.reason}" for r in rejected[:20])
        )
    await run_in_threadpool(uploads.record, session, platform.storage, stored)
    return UploadResult(
        images=[upload_public(request, platform.storage, upload) for upload in stored],
        rejected=rejected,
    )


async def _store_all(
    platform: PlatformDep, group_id: str, files: list[UploadFile]
) -> tuple[list[Upload], list[UploadRejected]]:
    stored: list[Upload] = []
    rejected: list[UploadRejected] = []
    try:
        for upload_file in files:
            incoming = uploads.IncomingFile(
                upload_file.filename or "", upload_file.size or 0, upload_file.file
            )
            outcome = await run_in_threadpool(
                uploads.store_file, platform.storage, platform.settings, group_id, incoming
            )
            (stored if isinstance(outcome, Upload) else rejected).append(outcome)  # type: ignore[arg-type]
    except BaseException:
        await run_in_threadpool(uploads.remove_objects, platform.storage, stored)
        raise
    return stored, rejected
