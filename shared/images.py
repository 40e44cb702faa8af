"""Image decoding and validation for every photo Lookbook accepts: JPEG, PNG and WebP, EXIF-oriented.

Limits come from settings, and the pixel limit is checked from the header before any pixel is
decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")

# Pillow's own bomb guard would fire with a different message; our explicit check below replaces it.
Image.MAX_IMAGE_PIXELS = None


class ImageRejected(ValueError):
    """The bytes are not an image Lookbook accepts; the message says what to send instead."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    min_side: int = 32


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Returns the photo as an RGB image with EXIF orientation applied, or raises ImageRejected."""
    if not data:
        raise ImageRejected("the image is empty: send the bytes of a JPEG, PNG or WebP photo")
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            f"the image is {_mb(len(data))}, above the {_mb(limits.max_bytes)} limit "
            "(LOOKBOOK_MAX_IMAGE_BYTES): send a smaller or more compressed photo"
        )
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("the bytes are not a recognised image: send a JPEG, PNG or WebP photo") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # A header cut short (a JPEG that ends inside its markers, a WebP without its frame) fails
        # here, before any pixel is read.
        raise ImageRejected(f"the image is corrupt or truncated ({exc}): re-export or re-upload the photo") from None
    if image.format not in ACCEPTED_FORMATS:
        raise ImageRejected(f"{image.format} images are not supported: convert the photo to JPEG, PNG or WebP")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRejected(
            f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels, above the "
            f"{limits.max_pixels / 1e6:.1f} MP limit (LOOKBOOK_MAX_IMAGE_PIXELS): downscale it and retry"
        )
    if min(width, height) < limits.min_side:
        raise ImageRejected(
            f"the image is {width}x{height}, smaller than {limits.min_side} px on a side: send a larger photo"
        )
    try:
        with warnings.catch_warnings():
            # A truncated JPEG only warns in some Pillow paths; make every such case an error.
            warnings.simplefilter("error")
            image.load()
        oriented = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as exc:
        raise ImageRejected(f"the image is corrupt or truncated ({exc}): re-export or re-upload the photo") from None
    return oriented.convert("RGB")


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def crop_jpeg(path: Path, box: tuple[float, float, float, float], quality: int = 90) -> bytes:
    """A garment cut out of a look photo (EXIF-oriented), as JPEG bytes: the shopper-like query the
    evaluations, benchmarks and tests send."""
    with Image.open(path) as image:
        return encode_jpeg(ImageOps.exif_transpose(image).convert("RGB").crop(box), quality)
