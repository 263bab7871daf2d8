from fastapi import APIRouter, Request, status
from starlette.datastructures import UploadFile

from control_plane.api import actions
from control_plane.api.deps import PlatformDep, SessionDep
from control_plane.api.present import upload_public
from control_plane.errors import InvalidRequest
from control_plane.schemas import UploadResult

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
    form = await actions.read_form(request, platform)
    try:
        group_id = form.get("group_id")
        if not isinstance(group_id, str) or not group_id:
            raise InvalidRequest("form field group_id is required")
        files = [item for item in form.getlist("files") if isinstance(item, UploadFile)]
        stored, rejected = await actions.accept_uploads(platform, session, group_id, files)
    finally:
        await form.close()
    if not stored:
        raise actions.nothing_accepted(rejected)
    return UploadResult(
        images=[upload_public(request, platform.storage, upload) for upload in stored],
        rejected=rejected,
    )
