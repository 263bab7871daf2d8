"""Characters (references, a locked seed and a style) and their packs: one job of 5 to 10
images, each carrying all of the character's references and the seed plus its position, its
prompt built from `PACK_PROMPT` with a scene of its own.

Everything is checked before anything is written: an invalid request changes nothing.
"""

import itertools
import random
from typing import Any

from sqlmodel import Session, col, func, select

from control_plane import lifecycle
from control_plane.access import Viewer
from control_plane.errors import Conflict, InvalidRequest
from control_plane.models import Character, Job, JobMode, Output, Upload
from control_plane.schemas import CharacterCreate, CharacterStyle, GenerationConfig, PackCreate
from control_plane.services import references, submissions, webhooks
from control_plane.services.groups import get_group
from control_plane.services.rows import fetch
from control_plane.settings import Settings
from shared.ids import is_id, new_id

# Every image of a pack is asked for with this prompt; `{style}` is STYLE_PART or nothing.
PACK_PROMPT = (
    "{name}, {scene}. The same person as in the reference images: same face, hair, skin "
    "tone, eye colour, build and apparent age; only the pose, expression, clothing and "
    "setting change.{style}"
)
STYLE_PART = " Style: {style_prompt}."

# Scenes of a pack made without its own, taken in this order: varied poses, framings,
# settings and light, so that the pack shows one face in many situations.
DEFAULT_SCENES = (
    "close-up portrait, looking at the camera, soft natural light, plain background",
    "walking in a city street at dusk, neon signs reflecting on wet pavement",
    "sitting at a café table by the window, holding a cup of coffee, morning light",
    "full-body shot standing on a beach at golden hour, wind in the hair",
    "laughing, three-quarter view, in a park in autumn with falling leaves",
    "hiking on a mountain trail, wide shot, bright morning sky",
    "reading a book on a sofa in a cosy living room, warm lamplight",
    "profile view against a dark studio backdrop, dramatic side lighting",
    "cooking in a modern kitchen, candid moment, looking down at the counter",
    "riding a bicycle along a canal, afternoon sun, slight motion blur",
    "at a rooftop party at night under string lights, looking over the shoulder",
    "working at a desk with a laptop in a bright open-plan office",
    "under an umbrella in the rain, city lights blurred behind",
    "sitting on stone steps in an old town, overcast light, relaxed pose",
)
MAX_PACKS_SHOWN = 100  # a character's newest packs in its answer


def pack_prompt(name: str, scene: str, style_prompt: str | None) -> str:
    """The prompt of one image of a pack (see `PACK_PROMPT`)."""
    style = STYLE_PART.format(style_prompt=style_prompt) if style_prompt else ""
    return PACK_PROMPT.format(name=name, scene=scene.rstrip(". "), style=style)


# -- characters ----------------------------------------------------------------------------


def create_character(
    session: Session, settings: Settings, body: CharacterCreate, viewer: Viewer
) -> Character:
    """Check and store a character of the viewer (committed): its style resolved against the
    model table (defaults filled in, so the look stays locked), its references existing and
    the viewer's."""
    params = submissions.resolve_params(_generation_config(body.style), settings)
    references.check(session, None, [body.references], params["model"], viewer)
    style = {**params, "style_prompt": body.style.style_prompt}
    character = Character(
        user_id=viewer.user_id,
        name=body.name,
        reference_ids=list(body.references),
        seed=body.seed if body.seed is not None else random.randrange(2**31),
        style={key: value for key, value in style.items() if value is not None},
    )
    session.add(character)
    session.commit()
    return character


def _generation_config(style: CharacterStyle | dict[str, Any]) -> GenerationConfig:
    fields = style.model_dump() if isinstance(style, CharacterStyle) else style
    return GenerationConfig(
        model=fields.get("model"),
        aspect_ratio=fields.get("aspect_ratio"),
        image_size=fields.get("image_size"),
        negative_prompt=fields.get("negative_prompt"),
    )


