"""Plan a submission into jobs, one output row per requested image, queued in dispatches.

Everything is checked before anything is written: an invalid submission changes nothing.
"""

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import sqlalchemy as sa
from sqlmodel import Session

from control_plane import events, lifecycle
from control_plane.access import Viewer
from control_plane.errors import Conflict, InvalidRequest
from control_plane.models import Catalog, Job, JobMode, Lane
from control_plane.schemas import (
    AutomaticSubmit,
    CatalogSubmit,
    Estimate,
    GenerationConfig,
    SemiAutomaticItem,
    SemiAutomaticSubmit,
)
from control_plane.services import catalogs, pricing, prompts, references, spending, webhooks
from control_plane.services.groups import get_group
from control_plane.settings import Settings
from shared.ids import new_id
from shared.model_table import model_table


def submit(
    session: Session,
    settings: Settings,
    request: AutomaticSubmit | SemiAutomaticSubmit | CatalogSubmit,
    viewer: Viewer,
) -> list[Job]:
    """Write and commit the jobs, outputs and dispatches of a submission; returns the jobs.

    The group, its references and the catalog must be the viewer's (NotFound or 422 as for
    ones that do not exist). A group deleted between the check and the insert is a Conflict,
    with nothing written.
    """
    return write_jobs(
        session,
        request.group_id,
        lambda: _plan(session, settings, request, viewer),
        webhooks.check(settings, request.webhook),
    )


def write_jobs(
    session: Session,
    group_id: str,
    plan: Callable[[], list[Job]],
    webhook: webhooks.Checked | None = None,
    *,
    later: Estimate | None = None,
) -> list[Job]:
    """Run `plan` (which adds a submission's rows to `session`), give its jobs the
    submission's `webhook`, and commit; a group deleted between its check and the insert is
    a Conflict, with nothing written.

    The submission's estimate (its jobs', plus `later`: stages written after it) is checked
    against the spend cap of the group's owner, whose row stays locked from before the
    month's spend is read until the commit, so two submissions cannot both pass a cap that
    has room for one; over the cap is a 402 and nothing is written or sent. In a dry run
    (`pricing.estimate`) the rows are rolled back and the estimate raised as `Priced`.
    """
    dry_run = pricing.is_dry_run(session)
    try:
        owner = None if dry_run else spending.lock_capped_owner(session, group_id)
        spent = spending.month_spend(session, owner.id) if owner is not None else None
        with events.held(session) as kept:
            jobs = plan()
        estimate = pricing.combine([pricing.of_jobs(jobs), *([later] if later else [])])
        if dry_run:
            raise pricing.Priced(estimate)
        if owner is not None and spent is not None:
            spending.check_cap(owner, spent, estimate)
        if webhook is not None:
            webhook.attach(session, jobs)
        events.release(session, kept)
        session.commit()
    except sa.exc.IntegrityError as exc:  # the foreign key refused the rows
        session.rollback()
        raise Conflict(f"group {group_id} was deleted meanwhile; nothing was saved") from exc
    except BaseException:
        session.rollback()
        raise
    return jobs


def _plan(
    session: Session,
    settings: Settings,
    request: AutomaticSubmit | SemiAutomaticSubmit | CatalogSubmit,
    viewer: Viewer,
) -> list[Job]:
    group = get_group(session, request.group_id, viewer)
    # As stored: MySQL matches "grp_x " to grp_x, and storage keys are built from the id.
    request = request.model_copy(update={"group_id": group.id})
    params = resolve_params(request.config, settings)
    if isinstance(request, CatalogSubmit):
        return _plan_catalog(session, settings, request, params, viewer)
    if isinstance(request, AutomaticSubmit):
        permutations = prompts.parse(request.prompt)
        check_job_size(
            settings,
            len(request.images) * permutations.count * request.config.outputs_per_image,
            f"{len(request.images):,} images x {permutations.count:,} prompts x "
            f"{request.config.outputs_per_image} outputs per image",
        )
        references.check(
            session, request.group_id, [[i] for i in request.images], params["model"], viewer
        )
        return _plan_automatic(session, settings, request, permutations.prompts(), params)
    items = _expanded_items(request)
    references.check(session, request.group_id, [i.images for i in items], params["model"], viewer)
    return _plan_semi_automatic(session, request, items, params)


def check_job_size(settings: Settings, outputs: int, made_of: str) -> None:
    """422 unless a job of `outputs` images (`made_of` says how they multiply) is allowed."""
    if outputs > settings.submit_max_images:
        raise InvalidRequest(
            f"{outputs:,} images in one job ({made_of}); "
            f"the limit is {settings.submit_max_images:,}"
        )


