"""Embedded video set: metadata agrees with the pixels (motion direction, appear/disappear events), determinism.

Axis legend: N clips, T frames, H W frame side, C channels.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tessera.data import VideoArrayDataset, build_video_dataset, load_image_dataset, load_video_dataset
from tessera.data.sources import IMAGE_SOURCES
from tessera.data.video import DIRECTIONS

SPLIT_OF = {s.id: s.split for s in IMAGE_SOURCES}


def _changed(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(H, W) mask of pixels a sprite altered."""
    return np.abs(frame.astype(int) - background.astype(int)).max(axis=-1) > 2


def _box_region(box, pad: int, side: int) -> tuple[slice, slice]:
    x0, y0, x1, y1 = box
    return (slice(max(int(np.floor(y0)) - pad, 0), min(int(np.ceil(y1)) + pad, side)),
            slice(max(int(np.floor(x0)) - pad, 0), min(int(np.ceil(x1)) + pad, side)))


def _overlaps(a, b, pad: float = 2.0) -> bool:
    return not (a[2] + pad <= b[0] or b[2] + pad <= a[0] or a[3] + pad <= b[1] or b[3] + pad <= a[1])


@pytest.fixture
def video_sets(tmp_path, fake_sources, tiny_images, tiny_video):
    """Single-sprite and multi-sprite clip sets over the fake sources, plus their backgrounds."""
    single = replace(tiny_video, max_sprites=1, p_disappear=0.5, train_clips=16, val_clips=8)
    multi = replace(tiny_video, max_sprites=3, p_disappear=0.5, train_clips=48, val_clips=8)
    kwargs = dict(image_config=tiny_images, root=tmp_path, source_dirs=[fake_sources])
    out = {}
    for name, cfg in (("single", single), ("multi", multi)):
        out[name] = {split: load_video_dataset(32, split, 8, config=cfg, **kwargs) for split in ("train", "val")}
    out["bg"] = {split: load_image_dataset(32, split, config=tiny_images, root=tmp_path, source_dirs=[fake_sources])
                 for split in ("train", "val")}
    return out


def test_sprite_moves_in_the_stated_direction(video_sets):
    checked = 0
    for split in ("train", "val"):
        ds, bgs = video_sets["single"][split], video_sets["bg"][split]
        for i in range(len(ds)):
            clip, meta = np.asarray(ds.array[i]), ds.metadata[i]
            bg = np.asarray(bgs.array[meta["background"]["crop_index"]])
            (sp,) = meta["sprites"]
            centroids = {}
            for t in range(meta["num_frames"]):
                mask = _changed(clip[t], bg)
                if sp["boxes"][t] is None:
                    assert not mask.any(), f"clip {i} frame {t}: pixels changed while the sprite is invisible"
                    continue
                assert mask.any(), f"clip {i} frame {t}: sprite not drawn"
                ys, xs = np.nonzero(mask)
                centroids[t] = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
                x0, y0, x1, y1 = sp["boxes"][t]
                assert np.abs(centroids[t] - [(x0 + x1) / 2, (y0 + y1) / 2]).max() < 2.0  # pixels match the box
            first, last = min(centroids), max(centroids)
            moved = centroids[last] - centroids[first]
            dx, dy = DIRECTIONS[sp["direction"]]
            along = moved[0] * dx + moved[1] * dy
            across = abs(moved[1] * dx - moved[0] * dy)
            expected = sp["speed"] * (last - first)
            assert along > 0.5 * expected - 0.5, f"clip {i}: moved {moved} for direction {sp['direction']}"
            assert abs(along - expected) < 1.5 and across < 1.0, (i, moved, sp["direction"], expected)
            checked += 1
    assert checked == 24


