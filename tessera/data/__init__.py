"""Tessera data: embedded image and video sets built offline from shipped sources, user-data loaders, image I/O.

Axis legend: N items, T frames, C channels (3, RGB), H W height and width.

- `load_image_dataset(resolution, split)`: crops of real photographs and artwork (`images.py`, sources in
  `sources.py`), uint8 (N, H, W, C) on disk, float (C, H, W) in [0, 1] per item.
- `load_video_dataset(resolution, split, num_frames)`: sprites moving over photo crops with per-clip metadata
  (`video.py`), float (T, C, H, W) per item.
- `ImageFolderDataset`, `CIFARDataset`, `imagenet_dataset`, `VideoFramesDataset`: user data with the same transform
  (`folders.py`).
- `load_image`, `to_tensor`, `resize_center_crop`, `prepare_image`: robust single-image loading (`imageio.py`).
- `write_report`: regenerates `docs/data.md` from the manifests (`report.py`).

Everything generated lives under `tessera.paths.cache_dir("data")` and is rebuilt by `tessera data build`.
"""

from typing import Any

from tessera.data._store import DatasetBuild
from tessera.data.folders import (
    IMAGE_EXTENSIONS,
    CIFARDataset,
    ImageFolderDataset,
    VideoFramesDataset,
    find_images,
    imagenet_dataset,
    natural_key,
)
from tessera.data.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    load_image,
    prepare_image,
    resize_center_crop,
    to_rgb,
    to_tensor,
)
from tessera.data.images import (
    ImageArrayDataset,
    ImageSetConfig,
    build_image_dataset,
    image_set_dir,
    is_flat,
    load_image_dataset,
)
from tessera.data.sources import IMAGE_SOURCES, ImageSource, available_sources
from tessera.data.video import (
    VideoArrayDataset,
    VideoSetConfig,
    build_video_dataset,
    load_video_dataset,
    video_set_dir,
)


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m tessera.data.report` does not import the report module twice (runpy warns about that).
    if name in ("render_report", "write_report"):
        from tessera.data import report

        return getattr(report, name)
    raise AttributeError(f"module 'tessera.data' has no attribute {name!r}")


__all__ = [
    "DatasetBuild",
    "IMAGE_EXTENSIONS",
    "CIFARDataset",
    "ImageFolderDataset",
    "VideoFramesDataset",
    "find_images",
    "imagenet_dataset",
    "natural_key",
    "ImageArrayDataset",
    "ImageSetConfig",
    "build_image_dataset",
    "image_set_dir",
    "is_flat",
    "load_image_dataset",
    "DEFAULT_MAX_PIXELS",
    "ImageLoadError",
    "load_image",
    "prepare_image",
    "resize_center_crop",
    "to_rgb",
    "to_tensor",
    "render_report",
    "write_report",
    "IMAGE_SOURCES",
    "ImageSource",
    "available_sources",
    "VideoArrayDataset",
    "VideoSetConfig",
    "build_video_dataset",
    "load_video_dataset",
    "video_set_dir",
]
