"""Loaders for the paper's few-shot benchmarks from their standard directory layouts (nothing is downloaded).

Axis legend: N images.

CAML's universal evaluation (papers-digest B3) reads one image folder per benchmark split, laid out as in FRN's and
CAML's released archives (`caml_universal_eval_datasets/<name>/test/<class>/<image>`). `load_benchmark(name, root)`
finds the split under `root` by the names those archives use, and also understands the original layouts where a
standard few-shot split exists without re-packing:

| name              | folder layouts searched under `root`                                                    |
|-------------------|-------------------------------------------------------------------------------------------|
| mini_imagenet     | mini-ImageNet/test_pre (84x84), mini-ImageNet/<split>; Ravi & Larochelle: images/ + <split>.csv |
| tiered_imagenet   | tiered-ImageNet_DeepEMD/<split>, tiered-ImageNet/<split>, tieredImageNet/<split>        |
| cifar_fs          | cifar-fs/<split>, CIFAR-FS/<split> (32x32 image folders)                                   |
| cub               | CUB_fewshot_raw/<split>, CUB_fewshot_cropped/<split>; CUB_200_2011/images (Chen et al. 2019 split) |
| aircraft          | Aircraft_fewshot/<split>                                                                  |
| meta_inat         | meta_iNat/<split>                                                                         |
| tiered_meta_inat  | tiered_meta_iNat/<split>                                                                  |
| chestx            | ChestX/<split>; BSCD-FSL: Data_Entry_2017.csv + images/ (7 single-label findings, all = test) |
| paintings         | v2_paintings/<split>                                                                      |
| pascal            | v2_pascal/<split>                                                                         |
| pascal_paintings  | v2_pascal_paintings/<split>                                                               |

Pickled releases (CIFAR-FS's original, some mini-ImageNet packs) are not read: Tessera never unpickles files.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["PAPER_BENCHMARKS", "BenchmarkImages", "image_folder", "load_benchmark"]

_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}

PAPER_BENCHMARKS: dict[str, tuple[str, ...]] = {
    "mini_imagenet": ("mini-ImageNet/{split}_pre", "mini-ImageNet/{split}", "miniImageNet/{split}", "mini_imagenet/{split}"),
    "tiered_imagenet": ("tiered-ImageNet_DeepEMD/{split}", "tiered-ImageNet/{split}", "tieredImageNet/{split}"),
    "cifar_fs": ("cifar-fs/{split}", "CIFAR-FS/{split}", "cifar_fs/{split}"),
    "cub": ("CUB_fewshot_raw/{split}", "CUB_fewshot_cropped/{split}", "CUB_fewshot/{split}"),
    "aircraft": ("Aircraft_fewshot/{split}", "aircraft/{split}"),
    "meta_inat": ("meta_iNat/{split}",),
    "tiered_meta_inat": ("tiered_meta_iNat/{split}",),
    "chestx": ("ChestX/{split}",),
    "paintings": ("v2_paintings/{split}", "paintings/{split}"),
    "pascal": ("v2_pascal/{split}", "pascal/{split}"),
    "pascal_paintings": ("v2_pascal_paintings/{split}", "pascal_paintings/{split}"),
}

# BSCD-FSL's ChestX classes: the single-label images of these findings.
_CHESTX_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax")


@dataclass
class BenchmarkImages:
    """Image files with class labels; images are loaded lazily by `load(indices)`."""

    name: str
    files: list[Path]
    labels: np.ndarray
    class_names: list[str]
    layout: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def loader(self, size: int, crop_pct: float = 1.0, load_rgb: Callable | None = None) -> Callable[[np.ndarray], torch.Tensor]:
        """A function `indices -> (b, 3, S, S)` float in [0, 1] (shorter side resized, centre crop)."""
        from PIL import Image

        side = int(np.ceil(size / crop_pct))

        def default_rgb(p: Path):
            with Image.open(p) as im:
                return im.convert("RGB")

        rgb = load_rgb or default_rgb

        def load(idx: np.ndarray) -> torch.Tensor:
            out = torch.empty(len(idx), 3, side, side)
            for j, i in enumerate(np.asarray(idx)):
                img = rgb(self.files[int(i)])
                w, h = img.size
                s = side / min(w, h)
                img = img.resize((max(side, round(w * s)), max(side, round(h * s))), Image.BICUBIC)
                left, top = (img.width - side) // 2, (img.height - side) // 2
                img = img.crop((left, top, left + side, top + side))
                out[j] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
            return out

        return load


def image_folder(root: str | Path, name: str | None = None) -> BenchmarkImages:
    """`root/<class>/<image>` (images searched recursively inside each class folder; classes sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder not found: {root}")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for c, d in enumerate(classes):
        imgs = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in _EXT)
        files += imgs
        labels += [c] * len(imgs)
    if not files:
        raise ValueError(f"{root}: no images in class subfolders")
    return BenchmarkImages(name or root.name, files, np.asarray(labels, dtype=np.int64), [d.name for d in classes], layout=str(root))


