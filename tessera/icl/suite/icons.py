"""Desktop icon concepts drawn by several icon themes (a held-out, out-of-domain few-shot dataset).

Axis legend: H W height and width.

A class is an icon concept of the freedesktop naming spec ("edit-copy", "folder", "audio-volume-high"); its
instances are the drawings of that concept by different themes (Debian packages `adwaita-icon-theme`,
`gnome-icon-theme`, `mate-icon-theme`, `oxygen-icon-theme`, `tango-icon-theme`, `faenza-icon-theme`,
`moka-icon-theme`, `yaru-theme-icon`; PNG themes only, so no SVG renderer is needed). One drawing per theme, at 32
pixels when the theme has it (else the nearest larger size), composited on white. No augmentation: every instance
is a different artist's drawing, so support and query never share a drawing.

Aliases are collapsed: names are taken greedily, most widely drawn first, and a name whose drawing (same file or
same pixels, in any theme) is already used by a kept name is dropped, so two classes never share a picture. Symbolic (monochrome) icons are skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["ICON_THEMES", "ICON_THEME_PACKAGES", "IconClass", "icon_classes", "render_icon"]

ICON_ROOT = "/usr/share/icons"
# Theme folder -> Debian package. Colour variants (Yaru-blue, Faenza-Dark, ...) are left out: they repeat the base theme.
ICON_THEME_PACKAGES = {
    "Adwaita": "adwaita-icon-theme",
    "gnome": "gnome-icon-theme",
    "mate": "mate-icon-theme",
    "oxygen": "oxygen-icon-theme",
    "Tango": "tango-icon-theme",
    "Faenza": "faenza-icon-theme",
    "Moka": "moka-icon-theme",
    "Yaru": "yaru-theme-icon",
}
ICON_THEMES = tuple(ICON_THEME_PACKAGES)
_SKIP_CONTEXTS = {"animations", "emotes", "stock"}
_SIZE = re.compile(r"^(\d+)(?:x\d+)?(?:@\d+x)?$")


@dataclass
class IconClass:
    """One concept: its canonical name, every alias, and one PNG per theme."""

    name: str
    aliases: list[str]
    files: dict[str, Path]  # theme -> png


def _size_of(path: Path, theme_root: Path) -> int | None:
    for part in path.relative_to(theme_root).parts[:-1]:
        m = _SIZE.match(part)
        if m:
            return int(m.group(1))
    return None


def _theme_pngs(theme_root: Path) -> dict[str, list[tuple[int, Path]]]:
    """icon name -> [(size, path)] for the raster icons of one theme."""
    out: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for root, _, files in os.walk(theme_root, followlinks=True):
        rootp = Path(root)
        if any(part in _SKIP_CONTEXTS for part in rootp.parts) or "symbolic" in root:
            continue
        for f in files:
            if not f.endswith(".png") or "symbolic" in f:
                continue
            p = rootp / f
            if not p.is_file():  # dangling symlink
                continue
            size = _size_of(p, theme_root)
            if size is None or size < 16:
                continue
            out[f[:-4]].append((size, p))
    return out


def _pick_size(options: list[tuple[int, Path]], target: int = 32) -> Path:
    larger = sorted((s, str(p)) for s, p in options if s >= target)
    if larger:
        return Path(larger[0][1])
    return Path(max((s, str(p)) for s, p in options)[1])


_HASHES: dict[str, str] = {}


def _pixel_hash(path: Path) -> str:
    """Hash of the icon's pixels at 16 x 16 (cached); a unique token for unreadable files, which are then skipped."""
    key = os.path.realpath(path)
    if key not in _HASHES:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGBA").resize((16, 16), Image.BILINEAR))
            _HASHES[key] = hashlib.sha1(arr.tobytes()).hexdigest()
        except OSError:
            _HASHES[key] = "unreadable:" + key
    return _HASHES[key]


def icon_classes(root: str = ICON_ROOT, min_themes: int = 6) -> tuple[list[IconClass], list[str], list[str]]:
    """Concepts drawn by at least `min_themes` different themes.

    Returns:
        (classes sorted by name, themes found, theme packages missing).
    """
    rootp = Path(root)
    found = [t for t in ICON_THEMES if (rootp / t).is_dir()]
    missing = [ICON_THEME_PACKAGES[t] for t in ICON_THEMES if t not in found]
    per_theme: dict[str, dict[str, Path]] = {}
    for theme in found:
        per_theme[theme] = {name: _pick_size(opts) for name, opts in _theme_pngs(rootp / theme).items()}

    # Greedy selection, most widely drawn names first: a name is kept only if none of its drawings (same file or same
    # pixels, in any theme) was already taken by a kept name. Aliases (edit-copy / gtk-copy) thus collapse to one
    # class, and no picture ever belongs to two classes.
    coverage: dict[str, int] = defaultdict(int)
    for files in per_theme.values():
        for name in files:
            coverage[name] += 1
    by_target: dict[str, set[str]] = defaultdict(set)  # realpath -> names pointing to it (any theme)
    for files in per_theme.values():
        for name, path in files.items():
            by_target[os.path.realpath(path)].add(name)
    taken: set[str] = set()
    classes = []
    for name in sorted(coverage, key=lambda n: (-coverage[n], n)):
        if coverage[name] < min_themes:
            break
        files: dict[str, Path] = {}
        keys: set[str] = set()
        seen_pixels: set[str] = set()
        for theme in found:
            p = per_theme[theme].get(name)
            if p is None:
                continue
            h = _pixel_hash(p)
            keys |= {os.path.realpath(p), h}
            if h not in seen_pixels and not h.startswith("unreadable:"):  # two themes shipping one drawing count once
                files[theme] = p
                seen_pixels.add(h)
        if keys & taken or len(files) < min_themes:
            continue
        taken |= keys
        aliases = sorted(set().union(*(by_target[os.path.realpath(p)] for p in files.values())) - {name})
        classes.append(IconClass(name, [name] + aliases, files))
    classes.sort(key=lambda c: c.name)
    return classes, found, missing


def render_icon(path: Path, resolution: int) -> np.ndarray:
    """The icon composited on white and resized to (resolution, resolution, 3) uint8, aspect kept and centred."""
    with Image.open(path) as im:
        im = im.convert("RGBA")
        w, h = im.size
        s = resolution / max(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
        canvas = Image.new("RGBA", (resolution, resolution), (255, 255, 255, 255))
        canvas.alpha_composite(im, ((resolution - im.width) // 2, (resolution - im.height) // 2))
        return np.asarray(canvas.convert("RGB"), dtype=np.uint8)
