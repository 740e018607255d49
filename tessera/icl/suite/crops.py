"""Region classes cut from real photographs (`photos`) and from wallpaper artwork (`art`).

Axis legend: H W height and width.

Too few photographs ship in packages for object categories (about 35; docs: offline-data.md section 3), so:

- `photos` (a base dataset): a class is one *region* of one photograph: the picture is divided into a grid of cells,
  each non-flat cell is a class, and an instance is a random crop inside that cell (random size, position and
  mirror, slight colour jitter). Recognising a region from a few crops is fine-grained texture and colour matching.
  All regions of a picture stay in the same class split, so test classes never share a picture with train classes.
  Sources: the photographs shipped by scikit-image and matplotlib (always present) and by the Debian packages
  `mate-backgrounds` (12 nature photos) and `plasma-workspace-wallpapers` (11 photo themes).
- `art` (held out): a class is one illustrated or painted wallpaper and an instance a crop from *anywhere* in it
  (25-60% of its shorter side): telling which artwork a crop comes from is a style task, like Paintings. Sources:
  `plasma-workspace-wallpapers`, `mate-backgrounds` (abstract folder), `gnome-backgrounds`, `ukui-wallpapers`.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["PictureSource", "PHOTO_SOURCES", "ART_SOURCES", "available_pictures", "picture_regions", "picture_classes", "render_crop", "render_picture_crop"]


@dataclass(frozen=True)
class PictureSource:
    """A picture file shipped by a package: `root` is "skimage", "matplotlib" or an absolute folder."""

    id: str
    package: str
    root: str
    path: str
    gray: bool = False


def _pip_root(module: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


_ROOTS = {
    "skimage": lambda: _pip_root("skimage", "data"),
    "matplotlib": lambda: _pip_root("matplotlib", "mpl-data", "sample_data"),
}

_PLASMA = "/usr/share/wallpapers"
_MATE = "/usr/share/backgrounds/mate"
_GNOME = "/usr/share/backgrounds/gnome"
_UKUI = "/usr/share/backgrounds"


def _plasma(theme: str, gray: bool = False, size: str = "2560x1600.jpg") -> PictureSource:
    return PictureSource(f"plasma/{theme}", "plasma-workspace-wallpapers", _PLASMA, f"{theme}/contents/images/{size}", gray)


PHOTO_SOURCES: tuple[PictureSource, ...] = (
    *(PictureSource(f"skimage/{n}", "scikit-image", "skimage", f) for n, f in (
        ("astronaut", "astronaut.png"), ("chelsea", "chelsea.png"), ("coffee", "coffee.png"), ("rocket", "rocket.jpg"),
        ("hubble_deep_field", "hubble_deep_field.jpg"), ("immunohistochemistry", "ihc.png"),
        ("motorcycle", "motorcycle_left.png"), ("retina", "retina.jpg"))),
    *(PictureSource(f"skimage/{n}", "scikit-image", "skimage", f"{n}.png", gray=True) for n in ("camera", "brick", "grass", "gravel", "coins")),
    PictureSource("matplotlib/grace_hopper", "matplotlib", "matplotlib", "grace_hopper.jpg"),
    *(PictureSource(f"mate/{n}", "mate-backgrounds", _MATE, f"nature/{n}.jpg") for n in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower")),
    *(_plasma(t) for t in ("BytheWater", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Kite", "OneStandsOut", "Path", "summer_1am")),
    _plasma("ColdRipple", gray=True),
    _plasma("Grey", gray=True),
)

ART_SOURCES: tuple[PictureSource, ...] = (
    *(_plasma(t) for t in ("Altai", "Autumn", "Canopee", "Cascade", "Cluster", "Elarun", "Flow", "FlyingKonqui", "Honeywave",
                           "IceCold", "Kay", "Kokkini", "MilkyWay", "Opal", "PastelHills", "Patak", "Shell", "Volna")),
    _plasma("SafeLanding", size="5120x2880.jpg"),
    *(PictureSource(f"mate/{n}", "mate-backgrounds", _MATE, f"abstract/{n}") for n in (
        "Elephants.jpg", "Flow.png", "Gulp.png", "Silk.png", "Spring.png", "Waves.png", "Arc-Colors-Transparent-Wallpaper.png")),
    *(PictureSource(f"gnome/{n}", "gnome-backgrounds", _GNOME, f"{n}.webp") for n in (
        "adwaita-l", "adwaita-d", "grid-l", "licorice-l", "pixels-l", "symbolic-l", "truchet-l", "vnc-l", "wood-l", "wood-d")),
    *(PictureSource(f"ukui/{n}", "ukui-wallpapers", _UKUI, n) for n in (
        "2004default.jpg", "calla.png", "city.png", "desert.png", "firstgeneration.jpg", "fluent-color.png", "goldfish.png",
        "rhythm.jpg", "rollpaper.png", "string.jpg", "the-mouse.jpg")),
)


def _resolve(src: PictureSource) -> Path | None:
    root = _ROOTS[src.root]() if src.root in _ROOTS else Path(src.root)
    if root is None:
        return None
    p = root / src.path
    if p.is_file():
        return p
    if src.package == "plasma-workspace-wallpapers":  # some themes ship other resolutions only: take the largest
        folder = p.parent
        if folder.is_dir():
            files = sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.png"))
            if files:
                return max(files, key=lambda f: f.stat().st_size)
    return None


def available_pictures(sources: tuple[PictureSource, ...]) -> tuple[list[tuple[PictureSource, Path]], list[str]]:
    """(found sources with their paths, packages with missing pictures)."""
    found, missing = [], set()
    for src in sources:
        p = _resolve(src)
        if p is None:
            missing.add(src.package)
        else:
            found.append((src, p))
    return found, sorted(missing)


def _open(path: Path, short_side: int) -> np.ndarray:
    """RGB float image in [0, 1] with its shorter side resized to `short_side`."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert("RGB")
        w, h = im.size
        s = short_side / min(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
        return np.asarray(im, dtype=np.float32) / 255.0


@dataclass
class Region:
    """One class: a grid cell of a picture (pixel box in the resized picture)."""

    source: PictureSource
    picture: np.ndarray
    box: tuple[int, int, int, int]  # top, left, height, width

    @property
    def name(self) -> str:
        return f"{self.source.id}@{self.box[0]},{self.box[1]}"


def picture_regions(found: list[tuple[PictureSource, Path]], short_side: int, cell: int, min_std: float) -> list[Region]:
    """Cut each picture (shorter side resized to `short_side`) into `cell`-pixel grid cells; drop flat cells."""
    regions = []
    for src, path in found:
        try:
            pic = _open(path, short_side)
        except OSError as exc:
            warnings.warn(f"skipping unreadable picture {path}: {exc}", stacklevel=2)
            continue
        h, w, _ = pic.shape
        rows, cols = h // cell, w // cell
        top0, left0 = (h - rows * cell) // 2, (w - cols * cell) // 2
        for r in range(rows):
            for c in range(cols):
                t, left = top0 + r * cell, left0 + c * cell
                patch = pic[t : t + cell, left : left + cell]
                # Flat cells (sky, blur, vector fills) cannot be told apart from each other: not a class.
                if float(patch.mean(axis=2).std()) < min_std:
                    continue
                regions.append(Region(src, pic, (t, left, cell, cell)))
    return regions


def picture_classes(found: list[tuple[PictureSource, Path]], short_side: int) -> list[Region]:
    """One class per picture (the whole picture is the region): crops come from anywhere in it."""
    out = []
    for src, path in found:
        try:
            pic = _open(path, short_side)
        except OSError as exc:
            warnings.warn(f"skipping unreadable picture {path}: {exc}", stacklevel=2)
            continue
        out.append(Region(src, pic, (0, 0, pic.shape[0], pic.shape[1])))
    return out


def render_picture_crop(region: Region, rng: np.random.Generator, resolution: int, scale: tuple[float, float], min_std: float) -> np.ndarray:
    """A crop of side `scale` x the picture's shorter side from anywhere in it, avoiding flat crops (up to 20 tries)."""
    t, left, h, w = region.box
    for _ in range(20):
        side = int(round(rng.uniform(*scale) * min(h, w)))
        y = t + int(rng.integers(0, h - side + 1))
        x = left + int(rng.integers(0, w - side + 1))
        patch = region.picture[y : y + side, x : x + side]
        if float(patch.mean(axis=2).std()) >= min_std:
            break
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = (patch - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.06, 0.06)
    img = Image.fromarray((np.clip(patch, 0, 1) * 255).astype(np.uint8)).resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def render_crop(region: Region, rng: np.random.Generator, resolution: int) -> np.ndarray:
    """A random crop inside the region: side 55-100% of the cell, random position, mirror, brightness/contrast jitter."""
    t, left, h, w = region.box
    side = int(round(rng.uniform(0.55, 1.0) * min(h, w)))
    y = t + int(rng.integers(0, h - side + 1))
    x = left + int(rng.integers(0, w - side + 1))
    patch = region.picture[y : y + side, x : x + side]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = (patch - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.06, 0.06)
    img = Image.fromarray((np.clip(patch, 0, 1) * 255).astype(np.uint8)).resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)
