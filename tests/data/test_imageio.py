"""load_image: errors that name the file for bad input, correct RGB for valid odd images; the shared transform.

Axis legend: C channels, H W height and width.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.data import ImageLoadError, load_image, prepare_image, resize_center_crop, to_tensor


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is tiny: the classic decompression bomb shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------------- bad input


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(path)


def test_directory_is_rejected_by_name(tmp_path):
    with pytest.raises(ImageLoadError, match=str(tmp_path)):
        load_image(tmp_path)


@pytest.mark.parametrize("content", [b"hello, this is a text file\n", b"", b"%PDF-1.4\n%\xe2\xe3\n"])
def test_non_image_file_names_the_file(tmp_path, content):
    path = tmp_path / "notes.png"  # the extension lies; content decides
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match="notes.png"):
        load_image(path)


def test_eps_is_refused_so_ghostscript_never_runs(tmp_path):
    path = tmp_path / "figure.eps"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageLoadError, match="figure.eps.*accepted formats"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_file_names_the_file(tmp_path, fmt):
    data = _encoded(_noise(), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=f"cut.{fmt.lower()}"):
        load_image(path)


def test_corrupt_png_data_names_the_file(tmp_path):
    data = bytearray(_encoded(_noise(), "PNG"))
    start = data.index(b"IDAT") + 20
    data[start:start + 40] = bytes(b ^ 0xFF for b in data[start:start + 40])
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match="corrupt.png"):
        load_image(path)


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 30000))  # 900 Mpx claimed in a 100-byte file
    with pytest.raises(ImageLoadError, match="bomb.png"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="bomb.png"):
        load_image(path, max_pixels=None)  # Pillow's own guard, turned into the same error


def test_pixel_cap_applies_to_normal_images_and_bytes_get_their_name():
    data = _encoded(_noise(64, 48), "PNG")
    with pytest.raises(ImageLoadError, match=r"upload.png: 64x48 = 3,072 pixels exceeds the limit of 1,000"):
        load_image(data, max_pixels=1000, name="upload.png")
    # Pillow's warning zone (above MAX_IMAGE_PIXELS, below twice that) is an error too when max_pixels is None.
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 2000
        with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageLoadError, match="exceeds the limit"):
            load_image(data, max_pixels=None)
    finally:
        Image.MAX_IMAGE_PIXELS = old
    assert load_image(data).size == (64, 48)


def test_wrong_argument_type():
    with pytest.raises(TypeError, match="path, bytes"):
        load_image(12345)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------ valid odd


def test_one_pixel_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (1, 1) and img.getpixel((0, 0)) == (10, 20, 30)
    x = prepare_image(img, 8)
    assert x.shape == (3, 8, 8) and torch.allclose(x[:, 4, 4], torch.tensor([10, 20, 30]) / 255, atol=1e-6)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    img = load_image(path)
    assert img.mode == "RGB"
    assert [img.getpixel((i, 0))[0] for i in range(4)] == [0, 1, 128, 255]


def test_thirty_two_bit_and_float_grayscale(tmp_path):
    path = tmp_path / "big.tif"
    Image.fromarray(np.array([[0, 1_000_000, 2_000_000]], dtype=np.int32), mode="I").save(path)
    assert [load_image(path).getpixel((i, 0))[0] for i in range(3)] == [0, 128, 255]
    fpath = tmp_path / "unit.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F").save(fpath)
    assert [load_image(fpath).getpixel((i, 0))[0] for i in range(3)] == [0, 128, 255]


def test_palette_with_transparency_composites_on_white_or_black(tmp_path):
    img = Image.new("P", (4, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putdata([0, 1, 0, 1])  # index 0 = red (transparent), index 1 = blue
    path = tmp_path / "pal.png"
    img.save(path, transparency=0)
    assert load_image(path).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(path).getpixel((1, 0)) == (0, 0, 255)
    assert load_image(path, background=(0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)


def test_rgba_and_la_blend_with_the_background(tmp_path):
    rgba = Image.new("RGBA", (2, 2), (200, 0, 0, 128))
    path = tmp_path / "half.png"
    rgba.save(path)
    r, g, b = load_image(path).getpixel((0, 0))
    assert abs(r - (200 * 128 + 255 * 127) / 255) <= 1 and abs(g - 127) <= 1
    la = Image.new("LA", (2, 2), (0, 0))  # fully transparent black
    lpath = tmp_path / "la.png"
    la.save(lpath)
    assert load_image(lpath).getpixel((1, 1)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    img = load_image(path)
    r, g, b = img.getpixel((8, 8))
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_exif_rotated_jpeg_is_upright(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (20, 40)  # width and height swapped
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 34))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_bilevel_animated_gif_and_bytes_and_stream_inputs(tmp_path):
    bw = Image.new("1", (3, 3), 1)
    assert load_image(_encoded(bw, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert load_image(buf.getvalue()).getpixel((0, 0)) == (255, 0, 0)  # first frame
    assert load_image(io.BytesIO(_encoded(frames[1], "PNG"))).getpixel((0, 0)) == (0, 255, 0)


# ------------------------------------------------------------------------------------------------------ transform


def test_to_tensor_and_center_crop():
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste((0, 255, 0), (100, 0, 200, 100))  # green center square, red sides
    out = resize_center_crop(img, 16)
    assert out.size == (16, 16)
    x = to_tensor(out)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    # Only the center survives the crop (the outermost columns see a little red through the bicubic support, as a
    # resize of the whole image followed by a crop would).
    assert x[1, :, 1:-1].min() > 0.95 and x[0, :, 1:-1].max() < 0.05 and x[1].min() > 0.85
    gray = to_tensor(np.full((5, 7), 51, dtype=np.uint8))
    assert gray.shape == (3, 5, 7) and torch.allclose(gray, torch.full_like(gray, 0.2))
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(np.zeros((4, 4, 3), dtype=np.float32))


def test_load_image_path_types(tmp_path: Path):
    path = tmp_path / "a.png"
    _noise(8, 8).save(path)
    assert load_image(str(path)).size == load_image(path).size == (8, 8)
