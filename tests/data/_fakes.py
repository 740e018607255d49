"""Fake source packages for the data tests: real registry ids and paths, small synthetic pixels.

Axis legend: H W image height and width, C channels.

Each fake source has a constant blue channel of `BLUE_STEP * (k + 1)`, which survives cropping and resampling and lets
a test tell from pixels alone which source a crop came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tessera.data.sources import IMAGE_SOURCES

BLUE_STEP = 20
# Two train and two val sources from the pip packages, two train sources from Debian packages.
FAKE_IDS = (
    "skimage/astronaut",
    "skimage/coffee",
    "skimage/chelsea",
    "matplotlib/grace_hopper",
    "mate/Aqua",
    "plasma/Path",
)


def textured(width: int, height: int, blue: int, seed: int) -> np.ndarray:
    """uint8 (H, W, C) image: smooth random red/green texture (never flat), constant blue channel."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 2), dtype=np.uint8)
    rg = np.asarray(Image.fromarray(np.dstack([coarse, coarse[..., :1]])).resize((width, height), Image.BILINEAR))
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., :2] = rg[..., :2]
    img[..., 2] = blue
    return img


def write_source(root: Path, source_id: str, array: np.ndarray) -> Path:
    """Save `array` as PNG bytes at the registry path of `source_id` under `root/<package>/` (extension ignored)."""
    src = next(s for s in IMAGE_SOURCES if s.id == source_id)
    path = root / src.package / src.path
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")  # lossless, so the blue channel stays exact
    return path


def blue_of(source_id: str) -> int:
    return BLUE_STEP * (FAKE_IDS.index(source_id) + 1)
