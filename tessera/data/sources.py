"""Registry of the real photographs and artwork the embedded image set is cut from, and where to find them.

Axis legend: H W image height and width in pixels (sizes are written (W, H) as PIL does).

Every source ships inside an installable package, so the set is rebuilt offline from the same bytes everywhere:

- `scikit-image` and `matplotlib` wheels (always present: both are Tessera dependencies);
- the Debian packages `mate-backgrounds` (12 nature photos, `nature/*.jpg`, and one painting) and
  `plasma-workspace-wallpapers` (11 photos and 2 paintings among 29 themes; the rest are rendered low-poly or vector
  art, left out because flat synthetic gradients teach a tokenizer little about photographs).

Each entry names its package and the path inside the package's data folder, so the list is explicit and reviewable
(`docs/data.md` is generated from it). Licence strings were read from `/usr/share/doc/<pkg>/copyright` (Debian), the
upstream `metadata.json` / `metadata.desktop` of each plasma theme, and the scikit-image loader docstrings.

Lookup roots can be overridden with the `TESSERA_DATA_SOURCES` environment variable or a `source_dirs` argument: a
list of folders, each laid out as `<folder>/<package>/<path>` (for example `tmp/scikit-image/astronaut.png`). When an
override is given, the default system locations are not searched, so tests see only their own files.

The `split` of each source is fixed here rather than drawn at build time: a source never moves between train and val
when more packages become installed, so a model trained on a pip-only build is never evaluated on its training images.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "ImageSource",
    "IMAGE_SOURCES",
    "DEBIAN_PACKAGES",
    "SOURCES_ENV",
    "source_roots",
    "locate_source",
    "available_sources",
    "file_sha256",
]

SOURCES_ENV = "TESSERA_DATA_SOURCES"

# Debian packages that hold part of the full set; the builder works without them (pip-only users) and says so.
DEBIAN_PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers")

_DEBIAN_ROOTS = {
    "mate-backgrounds": Path("/usr/share/backgrounds/mate"),
    "plasma-workspace-wallpapers": Path("/usr/share/wallpapers"),
}

Kind = Literal["photo", "photo-gray", "artwork"]


@dataclass(frozen=True)
class ImageSource:
    """One source image of the embedded set.

    Attributes:
        id: stable name used in manifests and crop provenance, `<short package>/<name>`.
        package: the pip or Debian package that ships the file.
        path: path of the file inside the package's data root.
        kind: `photo` (colour), `photo-gray` (grayscale photograph, replicated to 3 channels) or `artwork` (painted or
            illustrated; natural textures, no flat vector art).
        title: human-readable title.
        credit: author / copyright holder as stated by the package.
        licence: licence as stated by the package.
        licence_from: where the licence string was read.
        split: `train` or `val`; fixed so train and val never share a source image.
    """

    id: str
    package: str
    path: str
    kind: Kind
    title: str
    credit: str
    licence: str
    licence_from: str
    split: Literal["train", "val"] = "train"


_SK = "scikit-image"
_SK_DOC = "scikit-image `skimage.data.{}` docstring"
_MPL = "matplotlib"
_MATE = "mate-backgrounds"
_MATE_DOC = "/usr/share/doc/mate-backgrounds/copyright"
_PLASMA = "plasma-workspace-wallpapers"
# Debian's copyright file gives one stanza for the whole package; each theme's own metadata adds the upstream licence.
_PLASMA_DOC = "/usr/share/doc/plasma-workspace-wallpapers/copyright and the theme's metadata.json"


def _plasma(theme: str, title: str, author: str, upstream: str, *, kind: Kind = "photo", split: str = "train",
            size: str = "2560x1600.jpg") -> ImageSource:
    return ImageSource(
        id=f"plasma/{theme}",
        package=_PLASMA,
        path=f"{theme}/contents/images/{size}",
        kind=kind,
        title=title,
        credit=f"{author}; 2014 KDE Visual Design Group",
        licence=f"GPL-2+ (Debian); upstream {upstream}",
        # SafeLanding is the one theme that still ships the older metadata.desktop.
        licence_from=_PLASMA_DOC.replace(".json", ".desktop") if theme == "SafeLanding" else _PLASMA_DOC,
        split=split,  # type: ignore[arg-type]
    )


def _mate(name: str, credit: str, *, folder: str = "nature", kind: Kind = "photo", split: str = "train") -> ImageSource:
    return ImageSource(
        id=f"mate/{name}",
        package=_MATE,
        path=f"{folder}/{name}.jpg",
        kind=kind,
        title=name,
        credit=credit,
        licence="GPL-2+",
        licence_from=_MATE_DOC,
        split=split,  # type: ignore[arg-type]
    )


IMAGE_SOURCES: tuple[ImageSource, ...] = (
    # scikit-image sample data (ships in the wheel). stereo_motorcycle's right view is the same scene as the left one,
    # so only the left is used (two views of one scene would straddle a split otherwise).
    ImageSource("skimage/astronaut", _SK, "astronaut.png", "photo", "Astronaut Eileen Collins", "NASA",
                "Public domain (no known copyright restrictions)", _SK_DOC.format("astronaut")),
    ImageSource("skimage/chelsea", _SK, "chelsea.png", "photo", "Chelsea the cat", "Stefan van der Walt", "CC0",
                _SK_DOC.format("chelsea"), "val"),
    ImageSource("skimage/coffee", _SK, "coffee.png", "photo", "Coffee cup", "Rachel Michetti (Pikolo Espresso Bar)",
                "CC0", _SK_DOC.format("coffee"), "val"),
    ImageSource("skimage/rocket", _SK, "rocket.jpg", "photo", "DSCOVR launch on Falcon 9", "SpaceX",
                "Public domain", _SK_DOC.format("rocket")),
    ImageSource("skimage/hubble_deep_field", _SK, "hubble_deep_field.jpg", "photo", "Hubble eXtreme Deep Field", "NASA",
                "Public domain", _SK_DOC.format("hubble_deep_field")),
    ImageSource("skimage/immunohistochemistry", _SK, "ihc.png", "photo", "IHC staining of colonic glands",
                "Center for Microscopy And Molecular Imaging (CMMI)", "No known copyright restrictions",
                _SK_DOC.format("immunohistochemistry")),
    ImageSource("skimage/motorcycle", _SK, "motorcycle_left.png", "photo", "Motorcycle (Middlebury 2014 stereo, left)",
                "Nesic, Westling, Wang, Kitajima, Krathwohl, Scharstein (Middlebury College)",
                "Not stated; redistributed with scikit-image (BSD-3-Clause package)",
                _SK_DOC.format("stereo_motorcycle")),
    ImageSource("skimage/retina", _SK, "retina.jpg", "photo", "Fundus photograph of a normal left eye",
                "Mikael Häggström", "CC0 1.0", _SK_DOC.format("retina")),
    ImageSource("skimage/camera", _SK, "camera.png", "photo-gray", "Cameraman", "Lav Varshney", "CC0",
                _SK_DOC.format("camera")),
    ImageSource("skimage/brick", _SK, "brick.png", "photo-gray", "Brick wall", "CC0Textures (Bricks25)", "CC0",
                _SK_DOC.format("brick")),
    ImageSource("skimage/grass", _SK, "grass.png", "photo-gray", "Grass", "linolafett (DeviantArt)", "CC0",
                _SK_DOC.format("grass")),
    ImageSource("skimage/gravel", _SK, "gravel.png", "photo-gray", "Gravel", "CC0Textures (Gravel04)", "CC0",
                _SK_DOC.format("gravel")),
    ImageSource("skimage/coins", _SK, "coins.png", "photo-gray", "Greek coins from Pompeii", "Brooklyn Museum",
                "No known copyright restrictions", _SK_DOC.format("coins")),
    # matplotlib sample data (ships in the wheel).
    ImageSource("matplotlib/grace_hopper", _MPL, "grace_hopper.jpg", "photo", "Grace Hopper (official portrait)",
                "U.S. Navy", "Public domain (work of the U.S. federal government)",
                "U.S. Navy official portrait, shipped in matplotlib mpl-data/sample_data"),
    # Debian mate-backgrounds 1.26: the 12 nature photos and one painting.
    _mate("Aqua", "2008, Charles Barbin"),
    _mate("Blinds", "2008, Lennart Poettering; 2008, Andrea Cimitan"),
    _mate("Dune", "2007, Marco Cogoni; 2008, Hylke Bons", split="val"),
    _mate("FreshFlower", "2005, Jens Ansorg"),
    _mate("Garden", "2008, Charles Barbin"),
    _mate("GreenMeadow", "2005, Timothy Schellhase; 2008, Lapo Calamandrei"),
    _mate("LadyBird", "2008, Charles Barbin", split="val"),
    _mate("RainDrops", "2008, blackcombwhistler07"),
    _mate("Storm", "2008, Sergey Nazarov"),
    _mate("TwoWings", "2008, Charles Barbin; 2008, Hylke Bons"),
    _mate("Wood", "2008, Jean-François Fortin Tam"),
    _mate("YellowFlower", "2008, Charles Barbin"),
    _mate("Elephants", "2020, Wyng Stancikaite", folder="abstract", kind="artwork"),
    # Debian plasma-workspace-wallpapers 5.27: the photographic themes and two paintings.
    _plasma("BytheWater", "By the water", "Maciej Wiklo", "LGPLv3"),
    _plasma("ColdRipple", "Cold Ripple", "Risto Saukonpää", "LGPLv3", kind="photo-gray"),
    _plasma("ColorfulCups", "Colorful Cups", "Dmitri Popov", "LGPLv3"),
    _plasma("DarkestHour", "Darkest Hour", "Risto Saukonpää", "LGPLv3"),
    _plasma("EveningGlow", "Evening Glow", "Ian Hex", "LGPLv3", split="val"),
    _plasma("FallenLeaf", "Fallen Leaf", "Martin Klapetek", "LGPLv3", split="val"),
    _plasma("Grey", "Grey", "Sigi Sagi", "LGPLv3", kind="photo-gray"),
    _plasma("Kite", "Kite", "Risto Saukonpää", "LGPLv3"),
    _plasma("OneStandsOut", "One Stands Out", "Risto Saukonpää", "LGPLv3"),
    _plasma("Path", "Path", "Risto Saukonpää", "LGPLv3"),
    _plasma("summer_1am", "summer 1am", "Risto Saukonpää", "LGPLv3"),
    _plasma("Autumn", "Autumn 5.5", "RJ Quiralta", "LGPLv3", kind="artwork"),
    _plasma("SafeLanding", "Safe Landing", "Louis Durrant", "CC-BY-SA-4.0", kind="artwork", size="5120x2880.jpg"),
)


def _pip_data_dir(module: str, *parts: str) -> Path | None:
    """Data folder inside an installed pip package, found without importing it (importing skimage costs ~1 s)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def source_roots(source_dirs: Sequence[str | os.PathLike[str]] | None = None) -> dict[str, list[Path]]:
    """Folders searched for each package's files, in order.

    Args:
        source_dirs: override folders, each laid out as `<folder>/<package>/<path>`. If None, `$TESSERA_DATA_SOURCES`
            (os.pathsep-separated) is used when set; otherwise the installed packages' own locations.

    Returns:
        package name -> candidate folders (possibly non-existent).
    """
    if source_dirs is None and os.environ.get(SOURCES_ENV):
        source_dirs = [p for p in os.environ[SOURCES_ENV].split(os.pathsep) if p]
    packages = sorted({s.package for s in IMAGE_SOURCES})
    if source_dirs is not None:
        return {pkg: [Path(d) / pkg for d in source_dirs] for pkg in packages}
    roots: dict[str, list[Path]] = {pkg: [] for pkg in packages}
    for pkg, path in (("scikit-image", _pip_data_dir("skimage", "data")),
                      ("matplotlib", _pip_data_dir("matplotlib", "mpl-data", "sample_data"))):
        if path is not None:
            roots[pkg].append(path)
    for pkg, path in _DEBIAN_ROOTS.items():
        roots[pkg].append(path)
    return roots


