"""Loaders for user data with the embedded sets' transform: image folders, CIFAR, ImageNet, folders of video frames.

Axis legend: N images, T frames, C channels (3, RGB), H W height and width (= resolution).

Every image goes through `load_image` (errors name the file; EXIF, 16-bit, CMYK and transparency handled) and then the
shared transform `prepare_image` (resize the shorter side to the resolution, center crop, float in [0, 1]), so user
data looks to a model exactly like the embedded sets.

Folder conventions:
- Image folders are walked to any depth, in natural order (`img2` before `img10`); hidden files and folders (names
  starting with `.`, such as macOS `._x.jpg` resource forks) are skipped and symlinked folders are not followed.
  The class of an image is the first-level folder it is under (`root/<class>/.../x.jpg`); images directly in `root`
  get label -1.
- ImageNet: `root/train/<wnid>/*.JPEG` and `root/val/<wnid>/*.JPEG` (the layout torchvision's `ImageNet` and the usual
  `valprep.sh` produce); class names are read from `LOC_synset_mapping.txt` or `synset_words.txt` when present.
- CIFAR-10/100: the official "python version" folders (`cifar-10-batches-py`, `cifar-100-python`). These files are
  pickles; they are read with a restricted unpickler that can only rebuild dicts, lists, strings, numbers and NumPy
  arrays, so a tampered file cannot run code. (torchvision's loader is not used: it unpickles without restriction
  and refuses any file whose MD5 differs from the official release, which also rules out test fixtures.)
- Video frames: every folder (any depth) that directly holds image files is one clip, frames in natural order; the
  class is the first-level folder when clips sit below one (`root/<class>/<clip>/frame_0001.png`).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from tessera.data.imageio import DEFAULT_MAX_PIXELS, load_image, prepare_image, to_tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "natural_key",
    "find_images",
    "ImageFolderDataset",
    "CIFARDataset",
    "imagenet_dataset",
    "VideoFramesDataset",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
    ".pnm", ".tga", ".qoi", ".avif",
)


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs by value: frame2 < frame10 (case-insensitive otherwise)."""
    parts = re.split(r"(\d+)", name)
    # re.split keeps text at even and digit runs at odd positions, so keys always compare str-to-str, int-to-int.
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))


def _is_image(name: str, extensions: Sequence[str]) -> bool:
    return not name.startswith(".") and name.lower().endswith(tuple(extensions))


