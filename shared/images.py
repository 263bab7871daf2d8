"""Image helpers: validate uploads, apply EXIF orientation, make thumbnails, measure outputs."""

import io
import warnings
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS: dict[str, tuple[str, str]] = {
    "PNG": ("image/png", ".png"),
    "JPEG": ("image/jpeg", ".jpg"),
    "WEBP": ("image/webp", ".webp"),
    "MPO": ("image/jpeg", ".jpg"),  # a JPEG with extra frames, as many phones and cameras write
}
EXTENSIONS = {mime: ext for mime, ext in ACCEPTED_FORMATS.values()}
FALLBACK_EXTENSION = ".bin"  # for a content type not in EXTENSIONS
THUMBNAIL_SIZE = 256
THUMBNAIL_TYPE = "image/webp"
_EXIF_ORIENTATION = 0x0112
_ENCODE_DEFAULTS: dict[str, dict[str, object]] = {
    "JPEG": {"quality": 92},
    "PNG": {"compress_level": 1},
}
_SIZE_LONG_SIDE = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}


class ImageRejected(ValueError):
    """An upload that is not an acceptable image; the message is shown to the user."""


@dataclass(frozen=True)
class InspectedImage:
    format: str  # Pillow's name; MPO is a JPEG (its first frame is what everyone reads)
    content_type: str
    extension: str
    width: int
    height: int
    reencoded: bytes | None  # set when EXIF orientation had to be applied; else keep the original


def extension_for(content_type: str) -> str:
    return EXTENSIONS.get(content_type, FALLBACK_EXTENSION)


def inspect_upload(src: BinaryIO, *, max_pixels: int) -> InspectedImage:
    """Decode `src` completely and check it; raise ImageRejected with a reason a person reads."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(src)
            if image.format not in ACCEPTED_FORMATS:
                raise ImageRejected(f"unsupported format {image.format}; send PNG, JPEG or WebP")
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    f"image is {width}x{height} = {width * height:,} pixels; "
                    f"the limit is {max_pixels:,}"
                )
            image.load()
    except ImageRejected:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("not a PNG, JPEG or WebP image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"corrupt or truncated image ({exc})") from None
    content_type, extension = ACCEPTED_FORMATS[image.format]
    reencoded = None
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        upright = ImageOps.exif_transpose(image)
        reencoded = encode(upright, "JPEG" if image.format == "MPO" else image.format)
        width, height = upright.size
    return InspectedImage(image.format, content_type, extension, width, height, reencoded)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, fmt, **{**_ENCODE_DEFAULTS.get(fmt, {}), **options})
    return buffer.getvalue()


def output_size(aspect_ratio: str | None, image_size: str | None) -> tuple[int, int]:
    """Pixel size for a ratio like "16:9" at a size like "1K" (same area as a square of it)."""
    side = _SIZE_LONG_SIDE.get(image_size or "1K", 1024)
    across, down = (int(n) for n in (aspect_ratio or "1:1").split(":"))
    scale = (across / down) ** 0.5
    return max(8, round(side * scale / 8) * 8), max(8, round(side / scale / 8) * 8)


def make_thumbnail(source: bytes | BinaryIO, size: int = THUMBNAIL_SIZE) -> bytes:
    """A WebP no larger than size x size, upright."""
    image: Image.Image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image.draft("RGB", (size, size))  # JPEG decodes at a fraction of full size
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    image.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return encode(image, "WEBP", quality=80, method=0)


def dimensions(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size
