"""Persona pipelines: a persona's data by a text model, then a base portrait, then variations.

    persona   pending → generating-data → data-generated → generating-images → completed | failed

Each persona has one job per stage, all with `source_id` = the persona's id:
1. data (`JobMode.PERSONA_DATA`): one text task whose answer (JSON matching
   `persona_schema`) is the persona's data; one job per persona, so a persona's stage is
   always one job and its outcome (or a retry of it) concerns that persona alone;
2. base (`JobMode.PERSONA_IMAGES`, config `stage: base`): one text-to-image portrait from
   the data's appearance and style;
3. variations (`JobMode.PERSONA_IMAGES`, config `stage: variations`): `VARIATION_SCENES`,
   each with the base portrait (`out_…`) as its reference.

The stages after the first are written by `pipeline`, a consumer of the jobs' events: on
`job_started` of its data (base) job a persona moves to generating-data (generating-images);
on `job_finished` the stage's outcome is read and the next stage's job written in the same
transaction as the consumer's cursor, so each happens exactly once, across restarts too.
A failed or blocked data or base output fails the persona with the reason in `error_log`;
the persona is completed once its variations job ends, whatever became of the variations,
and each variation that did not succeed is named in its `error_log`. A retried stage job
(`POST /api/jobs/{id}/retry`) that now succeeds takes its persona on from there.
"""

import copy
import json
import random
import re
import unicodedata
from collections.abc import Sequence
from typing import Any, Literal

from sqlmodel import Session, col, func, select

from control_plane import lifecycle
from control_plane.access import Viewer
from control_plane.db import lock_row
from control_plane.errors import InvalidRequest
from control_plane.events import Consumer, each_job_event
from control_plane.models import (
    Event,
    EventKind,
    Group,
    Job,
    JobMode,
    Output,
    OutputKind,
    OutputStatus,
    Persona,
    PersonaStatus,
    clip,
    utcnow,
)
from control_plane.schemas import Estimate, PersonaCreate
from control_plane.services import pricing, submissions, webhooks
from control_plane.services.rows import fetch
from control_plane.services.uploads import safe_name
from control_plane.settings import Settings
from shared.ids import new_id

Stage = Literal["data", "base", "variations"]
BASE = "base"
VARIATIONS = "variations"
MAX_FIELD_CHARS = 2_000
MAX_TAGS = 20
AGE_RANGE = re.compile(r"\s*(\d{1,3})\s*-\s*(\d{1,3})\s*")
MIN_AGE, MAX_AGE = 18, 99
TEXT_FIELDS = ("name", "gender", "ethnicity", "bio", "appearance", "style")
FIELDS = ["name", "age", "gender", "ethnicity", "bio", "appearance", "style", "tags"]
PERSONA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "full name: first and last"},
        "age": {"type": "integer", "minimum": MIN_AGE, "maximum": MAX_AGE},
        "gender": {"type": "string"},
        "ethnicity": {"type": "string"},
        "bio": {"type": "string", "description": "two or three sentences about their life"},
        "appearance": {
            "type": "string",
            "description": "face, hair, eyes, skin and build: what a portrait photo shows",
        },
        "style": {"type": "string", "description": "how they dress and present themselves"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 8},
    },
    "required": FIELDS,
    "propertyOrdering": FIELDS,
}
VARIATION_SCENES = (
    ("a broad, genuine smile", "at a sunny outdoor café table"),
    ("laughing mid-conversation", "on a busy city street at golden hour"),
    ("a calm, thoughtful look", "in a cosy living room by a window"),
    ("a confident, focused expression", "in a bright modern office"),
)


# -- creating ------------------------------------------------------------------------------