def find_images(root: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Every image file under `root`, any depth, sorted by relative path in natural order (`cat/a.png`,
    `cat/sub/b.png`, `dog/c2.png`, `dog/c10.png`, `top.png`); hidden entries skipped, symlinked folders not followed.

    Raises:
        FileNotFoundError: `root` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # prune hidden folders from the walk
        found += [Path(folder) / name for name in files if _is_image(name, extensions)]
    # One global order by path components, so it does not depend on the file system's listing order.
    return sorted(found, key=lambda p: tuple(natural_key(part) for part in p.relative_to(root).parts))


def _first_level(path: Path, root: Path) -> str | None:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else None


class ImageFolderDataset(Dataset):
    """Images under a folder, any depth, class = first-level folder; items are (C, H, W) floats in [0, 1].

    Attributes:
        root: the folder.
        samples: (path, label) pairs in natural order; label -1 for images directly in `root`.
        classes: sorted first-level folder names that hold images; `classes[label]` names a label.
        class_names: optional human-readable names aligned with `classes` (ImageNet), else equal to `classes`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        resolution: int = 32,
        *,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        return_labels: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        background: tuple[int, int, int] = (255, 255, 255),
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Index the folder (files are opened lazily, one per item).

        Args:
            root: folder to walk.
            resolution: output side (resize shorter side + center crop).
            extensions: file name endings that count as images (case-insensitive).
            return_labels: items are `(image, label)` if True, else just the image.
            max_pixels: per-image pixel cap passed to `load_image`.
            background: colour transparent pixels are composited on.
            transform: optional function applied to each float (C, H, W) tensor.

        Raises:
            FileNotFoundError: `root` is missing or holds no image files.
        """
        self.root = Path(root)
        files = find_images(self.root, extensions)
        if not files:
            raise FileNotFoundError(f"no image files ({', '.join(extensions)}) under {self.root}")
        self.classes = sorted({c for f in files if (c := _first_level(f, self.root)) is not None}, key=natural_key)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.class_names = list(self.classes)
        self.samples: list[tuple[Path, int]] = [
            (f, self.class_to_idx.get(_first_level(f, self.root) or "", -1)) for f in files
        ]
        self.resolution = resolution
        self.return_labels = return_labels
        self.max_pixels = max_pixels
        self.background = background
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        """Label of every sample, in order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Tensor:
        """The transformed image of sample `index` (C, H, W), without its label."""
        path, _ = self.samples[index]
        img = load_image(path, max_pixels=self.max_pixels, background=self.background)
        x = prepare_image(img, self.resolution)
        return self.transform(x) if self.transform is not None else x

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, int]:
        x = self.load(index)
        return (x, self.samples[index][1]) if self.return_labels else x

    def check(self) -> list[tuple[Path, str]]:
        """Open every file once; return (path, error message) for those that fail (an empty list if all load)."""
        bad = []
        for path, _ in self.samples:
            try:
                load_image(path, max_pixels=self.max_pixels)
            except (OSError, ValueError) as exc:
                bad.append((path, str(exc)))
        return bad


def imagenet_dataset(
    root: str | os.PathLike[str],
    split: Literal["train", "val"] = "train",
    resolution: int = 64,
    **kwargs: Any,
) -> ImageFolderDataset:
    """ImageNet (ILSVRC-2012) in its folder layout: `root/<split>/<wnid>/<image>.JPEG`.

    Args:
        root: folder holding `train/` and `val/`.
        split: "train" or "val".
        resolution: output side.
        **kwargs: passed to `ImageFolderDataset`.

    Returns:
        An `ImageFolderDataset` whose `classes` are the WordNet ids and `class_names` the readable names when a
        `LOC_synset_mapping.txt` or `synset_words.txt` file sits in `root`.

    Raises:
        FileNotFoundError: the split folder is missing.
        ValueError: the split folder has images but no class folders (the raw, flat validation set).
    """
    root = Path(root)
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"ImageNet {split} folder not found: {folder} (expected {root}/{split}/<wnid>/*.JPEG)")
    flat = [p for p in folder.iterdir() if p.is_file() and _is_image(p.name, IMAGE_EXTENSIONS)]
    if flat and not any(p.is_dir() for p in folder.iterdir()):
        raise ValueError(
            f"{folder} holds {len(flat)} images but no class folders: move the validation images into <wnid>/ "
            "folders first (for example with valprep.sh, or torchvision.datasets.ImageNet which does it once)"
        )
    dataset = ImageFolderDataset(folder, resolution, **kwargs)
    names = _synset_names(root)
    if names:
        dataset.class_names = [names.get(wnid, wnid) for wnid in dataset.classes]
    return dataset


def _synset_names(root: Path) -> dict[str, str]:
    """wnid -> readable name from `LOC_synset_mapping.txt` (Kaggle) or `synset_words.txt` (Caffe), if present."""
    for name in ("LOC_synset_mapping.txt", "synset_words.txt"):
        path = root / name
        if path.is_file():
            mapping = {}
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                wnid, _, words = line.strip().partition(" ")
                if wnid:
                    mapping[wnid] = words.split(",")[0].strip() or wnid
            return mapping
    return {}


# ----------------------------------------------------------------------------------------------------------------------
# CIFAR


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild NumPy arrays (plus builtin containers, which need no globals)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # Python 3 pickles of bytes at protocol < 3 go through _codecs.encode
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only NumPy arrays are allowed)")


def _read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR batch file as a dict with str keys (the originals are Python 2 pickles with byte-string keys)."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file not found: {path}")
    try:
        with open(path, "rb") as f:
            entry = _RestrictedUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... on damaged or foreign files
        raise ValueError(f"{path}: not a valid CIFAR python-version batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: expected a dict in a CIFAR batch, got {type(entry).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


_CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "labels": "labels", "names": "label_names"},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "labels": "fine_labels", "names": "fine_label_names"},
}


class CIFARDataset(Dataset):
    """CIFAR-10 or CIFAR-100 from the official python-version files; items are (C, H, W) floats in [0, 1].

    Attributes:
        array: uint8 (N, 32, 32, C) images.
        labels: int64 (N,) labels (fine labels for CIFAR-100 unless `label_type="coarse"`).
        classes: label names.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        name: Literal["cifar10", "cifar100"] = "cifar10",
        split: Literal["train", "test"] = "train",
        resolution: int = 32,
        *,
        label_type: Literal["fine", "coarse"] = "fine",
        return_labels: bool = True,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Read every batch of the split into memory (CIFAR-10 train is 150 MB).

        Args:
            root: the `cifar-10-batches-py` / `cifar-100-python` folder itself or the folder that contains it.
            name: "cifar10" or "cifar100".
            split: "train" or "test".
            resolution: output side (32 is the native size; other sizes are resampled bicubically).
            label_type: CIFAR-100 only: "fine" (100 classes) or "coarse" (20 superclasses).
            return_labels: items are `(image, label)` if True, else just the image.
            transform: optional function applied to each float (C, H, W) tensor.

        Raises:
            FileNotFoundError: a batch file is missing.
            ValueError: unknown name/split, or a file that is not a CIFAR batch.
        """
        if name not in _CIFAR:
            raise ValueError(f"name must be one of {sorted(_CIFAR)}, got {name!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        spec = _CIFAR[name]
        root = Path(root)
        folder = root if root.name == spec["folder"] else root / spec["folder"]
        if not folder.is_dir():
            raise FileNotFoundError(f"{name} folder not found: {folder} (download the python version and extract it)")
        label_key = "coarse_labels" if (name == "cifar100" and label_type == "coarse") else spec["labels"]
        names_key = "coarse_label_names" if label_key == "coarse_labels" else spec["names"]
        data, labels = [], []
        for fname in spec[split]:
            entry = _read_cifar_pickle(folder / fname)
            if "data" not in entry or label_key not in entry:
                raise ValueError(f"{folder / fname}: missing 'data' or '{label_key}' in CIFAR batch")
            batch = np.asarray(entry["data"], dtype=np.uint8)
            if batch.ndim != 2 or batch.shape[1] != 3 * 32 * 32:
                raise ValueError(f"{folder / fname}: expected data of shape (N, 3072), got {batch.shape}")
            data.append(batch)
            labels.extend(int(v) for v in entry[label_key])
        flat = np.concatenate(data)
        self.array = flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()  # (N, C*H*W) -> (N, H, W, C)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(self.array):
            raise ValueError(f"{folder}: {len(self.array)} images but {len(self.labels)} labels")
        meta_path = folder / spec["meta"]
        if meta_path.is_file():
            meta = _read_cifar_pickle(meta_path)
            self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]
        else:
            self.classes = [str(i) for i in range(int(self.labels.max()) + 1)]
        self.resolution = resolution
        self.return_labels = return_labels
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        """Label of every sample, in order."""
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, int]:
        img = self.array[index]  # (H, W, C) uint8
        x = to_tensor(img) if self.resolution == 32 else prepare_image(Image.fromarray(img), self.resolution)
        if self.transform is not None:
            x = self.transform(x)
        return (x, int(self.labels[index])) if self.return_labels else x


# ----------------------------------------------------------------------------------------------------------------------
# Video frames


class VideoFramesDataset(Dataset):
    """Clips stored as folders of frame images; items are (T, C, H, W) floats in [0, 1].

    Attributes:
        clips: (folder, frame paths, label) per clip, in natural order.
        classes: first-level folder names that hold clips below them.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        num_frames: int = 8,
        resolution: int = 32,
        *,
        sampling: Literal["uniform", "first"] = "uniform",
        short_clips: Literal["skip", "repeat", "error"] = "skip",
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        return_labels: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Index the clips (frames are opened lazily).

        Args:
            root: folder to walk; every folder that directly holds images is a clip.
            num_frames: frames per item.
            resolution: output side (each frame: resize shorter side + center crop).
            sampling: "uniform" takes `num_frames` evenly spaced frames over the clip, "first" the first ones.
            short_clips: clips with fewer than `num_frames` frames are dropped ("skip", with a log line), padded by
                repeating frames ("repeat", evenly spread), or rejected ("error").
            extensions: file name endings that count as frames.
            return_labels: items are `(clip, label)` if True, else just the clip.
            max_pixels: per-frame pixel cap passed to `load_image`.
            transform: optional function applied to each float (T, C, H, W) tensor.

        Raises:
            FileNotFoundError: `root` is missing or holds no frames.
            ValueError: `short_clips="error"` and a clip is too short (the message names its folder).
        """
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.root = Path(root)
        by_folder: dict[Path, list[Path]] = {}
        for f in find_images(self.root, extensions):
            by_folder.setdefault(f.parent, []).append(f)
        if not by_folder:
            raise FileNotFoundError(f"no frame images ({', '.join(extensions)}) under {self.root}")
        folders = sorted(by_folder, key=lambda p: tuple(natural_key(x) for x in p.relative_to(self.root).parts))
        firsts = {p.relative_to(self.root).parts[0] for p in folders if len(p.relative_to(self.root).parts) > 1}
        self.classes = sorted(firsts, key=natural_key)
        class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.clips: list[tuple[Path, list[Path], int]] = []
        skipped = 0
        for folder in folders:
            frames = by_folder[folder]
            if len(frames) < num_frames:
                if short_clips == "error":
                    raise ValueError(f"{folder}: clip has {len(frames)} frames, fewer than num_frames={num_frames}")
                if short_clips == "skip":
                    skipped += 1
                    continue
            parts = folder.relative_to(self.root).parts
            label = class_to_idx.get(parts[0], -1) if len(parts) > 1 else -1
            self.clips.append((folder, frames, label))
        if skipped:
            log.warning("%s: skipped %d clip(s) with fewer than %d frames", self.root, skipped, num_frames)
        if not self.clips:
            raise FileNotFoundError(f"no clip under {self.root} has at least {num_frames} frames")
        self.num_frames = num_frames
        self.resolution = resolution
        self.sampling = sampling
        self.return_labels = return_labels
        self.max_pixels = max_pixels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.clips)

    def frame_indices(self, length: int) -> list[int]:
        """Which of a clip's `length` frames an item uses (repeats appear only when the clip is short)."""
        if self.sampling == "first" and length >= self.num_frames:
            return list(range(self.num_frames))
        return [int(i) for i in np.rint(np.linspace(0, length - 1, self.num_frames))]

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, int]:
        _, frames, label = self.clips[index]
        chosen = [
            prepare_image(load_image(frames[i], max_pixels=self.max_pixels), self.resolution)
            for i in self.frame_indices(len(frames))
        ]
        x = torch.stack(chosen)  # T x (C, H, W) -> (T, C, H, W)
        if self.transform is not None:
            x = self.transform(x)
        return (x, label) if self.return_labels else x