def _mini_imagenet_csv(root: Path, split: str) -> BenchmarkImages | None:
    csv_path, images = root / f"{split}.csv", root / "images"
    if not (csv_path.is_file() and images.is_dir()):
        return None
    files, names = [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            files.append(images / row["filename"])
            names.append(row["label"])
    classes = sorted(set(names))
    lut = {c: i for i, c in enumerate(classes)}
    return BenchmarkImages("mini_imagenet", files, np.asarray([lut[n] for n in names]), classes, layout=f"{csv_path} (Ravi & Larochelle)")


def _cub_raw(root: Path, split: str) -> BenchmarkImages | None:
    images = root / "CUB_200_2011" / "images"
    if not images.is_dir():
        images = root / "images" if (root / "images").is_dir() and root.name == "CUB_200_2011" else None
    if images is None:
        return None
    full = image_folder(images, "cub")
    # Chen et al. 2019 ("A closer look at few-shot classification"): class i -> train if i % 2 == 0,
    # val if i % 4 == 1, test if i % 4 == 3 (100 / 50 / 50 classes).
    keep = [i for i in range(full.num_classes) if {"train": i % 2 == 0, "val": i % 4 == 1, "test": i % 4 == 3}[split]]
    rows = np.flatnonzero(np.isin(full.labels, keep))
    remap = {c: j for j, c in enumerate(keep)}
    return BenchmarkImages(
        "cub", [full.files[r] for r in rows], np.asarray([remap[int(full.labels[r])] for r in rows]),
        [full.class_names[c] for c in keep], layout=f"{images} (Chen et al. 2019 split)",
    )


def _chestx_raw(root: Path, split: str) -> BenchmarkImages | None:
    base = root / "ChestX" if (root / "ChestX" / "Data_Entry_2017.csv").is_file() else root
    csv_path = base / "Data_Entry_2017.csv"
    if not csv_path.is_file() or split != "test":
        return None
    index = {p.name: p for p in base.rglob("*.png")}
    files, names = [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            finding = row["Finding Labels"]
            if finding in _CHESTX_CLASSES and row["Image Index"] in index:
                files.append(index[row["Image Index"]])
                names.append(finding)
    if not files:
        return None
    classes = sorted(set(names))
    lut = {c: i for i, c in enumerate(classes)}
    return BenchmarkImages("chestx", files, np.asarray([lut[n] for n in names]), classes, layout=f"{csv_path} (BSCD-FSL)")


def load_benchmark(name: str, root: str | Path, split: str = "test") -> BenchmarkImages:
    """One split of a paper benchmark found under `root` (see the module docstring for the layouts).

    Raises:
        ValueError: unknown benchmark name.
        FileNotFoundError: none of the known layouts exists under `root` (the message lists the paths tried).
    """
    if name not in PAPER_BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r} (known: {', '.join(PAPER_BENCHMARKS)})")
    root = Path(root)
    tried = []
    for pattern in PAPER_BENCHMARKS[name]:
        path = root / pattern.format(split=split)
        tried.append(str(path))
        if path.is_dir():
            return image_folder(path, name)
    special = {"mini_imagenet": lambda: _mini_imagenet_csv(root / "mini-ImageNet", split) or _mini_imagenet_csv(root, split),
               "cub": lambda: _cub_raw(root, split), "chestx": lambda: _chestx_raw(root, split)}
    if name in special:
        found = special[name]()
        if found is not None:
            return found
        tried.append(f"{name} original layout under {root}")
    raise FileNotFoundError(f"{name} ({split}) not found; tried: {', '.join(tried)}")
