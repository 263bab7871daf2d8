"""Presets: a prompt and settings whose examples are made over references picked from a pool.

A pool is a group of uploads carrying `attributes` (e.g. {"gender": "female"}). Asking a
preset for examples (`request_examples`) picks `count` references of the pool, balanced over
the values of one attribute if asked, at random, never one already used or reserved for the
preset, and submits one job (mode `preset`, `source_id` the preset) of `examples_per_reference`
images per reference. The picks are reserved (PresetUsage rows, `reserved`) in the job's own
transaction, under the preset's row lock, so two requests at once never pick the same one.

The gallery and the usage follow the job through its events (`gallery_consumer`): each
succeeded output is added to the preset's gallery and marks its reference `used`; when the
job finishes, the references still only reserved (every example failed) are released, so
they can be picked again. A retry of the job that later succeeds marks them used then.
"""

import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, delete, func, select

from control_plane import lifecycle
from control_plane.access import Viewer
from control_plane.db import lock_row
from control_plane.errors import Conflict, InvalidRequest
from control_plane.events import Consumer, each_job_event
from control_plane.models import (
    ACTIVE_JOB,
    Event,
    EventKind,
    Group,
    Job,
    JobMode,
    Output,
    Preset,
    PresetExample,
    PresetUsage,
    PresetUsageStatus,
    Upload,
    utcnow,
)
from control_plane.schemas import (
    GenerationConfig,
    PresetCreate,
    PresetExamplesRequest,
    PresetUsageCounts,
    PresetUsageReset,
)
from control_plane.services import prompts, references, webhooks
from control_plane.services.rows import fetch, visible
from control_plane.services.submissions import (
    check_job_size,
    draw_seed,
    new_output,
    resolve_params,
    write_jobs,
)
from control_plane.settings import Settings
from shared.ids import new_id

CONSUMER = "preset-gallery"


# -- presets ------------------------------------------------------------------------------


def create_preset(
    session: Session, settings: Settings, body: PresetCreate, viewer: Viewer
) -> Preset:
    """A new preset of the viewer (committed); its config checked against the model table
    and stored with its defaults filled, its prompt one prompt (no permutations)."""
    params = resolve_params(body.config, settings)
    prompt_of(body.prompt)
    preset = Preset(
        user_id=viewer.user_id,
        name=body.name,
        prompt=body.prompt,
        config={**body.config.model_dump(exclude_none=True), **params},
        examples_per_reference=body.examples_per_reference,
    )
    session.add(preset)
    session.commit()
    return preset


def prompt_of(prompt: str) -> str:
    """The one prompt a preset's `prompt` stands for (422 if its braces make several)."""
    expanded = prompts.expand(prompt)
    if len(expanded) > 1:
        raise InvalidRequest(
            f"a preset has one prompt, but its braces make {len(expanded)} prompts; "
            "write \\{ and \\} for literal braces"
        )
    return expanded[0]


def get_preset(session: Session, preset_id: str, viewer: Viewer) -> Preset:
    return fetch(session, Preset, preset_id, "preset", "pre", viewer=viewer)


