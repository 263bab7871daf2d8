"""Pages for people: groups, uploads, submitting jobs, watching them, downloading the ZIP.

Plain HTML forms, no JavaScript build: every action is a service call, as in the JSON API.
A form that fails re-renders its page with the message (and the status code the API would
answer); a form that succeeds redirects (303).
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import FormData

from control_plane.access import Viewer
from control_plane.errors import DomainError, InvalidRequest, NotFound, describe_validation
from control_plane.schemas import GroupCreate, SubmitRequest, VariationCreate
from control_plane.services import groups, jobs, reruns, submissions, uploads, variations
from control_plane.web.deps import (
    SUBMISSION,
    GroupId,
    JobId,
    OutputId,
    PageNumber,
    PlatformDep,
    SessionDep,
    ViewerDep,
)
from control_plane.web.forms import chosen_files, incoming_files, read_form
from control_plane.web.present import job_public, upload_public
from shared.model_table import model_table
from shared.storage import Storage, StorageError

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
STATIC_DIR = Path(__file__).parent / "static"  # served at /static: the pages' CSS and scripts
submit_adapter: TypeAdapter[Any] = TypeAdapter(SubmitRequest)
UPLOADS_PER_PAGE = 120
GROUPS_PER_PAGE = 50
JOBS_ON_GROUP_PAGE = 200
SIGNING_PROBE = "pixelfleet-signing-check"


def page_headers(storage: Storage) -> dict[str, str]:
    """The headers of every page: scripts, styles and requests from here only (styles also
    inline as the templates write them), images from here or from where the storage signs its
    URLs, no frames, forms posting here only, and no page address sent to other sites."""
    image_sources = " ".join(["'self'", *_signed_url_origin(storage)])
    policy = (
        f"default-src 'none'; img-src {image_sources}; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return {"Content-Security-Policy": policy, "Referrer-Policy": "same-origin"}


def _signed_url_origin(storage: Storage) -> list[str]:
    try:
        signed = storage.signed_url(SIGNING_PROBE)
    except StorageError:  # the file routes serve (or redirect) meanwhile
        return []
    if signed is None:
        return []
    parts = urlsplit(signed)
    return [f"{parts.scheme}://{parts.netloc}"]


def _page(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers=request.app.state.page_headers
    )


# -- groups -------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def index(
    request: Request, session: SessionDep, viewer: ViewerDep, page: PageNumber = 1
) -> HTMLResponse:
    return _index(request, session, viewer, page)


def _index(
    request: Request,
    session: SessionDep,
    viewer: Viewer,
    page: int = 1,
    error: str | None = None,
) -> HTMLResponse:
    total, page_groups = groups.page_of_groups(session, page, GROUPS_PER_PAGE, viewer)
    counts = groups.counts_of_groups(session, [group.id for group in page_groups])
    rows = [(group, counts[group.id]) for group in page_groups]
    context = {"rows": rows, "page": page, "pages": _pages(total, GROUPS_PER_PAGE), "error": error}
    return _page(request, "index.html", context, 422 if error else 200)


@router.post("/groups", response_class=HTMLResponse)
async def create_group(request: Request, session: SessionDep, viewer: ViewerDep) -> Response:
    form = await request.form()
    try:
        body = GroupCreate(name=str(form.get("name") or ""))
    except ValidationError as exc:
        return _index(request, session, viewer, error=describe_validation(exc.errors()))
    group = await run_in_threadpool(groups.create_group, session, body.name, viewer.user_id)
    return RedirectResponse(f"/groups/{group.id}", status.HTTP_303_SEE_OTHER)


@router.get("/groups/{group_id}", response_class=HTMLResponse)
def group_page(
    group_id: GroupId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    page: PageNumber = 1,
    uploaded: int | None = None,
    duplicates: int = 0,
) -> HTMLResponse:
    notice = None if uploaded is None else _uploaded_notice(uploaded, duplicates)
    return _group(request, platform, session, viewer, group_id, page, notice=notice)


def _uploaded_notice(uploaded: int, duplicates: int, rejected: int = 0) -> str:
    parts = [f"{uploaded} image(s) uploaded"]
    if duplicates:
        parts.append(f"{duplicates} already in the group (not stored again)")
    if rejected:
        parts.append(f"{rejected} rejected")
    return ", ".join(parts)


def _group(
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: Viewer,
    group_id: str,
    page: int = 1,
    *,
    notice: str | None = None,
    error: str | None = None,
    rejected: list[Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    group = groups.get_group(session, group_id, viewer)
    counts = groups.group_counts(session, group.id)
    _, page_uploads = uploads.page_of_uploads(session, group.id, page, UPLOADS_PER_PAGE)
    group_jobs = jobs.jobs_after(
        session, JOBS_ON_GROUP_PAGE, None, jobs.JobFilters(viewer, group_id=group.id)
    ).rows
    context = {
        "group": group,
        "counts": counts,
        "uploads": [upload_public(request, platform.storage, upload) for upload in page_uploads],
        "page": page,
        "pages": _pages(counts.uploads, UPLOADS_PER_PAGE),
        "jobs": [job_public(job) for job in group_jobs],
        "models": model_table(),
        "default_model": platform.settings.default_model,
        "notice": notice,
        "error": error,
        "rejected": rejected or [],
    }
    return _page(request, "group.html", context, status_code)


@router.post("/groups/{group_id}/uploads", response_class=HTMLResponse)
async def upload(
    group_id: GroupId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> Response:
    form = await read_form(request, platform)
    try:
        files = chosen_files(incoming_files(form))
        try:
            accepted, rejected = await run_in_threadpool(
                uploads.accept,
                session,
                platform.storage,
                platform.settings,
                group_id,
                files,
                viewer,
            )
        except NotFound:
            raise
        except DomainError as exc:
            return _group(
                request,
                platform,
                session,
                viewer,
                group_id,
                error=exc.message,
                status_code=exc.status_code,
            )
    finally:
        await form.close()
    last_page = _pages(groups.group_counts(session, group_id).uploads, UPLOADS_PER_PAGE)
    if not accepted:
        refusal = uploads.nothing_accepted(rejected)
        return _group(
            request,
            platform,
            session,
            viewer,
            group_id,
            error=refusal.message,
            rejected=rejected,
            status_code=refusal.status_code,
        )
    duplicates = sum(item.duplicate for item in accepted)
    new = len(accepted) - duplicates
    if not rejected:  # post/redirect/get: reloading the page does not upload again
        seen = f"&duplicates={duplicates}" if duplicates else ""
        return RedirectResponse(
            f"/groups/{group_id}?page={last_page}&uploaded={new}{seen}", status.HTTP_303_SEE_OTHER
        )
    return _group(
        request,
        platform,
        session,
        viewer,
        group_id,
        page=last_page,
        notice=_uploaded_notice(new, duplicates, len(rejected)),
        rejected=rejected,
        status_code=status.HTTP_201_CREATED,
    )


@router.post("/groups/{group_id}/submit", response_class=HTMLResponse, dependencies=SUBMISSION)
async def submit(
    group_id: GroupId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> Response:
    form = await request.form()
    await run_in_threadpool(groups.get_group, session, group_id, viewer)
    try:
        body = submit_adapter.validate_python(
            await run_in_threadpool(_submission, session, group_id, form)
        )
        created = await run_in_threadpool(
            submissions.submit, session, platform.settings, body, viewer
        )
    except ValidationError as exc:
        message, code = describe_validation(exc.errors()), 422
    except NotFound:
        raise
    except DomainError as exc:
        message, code = exc.message, exc.status_code
    else:
        target = f"/jobs/{created[0].id}" if len(created) == 1 else f"/groups/{group_id}#jobs"
        return RedirectResponse(target, status.HTTP_303_SEE_OTHER)
    return _group(request, platform, session, viewer, group_id, error=message, status_code=code)


def _submission(session: SessionDep, group_id: str, form: FormData) -> dict[str, Any]:
    """The JSON API's submit body, from the group page's form.

    Automatic: the ticked images (all of the group's when none is ticked), one prompt.
    Semi-automatic: each image ticked or given a prompt is an item, and needs its prompt.
    """
    ticked = [str(value) for value in form.getlist("images")]
    config: dict[str, Any] = {
        key: value
        for key in ("model", "aspect_ratio", "image_size", "negative_prompt", "seed")
        if (value := str(form.get(key) or "").strip())
    }
    mode = str(form.get("mode") or "automatic")
    if mode != "semi-automatic":
        images = ticked or uploads.upload_ids_of(session, group_id)
        prompt = str(form.get("prompt") or "")
        return {
            "group_id": group_id,
            "mode": mode,
            "prompt": prompt,
            "images": images,
            "config": config,
        }
    prompts = {
        key.removeprefix("prompt_"): text
        for key, value in form.multi_items()
        if key.startswith("prompt_") and (text := str(value).strip())
    }
    chosen = list(dict.fromkeys([*ticked, *prompts]))
    missing = [image_id for image_id in chosen if image_id not in prompts]
    if missing:
        raise InvalidRequest(
            f"{len(missing)} ticked image(s) have no prompt: in semi-automatic mode every "
            "image needs its own prompt"
        )
    items = [{"images": [image_id], "prompt": prompts[image_id]} for image_id in chosen]
    for key in ("total_images", "images_per_set"):
        if value := str(form.get(key) or "").strip():
            config[key] = value
    return {"group_id": group_id, "mode": mode, "items": items, "config": config}


# -- jobs ---------------------------------------------------------------------------------


@router.post("/jobs/{job_id}/cancel")
async def cancel(job_id: JobId, session: SessionDep, viewer: ViewerDep) -> Response:
    await run_in_threadpool(jobs.cancel, session, job_id, viewer)
    return RedirectResponse(f"/jobs/{job_id}", status.HTTP_303_SEE_OTHER)


@router.post("/jobs/{job_id}/retry", dependencies=SUBMISSION)
async def retry(
    job_id: JobId, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    await run_in_threadpool(jobs.retry, session, platform.settings, job_id, viewer)
    return RedirectResponse(f"/jobs/{job_id}", status.HTTP_303_SEE_OTHER)


@router.post("/jobs/{job_id}/rerun", dependencies=SUBMISSION)
async def rerun(
    job_id: JobId, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    job = await run_in_threadpool(reruns.rerun, session, platform.settings, job_id, viewer)
    return RedirectResponse(f"/jobs/{job.id}", status.HTTP_303_SEE_OTHER)


@router.post("/outputs/{output_id}/variations", dependencies=SUBMISSION)
async def vary(
    output_id: OutputId, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    """A variation set of the image with the API's defaults (4 images, strong)."""
    job = await run_in_threadpool(
        variations.vary, session, platform.settings, output_id, VariationCreate(), viewer
    )
    return RedirectResponse(f"/jobs/{job.id}", status.HTTP_303_SEE_OTHER)


def error_page(
    request: Request, status_code: int, message: str, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    context = {"status_code": status_code, "message": message}
    headers = {**request.app.state.page_headers, **(headers or {})}
    return templates.TemplateResponse(
        request, "error.html", context, status_code=status_code, headers=headers
    )


def _pages(total: int, per_page: int) -> int:
    return max(1, -(-total // per_page))
