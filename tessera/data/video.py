"""The embedded video set: short clips of sprites (shapes, glyphs) moving over photo crops, generated deterministically.

Axis legend: N clips, T frames, H W frame height and width (= resolution), C channels (3, RGB, last axis on disk).

It stands in for the paper's BAIR / UCF101 rows at toy scale, and every clip carries metadata that a later issue's
video questions ("direction, order and count of events") can be answered from.

A clip (`_make_clip`):
- background: a crop of the embedded image set at the same resolution and split (train clips only use train
  photos, val clips val photos), static for the whole clip;
- 1 to `max_sprites` sprites, each a coloured shape (circle, square, triangle, diamond, star, cross) or a bold glyph
  (capital letter or digit; I, O, 0, 1 and 8 left out as too easy to confuse), with a 1-pixel black outline so it stands
  out on any photo; (shape or glyph, colour) pairs are distinct within a clip, so "the red triangle" is unambiguous;
- motion: each sprite moves in a straight line, `left`, `right`, `up` or `down`, at a constant `slow` or `fast` speed
  (pixels per frame, sub-pixel positions rendered with 4x4 supersampling), and stays fully inside the frame;
- events: sprite 0 is there from frame 0; every other sprite appears at a later frame (or, sometimes, at frame 0) and
  any sprite may disappear before the end. Events happen at distinct frames, so their order is well defined, and each
  sprite is visible for at least 2 frames. Later sprites are drawn on top.

Metadata per clip (`{split}.json`, a list aligned with the array): background crop index and source, each sprite's
kind, shape or glyph, colour name and RGB, size, direction, speed, appear and disappear frames and its box in every
frame (None while invisible), the time-ordered `events` (`appear` / `disappear`, frame, sprite) and a one-paragraph
English `description`.

Clips are stored per (resolution, frames) in `video-v1/r{R}_t{T}/{split}.npy`, uint8 (N, T, H, W, C). Each
(resolution, frames) pair is built on first use, so a 64x64 or 16-frame variant costs nothing until asked for. Every
clip draws from its own generator seeded by (seed, resolution, frames, split, clip index): same config, same bytes.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFilter, ImageFont, features
from torch import Tensor
from torch.utils.data import Dataset

from tessera.config import to_dict
from tessera.data._store import (
    DatasetBuild,
    config_hash,
    data_root,
    dataset_dir,
    new_partial_dir,
    publish,
    read_manifest,
    save_array,
    write_json,
)
from tessera.data.images import ImageSetConfig, _stable_int, load_image_dataset

__all__ = [
    "VideoSetConfig",
    "VideoArrayDataset",
    "build_video_dataset",
    "render_sprite_clips",
    "load_video_dataset",
    "video_set_dir",
    "SHAPES",
    "GLYPHS",
    "COLOURS",
    "DIRECTIONS",
    "VIDEO_VERSION",
]

log = logging.getLogger(__name__)

VIDEO_VERSION = 1
_BASE = f"video-v{VIDEO_VERSION}"
_SPLITS = ("train", "val")
_SUPER = 4  # supersampling factor for sprite masks: positions are quantised to 1/4 pixel

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
GLYPHS: tuple[str, ...] = tuple("ABCDEFGHJKLMNPQRSTUVWXYZ2345679")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 190, 40),
    "blue": (30, 80, 235),
    "yellow": (250, 220, 20),
    "orange": (255, 140, 0),
    "magenta": (230, 40, 230),
    "cyan": (20, 220, 230),
    "white": (255, 255, 255),
}
# Unit steps in image coordinates (x right, y down).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Fraction of the free travel (frame side - sprite side) covered over the clip's length, per speed class.
_SPEED_RANGE = {"slow": (0.3, 0.5), "fast": (0.75, 1.0)}
_SPRITE_COUNT_P = (0.4, 0.35, 0.25)  # probability of 1, 2, 3 sprites (renormalised when max_sprites < 3)
_PLACEMENT_TRIES = 8


@dataclass
class VideoSetConfig:
    """What the embedded video set is made of. The defaults are the shipped set (`video-v1`).

    Attributes:
        resolutions: frame sides built by `tessera data build` (any resolution of `images` can be loaded on demand).
        num_frames: clip lengths built by `tessera data build` (others are built on demand).
        train_clips: training clips per (resolution, frames).
        val_clips: validation clips per (resolution, frames).
        seed: root seed.
        max_sprites: at most this many sprites per clip (1-3).
        sprite_scale: sprite side as a fraction of the frame side.
        p_disappear: chance that a sprite disappears before the clip ends.
    """

    resolutions: tuple[int, ...] = (32,)
    num_frames: tuple[int, ...] = (8, 16)
    train_clips: int = 2048
    val_clips: int = 256
    seed: int = 0
    max_sprites: int = 3
    sprite_scale: float = 0.3
    p_disappear: float = 0.25

    def __post_init__(self) -> None:
        if any(t < 4 or t > 64 for t in self.num_frames):
            raise ValueError(f"num_frames must be between 4 and 64, got {self.num_frames}")
        if not 1 <= self.max_sprites <= 3:
            raise ValueError(f"max_sprites must be 1, 2 or 3, got {self.max_sprites}")
        if not 0.1 <= self.sprite_scale <= 0.5:
            raise ValueError(f"sprite_scale must be in [0.1, 0.5], got {self.sprite_scale}")
        if self.train_clips < 1 or self.val_clips < 1:
            raise ValueError("train_clips and val_clips must be >= 1")
        if not 0 <= self.p_disappear <= 1:
            raise ValueError(f"p_disappear must be in [0, 1], got {self.p_disappear}")


class VideoArrayDataset(Dataset):
    """Clips stored as uint8 (N, T, H, W, C), served as float tensors (T, C, H, W) in [0, 1].

    Attributes:
        array: the raw uint8 array (a read-only memmap for the embedded set).
        metadata: one dict per clip (see the module docstring), or None.
        manifest: the data set's manifest, or None.
    """

    def __init__(
        self,
        array: np.ndarray,
        *,
        metadata: list[dict[str, Any]] | None = None,
        manifest: dict[str, Any] | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Wrap an array of clips.

        Args:
            array: uint8 (N, T, H, W, 3).
            metadata: optional per-clip dicts, aligned with `array`.
            manifest: optional manifest.
            transform: optional function applied to each float (T, C, H, W) tensor.

        Raises:
            ValueError: wrong dtype or shape, or metadata of the wrong length.
        """
        if array.dtype != np.uint8 or array.ndim != 5 or array.shape[-1] != 3:
            raise ValueError(f"VideoArrayDataset expects uint8 (N, T, H, W, 3), got {array.dtype} {array.shape}")
        if metadata is not None and len(metadata) != array.shape[0]:
            raise ValueError(f"{len(metadata)} metadata entries for {array.shape[0]} clips")
        self.array = array
        self.metadata = metadata
        self.manifest = manifest
        self.transform = transform

    @property
    def num_frames(self) -> int:
        """Frames per clip."""
        return int(self.array.shape[1])

    @property
    def resolution(self) -> int:
        """Frame side in pixels."""
        return int(self.array.shape[2])

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, index: int) -> Tensor:
        import torch

        clip = np.array(self.array[index], copy=True)  # (T, H, W, C) uint8, writable
        x = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div_(255.0)  # -> (T, C, H, W)
        return self.transform(x) if self.transform is not None else x


