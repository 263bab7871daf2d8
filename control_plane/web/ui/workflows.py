"""Pages for the workflows pixelfleet grew out of: prompt catalogs, presets over reference
pools, characters and their packs, persona pipelines and their stages.

Each page reads what the JSON API's routes read and shows it through the same `present`
functions; each form makes the API's request body and calls the same service. A form that
fails shows its page again with the message and what was typed; one that succeeds goes to
what it made (303).
"""

from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from control_plane.access import Viewer
from control_plane.errors import DomainError, NotFound, describe_validation
from control_plane.models import PersonaStatus
from control_plane.schemas import PackCreate, PersonaCreate, PresetExamplesRequest
from control_plane.services import catalogs, characters, groups, personas, presets
from control_plane.web.deps import (
    CatalogId,
    CharacterId,
    PageNumber,
    PersonaId,
    PlatformDep,
    PresetId,
    SessionDep,
    ViewerDep,
)
from control_plane.web.present import (
    character_detail,
    character_public,
    persona_detail,
    persona_public,
    preset_example_public,
    preset_public,
)
from control_plane.web.ui.pages import fragment, page_count, render

router = APIRouter(include_in_schema=False)
LISTED = 50  # of each kind on the overview
PERSONA_ENDED = (PersonaStatus.COMPLETED, PersonaStatus.FAILED)
GALLERY_PAGE = 24
GROUP_CHOICES = 200  # groups offered in the forms' group lists, newest first


class Failure(BaseModel):
    """A form that did not go through: the message, its status, and what was typed."""

    message: str
    status_code: int
    typed: dict[str, str]


def _typed(form: FormData) -> dict[str, str]:
    return {key: str(value) for key, value in form.items() if isinstance(value, str)}


async def _attempt(form: FormData, make: Any, *args: Any) -> tuple[Any, Failure | None]:
    """Run `make(*args)` in the thread pool; a refusal becomes a `Failure` (missing pages
    stay 404s)."""
    try:
        return await run_in_threadpool(make, *args), None
    except ValidationError as exc:
        message, code = describe_validation(exc.errors()), 422
    except NotFound:
        raise
    except DomainError as exc:
        message, code = exc.message, exc.status_code
    return None, Failure(message=message, status_code=code, typed=_typed(form))


def _render(
    request: Request, name: str, context: dict[str, Any], failure: Failure | None
) -> HTMLResponse:
    """The page, with the refused form's message and what was typed when there is one."""
    if failure is None:
        return render(request, name, {**context, "typed": {}})
    shown = {**context, "error": failure.message, "typed": failure.typed}
    return render(request, name, shown, failure.status_code)


def _group_choices(session: SessionDep, viewer: Viewer) -> list[Any]:
    return list(groups.page_of_groups(session, 1, GROUP_CHOICES, viewer)[1])


def _optional(form: FormData, key: str) -> str | None:
    return str(form.get(key) or "").strip() or None


# -- the overview ---------------------------------------------------------------------------


