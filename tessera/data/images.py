"""The embedded default image set: multi-scale crops of real photographs and artwork, built offline.

Axis legend: N crops, H W crop height and width (= resolution), C channels (3, RGB, last axis on disk).

How it is built (`build_image_dataset`, run by `tessera data build`):

1. Every source of `sources.IMAGE_SOURCES` found on this machine is read (bytes hashed with SHA-256 for the manifest),
   decoded with `load_image` (EXIF orientation, gray -> RGB) and downscaled so its shorter side is at most
   `max_short_side`; this working copy is what crops are cut from.
2. For each resolution and split, each source gets a quota of crops proportional to its working area (largest
   remainder rounding, so quotas sum exactly to the requested count). A crop is a random square whose side is drawn
   log-uniformly between `min_scale` and `max_scale` times the resolution (capped by the image), at a random position,
   resampled to the resolution with antialiased bicubic filtering (from a 2x-reduced pyramid level that leaves a
   factor of 2-4, for speed): the multi-scale part.
3. Flat crops (luminance standard deviation below `flat_std` on the 0-255 scale: sky, blur, black borders) are
   rejected and redrawn. A source whose crops are mostly flat cannot fill its quota; the shortfall is handed to the
   others, so the count asked for is always reached.
4. Each source belongs to one split, fixed in the registry (`ImageSource.split`): train and val never share a source
   image, and val is made of whole held-out images.
5. Crops are shuffled with a seeded permutation (so `array[:k]` is a fair sample) and saved as uint8 `.npy` arrays
   (N, H, W, C), memory-mappable, with an int32 provenance array (N, 5): source index, x0, y0, x1, y1 of the crop box in
   the working copy. The manifest records the config, the sources used and missing, per-source hashes and crop counts,
   and the SHA-256 of every stored array.

Every random draw comes from a generator seeded by (seed, source id, resolution, split), so the same sources and seed
give byte-identical arrays, and adding a source does not change the crops cut from the others (only the shuffle and
the quotas). Results are identical across machines only with the same Pillow and NumPy versions (recorded in the
manifest).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from tessera.config import to_dict
from tessera.data._store import (
    DatasetBuild,
    data_root,
    dataset_dir,
    new_partial_dir,
    publish,
    read_manifest,
    save_array,
    write_json,
)
from tessera.data.imageio import load_image, to_tensor
from tessera.data.sources import DEBIAN_PACKAGES, ImageSource, available_sources, file_sha256

__all__ = [
    "ImageSetConfig",
    "ImageArrayDataset",
    "build_image_dataset",
    "load_image_dataset",
    "is_flat",
    "image_set_dir",
    "luminance_std",
    "IMAGES_VERSION",
]

log = logging.getLogger(__name__)

IMAGES_VERSION = 1
_BASE = f"images-v{IMAGES_VERSION}"
_SPLITS = ("train", "val")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 weights, as PIL's "L" conversion uses


@dataclass
class ImageSetConfig:
    """What the embedded image set is made of. The defaults are the shipped set (`images-v1`).

    Attributes:
        resolutions: crop sides in pixels; every resolution gets its own arrays.
        train_crops: training crops per resolution.
        val_crops: validation crops per resolution.
        seed: root seed of every random draw.
        max_short_side: sources are downscaled so their shorter side is at most this many pixels before cropping.
        min_scale: smallest crop side, in multiples of the resolution.
        max_scale: largest crop side, in multiples of the resolution (capped by the image's shorter side).
        flat_std: crops whose luminance standard deviation (0-255 scale) is below this are rejected as flat.
        max_attempts: draws allowed per requested crop before a source is considered exhausted.
        sources: restrict to these source ids; empty means every registered source that is installed.
    """

    resolutions: tuple[int, ...] = (32, 64)
    train_crops: int = 20000
    val_crops: int = 2000
    seed: int = 0
    max_short_side: int = 640
    min_scale: float = 1.0
    max_scale: float = 8.0
    flat_std: float = 5.0
    max_attempts: int = 8
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.resolutions or any(r < 4 for r in self.resolutions) or len(set(self.resolutions)) != len(
            self.resolutions
        ):
            raise ValueError(f"resolutions must be distinct integers >= 4, got {self.resolutions}")
        if self.train_crops < 1 or self.val_crops < 1:
            raise ValueError(f"train_crops and val_crops must be >= 1, got {self.train_crops}, {self.val_crops}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")
        if self.max_short_side < max(self.resolutions):
            raise ValueError(f"max_short_side {self.max_short_side} is below the largest resolution")
        if self.flat_std < 0 or self.max_attempts < 1:
            raise ValueError("flat_std must be >= 0 and max_attempts >= 1")


class ImageArrayDataset(Dataset):
    """Images stored as a uint8 array (N, H, W, C), served as float tensors (C, H, W) in [0, 1].

    Attributes:
        array: the raw uint8 array (a read-only memmap for the embedded set).
        sources: int32 (N,) index of each crop's source in `manifest["sources"]`, or None.
        manifest: the data set's manifest, or None for a bare array.
    """

    def __init__(
        self,
        array: np.ndarray,
        *,
        sources: np.ndarray | None = None,
        manifest: dict[str, Any] | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Wrap an array.

        Args:
            array: uint8 (N, H, W, 3).
            sources: optional (N,) source index per item.
            manifest: optional manifest describing the array.
            transform: optional function applied to each float (C, H, W) tensor (augmentation).

        Raises:
            ValueError: wrong dtype or shape.
        """
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"ImageArrayDataset expects uint8 (N, H, W, 3), got {array.dtype} {array.shape}")
        self.array = array
        self.sources = sources
        self.manifest = manifest
        self.transform = transform

    @property
    def resolution(self) -> int:
        """Side of the (square) images in pixels."""
        return int(self.array.shape[1])

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, index: int) -> Tensor:
        x = to_tensor(self.array[index])  # (H, W, C) uint8 -> (C, H, W) float in [0, 1]
        return self.transform(x) if self.transform is not None else x

    def source_id(self, index: int) -> str | None:
        """Registry id of the source image item `index` was cut from (None without provenance)."""
        if self.sources is None or self.manifest is None:
            return None
        return self.manifest["sources"][int(self.sources[index])]["id"]