# ----------------------------------------------------------------------------------------------------------------------
# Sprite masks


def _font_path() -> Path:
    """DejaVu Sans Bold from matplotlib's wheel: present wherever Tessera is installed, same glyphs everywhere."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("matplotlib is required for the glyph sprites (its DejaVu font)")
    path = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    if not path.is_file():
        raise RuntimeError(f"font not found: {path}")
    return path


def _star(cx: float, cy: float, r_out: float, r_in: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = r_out if k % 2 == 0 else r_in
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


@functools.lru_cache(maxsize=512)
def _sprite_masks(kind: str, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill and outline alpha of a sprite at 4x resolution, each (4 (size + 2), 4 (size + 2)) float32 in [0, 1].

    The sprite occupies the central 4*size square; the 4-subpixel margin on each side holds the outline.
    """
    s4 = _SUPER * size
    pad = _SUPER
    canvas = Image.new("L", (s4 + 2 * pad, s4 + 2 * pad), 0)
    draw = ImageDraw.Draw(canvas)
    lo, hi = pad, pad + s4 - 1
    c = pad + (s4 - 1) / 2
    if kind == "shape":
        if name == "circle":
            draw.ellipse((lo, lo, hi, hi), fill=255)
        elif name == "square":
            inset = s4 * 0.08
            draw.rectangle((lo + inset, lo + inset, hi - inset, hi - inset), fill=255)
        elif name == "triangle":
            draw.polygon([(c, lo), (hi, hi), (lo, hi)], fill=255)
        elif name == "diamond":
            draw.polygon([(c, lo), (hi, c), (c, hi), (lo, c)], fill=255)
        elif name == "star":
            draw.polygon(_star(c, c + s4 * 0.04, s4 / 2, s4 / 5), fill=255)
        elif name == "cross":
            t = s4 / 6
            draw.rectangle((c - t, lo, c + t, hi), fill=255)
            draw.rectangle((lo, c - t, hi, c + t), fill=255)
        else:
            raise ValueError(f"unknown shape {name!r}")
    elif kind == "glyph":
        # Scale the font so the glyph's ink box fits the sprite square, then center the ink box.
        probe = ImageFont.truetype(str(_font_path()), 100)
        x0, y0, x1, y1 = probe.getbbox(name)
        fsize = max(4, int(100 * s4 / max(x1 - x0, y1 - y0)))
        font = ImageFont.truetype(str(_font_path()), fsize)
        x0, y0, x1, y1 = font.getbbox(name)
        draw.text((pad + (s4 - (x1 - x0)) / 2 - x0, pad + (s4 - (y1 - y0)) / 2 - y0), name, fill=255, font=font)
    else:
        raise ValueError(f"unknown sprite kind {kind!r}")
    fill = np.asarray(canvas, dtype=np.float32) / 255.0
    outline = np.asarray(canvas.filter(ImageFilter.MaxFilter(2 * _SUPER - 1)), dtype=np.float32) / 255.0  # +1 px
    return fill, outline


