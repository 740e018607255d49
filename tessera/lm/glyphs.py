"""Glyph images: letters of six scripts rendered in the DejaVu faces that ship with matplotlib, with Unicode names.

Axis legend: H, W image height/width in pixels, C = 3 RGB channels.

Classes are base letters (no diacritic decomposition) of Latin, Greek, Cyrillic, Armenian, Georgian and Hebrew that
at least `min_faces` of matplotlib's bundled DejaVu faces cover (LastResort and the tiny "Display" faces excluded).
Each render picks a face, a scale and an offset, and scales the glyph to its own bounding box (scripts differ in
height; unscaled glyphs get clipped or vanish at 32 px). Text comes from `unicodedata`: the letter, its Unicode name
("CYRILLIC SMALL LETTER ZHE") and its script. matplotlib is a core dependency, so no system fonts are needed.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["Glyph", "SCRIPTS", "glyph_classes", "font_paths", "render_glyph"]

SCRIPTS = ("LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "GEORGIAN", "HEBREW")
_BLOCKS = {  # the basic block of each script (extensions hold mostly rare or historic letters)
    "LATIN": [(0x41, 0x5A), (0x61, 0x7A)],
    "GREEK": [(0x391, 0x3C9)],
    "CYRILLIC": [(0x410, 0x44F)],
    "ARMENIAN": [(0x531, 0x586)],
    "GEORGIAN": [(0x10D0, 0x10FA)],
    "HEBREW": [(0x5D0, 0x5EA)],
}


@dataclass(frozen=True)
class Glyph:
    """One letter class."""

    char: str
    name: str  # Unicode name, e.g. "GREEK SMALL LETTER ALPHA"
    script: str  # e.g. "Greek"

    def description(self) -> str:
        return f"{self.char} is {self.name}, a letter of the {self.script} script."


@functools.lru_cache(maxsize=1)
def font_paths() -> tuple[Path, ...]:
    """matplotlib's bundled DejaVu faces (regular, bold, oblique/italic, mono, serif)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = tuple(p for p in sorted(folder.glob("DejaVu*.ttf")) if "Display" not in p.name)
    if not paths:
        raise FileNotFoundError(f"no DejaVu fonts found in {folder} (matplotlib installation incomplete?)")
    return paths


@functools.lru_cache(maxsize=1)
def _coverage() -> dict[Path, frozenset[int]]:
    from fontTools.ttLib import TTFont

    return {p: frozenset(TTFont(str(p)).getBestCmap()) for p in font_paths()}


@functools.lru_cache(maxsize=4)
def glyph_classes(min_faces: int = 4, max_per_script: int = 48) -> tuple[tuple[Glyph, tuple[Path, ...]], ...]:
    """Letter classes and the faces that draw each, in a fixed order (script, then code point)."""
    cover = _coverage()
    out = []
    for script in SCRIPTS:
        picked = []
        for lo, hi in _BLOCKS[script]:
            for cp in range(lo, hi + 1):
                ch = chr(cp)
                name = unicodedata.name(ch, "")
                if not name.startswith(script) or unicodedata.category(ch) not in ("Lu", "Ll", "Lo"):
                    continue
                if unicodedata.decomposition(ch) or "FINAL" in name:  # base letters only
                    continue
                faces = tuple(p for p, cps in cover.items() if cp in cps)
                if len(faces) >= min_faces:
                    picked.append((Glyph(ch, name, script.capitalize()), faces))
        out.extend(picked[:max_per_script])
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def render_glyph(char: str, face: Path, rng: np.random.Generator, image_size: int = 32) -> np.ndarray:
    """Render `char` in `face`, scaled to its bounding box with a random size and offset: (H, W, C) uint8.

    Light ink on a dark background with random grey levels, like the scenes.
    """
    big = image_size * 4
    font = _font(face, big)
    canvas = Image.new("L", (2 * big, 2 * big), 0)
    ImageDraw.Draw(canvas).text((big // 2, big // 2), char, font=font, fill=255)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"{face.name} draws nothing for {char!r} (U+{ord(char):04X})")
    crop = canvas.crop(box)
    target = rng.uniform(0.55, 0.8) * big  # longest side of the glyph
    scale = target / max(crop.size)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.Resampling.LANCZOS)
    out = Image.new("L", (big, big), 0)
    x = int(rng.integers(0, big - crop.width + 1))
    y = int(rng.integers(0, big - crop.height + 1))
    out.paste(crop, (x, y))
    alpha = np.asarray(out.resize((image_size, image_size), Image.Resampling.BOX), dtype=np.float32) / 255.0
    bg, ink = float(rng.integers(16, 56)), float(rng.integers(200, 256))
    gray = bg + (ink - bg) * alpha
    return np.repeat(gray[..., None], 3, axis=2).round().astype(np.uint8)