def luminance_std(crops: np.ndarray) -> np.ndarray:
    """Standard deviation of the BT.601 luminance of uint8 RGB images (..., H, W, 3), on the 0-255 scale."""
    luma = crops.astype(np.float32) @ _LUMA  # (..., H, W)
    return luma.reshape(*luma.shape[:-2], -1).std(axis=-1)


def is_flat(crop: np.ndarray, flat_std: float) -> bool:
    """True when a uint8 RGB crop (H, W, 3) is flat: luminance standard deviation below `flat_std` (0-255 scale)."""
    return bool(luminance_std(crop) < flat_std)


def _stable_int(*parts: object) -> int:
    """A 64-bit integer from values, stable across processes (Python's str hash is salted per process)."""
    blob = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


def _largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """Integers proportional to `weights` that sum exactly to `total` (Hamilton's method; ties by position)."""
    wsum = float(sum(weights))
    raw = [total * w / wsum for w in weights]
    base = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - base[i]), i))
    for i in order[: total - sum(base)]:
        base[i] += 1
    return base


@dataclass
class _Working:
    """A decoded, downscaled source and its sampling state for one (resolution, split).

    `pyramid[k]` is the working image reduced 2**k times (2x2 box averages): a crop is resampled from the level that
    leaves a factor of 2-4 to the bicubic filter, which costs a fraction of filtering the full-size box and looks the
    same.
    """

    index: int
    source: ImageSource
    pyramid: list[Image.Image]
    rng: np.random.Generator | None = None
    accepted: int = 0
    rejected: int = 0

    @property
    def size(self) -> tuple[int, int]:
        return self.pyramid[0].size


def _pyramid(img: Image.Image, smallest: int) -> list[Image.Image]:
    levels = [img]
    while min(levels[-1].size) >= 4 * smallest:
        levels.append(levels[-1].reduce(2))
    return levels


