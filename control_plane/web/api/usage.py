"""Prices and spend: the model table, and what was spent, by day, model, user or group."""

from datetime import date

from fastapi import APIRouter, Query

from control_plane.models import utcnow
from control_plane.schemas import ModelPublic, ModelTable, Usage
from control_plane.services import spending
from control_plane.web.deps import PlatformDep, SessionDep, ViewerDep
from shared.model_table import model_table

router = APIRouter(prefix="/api", tags=["cost"])


@router.get("/models")
def list_models(platform: PlatformDep) -> ModelTable:
    """The image models: limits, aspect ratios, image sizes and prices per image in USD
    (online, by size where it varies, and by batch); `default_model` is used when a
    submission names none."""
    default = platform.settings.default_model
    models = [
        ModelPublic(
            id=name,
            default=name == default,
            max_reference_images=spec.max_reference_images,
            aspect_ratios=spec.aspect_ratios,
            image_sizes=spec.image_sizes,
            default_image_size=spec.default_image_size,
            price_usd=spec.price_usd,
            size_prices_usd={size: spec.price_for(size) for size in spec.image_sizes},
            batch_price_usd=spec.batch_price_usd,
        )
        for name, spec in model_table().items()
    ]
    return ModelTable(default_model=default, models=models)


@router.get("/usage")
def get_usage(
    session: SessionDep,
    viewer: ViewerDep,
    start: date | None = Query(None, alias="from", description="first UTC day (this month's)"),
    end: date | None = Query(None, alias="to", description="last UTC day, included"),
    group_by: spending.GroupBy = "day",
) -> Usage:
    """Images and their actual cost in USD, of the outputs that ended from `from` to `to`
    (UTC days, both included; by default this month), per day, model, user or group. A
    user sees their own; an admin everyone's."""
    first, last = spending.usage_range(start, end, utcnow().date())
    return spending.usage(session, viewer, first, last, group_by)