@router.get("/workflows", response_class=HTMLResponse)
def workflows(request: Request, session: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    return _workflows(request, session, viewer)


def _workflows(
    request: Request, session: SessionDep, viewer: Viewer, failure: Failure | None = None
) -> HTMLResponse:
    catalog_total, catalog_rows = catalogs.page_of_catalogs(session, 1, LISTED, viewer)
    preset_total, preset_rows = presets.page_of_presets(session, 1, LISTED, viewer)
    character_total, character_rows = characters.page_of_characters(session, 1, LISTED, viewer)
    context = {
        "catalogs": (catalog_total, catalog_rows),
        "presets": (preset_total, [_preset(session, preset) for preset in preset_rows]),
        "characters": (character_total, [character_public(c) for c in character_rows]),
        "groups": _group_choices(session, viewer),
        **_personas_context(session, viewer),
    }
    return _render(request, "workflows.html", context, failure)


@router.get("/live/personas", response_class=HTMLResponse)
def personas_fragment(request: Request, session: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    """The overview's personas (their count and table), for live.js while any is being made."""
    context = _personas_context(session, viewer)
    return fragment(
        request, "_personas_fragment.html", context, running=context["personas_running"]
    )


def _personas_context(session: SessionDep, viewer: Viewer) -> dict[str, Any]:
    total, rows = personas.page_of_personas(session, 1, LISTED, viewer)
    return {
        "personas": (total, [persona_public(persona) for persona in rows]),
        "personas_running": any(persona.status not in PERSONA_ENDED for persona in rows),
    }


@router.post("/personas", response_class=HTMLResponse)
async def create_personas(
    request: Request, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    form = await request.form()

    def create() -> str:
        body = PersonaCreate.model_validate(
            {
                "group_id": str(form.get("group_id") or ""),
                "count": form.get("count") or 1,
                "brief": _optional(form, "brief"),
            }
        )
        batch_id, _, _ = personas.create_personas(session, platform.settings, body, viewer)
        return batch_id

    batch_id, failure = await _attempt(form, create)
    if failure:
        return _workflows(request, session, viewer, failure)
    return RedirectResponse(f"/workflows?batch={batch_id}#personas", status.HTTP_303_SEE_OTHER)


# -- catalogs -------------------------------------------------------------------------------


@router.get("/catalogs/{catalog_id}", response_class=HTMLResponse)
def catalog_page(
    catalog_id: CatalogId, request: Request, session: SessionDep, viewer: ViewerDep
) -> HTMLResponse:
    catalog = catalogs.catalog_detail(catalogs.get_catalog(session, catalog_id, viewer))
    return render(request, "catalog.html", {"catalog": catalog})


# -- presets --------------------------------------------------------------------------------


def _preset(session: SessionDep, preset: Any) -> Any:
    usage = presets.usage_counts(session, preset.id)
    return preset_public(preset, usage, presets.example_count(session, preset.id))


@router.get("/presets/{preset_id}", response_class=HTMLResponse)
def preset_page(
    preset_id: PresetId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
    page: PageNumber = 1,
) -> HTMLResponse:
    return _preset_page(request, platform, session, viewer, preset_id, page)


def _preset_page(
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: Viewer,
    preset_id: str,
    page: int = 1,
    failure: Failure | None = None,
) -> HTMLResponse:
    preset = presets.get_preset(session, preset_id, viewer)
    total, rows = presets.page_of_gallery(session, preset.id, page, GALLERY_PAGE)
    context = {
        "preset": _preset(session, preset),
        "gallery": [preset_example_public(request, platform.storage, *row) for row in rows],
        "page": page,
        "pages": page_count(total, GALLERY_PAGE),
        "groups": _group_choices(session, viewer),
    }
    return _render(request, "preset.html", context, failure)


@router.post("/presets/{preset_id}/examples", response_class=HTMLResponse)
async def request_examples(
    preset_id: PresetId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> Response:
    form = await request.form()

    def make() -> str:
        body = PresetExamplesRequest.model_validate(
            {
                "pool_group_id": str(form.get("pool_group_id") or ""),
                "count": form.get("count") or 20,
                "balance_by": _optional(form, "balance_by"),
                "seed": _optional(form, "seed"),
            }
        )
        job, _ = presets.request_examples(session, platform.settings, preset_id, body, viewer)
        return str(job.id)

    job_id, failure = await _attempt(form, make)
    if failure:
        return _preset_page(request, platform, session, viewer, preset_id, failure=failure)
    return RedirectResponse(f"/jobs/{job_id}", status.HTTP_303_SEE_OTHER)


# -- characters -----------------------------------------------------------------------------


@router.get("/characters/{character_id}", response_class=HTMLResponse)
def character_page(
    character_id: CharacterId, request: Request, session: SessionDep, viewer: ViewerDep
) -> HTMLResponse:
    return _character_page(request, session, viewer, character_id)


def _character_page(
    request: Request,
    session: SessionDep,
    viewer: Viewer,
    character_id: str,
    failure: Failure | None = None,
) -> HTMLResponse:
    character = characters.get_character(session, character_id, viewer)
    context = {
        "character": character_detail(character, characters.packs_of(session, character.id)),
    }
    return _render(request, "character.html", context, failure)


@router.post("/characters/{character_id}/packs", response_class=HTMLResponse)
async def create_pack(
    character_id: CharacterId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> Response:
    form = await request.form()

    def make() -> str:
        scenes = [line.strip() for line in str(form.get("scenes") or "").splitlines()]
        body = PackCreate.model_validate(
            {"size": form.get("size") or 8, "scenes": [s for s in scenes if s] or None}
        )
        job = characters.create_pack(session, platform.settings, character_id, body, viewer)
        return str(job.id)

    job_id, failure = await _attempt(form, make)
    if failure:
        return _character_page(request, session, viewer, character_id, failure)
    return RedirectResponse(f"/jobs/{job_id}", status.HTTP_303_SEE_OTHER)


# -- personas -------------------------------------------------------------------------------


@router.get("/personas/{persona_id}", response_class=HTMLResponse)
def persona_page(
    persona_id: PersonaId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> HTMLResponse:
    persona = personas.get_persona(session, persona_id, viewer)
    base, variations = personas.images_of(session, persona)
    detail = persona_detail(request, platform.storage, persona, base, variations)
    return render(request, "persona.html", {"persona": detail})
