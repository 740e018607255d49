"""Fixtures for the data tests: a private cache, fake source packages in a temp folder, tiny configs.

Axis legend: none.

The fake sources (see `_fakes.py`) use real registry ids and paths, so the builder's lookup, split and manifest logic
run unchanged, but their pixels are synthetic and small: a build takes a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.data import ImageSetConfig, VideoSetConfig
from tests.data._fakes import FAKE_IDS, blue_of, textured, write_source


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the user's cache or sources: TESSERA_CACHE points into the test's temp folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TESSERA_CACHE", str(cache))
    monkeypatch.delenv("TESSERA_DATA_SOURCES", raising=False)
    return cache


@pytest.fixture
def fake_sources(tmp_path: Path) -> Path:
    """A source folder with the six FAKE_IDS as textured 200x150 images."""
    root = tmp_path / "sources"
    for k, sid in enumerate(FAKE_IDS):
        write_source(root, sid, textured(200, 150, blue_of(sid), seed=k))
    return root


@pytest.fixture
def tiny_images() -> ImageSetConfig:
    """A small image-set config restricted to the fake sources."""
    return ImageSetConfig(resolutions=(16, 32), train_crops=300, val_crops=60, max_short_side=128, sources=FAKE_IDS)


@pytest.fixture
def tiny_video() -> VideoSetConfig:
    return VideoSetConfig(resolutions=(32,), num_frames=(8,), train_clips=24, val_clips=8)
