"""The offline provider (worker/providers/offline.py): deterministic pictures that follow
the prompt, seed, negative prompt, aspect ratio, size and reference."""

import asyncio
import io

import pytest
from PIL import Image, ImageStat

from shared.contract import ImageParams
from tests.conftest import png_bytes
from worker.providers import GenerationRequest, Reference
from worker.providers.offline import OfflineProvider, render


def _request(
    prompt: str = "a red fox", seed: int = 1, refs: list[bytes] | None = None, **params: str
) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt,
        params=ImageParams(model="gemini-2.5-flash-image", seed=seed, **params),
        references=[Reference(data, "image/png") for data in refs or []],
    )


def test_offline_is_deterministic_and_varies_with_prompt_and_seed() -> None:
    base = render(_request())
    assert render(_request()) == base
    assert render(_request(prompt="a blue whale")) != base
    assert render(_request(seed=2)) != base
    assert Image.open(io.BytesIO(base)).format == "JPEG"


@pytest.mark.parametrize("refs", [None, [png_bytes(40, 30, (20, 200, 60))]], ids=["text", "edit"])
def test_offline_folds_the_negative_prompt_in(refs: list[bytes] | None) -> None:
    plain = render(_request(refs=refs, image_size="512"))
    negative = render(_request(refs=refs, image_size="512", negative_prompt="dogs, blur"))
    assert negative != plain
    assert render(_request(refs=refs, image_size="512", negative_prompt="dogs, blur")) == negative
    assert render(_request(refs=refs, image_size="512", negative_prompt="cats")) != negative


@pytest.mark.parametrize(
    ("ratio", "size", "expected"),
    [
        ("1:1", "1K", (1024, 1024)),
        ("16:9", "1K", (1368, 768)),
        ("9:16", "512", (384, 680)),
        ("4:3", "2K", (2368, 1776)),
    ],
)
def test_offline_honours_aspect_ratio_and_size(
    ratio: str, size: str, expected: tuple[int, int]
) -> None:
    image = Image.open(io.BytesIO(render(_request(aspect_ratio=ratio, image_size=size))))
    assert image.size == expected
    width, height = expected
    across, down = (int(n) for n in ratio.split(":"))
    assert abs(width / height - across / down) < 0.02


def test_offline_output_is_derived_from_the_reference() -> None:
    green = render(_request(refs=[png_bytes(80, 80, (0, 255, 0))], image_size="512"))
    blue = render(_request(refs=[png_bytes(80, 80, (0, 0, 255))], image_size="512"))
    green_mean = ImageStat.Stat(Image.open(io.BytesIO(green)).convert("RGB")).mean
    blue_mean = ImageStat.Stat(Image.open(io.BytesIO(blue)).convert("RGB")).mean
    assert green_mean[1] > green_mean[2] + 60
    assert blue_mean[2] > blue_mean[1] + 60


@pytest.mark.parametrize(
    ("model", "size", "price"),
    [("gemini-2.5-flash-image", None, 0.039), ("gemini-3.1-flash-image", "2K", 0.101)],
)
def test_offline_reports_what_gemini_would_bill(model: str, size: str | None, price: float) -> None:
    request = GenerationRequest("a red fox", ImageParams(model=model, seed=1, image_size=size))
    image = asyncio.run(OfflineProvider().generate(request))
    assert image.cost_usd == price