def locate_source(source: ImageSource, roots: dict[str, list[Path]]) -> Path | None:
    """The first existing file for `source` under `roots`, or None if its package is not installed."""
    for root in roots.get(source.package, []):
        path = root / source.path
        if path.is_file():
            return path
    return None


def available_sources(
    source_dirs: Sequence[str | os.PathLike[str]] | None = None,
    ids: Sequence[str] | None = None,
) -> tuple[list[tuple[ImageSource, Path]], list[ImageSource]]:
    """Split the registry into sources found on this machine and sources missing.

    Args:
        source_dirs: lookup override (see `source_roots`).
        ids: restrict to these source ids (unknown ids are an error); None means the whole registry.

    Returns:
        (found, missing): found as (source, file path) pairs and missing sources, both in registry order.

    Raises:
        ValueError: an id in `ids` is not in the registry.
    """
    sources = list(IMAGE_SOURCES)
    if ids:
        known = {s.id for s in sources}
        unknown = sorted(set(ids) - known)
        if unknown:
            raise ValueError(f"unknown image source id(s) {unknown}; known: {sorted(known)}")
        sources = [s for s in sources if s.id in set(ids)]
    roots = source_roots(source_dirs)
    found, missing = [], []
    for src in sources:
        path = locate_source(src, roots)
        if path is None:
            missing.append(src)
        else:
            found.append((src, path))
    return found, missing


def file_sha256(data: bytes) -> str:
    """Hex SHA-256 of a file's bytes: the content hash recorded per source in the manifest."""
    return hashlib.sha256(data).hexdigest()
