from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool

from control_plane.schemas import Page, PersonaBatch, PersonaCreate, PersonaDetail, PersonaPublic
from control_plane.services import personas
from control_plane.web.deps import (
    SUBMISSION,
    PageLimit,
    PageNumber,
    PersonaId,
    PlatformDep,
    SessionDep,
    ViewerDep,
    group_id_of,
)
from control_plane.web.present import persona_detail, persona_public

router = APIRouter(prefix="/api/personas", tags=["personas"])


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=SUBMISSION)
async def create_personas(
    body: PersonaCreate, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> PersonaBatch:
    """Create `count` personas: each one's data, then a base portrait, then 4 variations."""
    group_id_of(body.group_id)
    batch_id, created, estimate = await run_in_threadpool(
        personas.create_personas, session, platform.settings, body, viewer
    )
    return PersonaBatch(
        batch_id=batch_id, personas=[persona_public(p) for p in created], estimate=estimate
    )


@router.get("")
def list_personas(
    session: SessionDep,
    viewer: ViewerDep,
    batch_id: str | None = None,
    group_id: str | None = None,
    page: PageNumber = 1,
    limit: PageLimit = 20,
) -> Page[PersonaPublic]:
    """The viewer's personas, oldest first, filtered by batch and group."""
    total, rows = personas.page_of_personas(
        session, page, limit, viewer, batch_id=batch_id, group_id=group_id
    )
    data = [persona_public(persona) for persona in rows]
    return Page(data=data, total=total, page=page, limit=limit)


@router.get("/{persona_id}")
def get_persona(
    persona_id: PersonaId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> PersonaDetail:
    """A persona: its data, status, stage, error log and images (base and variations)."""
    persona = personas.get_persona(session, persona_id, viewer)
    base, variations = personas.images_of(session, persona)
    return persona_detail(request, platform.storage, persona, base, variations)
