"""The offline provider: no network, deterministic, real image work with Pillow.

Same references, prompt, params and seed give the same bytes. The output has the requested
aspect ratio and size, is derived from the reference image(s) when there are any, and
visibly changes with the prompt and negative prompt (tint, label) and the seed (shapes).
It answers JPEG, a MIME type Gemini also chooses at times, which keeps its CPU cost per
image low. Nothing is billed, but each image reports what Gemini would bill for it (the
model table's price for its size), so recorded costs, caps and usage reports read on the
embedded default as they will with Gemini. Text tasks are answered by `offline_text.write`:
JSON matching the schema, deterministic from the prompt and seed.
"""

import asyncio
import hashlib
import io
import random

from PIL import Image, ImageDraw, ImageOps

from shared.images import encode, output_size
from shared.model_table import image_price
from worker.providers import offline_text
from worker.providers.base import (
    GeneratedImage,
    GeneratedText,
    GenerationRequest,
    Provider,
    TextRequest,
)

MODEL_VERSION = "offline-1"


class OfflineProvider(Provider):
    name = "offline"

    def __init__(self, latency_ms: int = 0) -> None:
        self.latency_s = latency_ms / 1000

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        data = await asyncio.to_thread(render, request)
        params = request.params
        return GeneratedImage(
            data=data,
            content_type="image/jpeg",
            model_version=MODEL_VERSION,
            cost_usd=image_price(params.model, params.image_size),
        )

    async def generate_text(self, request: TextRequest) -> GeneratedText:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        text = offline_text.write(request.prompt, request.seed, request.response_schema)
        return GeneratedText(text=text, model_version=MODEL_VERSION)


def prompt_text(request: GenerationRequest) -> str:
    """The prompt with the negative prompt folded in, as the Gemini provider sends it."""
    negative = request.params.negative_prompt
    return f"{request.prompt}\n\nAvoid: {negative}" if negative else request.prompt


def _prompt_colour(prompt: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(prompt.encode()).digest()
    return digest[0], digest[1], digest[2]


def _base_canvas(request: GenerationRequest, size: tuple[int, int]) -> Image.Image:
    if not request.references:
        text = prompt_text(request)
        top, bottom = _prompt_colour(text), _prompt_colour(text[::-1])
        gradient = Image.linear_gradient("L").resize(size)
        return Image.composite(
            Image.new("RGB", size, bottom), Image.new("RGB", size, top), gradient
        )
    layers = []
    for reference in request.references:
        with Image.open(io.BytesIO(reference.data)) as image:
            image.draft("RGB", size)
            upright = ImageOps.exif_transpose(image).convert("RGB")
            layers.append(ImageOps.fit(upright, size, Image.Resampling.BILINEAR))
    canvas = layers[0]
    for index, layer in enumerate(layers[1:], start=2):
        canvas = Image.blend(canvas, layer, 1 / index)
    return canvas


def render(request: GenerationRequest) -> bytes:
    params = request.params
    size = output_size(params.aspect_ratio, params.image_size)
    # Derive and tint at a quarter of the size, then upscale once: same look, a third the CPU.
    work_size = (max(8, size[0] // 4), max(8, size[1] // 4))
    base = _base_canvas(request, work_size)
    tint = _prompt_colour(prompt_text(request))
    base = Image.blend(base, Image.new("RGB", work_size, tint), 0.35)
    canvas = base.resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    rng = random.Random(params.seed)
    width, height = size
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        radius = rng.randrange(max(2, min(size) // 16), max(3, min(size) // 5))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=4)
    label = f"offline | seed {params.seed} | {params.model} | {request.prompt[:48]}"
    if params.negative_prompt:
        label += f" | avoid: {params.negative_prompt[:32]}"
    draw.rectangle((0, height - 22, width, height), fill=(0, 0, 0))
    draw.text((6, height - 18), label, fill=(255, 255, 255))
    return encode(canvas, "JPEG", quality=90)