@functools.lru_cache(maxsize=4096)
def _shifted_alpha(kind: str, name: str, size: int, outline: bool, sx: int, sy: int) -> np.ndarray:
    """Pixel-resolution alpha (size + 3, size + 3) of a sprite mask shifted by (sx, sy) quarter pixels.

    There are only 16 sub-pixel shifts per mask, so they are computed once and reused for every frame and clip.
    """
    fill, edge = _sprite_masks(kind, name, size)
    mask4 = edge if outline else fill
    m = mask4.shape[0]
    cells = m // _SUPER + 1
    shifted = np.zeros((cells * _SUPER, cells * _SUPER), dtype=np.float32)
    shifted[sy:sy + m, sx:sx + m] = mask4
    alpha = shifted.reshape(cells, _SUPER, cells, _SUPER).mean(axis=(1, 3))  # (4c, 4c) -> (c, c) box filter
    alpha.flags.writeable = False
    return alpha


def _paste(frame: np.ndarray, sprite: tuple[str, str, int], outline: bool, x: float, y: float,
           colour: np.ndarray) -> None:
    """Alpha-blend `colour` into `frame` (H, W, C) float through a sprite mask whose square starts at (x, y)."""
    height, width = frame.shape[:2]
    # Top-left of the padded mask in 1/4-pixel units; split into whole pixels and a sub-pixel shift.
    px, sx = divmod(int(round(x * _SUPER)) - _SUPER, _SUPER)
    py, sy = divmod(int(round(y * _SUPER)) - _SUPER, _SUPER)
    alpha = _shifted_alpha(*sprite, outline, sx, sy)
    cells = alpha.shape[0]
    # Clip the patch to the frame (the outline may poke one pixel out at the border).
    x0, y0 = max(px, 0), max(py, 0)
    x1, y1 = min(px + cells, width), min(py + cells, height)
    if x0 >= x1 or y0 >= y1:
        return
    a = alpha[y0 - py:y1 - py, x0 - px:x1 - px, None]
    region = frame[y0:y1, x0:x1]
    region *= 1.0 - a
    region += a * colour


# ----------------------------------------------------------------------------------------------------------------------
# Clip generation