def test_events_match_pixels_and_metadata(video_sets):
    n_events = 0
    for split in ("train", "val"):
        ds, bgs = video_sets["multi"][split], video_sets["bg"][split]
        assert isinstance(ds, VideoArrayDataset) and ds.array.shape[1:] == (8, 32, 32, 3)
        for i in range(len(ds)):
            clip, meta = np.asarray(ds.array[i]), ds.metadata[i]
            bg = np.asarray(bgs.array[meta["background"]["crop_index"]])
            assert SPLIT_OF[meta["background"]["source"]] == split  # backgrounds never cross the split
            sprites, events = meta["sprites"], meta["events"]
            frames = [e["frame"] for e in events]
            assert frames == sorted(frames) and len(set(frames)) == len(frames)  # order is well defined
            expected = sum(sp["appear_frame"] > 0 for sp in sprites) + sum(
                sp["disappear_frame"] is not None for sp in sprites)
            assert len(events) == expected
            assert len({(sp["kind"], sp["shape"] or sp["glyph"], sp["colour"]) for sp in sprites}) == len(sprites)
            for sp in sprites:
                assert sp["name"] in meta["description"]
                end = sp["disappear_frame"] if sp["disappear_frame"] is not None else meta["num_frames"]
                visible = [t for t, b in enumerate(sp["boxes"]) if b is not None]
                assert visible == list(range(sp["appear_frame"], end)) and len(visible) >= 2
                for b in sp["boxes"][sp["appear_frame"]:end]:
                    assert 0 <= b[0] and 0 <= b[1] and b[2] <= 32 and b[3] <= 32
            for ev in events:
                sp, k = sprites[ev["sprite"]], ev["frame"]
                box = sp["boxes"][k] if ev["type"] == "appear" else sp["boxes"][k - 1]
                others = [o["boxes"][t] for o in sprites if o is not sp for t in (k - 1, k)
                          if o["boxes"][t] is not None]
                if any(_overlaps(box, ob) for ob in others):
                    continue  # another sprite is in the way; the pixel check below would be ambiguous
                region = _box_region(box, 1, 32)
                before = _changed(clip[k - 1][region], bg[region]).any()
                after = _changed(clip[k][region], bg[region]).any()
                assert (before, after) == ((False, True) if ev["type"] == "appear" else (True, False)), (i, ev)
                n_events += 1
    assert n_events >= 10  # enough unambiguous events were actually checked


def test_clips_are_deterministic_and_load_as_float_tensors(tmp_path, fake_sources, tiny_images, tiny_video):
    kwargs = dict(image_config=tiny_images, source_dirs=[fake_sources], progress=False)
    (a,) = build_video_dataset(tiny_video, root=tmp_path / "a", **kwargs)
    (b,) = build_video_dataset(tiny_video, root=tmp_path / "b", **kwargs)
    for split in ("train", "val"):
        assert np.load(a.file(f"{split}.npy")).tobytes() == np.load(b.file(f"{split}.npy")).tobytes()
        assert a.file(f"{split}.json").read_text() == b.file(f"{split}.json").read_text()
    (c,) = build_video_dataset(replace(tiny_video, seed=5), root=tmp_path / "a", **kwargs)
    assert not np.array_equal(np.load(c.file("train.npy")), np.load(a.file("train.npy")))

    ds = load_video_dataset(32, "train", 8, config=tiny_video, image_config=tiny_images, root=tmp_path / "a",
                            source_dirs=[fake_sources])
    x = ds[0]
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert len(ds.metadata) == tiny_video.train_clips == len(ds)
    # A clip length that was not prebuilt is built on first use, in its own folder.
    ds16 = load_video_dataset(32, "val", 16, config=tiny_video, image_config=tiny_images, root=tmp_path / "a",
                              source_dirs=[fake_sources])
    assert ds16.array.shape == (tiny_video.val_clips, 16, 32, 32, 3)
    with pytest.raises(ValueError, match="image-set"):
        load_video_dataset(64, config=tiny_video, image_config=tiny_images, root=tmp_path / "a",
                           source_dirs=[fake_sources])