def resolve_params(config: GenerationConfig, settings: Settings) -> dict[str, str | None]:
    """Fill defaults and check the model, ratio and size against the model table, and that
    the model has a batch price when the batch lane is asked for (422 if not)."""
    table = model_table()
    model = config.model or settings.default_model
    spec = table.get(model)
    if spec is None:
        raise InvalidRequest(f"unknown model {model!r}; choose one of: {', '.join(sorted(table))}")
    aspect_ratio = config.aspect_ratio or "1:1"
    if aspect_ratio not in spec.aspect_ratios:
        raise InvalidRequest(
            f"{model} does not support aspect_ratio {aspect_ratio!r}; "
            f"allowed: {', '.join(spec.aspect_ratios)}"
        )
    image_size = config.image_size or spec.default_image_size
    if image_size not in spec.image_sizes:
        raise InvalidRequest(
            f"{model} does not support image_size {image_size!r}; "
            f"allowed: {', '.join(spec.image_sizes)}"
        )
    if config.lane == Lane.BATCH and spec.batch_price_for(image_size) is None:
        batch_models = sorted(name for name, s in table.items() if s.batch_price_usd is not None)
        raise InvalidRequest(
            f'{model} has no batch price: the Batch API does not serve it, so "lane": "batch" '
            f'cannot be used; use "lane": "online", or one of: {", ".join(batch_models)}'
        )
    return {
        "model": model,
        "aspect_ratio": aspect_ratio,
        "image_size": image_size,
        "negative_prompt": config.negative_prompt,
    }


def draw_seed(config: GenerationConfig) -> int:
    """The submission's base seed: the one asked for, else a random one (stored in the job)."""
    return config.seed if config.seed is not None else random.randrange(2**31)


def _plan_automatic(
    session: Session,
    settings: Settings,
    request: AutomaticSubmit,
    expanded: list[str],
    params: dict[str, str | None],
) -> list[Job]:
    """Per image, per prompt of its permutations, `outputs_per_image` outputs: positions
    (and seeds: the base seed plus the position) go image by image."""
    base_seed = draw_seed(request.config)
    job = Job(
        group_id=request.group_id,
        batch_id=new_id("bat"),
        mode=JobMode.AUTOMATIC,
        prompt=request.prompt,
        config={**request.config.model_dump(exclude_none=True), **params, "seed": base_seed},
    )
    per_image = [prompt for prompt in expanded for _ in range(request.config.outputs_per_image)]
    outputs = [
        new_output(job, position, prompt, [image_id], base_seed + position, params)
        for position, (image_id, prompt) in enumerate(itertools.product(request.images, per_image))
    ]
    chunk = lifecycle.dispatch_chunk(settings, outputs, job.config.get("lane"))
    lifecycle.add_job(session, job, outputs, chunk)
    return [job]


def _expanded_items(request: SemiAutomaticSubmit) -> list[SemiAutomaticItem]:
    """The items with their prompt permutations expanded: an item whose prompt makes k
    prompts is k items, each with a set of its own (checked against the number of sets
    before any is built)."""
    permutations = []
    for index, item in enumerate(request.items):
        try:
            permutations.append(prompts.parse(item.prompt))
        except InvalidRequest as exc:
            raise InvalidRequest(f"items[{index}].prompt: {exc.message}") from exc
    count = sum(p.count for p in permutations)
    config = request.config
    sets = config.total_images // config.images_per_set
    if count > sets:
        items = f"{len(request.items)} items" + (
            f" make {count} prompts once their {{…}} permutations are expanded, each needing "
            "a set of its own, but there are"
            if count != len(request.items)
            else " but"
        )
        raise InvalidRequest(
            f"{items} only {sets} set(s) (total_images {config.total_images} / images_per_set "
            f"{config.images_per_set}): raise total_images to at least "
            f"{count * config.images_per_set} or send fewer items"
        )
    return [
        SemiAutomaticItem(images=item.images, prompt=prompt)
        for item, permutation in zip(request.items, permutations, strict=True)
        for prompt in permutation.prompts()
    ]


