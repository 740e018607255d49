"""Robust single-image loading and the one image transform every Tessera loader shares.

Axis legend: C channels (3, RGB), H W height and width in pixels.

`load_image` is the entry point for every user-supplied picture (CAML predict, the web app, the tokenizer CLI, the
folder loaders). It always returns an 8-bit RGB `PIL.Image`, or raises an error that names the file:

- missing file -> `FileNotFoundError`; a folder, a non-image, a truncated or corrupt file, an unsupported mode, or an
  image above the pixel cap -> `ImageLoadError` (a `ValueError`).
- The pixel cap (`max_pixels`, default 64 Mpx) is checked from the header, before any pixel is decoded, so a
  decompression bomb costs nothing. Pillow's own `DecompressionBombError` (beyond 2x `Image.MAX_IMAGE_PIXELS`) is
  turned into the same clear `ImageLoadError`, and so is its warning zone (above `Image.MAX_IMAGE_PIXELS`): the cap
  never exceeds it unless the caller raises `max_pixels` on purpose. (Pillow may still print its
  `DecompressionBombWarning` just before our error; silencing it would need the thread-unsafe `catch_warnings`.)
- Only common raster formats are opened (`SAFE_FORMATS`): Pillow's EPS plugin runs Ghostscript on the file, and other
  rare plugins are little-tested attack surface for uploads. Nothing here ever unpickles user data.

Valid but unusual images are converted deliberately:
- EXIF orientation is applied (phone photos come out upright).
- Transparency (RGBA, LA, PA, palette or gray/RGB with a transparent colour key) is composited on a solid background,
  white by default (what a browser shows on a white page); pass `background=(0, 0, 0)` for black.
- 16-bit and 32-bit grayscale (`I;16*`, `I`) are scaled to 8 bits by their bit depth (65535 -> 255), not clipped;
  float (`F`) images are taken as [0, 1] when their maximum is <= 1, else clipped to [0, 255].
- CMYK, YCbCr, LAB and HSV go through Pillow's converters (no ICC colour management).

`resize_center_crop` is the shared transform ("resize the shorter side, then center crop") and `to_tensor` turns an
RGB image into a float tensor (C, H, W) in [0, 1].
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "ImageLoadError",
    "DEFAULT_MAX_PIXELS",
    "SAFE_FORMATS",
    "load_image",
    "to_rgb",
    "to_tensor",
    "resize_center_crop",
    "prepare_image",
]

# 8192 x 8192: above any camera or wallpaper we use, far below what would exhaust memory (3 bytes a pixel = 200 MB).
DEFAULT_MAX_PIXELS = 64 * 2**20

# Formats a user may hand us. Excluded on purpose: EPS (runs Ghostscript), PSD, FITS, GRIB, WMF and other rare plugins.
SAFE_FORMATS: tuple[str, ...] = (
    "PNG", "JPEG", "MPO", "GIF", "BMP", "DIB", "TIFF", "WEBP", "AVIF", "PPM", "TGA", "ICO", "QOI", "JPEG2000",
)

ImageSourceLike = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class ImageLoadError(ValueError):
    """A file could not be read as an image; the message names the file and the reason."""


def _available_formats(formats: tuple[str, ...]) -> list[str]:
    Image.init()  # registers all plugins so Image.OPEN is complete
    return [f for f in formats if f in Image.OPEN]


def _describe(source: ImageSourceLike, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return getattr(source, "name", None) or "<stream>"


def load_image(
    source: ImageSourceLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    name: str | None = None,
    formats: tuple[str, ...] = SAFE_FORMATS,
) -> Image.Image:
    """Open any supported image as an 8-bit RGB `PIL.Image`, with errors that name the file.

    Args:
        source: a path, the file's bytes, or a binary file object (read from its current position).
        max_pixels: refuse images with more pixels than this (checked before decoding); None uses Pillow's
            `Image.MAX_IMAGE_PIXELS` (the size at which Pillow would only warn), so that case is an error too.
        background: RGB colour transparent pixels are composited on (white by default).
        name: how to call the image in error messages (useful for bytes, e.g. an upload's filename).
        formats: Pillow format names that may be opened.

    Returns:
        A fully decoded RGB image, upright according to its EXIF orientation, not tied to any open file.

    Raises:
        FileNotFoundError: the path does not exist.
        ImageLoadError: a folder, a non-image or unsupported format, a truncated or corrupt file, an image above
            `max_pixels`, or a mode that cannot be converted to RGB. The message starts with the file name.
    """
    label = _describe(source, name)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"image file not found: {label}")
        if os.path.isdir(path):
            raise ImageLoadError(f"{label}: is a directory, not an image file")
        fp: str | BinaryIO = path
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(f"{label}: empty data, not an image")
        fp = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        fp = source
    else:
        raise TypeError(f"load_image expects a path, bytes or a binary file object, got {type(source).__name__}")

    try:
        img = Image.open(fp, formats=_available_formats(formats))
    except FileNotFoundError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            f"{label}: not an image file, or not one of the accepted formats ({', '.join(formats)})"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{label}: image is too large to decode safely (decompression bomb guard): {exc}") from exc
    except PermissionError:
        raise
    except Exception as exc:  # Pillow raises many types (SyntaxError, struct.error, ...) on bad headers
        raise ImageLoadError(f"{label}: cannot read the image header ({type(exc).__name__}: {exc})") from exc

    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageLoadError(f"{label}: image has an empty size {width}x{height}")
        if limit is not None and width * height > limit:
            raise ImageLoadError(
                f"{label}: {width}x{height} = {width * height:,} pixels exceeds the limit of {limit:,} "
                "(possible decompression bomb); pass a larger max_pixels if the image is trusted"
            )
        try:
            img.load()
        except Image.DecompressionBombError as exc:
            raise ImageLoadError(f"{label}: image is too large to decode safely: {exc}") from exc
        except Exception as exc:  # truncated data -> OSError, broken chunks -> SyntaxError/ValueError, zlib.error...
            raise ImageLoadError(f"{label}: truncated or corrupt image data ({type(exc).__name__}: {exc})") from exc
        try:
            upright = ImageOps.exif_transpose(img)
        except Exception:  # a damaged EXIF block should not cost the user the picture: keep the stored orientation
            upright = img
        try:
            rgb = to_rgb(upright, background=background)
        except ValueError as exc:
            raise ImageLoadError(f"{label}: cannot convert image mode {img.mode!r} to RGB ({exc})") from exc
        # Detach from the file: the returned image must outlive the `with` block.
        return rgb.copy() if rgb is img else rgb


def _scale_to_uint8(img: Image.Image) -> Image.Image:
    """8-bit `L` image from the integer or float grayscale modes (I;16*, I, F)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = arr.astype(np.float64) * (255.0 / 65535.0)
    elif img.mode == "I":
        peak = float(arr.max()) if arr.size else 0.0
        # Mode I holds 16-bit PNGs on older Pillow and genuine 32-bit data in TIFFs: scale by the depth actually used.
        if peak > 65535:
            scaled = arr.astype(np.float64) * (255.0 / peak)
        elif peak > 255:
            scaled = arr.astype(np.float64) * (255.0 / 65535.0)
        else:
            scaled = arr.astype(np.float64)
    else:  # "F"
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        scaled = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image, *, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on `background`.

    Args:
        img: a decoded image in any mode.
        background: RGB colour behind transparent pixels.

    Returns:
        An RGB image (`img` itself when it already is RGB without a transparent colour key).

    Raises:
        ValueError: Pillow has no conversion from this mode.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        return _scale_to_uint8(img).convert("RGB")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")  # also turns palette/colour-key transparency into an alpha channel
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def to_tensor(img: Image.Image | np.ndarray) -> Tensor:
    """Float tensor (C=3, H, W) in [0, 1] from an RGB image or a uint8 array (H, W, 3) or (H, W).

    Raises:
        ValueError: an array that is not uint8 or has the wrong shape.
    """
    if isinstance(img, Image.Image):
        arr = np.array(to_rgb(img), dtype=np.uint8)  # a writable copy (H, W, 3)
    else:
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            raise ValueError(f"to_tensor expects a uint8 array, got dtype {arr.dtype}")
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"to_tensor expects an array of shape (H, W, 3) or (H, W), got {arr.shape}")
        arr = np.array(arr, copy=True)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)  # (H, W, C) -> (C, H, W)


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is `resolution`, then center crop to `resolution` x `resolution`.

    Done as one antialiased bicubic resample of the central square (same result as resize-then-crop, one pass).

    Args:
        img: an RGB image of any size (1x1 included).
        resolution: output side in pixels.

    Returns:
        An RGB image of size (resolution, resolution).
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return img.resize((resolution, resolution), Image.Resampling.BICUBIC, box=box)


def prepare_image(img: Image.Image, resolution: int) -> Tensor:
    """The shared transform of every loader: `resize_center_crop` then `to_tensor` -> (C, H, W) float in [0, 1]."""
    return to_tensor(resize_center_crop(to_rgb(img), resolution))
