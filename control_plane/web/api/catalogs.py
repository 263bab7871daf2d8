from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from control_plane.errors import InvalidRequest, PayloadTooLarge
from control_plane.platform import Platform
from control_plane.schemas import CatalogCreate, CatalogDetail, CatalogPublic, Page
from control_plane.services import catalogs
from control_plane.web.deps import (
    CatalogId,
    PageLimit,
    PageNumber,
    PlatformDep,
    SessionDep,
    ViewerDep,
)
from control_plane.web.forms import read_form

router = APIRouter(prefix="/api/catalogs", tags=["catalogs"])

# Inline, its entries by reference: CatalogPrompt is among the components (CatalogDetail's).
CATALOG_SCHEMA = CatalogCreate.model_json_schema(ref_template="#/components/schemas/{model}")
del CATALOG_SCHEMA["$defs"]
BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": CATALOG_SCHEMA},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


@router.post("", status_code=status.HTTP_201_CREATED, openapi_extra=BODY_DOC)
async def create_catalog(
    request: Request, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> CatalogPublic:
    """Create a catalog from a JSON body, or from a JSON file in the multipart field `file`."""
    body = await _catalog_body(request, platform)
    catalog = await run_in_threadpool(catalogs.create_catalog, session, body, viewer)
    return catalogs.catalog_public(catalog)


async def _catalog_body(request: Request, platform: Platform) -> CatalogCreate:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raw = await request.body()
        return await run_in_threadpool(catalogs.parse_catalog_json, raw, "the request body")
    form = await read_form(request, platform)
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidRequest("form field file is required: the catalog as a JSON file")
        limit = platform.settings.upload_max_file_bytes
        if (file.size or 0) > limit:
            raise PayloadTooLarge(f"the catalog file is over the limit of {limit:,} bytes")
        raw = await file.read()
    finally:
        await form.close()
    source = f"the file {file.filename!r}" if file.filename else "the file"
    return await run_in_threadpool(catalogs.parse_catalog_json, raw, source)


@router.get("")
def list_catalogs(
    session: SessionDep, viewer: ViewerDep, page: PageNumber = 1, limit: PageLimit = 20
) -> Page[CatalogPublic]:
    """The viewer's catalogs, newest first, with their tags and prompts per tag (not the
    prompts)."""
    total, rows = catalogs.page_of_catalogs(session, page, limit, viewer)
    return Page(data=rows, total=total, page=page, limit=limit)


@router.get("/{catalog_id}")
def get_catalog(catalog_id: CatalogId, session: SessionDep, viewer: ViewerDep) -> CatalogDetail:
    """A catalog with its prompts."""
    return catalogs.catalog_detail(catalogs.get_catalog(session, catalog_id, viewer))


@router.delete("/{catalog_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_catalog(catalog_id: CatalogId, session: SessionDep, viewer: ViewerDep) -> None:
    """Delete a catalog; jobs made from it keep their images and prompts."""
    catalogs.delete_catalog(session, catalog_id, viewer)
