"""The embedded few-shot suite: six datasets built offline from installed packages, split into base and held-out.

Axis legend: N images, H W height and width.

| dataset      | role     | classes                                  | instances                                  |
|--------------|----------|------------------------------------------|--------------------------------------------|
| glyphs       | base     | letters of ~20 scripts (Omniglot analogue)| 20 renders over >= 4 fonts, warped          |
| shapes       | base     | shape x texture x hue x background       | 20 random renders                          |
| photos       | base     | regions of ~35 real photographs          | 20 random crops                            |
| glyphs-eval  | held-out | letters of 8 other scripts               | as glyphs                                  |
| icons        | held-out | icon concepts drawn by >= 6 themes       | one drawing per theme (6-8)                |
| art          | held-out | one of ~45 illustrated wallpapers        | 30 crops from anywhere in it               |

Base datasets are the pretraining data of the feature network and of CAML (their `train` classes; `val` classes for
model selection). Held-out datasets are never seen in pretraining; their `train` classes exist only for the
in-domain meta-trained reference (P>M>F-style upper line), and every method is evaluated on `test` classes.

Sources: matplotlib and scikit-image wheels (always), and the Debian packages in `DEBIAN_PACKAGES`. Without the
Debian packages the suite still builds, reduced (fewer scripts; no icons or art), with a warning; the suite's
`manifest.json` records what was found and what was missing. Numbers in docs come from the full build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tessera.icl.suite._store import SPLITS, FewShotImages, assign_splits, read_dataset, write_dataset

__all__ = [
    "SuiteConfig",
    "DATASETS",
    "BASE_DATASETS",
    "HELDOUT_DATASETS",
    "DEBIAN_PACKAGES",
    "FewShotImages",
    "build_suite",
    "load_suite_dataset",
    "suite_dir",
    "suite_manifest",
    "SPLITS",
]

_log = logging.getLogger(__name__)
SUITE_VERSION = 2  # 2: art classes are whole artworks

# What CI (and users who want the full suite) install with apt.
DEBIAN_PACKAGES = (
    "fonts-noto-core",
    "mate-backgrounds",
    "plasma-workspace-wallpapers",
    "gnome-backgrounds",
    "ukui-wallpapers",
    "adwaita-icon-theme",
    "gnome-icon-theme",
    "mate-icon-theme",
    "oxygen-icon-theme",
    "tango-icon-theme",
    "faenza-icon-theme",
    "moka-icon-theme",
    "yaru-theme-icon",
)


@dataclass(frozen=True)
class DatasetInfo:
    role: str  # "base" or "heldout"
    fractions: tuple[float, float, float]  # train / val / test share of classes
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "glyphs": DatasetInfo("base", (0.7, 0.1, 0.2), "letters of many scripts from installed fonts (Omniglot analogue)"),
    "shapes": DatasetInfo("base", (0.7, 0.1, 0.2), "procedural shape x texture x hue x background classes"),
    "photos": DatasetInfo("base", (0.6, 0.2, 0.2), "regions of real photographs (random crops)"),
    "glyphs-eval": DatasetInfo("heldout", (0.4, 0.1, 0.5), "letters of held-out scripts"),
    "icons": DatasetInfo("heldout", (0.4, 0.1, 0.5), "desktop icon concepts drawn by several themes"),
    "art": DatasetInfo("heldout", (0.4, 0.1, 0.5), "illustrated and painted wallpapers (crops from anywhere in one)"),
}
BASE_DATASETS = tuple(n for n, d in DATASETS.items() if d.role == "base")
HELDOUT_DATASETS = tuple(n for n, d in DATASETS.items() if d.role == "heldout")


@dataclass
class SuiteConfig:
    """How the suite is built. Changing any field builds a separate copy (the folder name holds its hash)."""

    resolution: int = 32  # side of every image
    system: bool = True  # use system fonts/pictures/icons (False: pip-only sources, the reduced build)
    glyph_min_faces: int = 4  # fonts that must draw a letter for it to be a class
    glyph_max_per_script: int = 60  # letters per script at most
    glyph_instances: int = 20  # images per letter (Omniglot: 20 drawers)
    shape_classes: int = 800
    shape_instances: int = 20
    crop_instances: int = 20  # crops per picture region
    crop_short_side: int = 256  # pictures are resized to this shorter side before cutting regions
    crop_cell: int = 64  # region size in resized pixels
    crop_min_std: float = 0.06  # regions flatter than this (luminance std) are not classes
    art_instances: int = 30  # crops per artwork (art: one class per artwork)
    art_crop_min: float = 0.25  # art crop side, as a fraction of the artwork's shorter side
    art_crop_max: float = 0.6
    icon_min_themes: int = 6  # themes that must draw a concept (5-shot needs >= 6 instances)
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return f"v{SUITE_VERSION}-{self.resolution}px-{'full' if self.system else 'pip'}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def suite_dir(cfg: SuiteConfig | None = None, root: str | Path | None = None) -> Path:
    """Folder of the suite built with `cfg` (default `cache_dir("icl", "suite", cfg.key())`)."""
    from tessera.paths import cache_dir

    cfg = cfg or SuiteConfig()
    return Path(root) / cfg.key() if root is not None else cache_dir("icl", "suite", cfg.key())


def _rng(cfg: SuiteConfig, *parts: Any) -> np.random.Generator:
    """A generator seeded by the suite seed and a name, so each class is reproducible on its own."""
    digest = hashlib.sha256("/".join(str(p) for p in (cfg.seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


# -- builders: each returns (images uint8 (N, H, W, 3), labels (N,), class names, class split keys, meta) --------------
def _build_glyphs(cfg: SuiteConfig, held_out: bool, progress: bool):
    from tessera.icl.suite import glyphs as g

    faces, coverage, dirs = g.discover_fonts(system=cfg.system)
    scripts = g.glyph_classes(faces, coverage, min_faces=cfg.glyph_min_faces, max_per_script=cfg.glyph_max_per_script, seed=cfg.seed)
    scripts = {s: v for s, v in scripts.items() if g.is_eval_script(s) == held_out}
    notdef: dict[str, np.ndarray] = {}
    classes = []
    for script, letters in scripts.items():
        for ch, fs in letters:
            real = [f for f in fs if g.is_real_glyph(f, ch, notdef)]
            if len(real) >= cfg.glyph_min_faces:
                classes.append((script, ch, real))
    n = cfg.glyph_instances
    images = np.empty((len(classes) * n, cfg.resolution, cfg.resolution, 3), np.uint8)
    labels = np.repeat(np.arange(len(classes)), n)
    names, split_keys = [], []
    with _progress(len(classes), "glyphs-eval" if held_out else "glyphs", progress) as bar:
        for c, (script, ch, fs) in enumerate(classes):
            rng = _rng(cfg, "glyph", ord(ch))
            order = rng.permutation(len(fs))
            for i in range(n):
                face = fs[order[i % len(fs)]]
                images[c * n + i] = g.render_glyph(face, ch, rng, cfg.resolution)[..., None]
            names.append(f"{script.lower()}/U+{ord(ch):04X}")
            split_keys.append(f"U+{ord(ch):04X}")
            bar.update(1)
    meta = {
        "scripts": {s: len(v) for s, v in scripts.items()},
        "num_fonts": len(faces),
        "font_dirs": dirs,
        "classes": [{"name": nm, "char": ch, "faces": [f.key for f in fs]}
                    for nm, (_, ch, fs) in zip(names, classes, strict=True)],
    }
    return images, labels, names, split_keys, meta


def _build_shapes(cfg: SuiteConfig, progress: bool):
    from tessera.icl.suite import shapes as s

    classes = s.shape_classes(cfg.shape_classes, cfg.seed)
    n = cfg.shape_instances
    images = np.empty((len(classes) * n, cfg.resolution, cfg.resolution, 3), np.uint8)
    labels = np.repeat(np.arange(len(classes)), n)
    names = ["/".join(map(str, c)) for c in classes]
    with _progress(len(classes), "shapes", progress) as bar:
        for c, cls in enumerate(classes):
            rng = _rng(cfg, "shape", names[c])
            for i in range(n):
                images[c * n + i] = s.render_shape(cls, rng, cfg.resolution)
            bar.update(1)
    return images, labels, names, names, {"factors": {"shapes": list(s.SHAPES), "textures": list(s.TEXTURES)}}


def _build_crops(cfg: SuiteConfig, art: bool, progress: bool):
    from tessera.icl.suite import crops as cr

    sources = cr.ART_SOURCES if art else cr.PHOTO_SOURCES
    if not cfg.system:
        sources = tuple(x for x in sources if x.root in ("skimage", "matplotlib"))
    found, missing = cr.available_pictures(sources)
    if art:  # one class per artwork, crops from anywhere in it
        regions = cr.picture_classes(found, cfg.crop_short_side)
        n = cfg.art_instances
    else:  # one class per region of a photograph
        regions = cr.picture_regions(found, cfg.crop_short_side, cfg.crop_cell, cfg.crop_min_std)
        n = cfg.crop_instances
    images = np.empty((len(regions) * n, cfg.resolution, cfg.resolution, 3), np.uint8)
    labels = np.repeat(np.arange(len(regions)), n)
    with _progress(len(regions), "art" if art else "photos", progress) as bar:
        for c, reg in enumerate(regions):
            rng = _rng(cfg, "crop", reg.name)
            for i in range(n):
                if art:
                    images[c * n + i] = cr.render_picture_crop(reg, rng, cfg.resolution, (cfg.art_crop_min, cfg.art_crop_max), cfg.crop_min_std)
                else:
                    images[c * n + i] = cr.render_crop(reg, rng, cfg.resolution)
            bar.update(1)
    names = [r.name for r in regions]
    split_keys = [r.source.id for r in regions]  # split by picture: all regions of a picture share a split
    meta = {"pictures": [{"id": s.id, "package": s.package, "path": str(p)} for s, p in found], "missing_packages": missing}
    return images, labels, names, split_keys, meta


def _build_icons(cfg: SuiteConfig, progress: bool):
    from tessera.icl.suite import icons as ic

    if not cfg.system:
        return None
    classes, found, missing = ic.icon_classes(min_themes=cfg.icon_min_themes)
    counts = [len(c.files) for c in classes]
    images = np.empty((sum(counts), cfg.resolution, cfg.resolution, 3), np.uint8)
    labels = np.repeat(np.arange(len(classes)), counts)
    k = 0
    with _progress(len(classes), "icons", progress) as bar:
        for c in classes:
            for p in c.files.values():
                images[k] = ic.render_icon(p, cfg.resolution)
                k += 1
            bar.update(1)
    names = [c.name for c in classes]
    meta = {
        "themes": found,
        "missing_packages": missing,
        "classes": [{"name": c.name, "aliases": c.aliases[:8], "themes": list(c.files)} for c in classes],
    }
    return images, labels, names, names, meta


def _build_one(name: str, cfg: SuiteConfig, progress: bool):
    if name == "glyphs":
        return _build_glyphs(cfg, False, progress)
    if name == "glyphs-eval":
        return _build_glyphs(cfg, True, progress)
    if name == "shapes":
        return _build_shapes(cfg, progress)
    if name == "photos":
        return _build_crops(cfg, False, progress)
    if name == "art":
        return _build_crops(cfg, True, progress)
    if name == "icons":
        return _build_icons(cfg, progress)
    raise ValueError(f"unknown suite dataset {name!r} (known: {', '.join(DATASETS)})")


def _stale(meta_path: Path, missing_now: list[str]) -> bool:
    """True when a dataset was built while Debian packages were missing that are installed now (rebuild it full)."""
    was_missing = json.loads(meta_path.read_text()).get("missing_debian_packages", [])
    return bool(set(was_missing) - set(missing_now))


def _missing_debian() -> list[str]:
    """Debian packages of `DEBIAN_PACKAGES` that are not installed (empty when dpkg is unavailable: not Debian)."""
    status = Path("/var/lib/dpkg/status")
    if not status.is_file():
        return list(DEBIAN_PACKAGES)
    installed = set()
    pkg = None
    for line in status.read_text(errors="replace").splitlines():
        if line.startswith("Package: "):
            pkg = line[9:].strip()
        elif line.startswith("Status: ") and "installed" in line.split()[-1] and pkg:
            installed.add(pkg)
    return [p for p in DEBIAN_PACKAGES if p not in installed]


def build_suite(
    cfg: SuiteConfig | None = None,
    datasets: list[str] | tuple[str, ...] | None = None,
    root: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build (or reuse) the suite's datasets and write `manifest.json`; returns the suite folder.

    Args:
        cfg: build settings (default `SuiteConfig()`).
        datasets: which datasets (default all six).
        root: parent folder (default the Tessera cache).
        force: rebuild datasets that already exist.
        progress: show progress bars.
    """
    cfg = cfg or SuiteConfig()
    folder = suite_dir(cfg, root)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(datasets or DATASETS)
    missing_deb = _missing_debian() if cfg.system else list(DEBIAN_PACKAGES)
    if missing_deb:
        warnings.warn(
            "building a REDUCED few-shot suite: missing Debian packages "
            + ", ".join(missing_deb)
            + (" (pip-only build requested)" if not cfg.system else f" (install with: apt-get install {' '.join(missing_deb)})")
            + "; see manifest.json",
            stacklevel=2,
        )
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.update(
        suite_version=SUITE_VERSION,
        config=dataclasses.asdict(cfg),
        reduced=bool(missing_deb),
        missing_debian_packages=missing_deb,
    )
    manifest.setdefault("datasets", {})
    for name in names:
        if name not in DATASETS:
            raise ValueError(f"unknown suite dataset {name!r} (known: {', '.join(DATASETS)})")
        out = folder / name
        if (out / "meta.json").is_file() and not force and not _stale(out / "meta.json", missing_deb):
            continue
        t0 = time.time()
        built = _build_one(name, cfg, progress)
        info = DATASETS[name]
        if built is None or len(built[2]) < 5:
            warnings.warn(f"suite dataset {name!r} is unavailable in this build (needs Debian packages); skipped", stacklevel=2)
            manifest["datasets"][name] = {"available": False, "role": info.role}
            continue
        images, labels, class_names, split_keys, meta = built
        uniq = sorted(set(split_keys))
        key_split = dict(zip(uniq, assign_splits(uniq, info.fractions, salt=f"{name}/{cfg.seed}"), strict=True))
        class_split = [key_split[k] for k in split_keys]
        meta.update(role=info.role, description=info.description, class_split=class_split, build_seconds=round(time.time() - t0, 1),
                    missing_debian_packages=missing_deb)
        write_dataset(out, images, labels, class_names, meta)
        counts = np.bincount(labels)
        manifest["datasets"][name] = {
            "available": True,
            "role": info.role,
            "classes": len(class_names),
            "images": int(len(labels)),
            "images_per_class": [int(counts.min()), int(counts.max())],
            "classes_per_split": {s: class_split.count(s) for s in SPLITS},
            "missing_packages": meta.get("missing_packages", []),
        }
        _log.info("built %s: %d classes, %d images (%.1fs)", name, len(class_names), len(labels), time.time() - t0)
    from tessera.io import atomic_write_json

    atomic_write_json(manifest_path, manifest)
    return folder


def suite_manifest(cfg: SuiteConfig | None = None, root: str | Path | None = None) -> dict[str, Any]:
    """The manifest of a built suite (what was built from what, and what was missing)."""
    path = suite_dir(cfg, root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the suite is not built yet (`tessera icl build-suite`)")
    return json.loads(path.read_text())


def load_suite_dataset(
    name: str,
    split: str = "all",
    cfg: SuiteConfig | None = None,
    root: str | Path | None = None,
    build: bool = True,
) -> FewShotImages:
    """One suite dataset (its `split` classes), building it first when missing and `build` is True.

    Raises:
        ValueError: unknown name or split, or the dataset is unavailable in this build (missing Debian packages).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown suite dataset {name!r} (known: {', '.join(DATASETS)})")
    cfg = cfg or SuiteConfig()
    folder = suite_dir(cfg, root) / name
    if not (folder / "meta.json").is_file():
        if not build:
            raise FileNotFoundError(f"{folder}: not built (`tessera icl build-suite`)")
        build_suite(cfg, [name], root=root)
        if not (folder / "meta.json").is_file():
            raise ValueError(f"suite dataset {name!r} is unavailable in this build: install {', '.join(DEBIAN_PACKAGES)}")
    return read_dataset(folder, name).split(split)
