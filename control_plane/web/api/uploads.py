from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool

from control_plane.errors import InvalidRequest
from control_plane.schemas import UploadPatch, UploadPublic, UploadResult
from control_plane.services import uploads
from control_plane.web.deps import PlatformDep, SessionDep, UploadId, ViewerDep, group_id_of
from control_plane.web.forms import incoming_files, read_form
from control_plane.web.present import upload_public

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
                        "attributes": {
                            "type": "string",
                            "description": "a JSON object of strings, numbers and booleans "
                            '(e.g. {"gender": "female"}) for every new file',
                        },
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
    request: Request, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> UploadResult:
    """Upload many images at once (field `files`, repeated) into a group (field `group_id`).

    A file the group already has (same sha256) is answered with its upload, marked
    `duplicate`, and not stored again. Field `attributes` (a JSON object) is given to every
    new file; a duplicate keeps its own (change them with PATCH)."""
    form = await read_form(request, platform)
    try:
        group_id = form.get("group_id")
        if not isinstance(group_id, str) or not group_id:
            raise InvalidRequest("form field group_id is required")
        group_id_of(group_id)
        attributes = form.get("attributes")
        if attributes is not None and not isinstance(attributes, str):
            raise InvalidRequest("form field attributes must be a JSON object, not a file")
        parsed = uploads.parse_attributes(attributes or "")
        accepted, rejected = await run_in_threadpool(
            uploads.accept,
            session,
            platform.storage,
            platform.settings,
            group_id,
            incoming_files(form),
            viewer,
            parsed,
        )
    finally:
        await form.close()
    if not accepted:
        raise uploads.nothing_accepted(rejected)
    images = [
        upload_public(request, platform.storage, item.upload, duplicate=item.duplicate)
        for item in accepted
    ]
    return UploadResult(images=images, rejected=rejected)


@router.patch("/{upload_id}")
def update_upload(
    upload_id: UploadId,
    body: UploadPatch,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> UploadPublic:
    """Change an upload's attributes: merged in (RFC 7396), a key sent as null is deleted,
    `"attributes": null` deletes them all."""
    upload = uploads.update_attributes(session, upload_id, body, viewer)
    return upload_public(request, platform.storage, upload)
