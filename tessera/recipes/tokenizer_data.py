"""Where the tokenizer recipes get their images and clips: the embedded sets, a user folder, or small built-in sources.

Axis legend: N items, T frames, C channels (3), H W side.

Sources (`DataConfig.source`):
    "embedded"  `tessera.data`'s embedded image set (real photographs; built on first use) or, for video, its clips of
                moving sprites.
    "folder"    a user's image folder (`data.folder`; `data.val_folder`, or a held-out share of the folder).
    "skimage"   random multi-scale crops of the colour and grey photographs bundled with scikit-image (train and val
                come from different photographs). Small and instant: what tests and the `*_debug` configs use.
    "sprites"   a built-in clip generator (coloured shapes moving and bouncing over a gradient background), for video
                tests and debug configs.
Everything is returned as uint8 tensors (N, 3, H, W) or (N, T, 3, H, W) and converted to float per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["DataConfig", "load_split", "skimage_crops", "sprite_clips", "load_image_file", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_SKIMAGE_TRAIN = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "camera", "brick", "grass", "gravel")
_SKIMAGE_VAL = ("chelsea", "coins", "moon")


@dataclass
class DataConfig:
    """Training and validation data of a tokenizer run."""

    source: Literal["embedded", "folder", "skimage", "sprites"] = "embedded"
    folder: str = ""  # source=folder: training images
    val_folder: str = ""  # source=folder: validation images ("" holds out val_fraction of `folder`)
    val_fraction: float = 0.1
    num_train: int = 0  # use the first N training items (0: all; skimage/sprites: how many to generate)
    num_val: int = 512  # validation items (the paper's usage metric pools groups of 256)
    batch_size: int = 64  # global micro-batch (all ranks)
    hflip: bool = False  # random horizontal flips (seeded by step: resumable)
    seed: int = 0  # seed of the built-in sources and of the flips

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_train < 0 or self.num_val < 1:
            raise ValueError("data: batch_size and num_val must be >= 1, num_train >= 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


# -- built-in sources -------------------------------------------------------------------------------------------------
def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def skimage_crops(n: int, size: int, split: str = "train", seed: int = 0) -> Tensor:
    """n uint8 crops (n, 3, size, size) of scikit-image's bundled photographs; train and val use different photos.

    Crop sides are drawn log-uniformly between size and 8 x size (capped by the photo), then resized (antialiased).
    """
    from PIL import Image

    names = _SKIMAGE_TRAIN if split == "train" else _SKIMAGE_VAL
    photos = [Image.fromarray(_skimage_photo(nm)) for nm in names]
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, size])
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        img = photos[int(rng.integers(len(photos)))]
        w, h = img.size
        side = int(np.exp(rng.uniform(np.log(size), np.log(min(w, h, 8 * size)))))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = img.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        out[i] = np.asarray(crop)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def sprite_clips(n: int, frames: int, size: int, split: str = "train", seed: int = 0) -> Tensor:
    """n uint8 clips (n, frames, 3, size, size): 1-3 coloured squares/discs moving at constant velocity, bouncing off
    the borders, over a random two-colour gradient background."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, size, frames])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, frames, size, size, 3), dtype=np.uint8)
    for i in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = ((xx * np.cos(angle) + yy * np.sin(angle)) / size + 1) / 2
        bg = c0 * (1 - t[..., None]) + c1 * t[..., None]
        sprites = []
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(size / 10, size / 5)
            pos = rng.uniform(r, size - r, 2)
            vel = rng.uniform(-size / 10, size / 10, 2)
            sprites.append((r, pos, vel, rng.uniform(0, 255, 3), bool(rng.integers(2))))
        for f in range(frames):
            frame = bg.copy()
            for r, pos, vel, color, disc in sprites:
                p = pos + vel * f
                for ax in range(2):  # reflect off the borders
                    span = size - 2 * r
                    q = (p[ax] - r) % (2 * span)
                    p[ax] = r + (q if q < span else 2 * span - q)
                if disc:
                    m = (xx - p[0]) ** 2 + (yy - p[1]) ** 2 <= r * r
                else:
                    m = (np.abs(xx - p[0]) <= r) & (np.abs(yy - p[1]) <= r)
                frame[m] = color
            out[i, f] = frame.clip(0, 255).astype(np.uint8)
    return torch.from_numpy(out).permute(0, 1, 4, 2, 3).contiguous()