def _sprite_name(sprite: dict[str, Any]) -> str:
    if sprite["kind"] == "shape":
        return f"{sprite['colour']} {sprite['shape']}"
    what = "digit" if sprite["glyph"].isdigit() else "letter"
    return f"{sprite['colour']} {what} {sprite['glyph']}"


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def _describe(sprites: list[dict[str, Any]], events: list[dict[str, Any]]) -> str:
    """One English paragraph that states every fact a question may ask about (names, motion, event order)."""
    lines = []
    for sp in sprites:
        if sp["appear_frame"] == 0:
            pace = "slowly" if sp["speed_class"] == "slow" else "fast"
            lines.append(f"{_article(sp['name']).capitalize()} {sp['name']} moves {sp['direction']} {pace}.")
    for ev in events:
        sp = sprites[ev["sprite"]]
        if ev["type"] == "appear":
            pace = "slowly" if sp["speed_class"] == "slow" else "fast"
            who = f"{_article(sp['name'])} {sp['name']}"
            lines.append(f"At frame {ev['frame']} {who} appears and moves {sp['direction']} {pace}.")
        else:
            lines.append(f"At frame {ev['frame']} the {sp['name']} disappears.")
    count = len(events)
    lines.append(f"{count} event{'s' if count != 1 else ''} in total.")
    return " ".join(lines)


def _draw_motion(rng: np.random.Generator, size: int, free: float, appear: int, end: int, num_frames: int,
                 ) -> dict[str, Any]:
    """A straight constant-speed path that keeps the sprite inside the frame from `appear` to `end` (inclusive)."""
    last = num_frames - 1
    direction = str(rng.choice(list(DIRECTIONS)))
    speed_class = "slow" if rng.random() < 0.5 else "fast"
    frac = rng.uniform(*_SPEED_RANGE[speed_class])
    speed = round(float(frac * free / last), 4)  # pixels per frame; covers <= free over the whole clip
    travel = speed * (end - appear)
    dx, dy = DIRECTIONS[direction]
    along_lo, along_hi = (travel, free) if (dx + dy) < 0 else (0.0, free - travel)
    along = float(rng.uniform(along_lo, along_hi))
    across = float(rng.uniform(0, free))
    x0, y0 = (along, across) if dx != 0 else (across, along)
    boxes: list[list[float] | None] = []
    for t in range(num_frames):
        if appear <= t <= end:
            x = round((x0 + dx * speed * (t - appear)) * _SUPER) / _SUPER  # quantised as `_paste` renders it
            y = round((y0 + dy * speed * (t - appear)) * _SUPER) / _SUPER
            boxes.append([x, y, x + size, y + size])
        else:
            boxes.append(None)
    return {"direction": direction, "speed_class": speed_class, "speed": speed,
            "start": [round(x0, 3), round(y0, 3)], "boxes": boxes}