def _plan_semi_automatic(
    session: Session,
    request: SemiAutomaticSubmit,
    items: list[SemiAutomaticItem],
    params: dict[str, str | None],
) -> list[Job]:
    config = request.config
    batch_id = new_id("bat")
    base_seed = draw_seed(config)
    jobs = []
    for set_index in range(config.total_images // config.images_per_set):
        item = items[set_index % len(items)]
        job = Job(
            group_id=request.group_id,
            batch_id=batch_id,
            mode=JobMode.SEMI_AUTOMATIC,
            prompt=item.prompt,
            set_index=set_index,
            config={**config.model_dump(exclude_none=True), **params, "seed": base_seed},
            total=config.images_per_set,
        )
        first = set_index * config.images_per_set
        outputs = [
            new_output(
                job, position, item.prompt, item.images, base_seed + first + position, params
            )
            for position in range(config.images_per_set)
        ]
        lifecycle.add_job(session, job, outputs, chunk_size=config.images_per_set)
        jobs.append(job)
    return jobs


def new_output(
    job: Job,
    position: int,
    prompt: str,
    reference_ids: Sequence[str],
    seed: int,
    params: dict[str, Any],
) -> lifecycle.OutputRow:
    """A new output of `job`, as the row `lifecycle.add_job` inserts (and gives an id)."""
    return {
        "job_id": job.id,
        "group_id": job.group_id,
        "position": position,
        "prompt": prompt,
        "reference_ids": list(reference_ids),
        "seed": seed % 2**31,
        "params": params,
        "model": params["model"],
    }


# Catalog submissions ---------------------------------------------------------------------


def _plan_catalog(
    session: Session,
    settings: Settings,
    request: CatalogSubmit,
    params: dict[str, str | None],
    viewer: Viewer,
) -> list[Job]:
    """One text-to-image job per tag, of `count` entries of that tag picked at random."""
    catalog = catalogs.get_catalog(session, request.catalog_id, viewer)
    base_seed = draw_seed(request.config)
    picked = {
        tag: _expanded_entries(entries)
        for tag, entries in _pick_entries(catalog, request.tags, request.count, base_seed).items()
    }
    total = sum(len(entries) for entries in picked.values())
    if total > settings.submit_max_images:
        raise InvalidRequest(
            f"{total} images in one submission; the limit is {settings.submit_max_images}"
        )
    batch_id = new_id("bat")
    config = {**request.config.model_dump(exclude_none=True), **params, "seed": base_seed}
    jobs = []
    for tag, entries in picked.items():
        job = Job(
            group_id=request.group_id,
            batch_id=batch_id,
            mode=JobMode.CATALOG,
            prompt=f"catalog {catalog.name}, tag {tag}",
            config={
                **config,
                "catalog_id": catalog.id,
                "catalog_name": catalog.name,
                "tag": tag,
                "count": request.count,
            },
        )
        outputs = [
            _catalog_output(job, position, entry, prompt, base_seed + position, params)
            for position, (entry, prompt) in enumerate(entries)
        ]
        chunk = lifecycle.dispatch_chunk(settings, outputs, job.config.get("lane"))
        lifecycle.add_job(session, job, outputs, chunk)
        jobs.append(job)
    return jobs


def _pick_entries(
    catalog: Catalog, tags: Sequence[str], count: int | Literal["all"], seed: int
) -> dict[str, list[dict[str, Any]]]:
    """Per tag, `count` of its entries in random order (the same seed picks the same ones,
    whatever other tags are asked for), or all of them in catalog order for "all"."""
    unknown = [tag for tag in tags if tag not in catalog.tag_counts]
    if unknown:
        raise InvalidRequest(
            f"catalog {catalog.id} ({catalog.name!r}) has no prompt tagged "
            f"{', '.join(map(repr, unknown))}; "
            f"its tags are: {references.few(list(catalog.tag_counts), 50)}"
        )
    picked = {}
    for tag in tags:
        entries = catalogs.entries_tagged(catalog, tag)
        if count == "all":
            picked[tag] = entries
            continue
        if count > len(entries):
            raise InvalidRequest(
                f"count {count} is more than the {len(entries)} prompt(s) tagged {tag!r} in "
                f'catalog {catalog.id}: ask for at most {len(entries)}, or "all"'
            )
        picked[tag] = random.Random(f"{seed}/{tag}").sample(entries, count)
    return picked


def _expanded_entries(entries: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Each entry with each prompt of its {…} permutations (most entries have one)."""
    expanded: list[tuple[dict[str, Any], str]] = []
    for entry in entries:
        try:
            expanded.extend((entry, prompt) for prompt in prompts.expand(entry["prompt"]))
        except InvalidRequest as exc:
            raise InvalidRequest(f"catalog entry {entry['id']!r}: {exc.message}") from exc
    return expanded


def _catalog_output(
    job: Job,
    position: int,
    entry: dict[str, Any],
    prompt: str,
    seed: int,
    params: dict[str, str | None],
) -> lifecycle.OutputRow:
    """An entry's output: its own negative prompt, if any, replaces the config's."""
    negative_prompt = entry.get("negative_prompt") or params["negative_prompt"]
    output = new_output(
        job, position, prompt, [], seed, {**params, "negative_prompt": negative_prompt}
    )
    return output | {"prompt_id": entry["id"], "tags": list(entry["tags"])}