def page_of_presets(
    session: Session, page: int, limit: int, viewer: Viewer
) -> tuple[int, Sequence[Preset]]:
    """The number of the viewer's presets, and page `page` (1-based) of them, newest first."""
    owned = viewer.owned(col(Preset.user_id))
    total = session.exec(select(func.count()).select_from(Preset).where(*owned)).one()
    rows = session.exec(
        select(Preset)
        .where(*owned)
        .order_by(col(Preset.id).desc())
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return total, rows


def usage_counts(session: Session, preset_id: str) -> PresetUsageCounts:
    by_status = dict(
        session.exec(
            select(PresetUsage.status, func.count())
            .where(PresetUsage.preset_id == preset_id)
            .group_by(col(PresetUsage.status))
        ).all()
    )
    return PresetUsageCounts(
        used=by_status.get(PresetUsageStatus.USED, 0),
        reserved=by_status.get(PresetUsageStatus.RESERVED, 0),
    )


def example_count(session: Session, preset_id: str) -> int:
    """The examples in the preset's gallery whose output still exists."""
    return session.exec(
        select(func.count())
        .select_from(PresetExample)
        .join(Output, col(Output.id) == col(PresetExample.output_id))
        .where(PresetExample.preset_id == preset_id)
    ).one()


def page_of_gallery(
    session: Session, preset_id: str, page: int, limit: int
) -> tuple[int, list[tuple[PresetExample, Output]]]:
    """The preset's examples (those whose output still exists: a deleted job takes its
    images along), and page `page` of them with their outputs, newest first."""
    total = example_count(session, preset_id)
    rows = session.exec(
        select(PresetExample, Output)
        .join(Output, col(Output.id) == col(PresetExample.output_id))
        .where(PresetExample.preset_id == preset_id)
        .order_by(col(PresetExample.added).desc(), col(PresetExample.output_id).desc())
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return total, [(example, output) for example, output in rows]


def delete_preset(session: Session, preset_id: str, viewer: Viewer) -> None:
    """Delete a preset with its usage and gallery records (committed); its jobs and their
    images stay."""
    preset = visible(session, lock_preset(session, preset_id), "preset", preset_id, viewer)
    session.exec(delete(PresetUsage).where(col(PresetUsage.preset_id) == preset.id))
    session.exec(delete(PresetExample).where(col(PresetExample.preset_id) == preset.id))
    session.delete(preset)
    session.commit()


def lock_preset(session: Session, preset_id: str) -> Preset | None:
    """The preset's row, locked until the transaction ends (None if it does not exist)."""
    return lock_row(session, Preset, preset_id)


def reset_usage(session: Session, preset_id: str, viewer: Viewer) -> PresetUsageReset:
    """Release the preset's references (committed): every usage record but those reserved by
    examples jobs still running, which are released when their jobs end."""
    preset = visible(session, lock_preset(session, preset_id), "preset", preset_id, viewer)
    running = set(
        session.exec(
            select(PresetUsage.upload_id)
            .join(Job, col(Job.id) == col(PresetUsage.job_id))
            .where(
                PresetUsage.preset_id == preset.id,
                PresetUsage.status == PresetUsageStatus.RESERVED,
                col(Job.status).in_(ACTIVE_JOB),
            )
        ).all()
    )
    released = session.exec(
        delete(PresetUsage).where(
            col(PresetUsage.preset_id) == preset.id, col(PresetUsage.upload_id).not_in(running)
        )
    ).rowcount
    session.commit()
    return PresetUsageReset(released=released, kept_reserved=len(running))


# -- picking references -------------------------------------------------------------------


@dataclass(frozen=True)
class Picks:
    """References picked for a preset, in output order, and how they split over the values
    of the attribute balanced by (None when not balanced)."""

    reference_ids: list[str]
    split: dict[str, int] | None


def label(value: Any) -> str:
    """An attribute's value as a split names it: strings as they are, others as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def even_split(count: int, values: Sequence[str]) -> dict[str, int]:
    """`count` over `values` as evenly as possible, the extra ones to the first values in
    sorted order: 5 over (female, male) is 3 + 2."""
    ordered = sorted(values)
    share, extra = divmod(count, len(ordered))
    return {value: share + (index < extra) for index, value in enumerate(ordered)}


def pick(
    pool: Sequence[tuple[str, dict[str, Any] | None]],
    unavailable: set[str],
    count: int,
    balance_by: str | None,
    seed: int,
    pool_name: str,
) -> Picks:
    """`count` references of `pool` ((upload id, attributes) pairs) not in `unavailable`,
    at random (the same seed picks the same ones), balanced over the values `balance_by`
    takes in the pool (uploads without it are not candidates). Conflict, naming what remains
    per value, when there are not enough."""
    if balance_by is None:
        free = sorted(upload_id for upload_id, _ in pool if upload_id not in unavailable)
        if len(free) < count:
            raise Conflict(
                f"not enough unused references in pool {pool_name}: {len(free)} of {count} needed"
            )
        return Picks(random.Random(seed).sample(free, count), None)
    by_value: dict[str, list[str]] = {}
    for upload_id, attributes in pool:
        if attributes and balance_by in attributes:
            free = by_value.setdefault(label(attributes[balance_by]), [])
            if upload_id not in unavailable:
                free.append(upload_id)
    if not by_value:
        raise Conflict(f"no upload in pool {pool_name} has the attribute {balance_by!r}")
    split = even_split(count, list(by_value))
    short = {value for value, wanted in split.items() if len(by_value[value]) < wanted}
    if short:
        remaining = ", ".join(
            f"{value} {len(by_value[value])} of {wanted} needed"
            if value in short
            else f"{value} {len(by_value[value])}"
            for value, wanted in split.items()
        )
        raise Conflict(
            f"not enough unused references in pool {pool_name} ({balance_by}): {remaining}"
        )
    picked = [
        upload_id
        for value, wanted in split.items()
        for upload_id in random.Random(f"{seed}/{value}").sample(sorted(by_value[value]), wanted)
    ]
    return Picks(picked, split)


# -- asking for examples ------------------------------------------------------------------


def request_examples(
    session: Session,
    settings: Settings,
    preset_id: str,
    request: PresetExamplesRequest,
    viewer: Viewer,
) -> tuple[Job, Picks]:
    """Pick references for the preset, reserve them and submit one job of its examples
    (committed); nothing is written when anything is refused. The preset and the groups are
    the viewer's."""
    planned: list[Picks] = []

    def plan() -> list[Job]:
        job, picks = _plan_examples(session, settings, preset_id, request, viewer)
        planned.append(picks)
        return [job]

    try:
        webhook = webhooks.check(settings, request.webhook)
        [job] = write_jobs(session, request.group_id or request.pool_group_id, plan, webhook)
    except BaseException:
        session.rollback()
        raise
    return job, planned[0]


def _plan_examples(
    session: Session,
    settings: Settings,
    preset_id: str,
    request: PresetExamplesRequest,
    viewer: Viewer,
) -> tuple[Job, Picks]:
    """The job and its reservations, added to the session under the preset's lock."""
    preset = lock_preset(session, preset_id)  # held until commit: picks never overlap
    preset = visible(session, preset, "preset", preset_id, viewer)
    pool = _group(session, request.pool_group_id, "pool group", viewer)
    target = _group(session, request.group_id, "group", viewer) if request.group_id else pool
    params = resolve_params(GenerationConfig.model_validate(_config_fields(preset)), settings)
    check_job_size(
        settings,
        request.count * preset.examples_per_reference,
        f"{request.count} references x {preset.examples_per_reference} examples per reference",
    )
    seed = draw_seed(GenerationConfig(seed=request.seed))
    picks = pick(
        _pool_of(session, pool.id),
        _unavailable(session, preset.id),
        request.count,
        request.balance_by,
        seed,
        pool.id,
    )
    references.check(
        session, pool.id, [[ref] for ref in picks.reference_ids], params["model"], viewer
    )
    job, outputs = _examples_job(preset, target.id, pool.id, request, picks, seed, params)
    chunk = lifecycle.dispatch_chunk(settings, outputs, job.config.get("lane"))
    lifecycle.add_job(session, job, outputs, chunk)
    session.add_all(
        PresetUsage(preset_id=preset.id, upload_id=upload_id, job_id=job.id)
        for upload_id in picks.reference_ids
    )
    return job, picks


def _examples_job(
    preset: Preset,
    group_id: str,
    pool_id: str,
    request: PresetExamplesRequest,
    picks: Picks,
    seed: int,
    params: dict[str, str | None],
) -> tuple[Job, list[lifecycle.OutputRow]]:
    """The examples job and its outputs: each reference's examples one after another, seeds
    the base seed plus the position."""
    base_seed = preset.config.get("seed", seed)
    job = Job(
        group_id=group_id,
        batch_id=new_id("bat"),
        mode=JobMode.PRESET,
        prompt=preset.prompt,
        source_id=preset.id,
        config={
            **params,
            **{key: preset.config[key] for key in LANE_FIELDS if key in preset.config},
            "seed": base_seed,
            "preset_id": preset.id,
            "preset_name": preset.name,
            "pool_group_id": pool_id,
            "count": request.count,
            "balance_by": request.balance_by,
            "split": picks.split,
            "pick_seed": seed,
            "examples_per_reference": preset.examples_per_reference,
        },
    )
    prompt = prompt_of(preset.prompt)
    pairs = itertools.product(picks.reference_ids, range(preset.examples_per_reference))
    outputs = [
        new_output(job, position, prompt, [reference], base_seed + position, params)
        for position, (reference, _) in enumerate(pairs)
    ]
    return job, outputs


LANE_FIELDS = ("lane", "batch_deadline_s")  # a preset's lane is its examples jobs' lane


def _config_fields(preset: Preset) -> dict[str, Any]:
    fields = GenerationConfig.model_fields
    return {key: value for key, value in preset.config.items() if key in fields}


def _group(session: Session, group_id: str, what: str, viewer: Viewer) -> Group:
    return fetch(session, Group, group_id, what, "grp", viewer=viewer)


def _pool_of(session: Session, group_id: str) -> list[tuple[str, dict[str, Any] | None]]:
    rows = session.exec(
        select(Upload.id, Upload.attributes).where(Upload.group_id == group_id)
    ).all()
    return [(upload_id, dict(attributes) if attributes else None) for upload_id, attributes in rows]


def _unavailable(session: Session, preset_id: str) -> set[str]:
    """References used or reserved for the preset."""
    return set(
        session.exec(select(PresetUsage.upload_id).where(PresetUsage.preset_id == preset_id))
    )


# -- following the jobs: the gallery and the usage ----------------------------------------


def gallery_consumer() -> Consumer:
    """The consumer that keeps presets' galleries and usage as their jobs progress."""
    kinds = frozenset({EventKind.OUTPUT_SUCCEEDED, EventKind.JOB_FINISHED})
    return Consumer(CONSUMER, kinds, each_job_event(follow_event))


def follow_event(session: Session, event: Event, job: Job) -> None:
    if job.mode != JobMode.PRESET or job.source_id is None:
        return
    # The preset's lock first, as every writer of its usage takes it (so none deadlocks).
    preset = lock_preset(session, job.source_id)
    if preset is None:
        return  # deleted, with its usage and gallery
    if event.kind == EventKind.OUTPUT_SUCCEEDED and event.output_id:
        _add_example(session, preset, job.id, event.output_id, event.id or 0)
    elif event.kind == EventKind.JOB_FINISHED:
        session.exec(
            delete(PresetUsage).where(
                col(PresetUsage.job_id) == job.id,
                col(PresetUsage.status) == PresetUsageStatus.RESERVED,
            )
        )


def _add_example(session: Session, preset: Preset, job_id: str, output_id: str, added: int) -> None:
    """Add the output to the preset's gallery and mark its reference used (once)."""
    output = session.get(Output, output_id)
    if output is None or not output.reference_ids:
        return  # the job was deleted meanwhile
    if session.get(PresetExample, (preset.id, output.id)) is not None:
        return
    upload_id = output.reference_ids[0]
    session.add(
        PresetExample(preset_id=preset.id, output_id=output.id, upload_id=upload_id, added=added)
    )
    usage = session.get(PresetUsage, (preset.id, upload_id))
    if usage is None:  # released when the job first ended; a retry made it succeed
        usage = PresetUsage(preset_id=preset.id, upload_id=upload_id, job_id=job_id)
    usage.status, usage.updated_at = PresetUsageStatus.USED, utcnow()
    session.add(usage)