def _overlap(a: list[float] | None, b: list[float] | None) -> float:
    """Intersection area of two boxes [x0, y0, x1, y1] (0 if either is None)."""
    if a is None or b is None:
        return 0.0
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _plan_clip(rng: np.random.Generator, resolution: int, num_frames: int, cfg: VideoSetConfig) -> dict[str, Any]:
    """Draw the sprites, their motion and the events of one clip (no pixels yet)."""
    p = np.asarray(_SPRITE_COUNT_P[: cfg.max_sprites], dtype=np.float64)
    count = int(rng.choice(np.arange(1, cfg.max_sprites + 1), p=p / p.sum()))
    size = max(3, int(round(cfg.sprite_scale * resolution)))
    free = resolution - size  # room the sprite's top-left corner can move in, per axis
    last = num_frames - 1

    # Appear frames: sprite 0 at 0; others at 0 (sometimes) or at distinct frames 1..T-2, leaving >= 2 visible frames.
    used: set[int] = set()
    appears = [0]
    for _ in range(1, count):
        slots = [f for f in range(1, last) if f not in used]
        if rng.random() < 0.2 or not slots:
            appears.append(0)
        else:
            f = int(rng.choice(slots))
            used.add(f)
            appears.append(f)
    appears.sort()  # sprite index order = order of appearance = drawing order (later on top)

    identities: set[tuple[str, str, str]] = set()
    sprites: list[dict[str, Any]] = []
    for i, appear in enumerate(appears):
        while True:
            kind = "shape" if rng.random() < 0.5 else "glyph"
            name = str(rng.choice(SHAPES if kind == "shape" else GLYPHS))
            colour = str(rng.choice(list(COLOURS)))
            if (kind, name, colour) not in identities:
                identities.add((kind, name, colour))
                break
        disappear = None
        if rng.random() < cfg.p_disappear:
            slots = [f for f in range(appear + 2, num_frames) if f not in used]
            if slots:
                disappear = int(rng.choice(slots))
                used.add(disappear)
        end = (disappear - 1) if disappear is not None else last  # last visible frame
        # Later sprites try a few motions and keep the one that overlaps earlier sprites least, so most clips stay
        # legible (occlusion still happens when every candidate overlaps).
        best = None
        for _ in range(_PLACEMENT_TRIES if sprites else 1):
            motion = _draw_motion(rng, size, free, appear, end, num_frames)
            overlap = sum(_overlap(motion["boxes"][t], sp["boxes"][t]) for sp in sprites for t in range(num_frames))
            if best is None or overlap < best[0]:
                best = (overlap, motion)
            if overlap == 0:
                break
        assert best is not None
        motion = best[1]
        sprite = {
            "id": i,
            "kind": kind,
            "shape": name if kind == "shape" else None,
            "glyph": name if kind == "glyph" else None,
            "colour": colour,
            "rgb": list(COLOURS[colour]),
            "size": size,
            "direction": motion["direction"],
            "speed": motion["speed"],
            "speed_class": motion["speed_class"],
            "start": motion["start"],
            "appear_frame": appear,
            "disappear_frame": disappear,
            "boxes": motion["boxes"],
        }
        sprite["name"] = _sprite_name(sprite)
        sprites.append(sprite)

    events = [{"frame": sp["appear_frame"], "type": "appear", "sprite": sp["id"], "what": sp["name"]}
              for sp in sprites if sp["appear_frame"] > 0]
    events += [{"frame": sp["disappear_frame"], "type": "disappear", "sprite": sp["id"], "what": sp["name"]}
               for sp in sprites if sp["disappear_frame"] is not None]
    events.sort(key=lambda e: e["frame"])
    return {"sprites": sprites, "events": events, "description": _describe(sprites, events)}


def _render_clip(background: np.ndarray, plan: dict[str, Any], num_frames: int) -> np.ndarray:
    """Pixels of a planned clip: (T, H, W, C) uint8."""
    bg = background.astype(np.float32)
    frames = np.empty((num_frames, *background.shape), dtype=np.uint8)
    black = np.zeros(3, dtype=np.float32)
    for t in range(num_frames):
        frame = bg.copy()
        for sp in plan["sprites"]:
            box = sp["boxes"][t]
            if box is None:
                continue
            key = (sp["kind"], sp["shape"] or sp["glyph"], sp["size"])
            _paste(frame, key, True, box[0], box[1], black)  # outline first, fill on top
            _paste(frame, key, False, box[0], box[1], np.asarray(sp["rgb"], dtype=np.float32))
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return frames


