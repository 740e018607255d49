"""Video for the decoders: clips as frame sequences inside `<bov> ... <eov>`, and sprite clips with questions.

Axis legend: T frames, C channels, H, W pixels, N clips.

A clip enters the sequence as `<bov>`, then every frame as an image block (`<boi>` + the image tokenizer's h*w codes
+ `<eoi>`), then `<eov>`: the frames are tokenized one by one by the same Tessera image tokenizer as still images, so
a frame and a photo share codes and the model's image knowledge carries over.

The embedded clips come from `tessera.data.video.render_sprite_clips` (the embedded video set's sprite planner and
renderer: shapes and glyphs moving left / right / up / down, appearing and disappearing at distinct frames) on plain
grey backgrounds (the LM corpus' scenes are plain too, so its image tokenizer represents the frames well); the
recipe renders them and hands them to the corpus (models never import `tessera.data`). Questions ask about
direction, order and count of events, with single canonical answers (`sample_video_question`), from the clip plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "VideoClip",
    "to_video_tensor",
    "VIDEO_QUESTION_TYPES",
    "video_answer_choices",
    "sample_video_question",
    "MAX_FRAMES",
    "load_video",
]

MAX_FRAMES = 16
VIDEO_QUESTION_TYPES = ("direction", "count", "order")
_COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


class VideoClip(NamedTuple):
    """A clip: float (T, 3, H, W) frames in [0, 1] (uint8 (T, H, W, 3) arrays and lists of images are converted)."""

    frames: Any


def to_video_tensor(clip: Any, max_frames: int = MAX_FRAMES) -> torch.Tensor:
    """A clip -> float (T, 3, H, W) in [0, 1].

    Accepts a `VideoClip`, a float/uint8 tensor (T, C, H, W), a uint8 array (T, H, W, C), or a list of images
    (anything `tessera.lm.processor.to_image_tensor` reads, all of one size).

    Raises:
        ValueError / TypeError: wrong shape, too few / too many frames, mixed frame sizes, bad values.
    """
    from tessera.lm.processor import to_image_tensor

    if isinstance(clip, VideoClip):
        clip = clip.frames
    if isinstance(clip, np.ndarray):
        if clip.ndim != 4 or clip.shape[-1] not in (1, 3, 4):
            raise ValueError(f"a video array must be (T, H, W, C), got shape {clip.shape}")
        frames = [to_image_tensor(f) for f in clip]
    elif isinstance(clip, torch.Tensor):
        if clip.ndim != 4:
            raise ValueError(f"a video tensor must be (T, C, H, W), got shape {tuple(clip.shape)}")
        frames = [to_image_tensor(f) for f in clip]
    elif isinstance(clip, Sequence) and not isinstance(clip, str):
        frames = [to_image_tensor(f) for f in clip]
    else:
        raise TypeError(f"expected a video clip (VideoClip, (T, C, H, W) tensor, (T, H, W, C) array or list of frames), got {type(clip).__name__}")
    if not 1 <= len(frames) <= max_frames:
        raise ValueError(f"a video clip needs 1 to {max_frames} frames, got {len(frames)}")
    sizes = {tuple(f.shape) for f in frames}
    if len(sizes) != 1:
        raise ValueError(f"all frames of a clip must have one size, got {sorted(sizes)}")
    return torch.stack(frames)


def video_answer_choices(qtype: str, plan: dict[str, Any] | None = None) -> tuple[str, ...]:
    """Answers a question type can have (for the chance line); "order" depends on the clip's two candidates."""
    if qtype == "direction":
        return ("left", "right", "up", "down")
    if qtype == "count":
        return _COUNT_WORDS[:5]
    if qtype == "order":
        return ("first", "second")
    raise ValueError(f"unknown video question type {qtype!r}; known: {VIDEO_QUESTION_TYPES}")


def sample_video_question(plan: dict[str, Any], rng: np.random.Generator, qtype: str | None = None) -> tuple[str, str, str]:
    """A (question type, question, answer) about a clip plan from `render_clips`.

    - direction: "which way does the red circle move?" -> left / right / up / down;
    - count: "how many events happen?" (appearances after the first frame plus disappearances) -> zero ... four;
    - order: "which appears first, the red circle or the blue letter K?" -> the earlier one's name (asked only when
      two sprites appear at different frames; otherwise a direction question is asked).
    """
    sprites = plan["sprites"]
    if qtype is None:
        qtype = VIDEO_QUESTION_TYPES[int(rng.integers(len(VIDEO_QUESTION_TYPES)))]
    if qtype == "order":
        pairs = [(a, b) for a in sprites for b in sprites if a["appear_frame"] < b["appear_frame"]]
        if not pairs:
            qtype = "direction"
        else:
            first, later = pairs[int(rng.integers(len(pairs)))]
            x, y = (first, later) if rng.random() < 0.5 else (later, first)
            return "order", f"which appears first, the {x['name']} or the {y['name']}?", f"the {first['name']}"
    if qtype == "direction":
        sp = sprites[int(rng.integers(len(sprites)))]
        return "direction", f"which way does the {sp['name']} move?", sp["direction"]
    if qtype == "count":
        return "count", "how many events happen?", _COUNT_WORDS[len(plan["events"])]
    raise ValueError(f"unknown video question type {qtype!r}; known: {VIDEO_QUESTION_TYPES}")


def load_video(path: Any, max_frames: int = MAX_FRAMES) -> torch.Tensor:
    """A clip from disk -> float (T, 3, H, W) in [0, 1]: a `.npy` uint8 array (T, H, W, C), an animated GIF / WebP /
    multi-page TIFF, or a folder of frame images (read in sorted name order).

    Raises:
        FileNotFoundError: no such file or folder.
        ValueError: unreadable file, an empty folder, or a clip `to_video_tensor` rejects (frame count, sizes).
    """
    from pathlib import Path

    from PIL import Image, ImageSequence, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))
            if not files:
                raise ValueError(f"{path}: the folder holds no frame images (.png/.jpg/.bmp/.webp)")
            frames: Any = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        elif path.suffix.lower() == ".npy":
            frames = np.load(path, allow_pickle=False)
            if frames.dtype != np.uint8:
                raise ValueError(f"{path}: a .npy clip must be uint8 (T, H, W, C), got {frames.dtype}")
        else:
            with Image.open(path) as im:
                frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read video {path}: {exc}") from exc
    try:
        return to_video_tensor(frames, max_frames)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