def _draw(work: _Working, resolution: int, count: int, cfg: ImageSetConfig,
          ) -> tuple[list[np.ndarray], list[tuple[int, int, int, int, int]]]:
    """Cut up to `count` non-flat crops from one source (fewer if its crops keep coming out flat)."""
    assert work.rng is not None
    width, height = work.size
    side_max = min(resolution * cfg.max_scale, min(width, height))
    side_min = min(resolution * cfg.min_scale, side_max)
    lo, hi = math.log(side_min), math.log(side_max)
    crops: list[np.ndarray] = []
    index: list[tuple[int, int, int, int, int]] = []
    for _ in range(count * cfg.max_attempts):
        if len(crops) == count:
            break
        side = max(1, min(int(round(math.exp(work.rng.uniform(lo, hi)))), width, height))
        x0 = int(work.rng.integers(0, width - side + 1))
        y0 = int(work.rng.integers(0, height - side + 1))
        level = min(max(int(math.floor(math.log2(side / resolution))) - 1, 0), len(work.pyramid) - 1)
        f = 2**level
        box = (x0 / f, y0 / f, (x0 + side) / f, (y0 + side) / f)  # the same square in the reduced level
        crop = np.asarray(work.pyramid[level].resize((resolution, resolution), Image.Resampling.BICUBIC, box=box))
        if is_flat(crop, cfg.flat_std):
            work.rejected += 1
            continue
        crops.append(crop)
        index.append((work.index, x0, y0, x0 + side, y0 + side))
        work.accepted += 1
    return crops, index