def _make_split(backgrounds: np.ndarray, bg_sources: list[str], resolution: int, num_frames: int, split: str,
                count: int, cfg: VideoSetConfig, tick: Callable[[int], object],
                ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    clips = np.empty((count, num_frames, resolution, resolution, 3), dtype=np.uint8)  # (N, T, H, W, C)
    metadata = []
    for i in range(count):
        rng = np.random.default_rng(_stable_int(cfg.seed, "clip", resolution, num_frames, split, i))
        bg_index = int(rng.integers(0, backgrounds.shape[0]))
        plan = _plan_clip(rng, resolution, num_frames, cfg)
        clips[i] = _render_clip(np.asarray(backgrounds[bg_index]), plan, num_frames)
        metadata.append({
            "index": i,
            "resolution": resolution,
            "num_frames": num_frames,
            "background": {"split": split, "crop_index": bg_index, "source": bg_sources[bg_index]},
            **plan,
        })
        tick(1)
    return clips, metadata


def render_sprite_clips(n: int, split: str, frames: int = 4, image_size: int = 32, *, seed: int = 0, max_sprites: int = 2,
                        sprite_scale: float = 0.3) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """`n` sprite clips on plain grey backgrounds, for the decoders' video questions (`tessera.lm.video`).

    Returns (uint8 (N, T, H, W, 3), per-clip plans: sprites with name, direction, speed class, appear / disappear
    frames, and the time-ordered events). Each clip draws from its own generator seeded by (seed, split, frames,
    size, index), so the same arguments give the same bytes; train and test clips use different streams.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    cfg = VideoSetConfig(num_frames=(frames,), max_sprites=max_sprites, sprite_scale=sprite_scale)
    clips = np.empty((n, frames, image_size, image_size, 3), dtype=np.uint8)  # (N, T, H, W, C)
    plans = []
    for i in range(n):
        rng = np.random.default_rng([seed, 1 if split == "train" else 2, frames, image_size, i])
        grey = int(rng.integers(30, 110))
        background = np.full((image_size, image_size, 3), grey, dtype=np.uint8)
        plan = _plan_clip(rng, image_size, frames, cfg)
        clips[i] = _render_clip(background, plan, frames)
        plans.append({"sprites": [{k: sp[k] for k in ("name", "direction", "speed_class", "appear_frame", "disappear_frame")}
                                  for sp in plan["sprites"]],
                      "events": [{k: ev[k] for k in ("frame", "type", "sprite")} for ev in plan["events"]]})
    return clips, plans


# ----------------------------------------------------------------------------------------------------------------------
# Build and load


def _combo_dir(base: Path, resolution: int, num_frames: int) -> Path:
    return base / f"r{resolution}_t{num_frames}"


def video_set_dir(config: VideoSetConfig | None = None, image_config: ImageSetConfig | None = None,
                  root: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding the `r{R}_t{T}` clip sets of `config` (whether or not any is built yet)."""
    return dataset_dir(data_root(root), _BASE, config or VideoSetConfig(), image_config or ImageSetConfig())


def _build_one(cfg: VideoSetConfig, image_cfg: ImageSetConfig, resolution: int, num_frames: int, *, root: Path,
               source_dirs: Sequence[str | os.PathLike[str]] | None, force: bool, progress: bool | None
               ) -> DatasetBuild:
    final = _combo_dir(dataset_dir(root, _BASE, cfg, image_cfg), resolution, num_frames)
    bgs = {split: load_image_dataset(resolution, split, config=image_cfg, root=root, source_dirs=source_dirs)
           for split in _SPLITS}
    bg_hash = {split: ds.manifest["files"][f"{split}_{resolution}"]["sha256"] for split, ds in bgs.items()}
    cached = read_manifest(final)
    if cached is not None and not force:
        if cached.get("backgrounds_sha256") == bg_hash:
            return DatasetBuild(final, cached, built=False)
        log.info("image set changed since %s was built; rebuilding it", final)
        force = True

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    counts = {"train": cfg.train_clips, "val": cfg.val_clips}
    bar = tqdm(total=sum(counts.values()), desc=f"tessera data: video {resolution}px x{num_frames}", unit="clip",
               disable=None if progress is None else not progress)
    partial = new_partial_dir(final)
    files: dict[str, Any] = {}
    try:
        for split in _SPLITS:
            ds = bgs[split]
            source_ids = [ds.manifest["sources"][int(k)]["id"] for k in ds.sources]  # per background crop
            clips, metadata = _make_split(ds.array, source_ids, resolution, num_frames, split, counts[split], cfg,
                                          tick=bar.update)
            files[split] = save_array(partial, f"{split}.npy", clips)
            write_json(partial / f"{split}.json", metadata)
            files[f"{split}_metadata"] = {"file": f"{split}.json", "clips": len(metadata)}
        manifest = {
            "format": "tessera.video",
            "version": VIDEO_VERSION,
            "config": to_dict(cfg),
            "resolution": resolution,
            "num_frames": num_frames,
            "counts": counts,
            "files": files,
            "backgrounds_sha256": bg_hash,
            "image_config": to_dict(image_cfg),
            "image_set_config_hash": config_hash(image_cfg),
            "vocabulary": {"shapes": list(SHAPES), "glyphs": list(GLYPHS), "colours": COLOURS,
                           "directions": list(DIRECTIONS), "speeds": list(_SPEED_RANGE)},
            "software": {"numpy": np.__version__, "pillow": PIL.__version__,
                         "freetype": features.version("freetype2")},
            "build_seconds": round(time.perf_counter() - t0, 2),
        }
        write_json(partial / "manifest.json", manifest)
    except BaseException:
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        bar.close()
    if not publish(partial, final, force=force):
        return DatasetBuild(final, read_manifest(final) or manifest, built=False)
    log.info("built video set %s in %.1f s", final, manifest["build_seconds"])
    return DatasetBuild(final, manifest, built=True)


def build_video_dataset(
    config: VideoSetConfig | None = None,
    *,
    image_config: ImageSetConfig | None = None,
    root: str | os.PathLike[str] | None = None,
    source_dirs: Sequence[str | os.PathLike[str]] | None = None,
    force: bool = False,
    progress: bool | None = None,
    resolutions: Sequence[int] | None = None,
    num_frames: Sequence[int] | None = None,
) -> list[DatasetBuild]:
    """Build (or find in the cache) the embedded video set for each (resolution, frames) pair.

    The image set it draws backgrounds from is built first if needed.

    Args:
        config: what to build; None means the default set.
        image_config: the image set whose crops are the backgrounds; None means the default image set.
        root: folder holding the data sets; default `cache_dir("data")`. Clips go to `root/video-v1/r{R}_t{T}`
            (`video-v1-<config hash>` when either config is not the default).
        source_dirs: source lookup override for the image set (see `tessera.data.sources.source_roots`).
        force: rebuild the clips even if cached (the image set is only rebuilt if missing).
        progress: show tqdm progress bars (None: only on a terminal).
        resolutions: frame sides to build; default `config.resolutions`.
        num_frames: clip lengths to build; default `config.num_frames`.

    Returns:
        One `DatasetBuild` per (resolution, frames), each holding `{split}.npy` uint8 (N, T, H, W, 3) and
        `{split}.json` (per-clip metadata).
    """
    cfg = config or VideoSetConfig()
    image_cfg = image_config or ImageSetConfig()
    base = data_root(root)
    builds = []
    for res in resolutions or cfg.resolutions:
        for frames in num_frames or cfg.num_frames:
            _check_combo(cfg, image_cfg, res, frames)
            builds.append(_build_one(cfg, image_cfg, res, frames, root=base, source_dirs=source_dirs, force=force,
                                     progress=progress))
    return builds


def _check_combo(cfg: VideoSetConfig, image_cfg: ImageSetConfig, resolution: int, num_frames: int) -> None:
    if resolution not in image_cfg.resolutions:
        raise ValueError(
            f"video resolution {resolution} needs image-set crops at that resolution; the image-set config builds "
            f"{image_cfg.resolutions}"
        )
    if not 4 <= num_frames <= 64:
        raise ValueError(f"num_frames must be between 4 and 64, got {num_frames}")
    if max(3, round(cfg.sprite_scale * resolution)) >= resolution:
        raise ValueError(f"resolution {resolution} is too small for sprites")


def load_video_dataset(
    resolution: int = 32,
    split: str = "train",
    num_frames: int = 8,
    *,
    config: VideoSetConfig | None = None,
    image_config: ImageSetConfig | None = None,
    root: str | os.PathLike[str] | None = None,
    source_dirs: Sequence[str | os.PathLike[str]] | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> VideoArrayDataset:
    """The embedded video set as a torch Dataset, built on first use and memory-mapped.

    Args:
        resolution: frame side (32 or 64 with the default image set).
        split: "train" or "val".
        num_frames: frames per clip (4-64; 8 and 16 are prebuilt by `tessera data build`).
        config: which set; None means the default set.
        image_config: the background image set; None means the default image set.
        root: data folder (default `cache_dir("data")`).
        source_dirs: source lookup override used if the image set has to be built.
        transform: optional function applied to each float (T, C, H, W) tensor.

    Returns:
        A `VideoArrayDataset`; items are float (T, 3, H, W) in [0, 1]; `.metadata[i]` describes clip i.

    Raises:
        ValueError: unknown split, or a resolution / length that cannot be built.
    """
    import json

    cfg = config or VideoSetConfig()
    image_cfg = image_config or ImageSetConfig()
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    _check_combo(cfg, image_cfg, resolution, num_frames)
    build = _build_one(cfg, image_cfg, resolution, num_frames, root=data_root(root), source_dirs=source_dirs,
                       force=False, progress=None)
    array = np.load(build.file(f"{split}.npy"), mmap_mode="r", allow_pickle=False)
    metadata = json.loads(build.file(f"{split}.json").read_text())
    return VideoArrayDataset(array, metadata=metadata, manifest=build.manifest, transform=transform)