def create_personas(
    session: Session, settings: Settings, request: PersonaCreate, viewer: Viewer
) -> tuple[str, list[Persona], Estimate]:
    """Write and commit `count` personas and their data jobs in a group of the viewer; they
    belong to the group's owner. Returns the batch id, them, and the estimate of every stage
    (the images are priced now, though written later)."""
    personas: list[Persona] = []

    def plan() -> list[Job]:
        planned = _plan(session, settings, request, viewer)
        personas.extend(persona for persona, _ in planned)
        return [job for _, job in planned]

    webhook = webhooks.check(settings, request.webhook)
    later = later_stages(settings, request)
    jobs = submissions.write_jobs(session, request.group_id, plan, webhook, later=later)
    for persona in personas:
        session.refresh(persona)
    return jobs[0].batch_id, personas, pricing.combine([pricing.of_jobs(jobs), later])


def later_stages(settings: Settings, request: PersonaCreate) -> Estimate:
    """The images the personas' later stages will ask for: a base portrait and its
    variations each."""
    params = submissions.resolve_params(request.config, settings)
    return pricing.of_images(params, request.count * (1 + len(VARIATION_SCENES)))


def _plan(
    session: Session, settings: Settings, request: PersonaCreate, viewer: Viewer
) -> list[tuple[Persona, Job]]:
    group = fetch(session, Group, request.group_id, "group", "grp", viewer=viewer)
    attributes = request.attributes or {}
    schema = persona_schema(attributes)
    image_params = submissions.resolve_params(request.config, settings)
    text_model = request.text_model or settings.text_model
    seed = request.config.seed if request.config.seed is not None else random.randrange(2**31)
    batch_id = new_id("bat")
    planned = []
    for index in range(request.count):
        persona = Persona(
            batch_id=batch_id,
            group_id=group.id,
            user_id=group.user_id,
            brief=request.brief,
            attributes=attributes,
        )
        persona_seed = (seed + index * (len(VARIATION_SCENES) + 2)) % 2**31
        prompt = data_prompt(request.brief, attributes, index, request.count)
        job = Job(
            group_id=group.id,
            batch_id=batch_id,
            mode=JobMode.PERSONA_DATA,
            prompt=prompt,
            source_id=persona.id,
            config={"text_model": text_model, "seed": persona_seed, "image_params": image_params},
        )
        params = {"model": text_model, "response_schema": schema}
        output = Output(
            job_id=job.id,
            group_id=group.id,
            position=0,
            prompt=prompt,
            seed=persona_seed,
            params=params,
            model=text_model,
            kind=OutputKind.TEXT,
        )
        persona.data_job_id = job.id
        session.add(persona)
        lifecycle.add_job(session, job, [output], settings.dispatch_chunk_size)
        planned.append((persona, job))
    return planned


def persona_schema(attributes: dict[str, Any]) -> dict[str, Any]:
    """The data's JSON schema, narrowed by the attributes it has fields for: `gender` and
    `ethnicity` (enums of one), `age` and `age_range` ("25-35": the age's bounds). Other
    attributes reach the model through the prompt only."""
    schema = copy.deepcopy(PERSONA_SCHEMA)
    properties = schema["properties"]
    for key in ("gender", "ethnicity"):
        value = attributes.get(key)
        if value is not None:
            properties[key]["enum"] = [str(value)]
    low, high = _age_bounds(attributes)
    properties["age"].update(minimum=low, maximum=high)
    return schema


def _age_bounds(attributes: dict[str, Any]) -> tuple[int, int]:
    age, age_range = attributes.get("age"), attributes.get("age_range")
    if age is not None:
        if type(age) is not int or not MIN_AGE <= age <= MAX_AGE:
            raise InvalidRequest(f"attributes.age must be a whole number {MIN_AGE} to {MAX_AGE}")
        return age, age
    if age_range is None:
        return MIN_AGE, MAX_AGE
    match = AGE_RANGE.fullmatch(str(age_range))
    low, high = (int(match[1]), int(match[2])) if match else (0, -1)
    if not MIN_AGE <= low <= high <= MAX_AGE:
        raise InvalidRequest(
            f'attributes.age_range must be "LOW-HIGH" with {MIN_AGE} ≤ LOW ≤ HIGH ≤ {MAX_AGE}, '
            f'e.g. "25-35"'
        )
    return low, high


