"""Pages for people: groups, uploads, submitting jobs, watching them, downloading the ZIP.

Plain HTML forms, no JavaScript build: every action is a service call, as in the JSON API.
A form that fails re-renders its page with the message (and the status code the API would
answer); a form that succeeds redirects (303).
"""

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from control_plane.access import Viewer
from control_plane.errors import DomainError, NotFound, describe_validation
from control_plane.schemas import Estimate, GroupCreate, VariationCreate
from control_plane.services import groups, jobs, reruns, uploads, variations
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
from control_plane.web.ui import forms
from control_plane.web.ui.pages import fragment, page_count, render, templates
from shared.model_table import model_table

router = APIRouter(include_in_schema=False)
UPLOADS_PER_PAGE = 120
GROUPS_PER_PAGE = 50
JOBS_ON_GROUP_PAGE = 200


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
    context = {
        "rows": rows,
        "page": page,
        "pages": page_count(total, GROUPS_PER_PAGE),
        "error": error,
    }
    return render(request, "index.html", context, 422 if error else 200)


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
    typed: forms.GenerateForm | None = None,
    confirm: str | None = None,
    attributes: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    context = _uploads_context(request, platform, session, viewer, group_id, page)
    group_jobs = jobs.jobs_after(
        session, JOBS_ON_GROUP_PAGE, None, jobs.JobFilters(viewer, group_id=group_id)
    ).rows
    context |= {
        "jobs": [job_public(job) for job in group_jobs],
        "models": model_table(),
        "aspect_ratios": _choices(spec.aspect_ratios for spec in model_table().values()),
        "image_sizes": _choices(spec.image_sizes for spec in model_table().values()),
        "default_model": platform.settings.default_model,
        "notice": notice,
        "error": error,
        "rejected": rejected or [],
        "typed": typed or forms.GenerateForm(),
        "confirm": confirm,
        "attributes": attributes,
        "upload_limit_mb": platform.settings.upload_max_file_bytes // 1_000_000,
    }
    return render(request, "group.html", context, status_code)


def _uploads_context(
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: Viewer,
    group_id: str,
    page: int,
) -> dict[str, Any]:
    """The group, its counts and its page `page` of uploads."""
    group = groups.get_group(session, group_id, viewer)
    counts = groups.group_counts(session, group.id)
    _, page_uploads = uploads.page_of_uploads(session, group.id, page, UPLOADS_PER_PAGE)
    return {
        "group": group,
        "counts": counts,
        "uploads": [upload_public(request, platform.storage, upload) for upload in page_uploads],
        "page": page,
        "pages": page_count(counts.uploads, UPLOADS_PER_PAGE),
        "per_page": UPLOADS_PER_PAGE,
    }


@router.get("/live/groups/{group_id}/uploads", response_class=HTMLResponse)
def uploads_fragment(
    group_id: GroupId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    page: PageNumber = 1,
) -> HTMLResponse:
    """The group page's counts and its page `page` of uploads, nothing ticked or typed (the
    script keeps what was), for showing them again once an upload is done."""
    context = _uploads_context(request, platform, session, viewer, group_id, page)
    context |= {"typed": forms.GenerateForm(), "error": None}
    return fragment(request, "_group_uploads_live.html", context, running=False)


@router.post("/groups/{group_id}/uploads", response_class=HTMLResponse)
async def upload(
    group_id: GroupId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> Response:
    form = await read_form(request, platform)
    typed_attributes = str(form.get("attributes") or "")
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
                forms.typed_attributes(typed_attributes),
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
                attributes=typed_attributes,
                status_code=exc.status_code,
            )
    finally:
        await form.close()
    last_page = page_count(groups.group_counts(session, group_id).uploads, UPLOADS_PER_PAGE)
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
    """The generate form: its jobs, or the form again, as typed, saying what is wrong or (above
    the thresholds, unconfirmed) what it will spend."""
    typed = forms.GenerateForm.read(await request.form())
    await run_in_threadpool(groups.get_group, session, group_id, viewer)
    page = _page_number(request)
    try:
        submitted = await run_in_threadpool(
            forms.submit_form, session, platform.settings, group_id, typed, viewer
        )
    except NotFound:
        raise
    except DomainError as exc:
        return _group(
            request, platform, session, viewer, group_id, page,
            error=exc.message, typed=typed, status_code=exc.status_code,
        )  # fmt: skip
    if isinstance(submitted, Estimate):
        typed.confirmed = True
        spent = forms.spending(submitted)
        confirm = f"This will generate {spent}. Press Generate again to go ahead."
        return _group(
            request, platform, session, viewer, group_id, page, typed=typed, confirm=confirm
        )
    target = f"/jobs/{submitted[0].id}" if len(submitted) == 1 else f"/groups/{group_id}#jobs"
    return RedirectResponse(target, status.HTTP_303_SEE_OTHER)


def _page_number(request: Request) -> int:
    """The page of uploads a form was posted from (query `page`), 1 if none or not one."""
    text = request.query_params.get("page", "")
    return int(text) if text.isdigit() and int(text) > 0 else 1


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


def _choices(lists: Iterable[list[str]]) -> list[str]:
    """Every value of the lists, once each, in the order first seen."""
    return list(dict.fromkeys(value for values in lists for value in values))