# -- user images ------------------------------------------------------------------------------------------------------
def load_image_file(path: str | Path):
    """Open an image file as RGB PIL, with an error naming the file when it is missing, truncated, corrupt or not
    an image (`tessera.data.imageio.load_image` when available, else an equivalent Pillow check)."""
    try:
        from tessera.data.imageio import load_image
    except ImportError:
        load_image = None
    if load_image is not None:
        return load_image(path)
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not an image file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError as exc:
        raise ValueError(f"{path}: not an image file (or an unsupported format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: truncated or corrupt image data ({type(exc).__name__}: {exc})") from exc


def _folder_images(folder: Path, size: int) -> Tensor:
    from tessera.tokenizer.tokenizer import images_to_tensor

    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    for i, f in enumerate(files):
        x = images_to_tensor(load_image_file(f), size)[0]
        out[i] = (x * 255.0 + 0.5).to(torch.uint8)
    return out


def _to_uint8(x: Tensor) -> Tensor:
    return x if x.dtype == torch.uint8 else (x.float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)


def _embedded(split: str, size: int, video: bool, frames: int, limit: int) -> Tensor:
    try:
        import tessera.data as tdata
    except ImportError as exc:
        raise RuntimeError("data.source=embedded needs tessera.data, which this install lacks; use data.source=skimage") from exc
    if video:
        if not hasattr(tdata, "load_video_dataset"):
            raise RuntimeError("this tessera.data has no load_video_dataset; use data.source=sprites")
        ds = tdata.load_video_dataset(resolution=size, split=split)
    else:
        loader = getattr(tdata, "load_image_dataset", None)
        if loader is None:
            from tessera.data.images import load_image_dataset as loader
        ds = loader(resolution=size, split=split)
    array = getattr(ds, "array", None)
    n = len(ds) if not limit else min(limit, len(ds))
    if array is not None and not video:  # (N, H, W, C) uint8 memmap: one vectorised copy
        return torch.from_numpy(np.ascontiguousarray(array[:n])).permute(0, 3, 1, 2).contiguous()
    items = torch.stack([_to_uint8(ds[i]) for i in range(n)])
    if video and items.shape[1] > frames:
        items = items[:, :frames]
    return items


def load_split(cfg: DataConfig, split: str, image_size: int, *, video: bool = False, frames: int = 8) -> Tensor:
    """uint8 items of one split: (N, 3, H, W), or clips (N, T, 3, H, W) when `video`."""
    limit = cfg.num_train if split == "train" else cfg.num_val
    if cfg.source == "skimage":
        if video:
            raise ValueError("data.source=skimage has no clips; use data.source=sprites for video tokenizers")
        return skimage_crops(limit or 4096, image_size, split, cfg.seed)
    if cfg.source == "sprites":
        if not video:
            raise ValueError("data.source=sprites makes clips; image tokenizers use skimage, embedded or folder")
        return sprite_clips(limit or 1024, frames, image_size, split, cfg.seed)
    if cfg.source == "folder":
        if video:
            raise ValueError("data.source=folder holds images; video tokenizers use sprites or embedded")
        if not cfg.folder:
            raise ValueError("data.source=folder needs data.folder=<path>")
        if cfg.val_folder:
            items = _folder_images(Path(cfg.folder if split == "train" else cfg.val_folder), image_size)
        else:
            everything = _folder_images(Path(cfg.folder), image_size)
            perm = torch.from_numpy(np.random.default_rng(cfg.seed).permutation(len(everything)))
            n_val = max(1, int(round(cfg.val_fraction * len(everything))))
            if len(everything) - n_val < 1:
                raise ValueError(f"{cfg.folder}: too few images ({len(everything)}) to hold out a validation split")
            items = everything[perm[n_val:]] if split == "train" else everything[perm[:n_val]]
        return items[:limit] if limit else items
    return _embedded(split, image_size, video, frames, limit)