def data_prompt(brief: str | None, attributes: dict[str, Any], index: int, count: int) -> str:
    lines = [
        f"Invent one realistic, distinctive adult person (persona {index + 1} of {count} in "
        "this batch: make each one different) for a synthetic portrait dataset.",
    ]
    if brief:
        lines.append(f"Brief: {brief}")
    if attributes:
        listed = "; ".join(f"{key}: {value}" for key, value in attributes.items())
        lines.append(f"Required attributes: {listed}")
    lines.append(
        "Answer in JSON: name (first and last), age, gender, ethnicity, bio (two or three "
        "sentences), appearance (face, hair, eyes, skin, build: what a portrait photo shows), "
        "style (clothing and look), tags (3 to 8 short keywords)."
    )
    return "\n".join(lines)


# -- reading -------------------------------------------------------------------------------


def get_persona(session: Session, persona_id: str, viewer: Viewer) -> Persona:
    return fetch(session, Persona, persona_id, "persona", "per", viewer=viewer)


def page_of_personas(
    session: Session,
    page: int,
    limit: int,
    viewer: Viewer,
    *,
    batch_id: str | None = None,
    group_id: str | None = None,
) -> tuple[int, Sequence[Persona]]:
    """The number of the viewer's personas matching the filters, and page `page` (1-based),
    oldest first (a batch reads in the order it was asked for)."""
    filters = viewer.owned(col(Persona.user_id)) + [
        clause
        for wanted, clause in (
            (batch_id, Persona.batch_id == batch_id),
            (group_id, Persona.group_id == group_id),
        )
        if wanted
    ]
    total = session.exec(select(func.count()).select_from(Persona).where(*filters)).one()
    rows = session.exec(
        select(Persona)
        .where(*filters)
        .order_by(col(Persona.id))
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return total, rows


def stage_of(persona: Persona) -> Stage:
    """The stage a persona is in, or ended in."""
    if persona.variations_job_id:
        return "variations"
    return "base" if persona.base_job_id else "data"


def name_of(persona: Persona) -> str | None:
    name = (persona.data or {}).get("name")
    return name if isinstance(name, str) else None


def images_of(session: Session, persona: Persona) -> tuple[Output | None, list[Output]]:
    """The persona's base portrait (once asked for) and its variations, in order."""
    base = None
    if persona.base_job_id:
        base = session.exec(select(Output).where(Output.job_id == persona.base_job_id)).first()
    variations: list[Output] = []
    if persona.variations_job_id:
        variations = list(
            session.exec(
                select(Output)
                .where(Output.job_id == persona.variations_job_id)
                .order_by(col(Output.position))
            ).all()
        )
    return base, variations


# -- the pipeline --------------------------------------------------------------------------


def pipeline(settings: Settings) -> Consumer:
    """The consumer that moves personas along as their stage jobs start and finish."""

    def handle(session: Session, event: Event, job: Job) -> None:
        if not job.source_id or job.mode not in PERSONA_MODES:
            return
        persona = _lock_persona(session, job)
        if persona is None:
            return
        if event.kind == EventKind.JOB_STARTED:
            _started(persona, job)
        else:
            _finished(session, settings, persona, job)
        persona.updated_at = utcnow()
        session.add(persona)

    kinds = frozenset({EventKind.JOB_STARTED, EventKind.JOB_FINISHED})
    return Consumer("persona-pipeline", kinds, each_job_event(handle))


PERSONA_MODES = frozenset({JobMode.PERSONA_DATA, JobMode.PERSONA_IMAGES})


def _lock_persona(session: Session, job: Job) -> Persona | None:
    """The job's persona, locked after its group (the order deleting a group locks them in),
    so a stage is never written into a group being deleted."""
    if lock_row(session, Group, job.group_id) is None:
        return None
    return lock_row(session, Persona, job.source_id)


def _started(persona: Persona, job: Job) -> None:
    if job.id == persona.data_job_id and persona.status == PersonaStatus.PENDING:
        persona.status = PersonaStatus.GENERATING_DATA
    elif job.id == persona.base_job_id and persona.status == PersonaStatus.DATA_GENERATED:
        persona.status = PersonaStatus.GENERATING_IMAGES


def _finished(session: Session, settings: Settings, persona: Persona, job: Job) -> None:
    """The stage `job` did for the persona has ended; a stage it has already gone past (a
    late duplicate, a retry of an earlier stage) changes nothing."""
    if job.id == persona.data_job_id and persona.base_job_id is None:
        _data_done(session, settings, persona, job)
    elif job.id == persona.base_job_id and persona.variations_job_id is None:
        _base_done(session, settings, persona, job)
    elif job.id == persona.variations_job_id:
        _variations_done(session, persona, job)


def _only_output(session: Session, job: Job) -> Output | None:
    return session.exec(select(Output).where(Output.job_id == job.id)).first()


def _data_done(session: Session, settings: Settings, persona: Persona, job: Job) -> None:
    output = _only_output(session, job)
    if output is None or output.status != OutputStatus.SUCCEEDED:
        _fail(persona, f"persona data {_outcome(output)}")
        return
    schema = output.params.get("response_schema") or PERSONA_SCHEMA
    try:
        persona.data = parse_data(output.text or "", schema)
    except ValueError as exc:
        _fail(persona, f"persona data is unusable: {exc}")
        return
    persona.status = PersonaStatus.DATA_GENERATED
    base = _base_job(session, persona, job)
    seed, params = job.config["seed"], job.config["image_params"]
    portrait = submissions.new_output(base, 0, base.prompt, [], seed, params)
    lifecycle.add_job(session, base, [portrait], settings.dispatch_chunk_size)
    persona.base_job_id = base.id


def _base_done(session: Session, settings: Settings, persona: Persona, job: Job) -> None:
    output = _only_output(session, job)
    if output is None or output.status != OutputStatus.SUCCEEDED:
        _fail(persona, f"base portrait {_outcome(output)}")
        return
    persona.status = PersonaStatus.GENERATING_IMAGES
    persona.base_output_id = output.id
    variations = _variations_job(persona, job)
    outputs = [
        submissions.new_output(
            variations,
            position,
            variation_prompt(persona.data or {}, expression, setting),
            [output.id],
            job.config["seed"] + 1 + position,
            dict(output.params),
        )
        for position, (expression, setting) in enumerate(VARIATION_SCENES)
    ]
    lifecycle.add_job(session, variations, outputs, lifecycle.dispatch_chunk(settings, outputs))
    persona.variations_job_id = variations.id


def _variations_done(session: Session, persona: Persona, job: Job) -> None:
    outputs = session.exec(
        select(Output).where(Output.job_id == job.id).order_by(col(Output.position))
    ).all()
    kept = [entry for entry in persona.error_log if not entry.startswith("variation ")]
    missed = [
        clip(f"variation {output.position + 1} {_outcome(output)}") or ""
        for output in outputs
        if output.status != OutputStatus.SUCCEEDED
    ]
    persona.error_log = kept + missed
    persona.status = PersonaStatus.COMPLETED


def _outcome(output: Output | None) -> str:
    """How an output that did not succeed ended, for the error log."""
    if output is None:
        return "failed: its job has no output"
    return f"{output.status}: {output.error or 'no reason given'}"


def _fail(persona: Persona, message: str) -> None:
    persona.status = PersonaStatus.FAILED
    persona.error_log = [*persona.error_log, clip(message) or message]


def parse_data(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The persona's data from the text model's answer, checked against what the stages
    need and the schema's narrowing (enums, age bounds); ValueError says what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    properties = schema.get("properties", {})
    checked: dict[str, Any] = {field: _text_field(data, field, properties) for field in TEXT_FIELDS}
    checked["age"] = _age_field(data.get("age"), properties.get("age", {}))
    tags = data.get("tags")
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise ValueError("tags is not a list of strings")
    checked["tags"] = [tag.strip()[:100] for tag in tags[:MAX_TAGS] if tag.strip()]
    return {key: checked[key] for key in FIELDS}


def _text_field(data: dict[str, Any], field: str, properties: dict[str, Any]) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} is missing or empty")
    allowed = properties.get(field, {}).get("enum")
    if allowed and value not in allowed:
        raise ValueError(f"{field} is {value[:40]!r}, not the requested {allowed[0]!r}")
    if len(value) > MAX_FIELD_CHARS:
        raise ValueError(f"{field} is over {MAX_FIELD_CHARS:,} characters")
    return value.strip()


def _age_field(value: Any, spec: dict[str, Any]) -> int:
    if type(value) is not int:
        raise ValueError("age is not a whole number")
    low, high = spec.get("minimum", MIN_AGE), spec.get("maximum", MAX_AGE)
    if not low <= value <= high:
        raise ValueError(f"age {value} is outside {low}-{high}")
    return value


# -- the image stages ----------------------------------------------------------------------


def base_prompt(data: dict[str, Any]) -> str:
    return (
        f"Photorealistic head-and-shoulders portrait photo of {data['name']}, a "
        f"{data['age']}-year-old {data['ethnicity']} {data['gender']}. "
        f"Appearance: {data['appearance']}. Style: {data['style']}. "
        "Looking at the camera with a relaxed, natural expression; soft daylight, plain "
        "background, sharp focus."
    )


def variation_prompt(data: dict[str, Any], expression: str, setting: str) -> str:
    return (
        f"The same person as in the reference photo ({data.get('name', 'the persona')}): keep "
        "the face, hair, skin tone and identity exactly. "
        f"Now with {expression}, {setting}. Wearing: {data.get('style', 'their usual style')}. "
        "Photorealistic, natural light."
    )


def _base_job(session: Session, persona: Persona, data_job: Job) -> Job:
    data = persona.data or {}
    params = data_job.config["image_params"]
    return Job(
        group_id=persona.group_id,
        batch_id=persona.batch_id,
        mode=JobMode.PERSONA_IMAGES,
        prompt=base_prompt(data),
        source_id=persona.id,
        webhook=data_job.webhook,  # each stage tells the persona's submitter
        config={
            **params,
            "seed": data_job.config["seed"],
            "stage": BASE,
            "folder": _folder(session, persona),
        },
    )


def _variations_job(persona: Persona, base_job: Job) -> Job:
    return Job(
        group_id=persona.group_id,
        batch_id=persona.batch_id,
        mode=JobMode.PERSONA_IMAGES,
        prompt=f"{len(VARIATION_SCENES)} variations of {name_of(persona) or persona.id}",
        source_id=persona.id,
        parent_output_id=persona.base_output_id,
        webhook=base_job.webhook,
        config={**base_job.config, "stage": VARIATIONS},
    )


def _folder(session: Session, persona: Persona) -> str:
    """The persona's folder in its group's ZIP: its name made safe, or, when another persona
    of the group already has that folder, the name and the persona's id (never changes)."""
    name = _ascii_name(name_of(persona) or "")
    if not name:
        return persona.id
    taken = session.exec(
        select(Job.id).where(
            Job.group_id == persona.group_id,
            Job.mode == JobMode.PERSONA_IMAGES,
            col(Job.source_id) != persona.id,
            col(Job.config)["folder"].as_string() == name,
        )
    ).first()
    return f"{name}_{persona.id}" if taken else name


def _ascii_name(name: str) -> str:
    """A name as a path part: accents dropped, then reduced to [A-Za-z0-9._-]."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return safe_name(plain)
