"""Uploaded images: type sniffed from the bytes by Pillow, size and dimension caps, full decode to catch corruption.

The client's filename and Content-Type are never trusted. An image is checked in this order, cheapest first: byte
count, then the header (format and dimensions, read without decoding pixels), then a full decode.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from tessera.serve.config import ServeLimits
from tessera.serve.errors import ServeError

__all__ = ["UploadedImage", "read_image"]


@dataclass
class UploadedImage:
    """A validated upload: the decoded RGB image, its sniffed format and its original name (for display only)."""

    image: Image.Image
    format: str
    filename: str
    num_bytes: int


def read_image(data: bytes, filename: str, limits: ServeLimits, field: str = "image") -> UploadedImage:
    """Validate and decode one uploaded image.

    Raises:
        ServeError: 413 over the byte cap; 415 not an allowed image type; 422 too large in pixels, or corrupt.
    """
    name = filename or "upload"
    if len(data) == 0:
        raise ServeError(422, f"{field}: file {name!r} is empty", field)
    if len(data) > limits.max_upload_bytes:
        raise ServeError(413, f"{field}: file {name!r} is {len(data):,} bytes, over the limit of {limits.max_upload_bytes:,} bytes", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ServeError(415, f"{field}: file {name!r} is not an image of an allowed type ({', '.join(limits.allowed_formats)}): {exc}", field) from exc
    except OSError as exc:  # truncated headers and the like
        raise ServeError(422, f"{field}: file {name!r} could not be read as an image: {exc}", field) from exc
    fmt = (im.format or "").upper()
    if fmt not in limits.allowed_formats:
        raise ServeError(415, f"{field}: file {name!r} is {fmt or 'an unknown format'}; allowed: {', '.join(limits.allowed_formats)}", field)
    w, h = im.size
    if max(w, h) > limits.max_image_side:
        raise ServeError(422, f"{field}: image {name!r} is {w}x{h} pixels; the limit is {limits.max_image_side} pixels per side", field)
    if w == 0 or h == 0:
        raise ServeError(422, f"{field}: image {name!r} has no pixels ({w}x{h})", field)
    try:
        im.load()  # decodes every pixel: truncated or corrupt files fail here
        rgb = im.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise ServeError(422, f"{field}: image {name!r} is corrupt or truncated ({fmt}): {exc}", field) from exc
    return UploadedImage(rgb, fmt, name, len(data))
