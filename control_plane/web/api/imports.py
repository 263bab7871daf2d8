from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from control_plane.errors import InvalidRequest
from control_plane.schemas import Estimate, SubmitResponse
from control_plane.services import estimates, imports, pricing
from control_plane.web.deps import SUBMISSION, PlatformDep, SessionDep, ViewerDep, group_id_of
from control_plane.web.forms import read_form
from control_plane.web.limits import IMPORT_MAX_BODY_BYTES
from control_plane.web.present import job_public

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

IMPORT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["group_id", "file"],
                    "properties": {
                        "group_id": {"type": "string"},
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV with a header row, or JSONL (an object a line)",
                        },
                        "template": {
                            "type": "string",
                            "description": "Jinja2 template of each row's prompt",
                        },
                        "config": {
                            "type": "string",
                            "description": "JSON: model, aspect_ratio, image_size, seed, "
                            "negative_prompt, outputs_per_image",
                        },
                        "webhook": {
                            "type": "string",
                            "description": 'JSON: {"url": …, "events": [...]}, or just the URL',
                        },
                    },
                }
            }
        },
    }
}
TEXT_FIELDS = ("template", "config", "webhook")  # a field, or a file part (curl -F template=@t.j2)


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=IMPORT_DOC,
    dependencies=SUBMISSION,
)
async def import_rows(
    request: Request, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> SubmitResponse:
    """One job from a CSV or JSONL file, a prompt per row; every row is checked first."""
    upload = await _import_file(request, platform)
    job = await run_in_threadpool(imports.import_file, session, platform.settings, upload, viewer)
    return SubmitResponse(
        batch_id=job.batch_id, jobs=[job_public(job)], estimate=pricing.of_jobs([job])
    )


@router.post("/import/estimate", openapi_extra=IMPORT_DOC)
async def estimate_import(
    request: Request, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> Estimate:
    """What `POST /api/jobs/import` with the same form would cost, without writing or
    sending anything; refused as the import would be."""
    upload = await _import_file(request, platform)
    return await run_in_threadpool(
        estimates.estimate_import, session, platform.settings, upload, viewer
    )


async def _import_file(request: Request, platform: PlatformDep) -> imports.ImportFile:
    """The import's form: its file, template and config."""
    form = await read_form(
        request, platform, max_file_bytes=IMPORT_MAX_BODY_BYTES, max_files=1 + len(TEXT_FIELDS)
    )
    try:
        group_id = form.get("group_id")
        if not isinstance(group_id, str) or not group_id:
            raise InvalidRequest("form field group_id is required")
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidRequest("form field file is required: a CSV or JSONL file of rows")
        return imports.ImportFile(
            group_id=group_id_of(group_id),
            filename=file.filename or "",
            data=await file.read(),
            template=await _text(form, "template"),
            config=await _text(form, "config"),
            webhook=await _text(form, "webhook"),
        )
    finally:
        await form.close()


async def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        data = await value.read()
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"form field {name} is not UTF-8 text") from exc
    return value
