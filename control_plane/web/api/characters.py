from fastapi import APIRouter, status
from fastapi.concurrency import run_in_threadpool

from control_plane.schemas import (
    CharacterCreate,
    CharacterDetail,
    CharacterPublic,
    PackCreate,
    Page,
    SubmitResponse,
)
from control_plane.services import characters, pricing
from control_plane.web.deps import (
    SUBMISSION,
    CharacterId,
    PageLimit,
    PageNumber,
    PlatformDep,
    SessionDep,
    ViewerDep,
    group_id_of,
)
from control_plane.web.present import character_detail, character_public, job_public

router = APIRouter(prefix="/api/characters", tags=["characters"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_character(
    body: CharacterCreate, platform: PlatformDep, session: SessionDep, viewer: ViewerDep
) -> CharacterPublic:
    """Create a character: its references (uploads or succeeded images, of any group), a
    locked seed (random when absent) and a style checked against the model table."""
    character = await run_in_threadpool(
        characters.create_character, session, platform.settings, body, viewer
    )
    return character_public(character)


@router.get("")
def list_characters(
    session: SessionDep, viewer: ViewerDep, page: PageNumber = 1, limit: PageLimit = 20
) -> Page[CharacterPublic]:
    """The viewer's characters, newest first."""
    total, rows = characters.page_of_characters(session, page, limit, viewer)
    return Page(data=[character_public(c) for c in rows], total=total, page=page, limit=limit)


@router.get("/{character_id}")
def get_character(
    character_id: CharacterId, session: SessionDep, viewer: ViewerDep
) -> CharacterDetail:
    """A character with its packs, newest first, each with its progress."""
    character = characters.get_character(session, character_id, viewer)
    return character_detail(character, characters.packs_of(session, character.id))


@router.delete("/{character_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_character(character_id: CharacterId, session: SessionDep, viewer: ViewerDep) -> None:
    """Delete a character; its packs stay, with their images."""
    characters.delete_character(session, character_id, viewer)


@router.post("/{character_id}/packs", status_code=status.HTTP_201_CREATED, dependencies=SUBMISSION)
async def create_pack(
    character_id: CharacterId,
    body: PackCreate,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> SubmitResponse:
    """Queue a pack: one job of `size` images, each with all of the character's references,
    its seed plus the image's position, and a scene of its own."""
    if body.group_id is not None:
        group_id_of(body.group_id)
    job = await run_in_threadpool(
        characters.create_pack, session, platform.settings, character_id, body, viewer
    )
    return SubmitResponse(
        batch_id=job.batch_id, jobs=[job_public(job)], estimate=pricing.of_jobs([job])
    )
