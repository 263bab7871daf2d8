"""Reading multipart forms, for both front ends."""

from collections.abc import Sequence

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from control_plane.errors import InvalidRequest
from control_plane.platform import Platform
from control_plane.services.uploads import IncomingFile


async def read_form(request: Request, platform: Platform) -> FormData:
    """The multipart form, within the upload limits; a 422 that says why if unreadable."""
    try:
        return await request.form(max_files=platform.settings.upload_max_files, max_fields=100)
    except HTTPException as exc:  # Starlette's 400 for a multipart body it cannot parse
        raise InvalidRequest(f"could not read the multipart body: {exc.detail}") from exc


def incoming_files(form: FormData, field: str = "files") -> list[IncomingFile]:
    """The files of `field`, as the upload service takes them."""
    return [
        IncomingFile(item.filename or "", item.size or 0, item.file)
        for item in form.getlist(field)
        if isinstance(item, UploadFile)
    ]


def chosen_files(files: Sequence[IncomingFile]) -> list[IncomingFile]:
    """Without the empty part a browser sends when no file was chosen."""
    return [incoming for incoming in files if incoming.filename or incoming.size]