def _sample_split(works: list[_Working], resolution: int, split: str, target: int, cfg: ImageSetConfig,
                  pool: ThreadPoolExecutor, tick: Callable[[], object] = lambda: None,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """All crops of one (resolution, split): quotas by area, flat-crop shortfall handed to other sources.

    Sources are sampled in parallel threads (Pillow releases the GIL while resampling); each source has its own
    generator and results are gathered in registry order, so the output does not depend on thread scheduling.
    """
    for w in works:
        w.rng = np.random.default_rng(_stable_int(cfg.seed, w.source.id, resolution, split))
        w.accepted = w.rejected = 0
    areas = [w.size[0] * w.size[1] for w in works]
    per_source: list[tuple[list[np.ndarray], list[tuple[int, int, int, int, int]]]] = [([], []) for _ in works]

    def run(assignments: list[tuple[int, int]], progress: bool) -> int:
        futures = [(i, pool.submit(_draw, works[i], resolution, quota, cfg)) for i, quota in assignments if quota]
        got = 0
        for i, fut in futures:
            crops, index = fut.result()
            per_source[i][0].extend(crops)
            per_source[i][1].extend(index)
            got += len(crops)
            if progress:
                tick()
        return got

    total = run(list(enumerate(_largest_remainder(target, areas))), progress=True)
    # Redistribute what flat sources could not give, among sources that still produce crops.
    while total < target:
        live = [i for i, w in enumerate(works) if w.accepted > 0 and w.accepted / (w.accepted + w.rejected) > 0.02]
        if not live:
            names = ", ".join(w.source.id for w in works)
            raise RuntimeError(
                f"could not cut {target} non-flat {resolution}px {split} crops from {names}: every crop is flat "
                f"(luminance std < {cfg.flat_std}); lower flat_std or add sources"
            )
        extra = _largest_remainder(target - total, [areas[i] for i in live])
        got = run(list(zip(live, extra, strict=True)), progress=False)
        if got == 0:
            raise RuntimeError(f"crop sampling made no progress for {resolution}px {split}; lower flat_std")
        total += got
    crops = [c for cs, _ in per_source for c in cs]
    index = np.asarray([t for _, ts in per_source for t in ts], dtype=np.int32)  # (N, 5)
    # Shuffle so that any prefix of the array is a fair sample of all sources; fill a preallocated array so only
    # one extra copy of the crops is alive.
    order = np.random.default_rng(_stable_int(cfg.seed, "shuffle", resolution, split)).permutation(len(crops))
    out = np.empty((len(crops), resolution, resolution, 3), dtype=np.uint8)  # (N, H, W, C)
    for j, k in enumerate(order):
        out[j] = crops[k]
    return out, index[order]


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """Emit a UserWarning once per process for `key` (Python's own de-duplication is per call site, not per key)."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, UserWarning, stacklevel=3)


def _missing_message(missing: list[ImageSource], total: int) -> str:
    pkgs = sorted({s.package for s in missing})
    debian = [p for p in pkgs if p in DEBIAN_PACKAGES]
    hint = f" For the full set: apt-get install {' '.join(debian)}." if debian else ""
    return (
        f"embedded image set: {len(missing)} of {total} registered sources are not installed "
        f"(packages: {', '.join(pkgs)}); building from the {total - len(missing)} present.{hint}"
    )


def image_set_dir(config: ImageSetConfig | None = None, root: str | os.PathLike[str] | None = None) -> Path:
    """Folder the image set of `config` lives in (whether or not it is built yet)."""
    return dataset_dir(data_root(root), _BASE, config or ImageSetConfig())


def build_image_dataset(
    config: ImageSetConfig | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    source_dirs: Sequence[str | os.PathLike[str]] | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> DatasetBuild:
    """Build (or find in the cache) the embedded image set.

    Args:
        config: what to build; None means the default set.
        root: folder holding the data sets; default `cache_dir("data")`. The set goes to `root/images-v1` (default
            config) or `root/images-v1-<config hash>`.
        source_dirs: where to look for source files instead of the installed packages (see
            `tessera.data.sources.source_roots`; `$TESSERA_DATA_SOURCES` is used when this is None).
        force: rebuild even if a complete cached copy exists.
        progress: show a tqdm progress bar (None: only on a terminal).

    Returns:
        The data set's folder and manifest. Files: `{split}_{resolution}.npy` uint8 (N, H, W, 3) and
        `{split}_{resolution}_index.npy` int32 (N, 5).

    Raises:
        RuntimeError: no training or no validation source is installed, or every crop is flat.
    """
    cfg = config or ImageSetConfig()
    final = image_set_dir(cfg, root)
    cached = read_manifest(final)
    found, missing = available_sources(source_dirs, cfg.sources or None)
    if cached is not None and not force:
        used = {s["id"] for s in cached["sources"]}
        now = {s.id for s, _ in found}
        if now != used:
            _warn_once(
                f"stale:{final}",
                f"cached image set {final} was built from {len(used)} sources, {len(now)} are installed now; "
                "run `tessera data build --only images --force` to rebuild",
            )
        return DatasetBuild(final, cached, built=False)

    total = len(found) + len(missing)
    if missing:
        _warn_once(f"missing:{final}:{sorted(s.id for s in missing)}", _missing_message(missing, total))
    for split in _SPLITS:
        if not any(s.split == split for s, _ in found):
            wanted = [s.id for s, _ in found + [(m, None) for m in missing] if s.split == split]
            raise RuntimeError(
                f"no {split} source image is installed (the registry's {split} sources: {wanted}); "
                "install scikit-image or point TESSERA_DATA_SOURCES at the source files"
            )

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    steps = len(found) * (1 + len(cfg.resolutions))  # decode each source, then cut its crops at each resolution
    disable = None if progress is None else not progress  # None: tqdm shows the bar only on a terminal
    bar = tqdm(total=steps, desc="tessera data: images", unit="step", disable=disable)
    pool = ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, 8)))

    def decode(path: Path) -> tuple[bytes, Image.Image, tuple[int, int]]:
        data = path.read_bytes()
        img = load_image(data, name=str(path), max_pixels=None)  # trusted package files; sizes are known
        width, height = img.size
        scale = cfg.max_short_side / min(width, height)
        if scale < 1:
            img = img.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
        return data, img, (width, height)

    partial: Path | None = None
    files: dict[str, dict[str, Any]] = {}
    try:
        works: list[_Working] = []
        source_records: list[dict[str, Any]] = []
        # Decoding runs in threads too (Pillow's decoders release the GIL); `map` keeps registry order.
        for i, ((src, path), (data, img, size)) in enumerate(zip(found, pool.map(decode, [p for _, p in found]),
                                                                 strict=True)):
            works.append(_Working(i, src, _pyramid(img, min(cfg.resolutions))))
            source_records.append({
                "id": src.id, "package": src.package, "path": src.path, "located_at": str(path), "kind": src.kind,
                "title": src.title, "credit": src.credit, "licence": src.licence, "licence_from": src.licence_from,
                "split": src.split, "sha256": file_sha256(data), "size": list(size), "working_size": list(img.size),
                "crops": {},
            })
            bar.update(1)

        partial = new_partial_dir(final)
        for res in cfg.resolutions:
            for split in _SPLITS:
                split_works = [w for w in works if w.source.split == split]
                target = cfg.train_crops if split == "train" else cfg.val_crops
                crops, index = _sample_split(split_works, res, split, target, cfg, pool, tick=lambda: bar.update(1))
                files[f"{split}_{res}"] = save_array(partial, f"{split}_{res}.npy", crops)
                files[f"{split}_{res}_index"] = save_array(partial, f"{split}_{res}_index.npy", index)
                for w in split_works:
                    source_records[w.index]["crops"][str(res)] = {"accepted": w.accepted, "rejected_flat": w.rejected}
        manifest = {
            "format": "tessera.images",
            "version": IMAGES_VERSION,
            "config": to_dict(cfg),
            "sources": source_records,
            "missing_sources": [{"id": s.id, "package": s.package, "path": s.path, "split": s.split} for s in missing],
            "files": files,
            "counts": {split: {str(r): (cfg.train_crops if split == "train" else cfg.val_crops)
                               for r in cfg.resolutions} for split in _SPLITS},
            "software": {"numpy": np.__version__, "pillow": PIL.__version__},
            "build_seconds": round(time.perf_counter() - t0, 2),
        }
        write_json(partial / "manifest.json", manifest)
    except BaseException:
        if partial is not None:
            import shutil

            shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        pool.shutdown()
        bar.close()
    assert partial is not None
    if not publish(partial, final, force=force):
        return DatasetBuild(final, read_manifest(final) or manifest, built=False)
    log.info("built image set %s in %.1f s", final, manifest["build_seconds"])
    return DatasetBuild(final, manifest, built=True)


def load_image_dataset(
    resolution: int = 32,
    split: str = "train",
    *,
    config: ImageSetConfig | None = None,
    root: str | os.PathLike[str] | None = None,
    source_dirs: Sequence[str | os.PathLike[str]] | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> ImageArrayDataset:
    """The embedded image set as a torch Dataset, built on first use (with a progress bar) and memory-mapped.

    Args:
        resolution: crop side; must be one of `config.resolutions` (32 and 64 by default).
        split: "train" or "val".
        config: which set; None means the default set.
        root: data folder (default `cache_dir("data")`).
        source_dirs: source lookup override used if the set has to be built.
        transform: optional function applied to each float (C, H, W) tensor.

    Returns:
        An `ImageArrayDataset` over a read-only memmap; items are float (3, H, W) in [0, 1].

    Raises:
        ValueError: unknown split or a resolution the config does not build.
    """
    cfg = config or ImageSetConfig()
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if resolution not in cfg.resolutions:
        raise ValueError(
            f"resolution {resolution} is not built by this image-set config (resolutions={cfg.resolutions}); "
            f"pass config=ImageSetConfig(resolutions=({resolution},)) to build it"
        )
    build = build_image_dataset(cfg, root=root, source_dirs=source_dirs)
    array = np.load(build.file(f"{split}_{resolution}.npy"), mmap_mode="r", allow_pickle=False)
    index = np.load(build.file(f"{split}_{resolution}_index.npy"), allow_pickle=False)
    return ImageArrayDataset(array, sources=index[:, 0], manifest=build.manifest, transform=transform)
