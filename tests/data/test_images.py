"""Embedded image set: determinism, disjoint split by source, flat-crop filter, counts, cache, missing packages.

Axis legend: N crops, H W crop side, C channels.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tessera.data import ImageArrayDataset, ImageSetConfig, build_image_dataset, is_flat, load_image_dataset
from tessera.data.images import luminance_std
from tessera.data.sources import IMAGE_SOURCES
from tests.data._fakes import BLUE_STEP, FAKE_IDS, blue_of, write_source

SPLIT_OF = {s.id: s.split for s in IMAGE_SOURCES}


def _arrays(build, cfg):
    names = [f"{split}_{r}" for split in ("train", "val") for r in cfg.resolutions]
    return {name: np.load(build.file(f"{name}.npy")) for name in names}


def _source_from_blue(crops: np.ndarray) -> np.ndarray:
    """Fake-source index of each crop, read from its (constant) blue channel."""
    blue = crops[..., 2].reshape(len(crops), -1).mean(axis=1)
    return np.rint(blue / BLUE_STEP).astype(int) - 1


def test_same_sources_and_seed_give_byte_identical_arrays(tmp_path, fake_sources, tiny_images):
    a = build_image_dataset(tiny_images, root=tmp_path / "a", source_dirs=[fake_sources], progress=False)
    b = build_image_dataset(tiny_images, root=tmp_path / "b", source_dirs=[fake_sources], progress=False)
    arrays_a, arrays_b = _arrays(a, tiny_images), _arrays(b, tiny_images)
    for key in arrays_a:
        assert arrays_a[key].tobytes() == arrays_b[key].tobytes(), key
        assert a.manifest["files"][key]["sha256"] == b.manifest["files"][key]["sha256"]
    # A different seed must give different crops (otherwise the test above proves nothing).
    c = build_image_dataset(replace(tiny_images, seed=1), root=tmp_path / "c", source_dirs=[fake_sources],
                            progress=False)
    assert not np.array_equal(np.load(c.file("train_16.npy")), arrays_a["train_16"])


def test_split_is_disjoint_by_source_image(tmp_path, fake_sources, tiny_images):
    build = build_image_dataset(tiny_images, root=tmp_path, source_dirs=[fake_sources], progress=False)
    m = build.manifest
    for res in tiny_images.resolutions:
        seen = {}
        for split in ("train", "val"):
            crops = np.load(build.file(f"{split}_{res}.npy"))
            index = np.load(build.file(f"{split}_{res}_index.npy"))
            from_pixels = {FAKE_IDS[k] for k in _source_from_blue(crops)}
            from_index = {m["sources"][k]["id"] for k in index[:, 0]}
            assert from_pixels == from_index  # provenance array agrees with the pixels
            assert all(SPLIT_OF[s] == split for s in from_pixels)  # registry split respected
            seen[split] = from_pixels
        assert seen["train"].isdisjoint(seen["val"])
        # Whole images are held out: every val source is a fake val source, and both val sources are used.
        assert seen["val"] == {"skimage/coffee", "skimage/chelsea"}
        assert seen["train"] == {"skimage/astronaut", "matplotlib/grace_hopper", "mate/Aqua", "plasma/Path"}


def test_counts_shapes_and_manifest(tmp_path, fake_sources, tiny_images):
    build = build_image_dataset(tiny_images, root=tmp_path, source_dirs=[fake_sources], progress=False)
    m = build.manifest
    for res in tiny_images.resolutions:
        train = np.load(build.file(f"train_{res}.npy"), mmap_mode="r")
        val = np.load(build.file(f"val_{res}.npy"), mmap_mode="r")
        assert train.shape == (tiny_images.train_crops, res, res, 3) and train.dtype == np.uint8
        assert val.shape == (tiny_images.val_crops, res, res, 3)
        # Per-source counts in the manifest add up to the arrays.
        per_split = {"train": 0, "val": 0}
        for s in m["sources"]:
            per_split[s["split"]] += s["crops"][str(res)]["accepted"]
        assert per_split == {"train": len(train), "val": len(val)}
    registry_order = [s.id for s in IMAGE_SOURCES if s.id in FAKE_IDS]
    assert [s["id"] for s in m["sources"]] == registry_order
    assert all(len(s["sha256"]) == 64 for s in m["sources"])
    assert m["missing_sources"] == []


def test_flat_crops_are_filtered_and_shortfall_refilled(tmp_path, fake_sources, tiny_images):
    # Make one train source half flat (left half constant) and another completely flat.
    half = np.asarray(__import__("PIL.Image").Image.open(fake_sources / "mate-backgrounds" / "nature/Aqua.jpg")).copy()
    half[:, :100, :2] = 128
    write_source(fake_sources, "mate/Aqua", half)
    flat = np.full((150, 200, 3), 90, dtype=np.uint8)
    flat[..., 2] = blue_of("plasma/Path")
    write_source(fake_sources, "plasma/Path", flat)

    build = build_image_dataset(tiny_images, root=tmp_path, source_dirs=[fake_sources], progress=False)
    by_id = {s["id"]: s for s in build.manifest["sources"]}
    for res in tiny_images.resolutions:
        crops = np.load(build.file(f"train_{res}.npy"))
        assert len(crops) == tiny_images.train_crops  # the flat source's quota was cut from the others
        assert luminance_std(crops).min() >= tiny_images.flat_std
        assert by_id["plasma/Path"]["crops"][str(res)]["accepted"] == 0
        assert by_id["plasma/Path"]["crops"][str(res)]["rejected_flat"] > 0
        assert by_id["mate/Aqua"]["crops"][str(res)]["rejected_flat"] > 0
        assert by_id["mate/Aqua"]["crops"][str(res)]["accepted"] > 0
        assert blue_of("plasma/Path") // BLUE_STEP - 1 not in set(_source_from_blue(crops))


def test_is_flat():
    crop = np.full((8, 8, 3), 77, dtype=np.uint8)
    assert is_flat(crop, 5.0)
    crop[::2] = 200  # stripes: std ~61
    assert not is_flat(crop, 5.0)
    assert is_flat(crop, 100.0)


def test_load_image_dataset_is_a_memmapped_float_dataset(fake_sources, tiny_images):
    ds = load_image_dataset(32, "val", config=tiny_images, source_dirs=[fake_sources])
    assert isinstance(ds, ImageArrayDataset)
    assert isinstance(ds.array, np.memmap) and ds.array.dtype == np.uint8
    assert len(ds) == tiny_images.val_crops and ds.resolution == 32
    x = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(np.array(ds.array[3])).permute(2, 0, 1))
    assert ds.source_id(3) in {"skimage/coffee", "skimage/chelsea"}
    with pytest.raises(ValueError, match="resolution 48"):
        load_image_dataset(48, config=tiny_images, source_dirs=[fake_sources])
    with pytest.raises(ValueError, match="split"):
        load_image_dataset(32, "test", config=tiny_images, source_dirs=[fake_sources])


def test_default_root_is_the_private_cache(private_cache, fake_sources, tiny_images):
    build = build_image_dataset(tiny_images, source_dirs=[fake_sources], progress=False)
    assert build.path.parent == private_cache / "data"
    assert build.path.name.startswith("images-v1-")  # non-default config: its own folder, never the default set


def test_cache_is_reused_and_force_rebuilds(tmp_path, fake_sources, tiny_images):
    first = build_image_dataset(tiny_images, root=tmp_path, source_dirs=[fake_sources], progress=False)
    again = build_image_dataset(tiny_images, root=tmp_path, source_dirs=[fake_sources], progress=False)
    assert first.built and not again.built and again.path == first.path
    forced = build_image_dataset(tiny_images, root=tmp_path, source_dirs=[fake_sources], force=True, progress=False)
    assert forced.built
    assert forced.manifest["files"]["train_16"]["sha256"] == first.manifest["files"]["train_16"]["sha256"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no partial or old folders left behind


def test_missing_packages_warn_once_and_are_recorded(tmp_path, fake_sources):
    # Only the pip-package sources are present, as for a user without the Debian packages.
    import shutil

    shutil.rmtree(fake_sources / "mate-backgrounds")
    shutil.rmtree(fake_sources / "plasma-workspace-wallpapers")
    cfg = ImageSetConfig(resolutions=(16,), train_crops=500, val_crops=50, max_short_side=128)
    with pytest.warns(UserWarning, match="apt-get install mate-backgrounds plasma-workspace-wallpapers"):
        build = build_image_dataset(cfg, root=tmp_path, source_dirs=[fake_sources], progress=False)
    used = {s["id"] for s in build.manifest["sources"]}
    assert used == {"skimage/astronaut", "skimage/coffee", "skimage/chelsea", "matplotlib/grace_hopper"}
    missing = {s["id"] for s in build.manifest["missing_sources"]}
    assert missing == {s.id for s in IMAGE_SOURCES} - used
    assert np.load(build.file("train_16.npy"), mmap_mode="r").shape[0] == 500  # count reached from 2 train images
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cached set does not warn again
        build_image_dataset(cfg, root=tmp_path, source_dirs=[fake_sources], progress=False)


def test_corrupt_source_file_is_named_and_nothing_is_left_behind(tmp_path, fake_sources, tiny_images):
    (fake_sources / "scikit-image" / "coffee.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="coffee.png"):
        build_image_dataset(tiny_images, root=tmp_path / "data", source_dirs=[fake_sources], progress=False)
    assert list((tmp_path / "data").iterdir()) == []  # no partial folder, no half-written set


def test_no_val_source_is_a_clear_error(tmp_path, fake_sources):
    cfg = ImageSetConfig(resolutions=(16,), train_crops=10, val_crops=10, max_short_side=128,
                         sources=("skimage/astronaut",))
    with pytest.raises(RuntimeError, match="no val source image"):
        build_image_dataset(cfg, root=tmp_path, source_dirs=[fake_sources], progress=False)


def test_env_var_overrides_source_lookup(monkeypatch, tmp_path: Path, fake_sources, tiny_images):
    monkeypatch.setenv("TESSERA_DATA_SOURCES", str(fake_sources))
    build = build_image_dataset(tiny_images, root=tmp_path, progress=False)
    assert all(s["located_at"].startswith(str(fake_sources)) for s in build.manifest["sources"])


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="resolutions"):
        ImageSetConfig(resolutions=(32, 32))
    with pytest.raises(ValueError, match="min_scale"):
        ImageSetConfig(min_scale=4.0, max_scale=2.0)
    with pytest.raises(ValueError, match="unknown image source"):
        build_image_dataset(ImageSetConfig(sources=("nope/x",)), progress=False)
