"""Image files by id. Local disk: the file itself. GCS: a redirect to a signed URL, so no
image body passes through the control plane; only the emulator's anonymous client, which
cannot sign, has its objects streamed through here (development and tests)."""

from fastapi import APIRouter, status
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from control_plane.errors import NotFound, Unavailable
from control_plane.services.jobs import get_output
from control_plane.services.uploads import get_upload
from control_plane.web.deps import OutputId, PlatformDep, SessionDep, UploadId, ViewerDep
from shared.storage import StorageError

router = APIRouter(prefix="/api", tags=["files"])
FILE_HEADERS = {
    "Cache-Control": "private, max-age=31536000, immutable",
    # whatever a file holds, a browser shows it as the image it claims to be, never as a
    # page of this origin that runs scripts
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox",
}


def _serve(platform: PlatformDep, key: str | None, media_type: str | None) -> Response:
    storage = platform.storage
    if key is None or not storage.exists(key):
        raise NotFound("file not found")
    path = storage.local_path(key)
    if path is not None:
        return FileResponse(path, media_type=media_type, headers=FILE_HEADERS)
    try:
        signed = storage.signed_url(key)
    except StorageError as exc:
        raise Unavailable(f"could not sign a URL for the file now: {exc}") from exc
    if signed is not None:
        return RedirectResponse(signed, status.HTTP_302_FOUND)
    return StreamingResponse(storage.iter_bytes(key), media_type=media_type, headers=FILE_HEADERS)


@router.get("/uploads/{upload_id}/file", name="upload_file")
def upload_file(
    upload_id: UploadId, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    upload = get_upload(session, upload_id, viewer)
    return _serve(platform, upload.storage_key, upload.content_type)


@router.get("/uploads/{upload_id}/thumbnail", name="upload_thumbnail")
def upload_thumbnail(
    upload_id: UploadId, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    return _serve(platform, get_upload(session, upload_id, viewer).thumbnail_key, "image/webp")


@router.get("/outputs/{output_id}/file", name="output_file")
def output_file(
    output_id: OutputId, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    output = get_output(session, output_id, viewer)
    return _serve(platform, output.storage_key, output.content_type)


@router.get("/outputs/{output_id}/thumbnail", name="output_thumbnail")
def output_thumbnail(
    output_id: OutputId, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    return _serve(platform, get_output(session, output_id, viewer).thumbnail_key, "image/webp")
