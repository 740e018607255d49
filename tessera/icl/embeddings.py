"""Frozen-extractor embeddings computed once per (extractor, dataset) and cached on disk, memory-mapped on reuse.

Axis legend: N images, D embedding size.

CAML and every baseline here read frozen features, so features are computed once for the whole dataset (all splits)
rather than once per episode as the official evaluation does (papers-digest B6). The cache key combines the
extractor's weights fingerprint with the dataset's content hash, so retraining either invalidates the cache.
Files are written atomically and read back with `mmap_mode="r"`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tessera.features.base import FeatureExtractor
from tessera.icl.suite._store import SPLITS, FewShotImages
from tessera.io import atomic_write_text

__all__ = ["EmbeddedSet", "extractor_fingerprint", "embed_images", "embed_dataset"]


@dataclass
class EmbeddedSet:
    """Embeddings of a labelled dataset, with its class splits.

    Attributes:
        name: dataset name.
        features: (N, D) float32 (often a read-only memory map).
        labels: (N,) class indices.
        class_names: one per class.
        class_split: "train" / "val" / "test" per class (empty when the dataset has no splits).
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    class_split: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def classes(self, classes: list[int] | np.ndarray, name: str | None = None) -> EmbeddedSet:
        """Rows of `classes`, relabelled 0..len-1 in the given order (features loaded into memory)."""
        classes = np.asarray(classes, dtype=np.int64)
        remap = np.full(self.num_classes, -1, dtype=np.int64)
        remap[classes] = np.arange(len(classes))
        rows = np.flatnonzero(remap[self.labels] >= 0)
        return EmbeddedSet(
            name or self.name,
            np.ascontiguousarray(self.features[rows], dtype=np.float32),
            remap[self.labels[rows]],
            [self.class_names[c] for c in classes],
            [self.class_split[c] for c in classes] if self.class_split else [],
        )

    def split(self, split: str) -> EmbeddedSet:
        """The classes of `split` ("train", "val", "test") or everything ("all")."""
        if split == "all":
            return self
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
        if not self.class_split:
            raise ValueError(f"{self.name}: has no class splits")
        cls = [i for i, s in enumerate(self.class_split) if s == split]
        if not cls:
            raise ValueError(f"{self.name}: split {split!r} is empty")
        return self.classes(cls, name=f"{self.name}/{split}")


def extractor_fingerprint(ext: FeatureExtractor) -> str:
    """Short hash of the extractor's name, preprocessing and weights (identifies its embeddings)."""
    h = hashlib.sha256()
    h.update(f"{ext.name}|{ext.input_size}|{ext.crop_pct}|{ext.interpolation}|".encode())
    h.update(ext.mean.cpu().numpy().tobytes() + ext.std.cpu().numpy().tobytes())
    for k, v in sorted(ext.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.inference_mode()
def embed_images(
    ext: FeatureExtractor,
    load: Callable[[np.ndarray], torch.Tensor],
    num: int,
    batch_size: int = 256,
    progress: bool = True,
    desc: str = "embedding",
) -> np.ndarray:
    """Embed `num` images fetched in batches by `load(indices) -> (b, 3, H, W)`; returns (N, D) float32."""
    from tqdm.auto import tqdm

    device = ext.mean.device
    out = np.empty((num, ext.embed_dim), dtype=np.float32)
    with tqdm(total=num, desc=desc, disable=not progress, dynamic_ncols=True, leave=False) as bar:
        for start in range(0, num, batch_size):
            idx = np.arange(start, min(num, start + batch_size))
            out[idx] = ext.embed(load(idx).to(device)).float().cpu().numpy()
            bar.update(len(idx))
    return out


def _is_view(ds: FewShotImages) -> bool:
    """Whether `ds` is a class subset (e.g. `load_suite_dataset(name, "train")`) rather than a whole stored dataset."""
    full_names = ds.meta.get("class_names")
    return "/" in ds.name or (full_names is not None and len(full_names) != len(ds.class_names))


def _dataset_key(ds: FewShotImages) -> str:
    """File name of the dataset's embeddings: content hash, plus the subset's own hash for a class subset.

    Split views are named like "glyphs/train"; the name is made filesystem-safe (a "/" would point into a folder
    that is never created), and a view gets its own file so it never overwrites the whole dataset's cache.
    """
    safe = ds.name.replace("/", "~").replace("\\", "~").replace(":", "_")
    sha = ds.meta.get("sha256", {})
    if sha:
        key = f"{safe}-{sha.get('images', '')[:12]}{sha.get('labels', '')[:4]}"
    else:
        key = f"{safe}-{hashlib.sha256(np.ascontiguousarray(ds.labels).tobytes()).hexdigest()[:12]}"
    if _is_view(ds):
        h = hashlib.sha256(np.ascontiguousarray(ds.labels, dtype=np.int64).tobytes())
        h.update("\n".join(map(str, ds.class_names)).encode())
        key += f"-view{h.hexdigest()[:8]}"
    return key


def _class_split(ds: FewShotImages) -> list[str]:
    """The split of each of `ds`'s classes (the stored list maps the whole dataset's classes, not a view's)."""
    splits = list(ds.meta.get("class_split", []))
    if not splits or (len(splits) == len(ds.class_names) and not _is_view(ds)):
        return splits
    full_names = ds.meta.get("class_names")
    if full_names is not None and len(full_names) == len(splits):
        where = {name: i for i, name in enumerate(full_names)}
        if all(c in where for c in ds.class_names):
            return [splits[where[c]] for c in ds.class_names]
    suffix = ds.name.rsplit("/", 1)[-1] if "/" in ds.name else ""
    return [suffix] * len(ds.class_names) if suffix in SPLITS else []


def embed_dataset(
    ext: FeatureExtractor,
    ds: FewShotImages,
    cache: str | Path | None | bool = None,
    batch_size: int = 256,
    progress: bool = True,
) -> EmbeddedSet:
    """Embeddings of every image of `ds` (all splits), from the cache when present.

    Args:
        ext: a frozen extractor.
        ds: a dataset or a class subset of one (e.g. a split view); the full dataset's cache serves every split.
        cache: cache root (default `cache_dir("icl", "embeddings")`); False disables caching.
        batch_size: images per forward.
        progress: progress bar.
    """
    class_split = _class_split(ds)
    if cache is False:
        feats = embed_images(ext, ds.to_tensor, len(ds), batch_size, progress, desc=f"embedding {ds.name}")
        return EmbeddedSet(ds.name, feats, np.asarray(ds.labels), list(ds.class_names), class_split)
    from tessera.paths import cache_dir

    root = Path(cache) if cache is not None else cache_dir("icl", "embeddings")
    folder = root / f"{ext.name.replace('/', '_').replace(':', '_')}-{extractor_fingerprint(ext)}"
    path = folder / f"{_dataset_key(ds)}.npy"
    if path.is_file():
        feats = np.load(path, mmap_mode="r")
        if feats.shape == (len(ds), ext.embed_dim):
            return EmbeddedSet(ds.name, feats, np.asarray(ds.labels), list(ds.class_names), class_split)
    feats = embed_images(ext, ds.to_tensor, len(ds), batch_size, progress, desc=f"embedding {ds.name}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    info: dict[str, Any] = {"extractor": ext.name, "embed_dim": ext.embed_dim}
    atomic_write_text(folder / "extractor.json", json.dumps(info) + "\n")
    return EmbeddedSet(ds.name, np.load(path, mmap_mode="r"), np.asarray(ds.labels), list(ds.class_names), class_split)
