"""Image bytes for the local-disk backend (GCS answers with signed URLs instead)."""

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from control_plane.api.deps import PlatformDep, SessionDep
from control_plane.errors import NotFound
from control_plane.models import Output, Upload

router = APIRouter(prefix="/api", tags=["files"])
CACHE = {"Cache-Control": "private, max-age=31536000, immutable"}


def _serve(platform: PlatformDep, key: str | None, media_type: str | None) -> Response:
    if key is None or not platform.storage.exists(key):
        raise NotFound("file not found")
    path = platform.storage.local_path(key)
    if path is not None:
        return FileResponse(path, media_type=media_type, headers=CACHE)
    return Response(platform.storage.get_bytes(key), media_type=media_type, headers=CACHE)


def _upload(session: SessionDep, upload_id: str) -> Upload:
    upload = session.get(Upload, upload_id)
    if upload is None:
        raise NotFound(f"upload {upload_id} does not exist")
    return upload


def _output(session: SessionDep, output_id: str) -> Output:
    output = session.get(Output, output_id)
    if output is None:
        raise NotFound(f"image {output_id} does not exist")
    return output


@router.get("/uploads/{upload_id}/file", name="upload_file")
def upload_file(upload_id: str, platform: PlatformDep, session: SessionDep) -> Response:
    upload = _upload(session, upload_id)
    return _serve(platform, upload.storage_key, upload.content_type)


@router.get("/uploads/{upload_id}/thumbnail", name="upload_thumbnail")
def upload_thumbnail(upload_id: str, platform: PlatformDep, session: SessionDep) -> Response:
    return _serve(platform, _upload(session, upload_id).thumbnail_key, "image/webp")


@router.get("/outputs/{output_id}/file", name="output_file")
def output_file(output_id: str, platform: PlatformDep, session: SessionDep) -> Response:
    output = _output(session, output_id)
    return _serve(platform, output.storage_key, output.content_type)


@router.get("/outputs/{output_id}/thumbnail", name="output_thumbnail")
def output_thumbnail(output_id: str, platform: PlatformDep, session: SessionDep) -> Response:
    return _serve(platform, _output(session, output_id).thumbnail_key, "image/webp")