def get_character(session: Session, character_id: str, viewer: Viewer) -> Character:
    """The viewer's character, or NotFound (also for an id not shaped like a character's)."""
    return fetch(session, Character, character_id, "character", "chr", viewer=viewer)


def delete_character(session: Session, character_id: str, viewer: Viewer) -> None:
    """Delete the character; its packs stay, with their images."""
    session.delete(get_character(session, character_id, viewer))
    session.commit()


def page_of_characters(
    session: Session, page: int, limit: int, viewer: Viewer
) -> tuple[int, list[Character]]:
    """The number of the viewer's characters, and page `page` (1-based) of them, newest
    first."""
    owned = viewer.owned(col(Character.user_id))
    total = session.exec(select(func.count()).select_from(Character).where(*owned)).one()
    rows = session.exec(
        select(Character)
        .where(*owned)
        .order_by(col(Character.id).desc())
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return total, list(rows)


def packs_of(session: Session, character_id: str) -> list[Job]:
    """The character's newest packs (at most MAX_PACKS_SHOWN), newest first, in one query."""
    return list(
        session.exec(
            select(Job)
            .where(Job.source_id == character_id)
            .order_by(col(Job.id).desc())
            .limit(MAX_PACKS_SHOWN)
        ).all()
    )


# -- packs ---------------------------------------------------------------------------------


def create_pack(
    session: Session, settings: Settings, character_id: str, body: PackCreate, viewer: Viewer
) -> Job:
    """Write and commit a pack: one job of `body.size` images in `body.group_id` (by default
    the group of the character's first reference); the character and group are the
    viewer's."""
    character = get_character(session, character_id, viewer)
    group_id = body.group_id or _first_reference_group(session, character)
    return submissions.write_jobs(
        session,
        group_id,
        lambda: [_plan_pack(session, settings, character, body, group_id, viewer)],
        webhooks.check(settings, body.webhook),
    )[0]


def _first_reference_group(session: Session, character: Character) -> str:
    """The group of the character's first reference: the upload's, or the output's."""
    first = character.reference_ids[0]
    table = Output if is_id("out", first) else Upload
    group_id = session.exec(select(table.group_id).where(table.id == first)).first()
    if group_id is None:
        raise Conflict(
            f"character {character.id}'s first reference {first} no longer exists, so it has "
            "no default group: give group_id"
        )
    return group_id


def _plan_pack(
    session: Session,
    settings: Settings,
    character: Character,
    body: PackCreate,
    group_id: str,
    viewer: Viewer,
) -> Job:
    group = get_group(session, group_id, viewer)
    params = submissions.resolve_params(_generation_config(character.style), settings)
    _check_stored_references(session, character, params["model"], viewer)
    scenes = list(itertools.islice(itertools.cycle(body.scenes or DEFAULT_SCENES), body.size))
    job = Job(
        group_id=group.id,
        batch_id=new_id("bat"),
        mode=JobMode.CHARACTER_PACK,
        prompt=f"character pack of {character.name}: {body.size} scenes",
        source_id=character.id,
        config={
            **{key: value for key, value in character.style.items() if value is not None},
            **params,
            "seed": character.seed,
            "size": body.size,
            "character_id": character.id,
            "character_name": character.name,
        },
    )
    style_prompt = character.style.get("style_prompt")
    outputs = [
        submissions.new_output(
            job,
            position,
            pack_prompt(character.name, scene, style_prompt),
            character.reference_ids,
            character.seed + position,
            params,
        )
        for position, scene in enumerate(scenes)
    ]
    lifecycle.add_job(session, job, outputs, lifecycle.dispatch_chunk(settings, outputs))
    return job


def _check_stored_references(
    session: Session, character: Character, model: str | None, viewer: Viewer
) -> None:
    """The character's references are still usable (a deleted job or group takes its images
    along)."""
    try:
        references.check(session, None, [character.reference_ids], model, viewer)
    except InvalidRequest as exc:
        raise Conflict(f"character {character.id} cannot make a pack: {exc.message}") from exc
