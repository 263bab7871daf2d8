"""The image models pixelfleet knows and what each accepts: checked at submit time.

The table is configuration: PIXELFLEET_MODELS_FILE may point at a JSON file of the same
shape ({"model-id": {...ModelSpec fields...}}) that replaces it, so a new model is a
config change.
"""

import json
import os
from functools import cache

from pydantic import BaseModel, TypeAdapter

_COMMON_RATIOS = ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]


class ModelSpec(BaseModel):
    max_reference_images: int
    aspect_ratios: list[str]
    image_sizes: list[str]
    default_image_size: str
    price_usd: float  # per image, standard
    batch_price_usd: float | None = None  # per image, batch API (None: no batch lane)
    size_prices_usd: dict[str, float] = {}  # standard price where it depends on image_size
    batch_size_prices_usd: dict[str, float] = {}  # batch price where it depends on image_size

    def price_for(self, image_size: str | None) -> float:
        return self.size_prices_usd.get(image_size or self.default_image_size, self.price_usd)

    def batch_price_for(self, image_size: str | None) -> float | None:
        """The batch price of one image: its size's batch price; for a size with a standard
        price of its own but no batch one, that price at the model's batch discount; None
        for a model the Batch API does not serve."""
        if self.batch_price_usd is None:
            return None
        size = image_size or self.default_image_size
        if size in self.batch_size_prices_usd:
            return self.batch_size_prices_usd[size]
        if size in self.size_prices_usd:
            return round(self.size_prices_usd[size] * self.batch_price_usd / self.price_usd, 6)
        return self.batch_price_usd


DEFAULT_MODELS: dict[str, ModelSpec] = {
    "gemini-2.5-flash-image": ModelSpec(
        max_reference_images=3,
        aspect_ratios=_COMMON_RATIOS,
        image_sizes=["1K"],
        default_image_size="1K",
        price_usd=0.039,
        batch_price_usd=0.0195,
    ),
    "gemini-3-pro-image": ModelSpec(
        max_reference_images=14,
        aspect_ratios=_COMMON_RATIOS,
        image_sizes=["1K", "2K", "4K"],
        default_image_size="1K",
        price_usd=0.134,
        batch_price_usd=0.067,
        size_prices_usd={"4K": 0.24},
        batch_size_prices_usd={"4K": 0.12},
    ),
    "gemini-3.1-flash-image": ModelSpec(
        max_reference_images=14,
        aspect_ratios=[*_COMMON_RATIOS, "1:4", "4:1", "1:8", "8:1"],
        image_sizes=["512", "1K", "2K", "4K"],
        default_image_size="1K",
        price_usd=0.067,
        batch_price_usd=0.0335,
        size_prices_usd={"512": 0.045, "2K": 0.101, "4K": 0.151},
        batch_size_prices_usd={"512": 0.0225, "2K": 0.0505, "4K": 0.0755},
    ),
    "gemini-3.1-flash-lite-image": ModelSpec(
        max_reference_images=14,
        aspect_ratios=_COMMON_RATIOS,
        image_sizes=["1K"],
        default_image_size="1K",
        price_usd=0.034,
        batch_price_usd=0.017,
    ),
}
DEFAULT_MODEL = "gemini-2.5-flash-image"


@cache
def model_table() -> dict[str, ModelSpec]:
    path = os.environ.get("PIXELFLEET_MODELS_FILE")
    if not path:
        return DEFAULT_MODELS
    with open(path, encoding="utf-8") as handle:
        return TypeAdapter(dict[str, ModelSpec]).validate_python(json.load(handle))


def image_price(model: str, image_size: str | None = None) -> float | None:
    """What Gemini bills for one image of `model` online (by size where it varies); None
    for a model the table does not have."""
    spec = model_table().get(model)
    return spec.price_for(image_size) if spec else None


def batch_image_price(model: str, image_size: str | None = None) -> float | None:
    """What Gemini bills for one image of `model` made by the Batch API (by size where it
    varies); None for a model the table does not have or the Batch API does not serve."""
    spec = model_table().get(model)
    return spec.batch_price_for(image_size) if spec else None
