"""An Omniglot analogue: letters of many scripts rendered from installed fonts, with augmentation.

Axis legend: N images, H W height and width.

Classes are base letters (Unicode categories Lu/Ll/Lt/Lo with no decomposition, so no accented variants) grouped by
script, the first word(s) of the character's Unicode name ("GEORGIAN LETTER AN" -> GEORGIAN). Each letter needs at
least `min_faces` fonts whose cmap covers it and that draw real ink (not the font's .notdef box). An instance is one
face drawn with a random affine warp (rotation, shear, scale, offset) and stroke dilation or erosion: Omniglot has 20
drawers per character, fonts give a handful of designs, the warps supply the rest (docs: offline-data.md section 2).

Fonts come from matplotlib's wheel (DejaVu, STIX; always present) and from the system font folders (Debian
`fonts-noto-core` adds ~60 scripts). Glyphs are scaled to their ink bounding box, so scripts with tall glyphs (Tamil)
are never clipped. Scripts are split between the base dataset `glyphs` and the held-out dataset `glyphs-eval` by a
fixed list (`EVAL_SCRIPTS`), like Omniglot's background and evaluation alphabets.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["FontFace", "discover_fonts", "glyph_classes", "render_glyph", "is_real_glyph", "is_eval_script", "EVAL_SCRIPTS", "SYSTEM_FONT_DIRS"]

SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts")

# Placeholder, symbol-size and TeX-encoded fonts whose cmap does not mean what it says.
_EXCLUDED_FONT_PREFIXES = ("LastResort", "STIXSiz", "STIXNonUni", "cmex", "cmsy", "cmmi", "cmb10", "cmr10", "cmss", "cmti", "cmtt")
# Scripts with only a few faces and tens of thousands of characters; they would swamp the rest.
_EXCLUDED_SCRIPTS = {"CJK", "HANGUL", "YI", "TANGUT", "NUSHU", "KHITAN", "EGYPTIAN", "CUNEIFORM", "LINEAR", "ANATOLIAN", "BAMUM", "VEDIC"}
# Name words that mark a non-base letter form.
_EXCLUDED_NAME_WORDS = ("MATHEMATICAL", "MODIFIER", "FULLWIDTH", "HALFWIDTH", "SMALL CAPITAL", "SUBSCRIPT", "SUPERSCRIPT",
                        "CIRCLED", "PARENTHESIZED", "SQUARED", "NEGATIVE", "LIGATURE", "TURNED", "REVERSED", "INVERTED",
                        "LONG S", "WITH ")
# First words shared by several scripts: the script name takes two words.
_TWO_WORD_SCRIPTS = {"OLD", "NEW", "TAI", "OL", "MEETEI", "SORA", "PAU", "CAUCASIAN", "INSCRIPTIONAL", "IMPERIAL",
                     "PSALTER", "MEROITIC", "HANIFI", "MASARAM", "GUNJALA", "ZANABAZAR", "NYIAKENG", "CANADIAN", "SYLOTI",
                     "PHAGS-PA", "KAYAH", "MENDE", "WARANG", "CYPRO", "DIVES"}
# The held-out scripts (Omniglot's "evaluation alphabets"): a fixed list, so a script never moves between base and
# held-out when more fonts get installed. Four of them are covered by matplotlib's own fonts (pip-only builds).
EVAL_SCRIPTS = frozenset({"ARMENIAN", "CANADIAN SYLLABICS", "GEORGIAN", "LISU", "GUJARATI", "KHMER", "ADLAM", "SINHALA"})


@dataclass(frozen=True)
class FontFace:
    """One face of one font file (TrueType collections hold several)."""

    path: str
    index: int
    family: str
    style: str

    @property
    def key(self) -> str:
        return f"{self.family} {self.style}"


def script_of(ch: str) -> str | None:
    """Script name from the Unicode character name, or None when unnamed."""
    name = unicodedata.name(ch, "")
    if not name:
        return None
    words = name.split()
    if words[0] in _TWO_WORD_SCRIPTS and len(words) > 1:
        return f"{words[0]} {words[1]}"
    return words[0]


def is_base_letter(ch: str) -> bool:
    """A letter with no decomposition and no modifier/mathematical/presentation-form name."""
    if unicodedata.category(ch) not in ("Lu", "Ll", "Lt", "Lo"):
        return False
    if unicodedata.decomposition(ch):
        return False
    name = unicodedata.name(ch, "")
    return bool(name) and not any(w in name for w in _EXCLUDED_NAME_WORDS)


def is_eval_script(script: str) -> bool:
    """True for the held-out scripts (`EVAL_SCRIPTS`); every other script belongs to the base dataset."""
    return script in EVAL_SCRIPTS


def _font_files(dirs: list[Path]) -> list[Path]:
    out = []
    for d in dirs:
        if d.is_dir():
            for root, _, files in os.walk(d):
                for f in files:
                    if f.lower().endswith((".ttf", ".otf", ".ttc")):
                        out.append(Path(root) / f)
    return sorted(set(out))


def discover_fonts(system: bool = True, extra_dirs: list[str] | None = None) -> tuple[list[FontFace], dict[str, set[int]], list[str]]:
    """Find usable font faces and the codepoints each covers.

    Args:
        system: also search `SYSTEM_FONT_DIRS` (False: matplotlib's bundled fonts only).
        extra_dirs: more folders to search.

    Returns:
        (faces, coverage by face key, list of the font folders searched).
    """
    import matplotlib
    from fontTools.ttLib import TTCollection, TTFont

    dirs = [Path(matplotlib.get_data_path()) / "fonts" / "ttf"]
    if system:
        dirs += [Path(d) for d in SYSTEM_FONT_DIRS]
    dirs += [Path(d) for d in extra_dirs or []]
    faces: list[FontFace] = []
    coverage: dict[str, set[int]] = {}
    for path in _font_files(dirs):
        if path.name.startswith(_EXCLUDED_FONT_PREFIXES):
            continue
        try:
            fonts = TTCollection(str(path), lazy=True).fonts if path.suffix.lower() == ".ttc" else [TTFont(str(path), lazy=True)]
        except Exception as exc:  # a broken font file must not stop the build
            warnings.warn(f"skipping unreadable font {path}: {exc}", stacklevel=2)
            continue
        for index, font in enumerate(fonts):
            try:
                names = font["name"]
                family = str(names.getBestFamilyName() or path.stem)
                style = str(names.getBestSubFamilyName() or "Regular")
                cmap = font.getBestCmap() or {}
            except Exception as exc:
                warnings.warn(f"skipping font {path}#{index}: {exc}", stacklevel=2)
                continue
            face = FontFace(str(path), index, family, style)
            if face.key in coverage:  # the same face installed twice (e.g. matplotlib's DejaVu and the system's)
                continue
            faces.append(face)
            coverage[face.key] = set(cmap)
    return faces, coverage, [str(d) for d in dirs]


def glyph_classes(
    faces: list[FontFace],
    coverage: dict[str, set[int]],
    *,
    min_faces: int,
    max_per_script: int,
    seed: int = 0,
) -> dict[str, list[tuple[str, list[FontFace]]]]:
    """Letters per script with at least `min_faces` covering faces: {script: [(char, faces)]}.

    At most `max_per_script` letters per script, chosen by a seeded hash so the choice is stable.
    """
    by_cp: dict[int, list[FontFace]] = {}
    for face in faces:
        for cp in coverage[face.key]:
            by_cp.setdefault(cp, []).append(face)
    scripts: dict[str, list[tuple[str, list[FontFace]]]] = {}
    for cp in sorted(by_cp):
        fs = by_cp[cp]
        if len(fs) < min_faces or cp > 0x3FFFF:
            continue
        ch = chr(cp)
        if not is_base_letter(ch):
            continue
        script = script_of(ch)
        if script is None or script in _EXCLUDED_SCRIPTS:
            continue
        scripts.setdefault(script, []).append((ch, fs))
    out = {}
    for script, letters in sorted(scripts.items()):
        letters.sort(key=lambda t: hashlib.sha256(f"{seed}/{t[0]}".encode()).hexdigest())
        out[script] = sorted(letters[:max_per_script], key=lambda t: t[0])
    return out


_FONT_CACHE: dict[tuple[str, int, int], ImageFont.FreeTypeFont] = {}


def _font(face: FontFace, size: int) -> ImageFont.FreeTypeFont:
    key = (face.path, face.index, size)
    if key not in _FONT_CACHE:
        if len(_FONT_CACHE) > 512:
            _FONT_CACHE.clear()
        _FONT_CACHE[key] = ImageFont.truetype(face.path, size=size, index=face.index)
    return _FONT_CACHE[key]


def _ink(face: FontFace, text: str, size: int = 64) -> np.ndarray:
    """Grayscale ink (1 = black) of `text` rendered large, cropped to its bounding box; empty array if no ink."""
    font = _font(face, size)
    canvas = Image.new("L", (size * 3, size * 3), 0)
    ImageDraw.Draw(canvas).text((size, size), text, fill=255, font=font)
    arr = np.asarray(canvas)
    ys, xs = np.nonzero(arr > 24)
    if len(ys) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return arr[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32) / 255.0


def is_real_glyph(face: FontFace, ch: str, notdef_cache: dict[str, np.ndarray]) -> bool:
    """True when the face draws ink for `ch` that differs from its .notdef box (drawn for an unassigned codepoint)."""
    ink = _ink(face, ch)
    if ink.size == 0 or ink.sum() < 8:
        return False
    if face.key not in notdef_cache:
        notdef_cache[face.key] = _ink(face, "\U0010fffd")
    nd = notdef_cache[face.key]
    return not (nd.shape == ink.shape and np.abs(nd - ink).mean() < 0.02)


def render_glyph(face: FontFace, ch: str, rng: np.random.Generator, resolution: int, augment: bool = True) -> np.ndarray:
    """One instance of `ch` in `face`: uint8 (resolution, resolution), black ink on white.

    The glyph is scaled to its ink bounding box (so no script is clipped), warped by a random affine map and its
    strokes thickened or thinned, drawn at 4x and downsampled with antialiasing.
    """
    big = resolution * 4
    ink = _ink(face, ch)
    if ink.size == 0:
        raise ValueError(f"{face.key} draws no ink for U+{ord(ch):04X}")
    h, w = ink.shape
    fill = rng.uniform(0.62, 0.82) if augment else 0.72
    scale = fill * big / max(h, w)
    glyph = Image.fromarray((ink * 255).astype(np.uint8)).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    canvas = Image.new("L", (big, big), 0)
    canvas.paste(glyph, ((big - glyph.width) // 2, (big - glyph.height) // 2))
    if augment:
        angle = np.deg2rad(rng.uniform(-12, 12))
        shear = rng.uniform(-0.18, 0.18)
        sx, sy = rng.uniform(0.88, 1.08, size=2)
        tx, ty = rng.uniform(-0.07, 0.07, size=2) * big
        c, s = np.cos(angle), np.sin(angle)
        a = np.array([[c * sx, -s * sy + shear * c * sy], [s * sx, c * sy + shear * s * sy]])
        inv = np.linalg.inv(a)
        centre = np.array([big / 2, big / 2])
        off = centre - inv @ (centre + np.array([tx, ty]))
        canvas = canvas.transform((big, big), Image.AFFINE, (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1]), Image.BILINEAR)
        k = int(rng.choice([0, 0, 1, 1, 2]))  # stroke width change in big pixels: none, thicken, thin
        if k == 1:
            canvas = canvas.filter(ImageFilter.MaxFilter(3))
        elif k == 2:
            thinned = canvas.filter(ImageFilter.MinFilter(3))
            if np.asarray(thinned).max() > 128:  # never erase a hairline glyph completely
                canvas = thinned
    small = canvas.resize((resolution, resolution), Image.LANCZOS)
    return 255 - np.asarray(small, dtype=np.uint8)
