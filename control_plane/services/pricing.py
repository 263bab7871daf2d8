"""What a submission will cost, before it runs: each output at its model's price for its
image size (the model table, `ModelSpec.price_for`, or `batch_price_for` for a job in the
batch lane); a text task (a persona's data) at 0
unless its model is in the model table.

An estimate is made by the submission's own planning (`submissions.write_jobs`), run with
the session marked as a dry run (`estimate`): the rows are planned as for the real thing,
then rolled back, and no event is written, so nothing is sent and nothing stays.
"""

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from sqlmodel import Session

from control_plane.models import Job, Lane, OutputKind
from control_plane.schemas import Estimate, ModelEstimate
from shared.model_table import model_table

DRY_RUN = "pricing_dry_run"


def price_of(
    kind: str, model: str | None, image_size: str | None, lane: str = Lane.ONLINE
) -> float:
    """One output's price in USD: its model's price for its size (its batch price in the
    batch lane); 0 for a model the table does not have (text models, unless configured
    there)."""
    spec = model_table().get(model or "")
    if spec is None:
        return 0.0
    if kind == OutputKind.TEXT:
        return spec.price_usd
    if lane == Lane.BATCH:
        batch_price = spec.batch_price_for(image_size)
        if batch_price is not None:  # submissions refuse the batch lane for models without
            return batch_price
    return spec.price_for(image_size)


def price_of_outputs(
    outputs: Iterable[tuple[str, str | None, str | None]], lane: str = Lane.ONLINE
) -> float:
    """The price of outputs given as (kind, model, image size), made in `lane`: each
    distinct one priced once."""
    counts = Counter(outputs)
    return round(sum(price_of(*priced, lane) * count for priced, count in counts.items()), 6)


def of_jobs(jobs: Iterable[Job]) -> Estimate:
    """The estimate of planned jobs (their `estimate_usd`, set by `lifecycle.add_job`), by
    model."""
    parts = [
        Estimate.of(
            job.config.get("model") or job.config.get("text_model") or "",
            job.total,
            job.estimate_usd,
        )
        for job in jobs
    ]
    return combine(parts)


def of_images(params: dict[str, Any], count: int) -> Estimate:
    """`count` images with `params` (model, image_size): for stages written later."""
    model = params.get("model") or ""
    price = price_of(OutputKind.IMAGE, model, params.get("image_size"))
    return Estimate.of(model, count, count * price)


def combine(parts: Iterable[Estimate]) -> Estimate:
    by_model: dict[str, ModelEstimate] = {}
    for part in parts:
        for model, share in part.by_model.items():
            seen = by_model.get(model, ModelEstimate(images=0, cost_usd=0.0))
            by_model[model] = ModelEstimate(
                images=seen.images + share.images,
                cost_usd=round(seen.cost_usd + share.cost_usd, 6),
            )
    return Estimate(
        images=sum(share.images for share in by_model.values()),
        cost_usd=round(sum(share.cost_usd for share in by_model.values()), 6),
        by_model=by_model,
    )


class Priced(Exception):
    """A dry run's planning is done: its estimate (the rows were rolled back)."""

    def __init__(self, estimate: Estimate) -> None:
        super().__init__("priced")
        self.estimate = estimate


def is_dry_run(session: Session) -> bool:
    return bool(session.info.get(DRY_RUN))


def estimate(session: Session, submit: Callable[[], object]) -> Estimate:
    """What `submit` (a submission's service call on `session`) would cost: its planning
    runs as for the real thing, and is rolled back (`submissions.write_jobs`)."""
    session.info[DRY_RUN] = True
    try:
        submit()
    except Priced as priced:
        return priced.estimate
    finally:
        session.info.pop(DRY_RUN, None)
        session.rollback()
    raise RuntimeError("the submission was not planned through submissions.write_jobs")
