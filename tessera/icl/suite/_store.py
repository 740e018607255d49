"""On-disk format of a built few-shot dataset, and the in-memory view every sampler and cache uses.

Axis legend: N images, H W height and width, C = 3 colour channels.

A built dataset is a folder:
    images.npy   uint8 (N, H, W, 3), memory-mapped on load
    labels.npy   int32 (N,), class index of each image
    meta.json    class names, the split of each class (train / val / test), provenance of each class, build
                 settings, what was missing, sha256 of both arrays
The folder is written under a temporary name and renamed into place, so a killed build never leaves a half dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["FewShotImages", "write_dataset", "read_dataset", "SPLITS", "assign_splits"]

SPLITS = ("train", "val", "test")


@dataclass
class FewShotImages:
    """A labelled image set for episodic sampling.

    Attributes:
        name: dataset name (e.g. "glyphs").
        images: uint8 (N, H, W, 3), usually a read-only memory map.
        labels: int64 (N,), indices into `class_names`.
        class_names: one name per class.
        meta: build metadata (splits, provenance, settings).
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_tensor(self, idx: np.ndarray | list[int] | slice) -> Tensor:
        """Images `idx` as float (B, 3, H, W) in [0, 1]."""
        arr = np.asarray(self.images[idx])
        if arr.ndim == 3:
            arr = arr[None]
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)

    def subset_classes(self, classes: list[int] | np.ndarray, name: str | None = None) -> FewShotImages:
        """The images of `classes` (re-indexed 0..len-1 in the given order); images stay memory-mapped slices."""
        classes = np.asarray(classes, dtype=np.int64)
        remap = np.full(self.num_classes, -1, dtype=np.int64)
        remap[classes] = np.arange(len(classes))
        keep = np.flatnonzero(remap[self.labels] >= 0)
        return FewShotImages(
            name=name or self.name,
            images=_LazyRows(self.images, keep),  # type: ignore[arg-type]
            labels=remap[self.labels[keep]],
            class_names=[self.class_names[c] for c in classes],
            meta=self.meta,
        )

    def split(self, split: str) -> FewShotImages:
        """The classes assigned to `split` ("train", "val", "test" or "all")."""
        if split == "all":
            return self
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
        class_split = self.meta.get("class_split")
        if class_split is None:
            raise ValueError(f"{self.name}: no class splits recorded")
        classes = [i for i, s in enumerate(class_split) if s == split]
        if not classes:
            raise ValueError(f"{self.name}: split {split!r} has no classes")
        return self.subset_classes(classes, name=f"{self.name}/{split}")


class _LazyRows:
    """Row subset of a (memory-mapped) array that reads rows only when indexed."""

    def __init__(self, base: np.ndarray, rows: np.ndarray) -> None:
        self.base, self.rows = base, rows
        self.shape = (len(rows),) + tuple(base.shape[1:])
        self.dtype = base.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx):  # noqa: ANN001
        rows = self.rows[idx]
        if np.ndim(rows) == 0:
            return self.base[int(rows)]
        order = np.argsort(rows)  # memory maps read fastest in increasing order
        out = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        out[order] = self.base[rows[order]]
        return out

    def __array__(self, dtype=None, copy=None):  # noqa: ANN001
        arr = self[np.arange(len(self.rows))]
        return arr if dtype is None else arr.astype(dtype)


def assign_splits(keys: list[str], fractions: tuple[float, float, float], salt: str) -> list[str]:
    """Deterministic train/val/test assignment of `keys` by a salted hash rank (independent of what else exists).

    Each key gets a fixed pseudo-random number from sha256(salt + key); keys are sorted by it and cut at the given
    fractions. The same key always lands in the same split for the same set of keys.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    order = sorted(range(len(keys)), key=lambda i: hashlib.sha256(f"{salt}/{keys[i]}".encode()).hexdigest())
    n = len(keys)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    out = ["test"] * n
    for rank, i in enumerate(order):
        out[i] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def write_dataset(folder: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str], meta: dict[str, Any]) -> None:
    """Write a dataset folder atomically (temporary folder, then rename)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise ValueError("images and labels differ in length")
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    np.save(tmp / "images.npy", images)
    np.save(tmp / "labels.npy", labels.astype(np.int32))
    meta = dict(meta)
    meta.update(
        class_names=class_names,
        num_images=int(len(images)),
        num_classes=len(class_names),
        image_shape=list(images.shape[1:]),
        sha256={"images": _sha256(images), "labels": _sha256(labels.astype(np.int32))},
    )
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def read_dataset(folder: Path, name: str) -> FewShotImages:
    """Open a dataset folder (images memory-mapped read-only)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: missing (build the suite with `tessera icl build-suite`)")
    meta = json.loads(meta_path.read_text())
    images = np.load(folder / "images.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy").astype(np.int64)
    if len(images) != meta["num_images"] or len(labels) != meta["num_images"]:
        raise ValueError(f"{folder}: arrays do not match meta.json (truncated build?); delete the folder and rebuild")
    return FewShotImages(name=name, images=images, labels=labels, class_names=list(meta["class_names"]), meta=meta)
