"""Procedural scenes: coloured shapes on a 2x2 grid, rendered with Pillow, with canonical captions and questions.

Axis legend: H, W image height/width in pixels, C = 3 RGB channels.

A scene holds 1-4 objects; each object has a colour (8), a shape (4), a size (2) and a grid cell (4 positions).
One object per cell, and each object stays inside its cell, so objects never overlap. The caption grammar is fixed
(one canonical caption per scene, objects in reading order), so captions can be parsed back into attributes:

    "a large red circle at the top left."
    "two shapes: a small blue square at the top right and a large white cross at the bottom left."

Held-out compositions: six (colour, shape) pairs never appear in training scenes. Test scenes contain at least one
of them (the other objects are free), so evaluation measures generalisation to novel attribute combinations while
every colour and every shape on its own was seen in training.

Everything is a pure function of a numpy Generator, so a seed reproduces a corpus exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "POSITIONS",
    "COUNT_WORDS",
    "HELD_OUT_PAIRS",
    "SceneObject",
    "Scene",
    "sample_scene",
    "render_scene",
    "render_scenes",
    "caption",
    "parse_caption",
    "QUESTION_TYPES",
    "sample_question",
    "answer_choices",
]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 50),
    "purple": (150, 70, 210),
    "orange": (245, 140, 30),
    "white": (235, 235, 235),
    "cyan": (50, 205, 215),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # grid cells in reading order
COUNT_WORDS = ("zero", "one", "two", "three", "four")
# Never in training scenes; each shape keeps >= 6 colours and each colour >= 3 shapes in training.
HELD_OUT_PAIRS = frozenset(
    {("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square"), ("purple", "cross"), ("orange", "triangle")}
)

Split = Literal["train", "test", "any"]


@dataclass(frozen=True)
class SceneObject:
    """One shape; `dx`, `dy` are its offset from the cell centre as fractions of the free room (-1..1)."""

    color: str
    shape: str
    size: str
    cell: int  # index into POSITIONS
    dx: float = 0.0
    dy: float = 0.0

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def held_out(self) -> bool:
        return (self.color, self.shape) in HELD_OUT_PAIRS

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape} at the {self.position}"


@dataclass(frozen=True)
class Scene:
    """Objects sorted by cell, plus a background grey level."""

    objects: tuple[SceneObject, ...]
    background: int = 32

    def at(self, cell: int) -> SceneObject | None:
        for obj in self.objects:
            if obj.cell == cell:
                return obj
        return None

    @property
    def held_out(self) -> bool:
        return any(o.held_out for o in self.objects)


def _sample_object(rng: np.random.Generator, cell: int, allow_held_out: bool) -> SceneObject:
    while True:
        color = list(COLORS)[rng.integers(len(COLORS))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        if allow_held_out or (color, shape) not in HELD_OUT_PAIRS:
            break
    size = SIZES[rng.integers(len(SIZES))]
    dx, dy = rng.uniform(-1, 1, size=2)
    return SceneObject(color, shape, size, cell, float(dx), float(dy))


def sample_scene(
    rng: np.random.Generator, split: Split = "train", min_objects: int = 1, max_objects: int = 3
) -> Scene:
    """A random scene. `train`: no held-out (colour, shape) pair; `test`: at least one; `any`: unconstrained."""
    if not 1 <= min_objects <= max_objects <= len(POSITIONS):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(POSITIONS)}, got {min_objects}, {max_objects}")
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = sorted(rng.choice(len(POSITIONS), size=n, replace=False).tolist())
    objects = [_sample_object(rng, c, allow_held_out=split != "train") for c in cells]
    if split == "test" and not any(o.held_out for o in objects):
        i = int(rng.integers(n))  # force one held-out pair, keeping the other attributes
        color, shape = sorted(HELD_OUT_PAIRS)[rng.integers(len(HELD_OUT_PAIRS))]
        o = objects[i]
        objects[i] = SceneObject(color, shape, o.size, o.cell, o.dx, o.dy)
    return Scene(tuple(objects), background=int(rng.integers(16, 56)))


# -- rendering -------------------------------------------------------------------------------------------------------
_SUPERSAMPLE = 4  # draw at 4x and downsample with a box filter: anti-aliased edges at small sizes


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, cell_px: float, scale: float) -> None:
    radius = (0.40 if obj.size == "large" else 0.22) * cell_px  # half-extent: large ~13 px, small ~7 px at 32x32
    room = cell_px / 2 - radius - 0.06 * cell_px  # free room around the shape inside its cell
    row, col = divmod(obj.cell, 2)
    cx = (col + 0.5) * cell_px + obj.dx * max(room, 0.0)
    cy = (row + 0.5) * cell_px + obj.dy * max(room, 0.0)
    fill = COLORS[obj.color]
    cx, cy, r = cx * scale, cy * scale, radius * scale
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    elif obj.shape == "cross":
        t = 0.36 * r
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    else:  # pragma: no cover - guarded by SHAPES
        raise ValueError(f"unknown shape {obj.shape!r}")


def render_scene(scene: Scene, image_size: int = 32) -> np.ndarray:
    """Render to a (H, W, C) uint8 array."""
    big = image_size * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), (scene.background,) * 3)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw(draw, obj, image_size / 2, _SUPERSAMPLE)
    return np.asarray(img.resize((image_size, image_size), Image.Resampling.BOX))


def render_scenes(scenes: list[Scene], image_size: int = 32) -> np.ndarray:
    """Render many scenes: (N, H, W, C) uint8."""
    out = np.empty((len(scenes), image_size, image_size, 3), dtype=np.uint8)
    for i, s in enumerate(scenes):
        out[i] = render_scene(s, image_size)
    return out


# -- language --------------------------------------------------------------------------------------------------------
def caption(scene: Scene) -> str:
    """The canonical caption (objects in reading order)."""
    phrases = [o.phrase() for o in scene.objects]
    if len(phrases) == 1:
        return phrases[0] + "."
    body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{COUNT_WORDS[len(phrases)]} shapes: {body}."


_PHRASE = re.compile(
    r"\b(" + "|".join(SIZES) + r") (" + "|".join(COLORS) + r") (" + "|".join(SHAPES) + r") at the ("
    + "|".join(POSITIONS) + r")\b"
)


def parse_caption(text: str) -> dict[str, tuple[str, str, str]]:
    """Objects a caption describes: {position: (size, colour, shape)}; unparseable parts are ignored."""
    out: dict[str, tuple[str, str, str]] = {}
    for size, color, shape, pos in _PHRASE.findall(text):
        out.setdefault(pos, (size, color, shape))
    return out


QUESTION_TYPES = ("count", "shape_at", "color_at", "size_at", "exists", "where")


def answer_choices(qtype: str) -> tuple[str, ...]:
    """Every answer a question type can have (used for the chance line)."""
    return {
        "count": COUNT_WORDS[1:4],
        "shape_at": SHAPES + ("nothing",),
        "color_at": tuple(COLORS) + ("nothing",),
        "size_at": SIZES + ("nothing",),
        "exists": ("yes", "no"),
        "where": POSITIONS,
    }[qtype]


def sample_question(scene: Scene, rng: np.random.Generator, qtype: str | None = None) -> tuple[str, str, str]:
    """A (question type, question, answer) about the scene, answers being single canonical phrases."""
    if qtype is None:
        qtype = QUESTION_TYPES[rng.integers(len(QUESTION_TYPES))]
    if qtype == "count":
        return qtype, "how many shapes are there?", COUNT_WORDS[len(scene.objects)]
    if qtype in ("shape_at", "color_at", "size_at"):
        # Half the time ask about an occupied cell, so "nothing" does not dominate.
        occupied = [o.cell for o in scene.objects]
        cell = occupied[rng.integers(len(occupied))] if rng.random() < 0.75 else int(rng.integers(len(POSITIONS)))
        obj = scene.at(cell)
        attr = {"shape_at": "shape", "color_at": "color", "size_at": "size"}[qtype]
        question = f"what {attr} is the shape at the {POSITIONS[cell]}?" if attr != "shape" else f"what shape is at the {POSITIONS[cell]}?"
        return qtype, question, getattr(obj, attr) if obj is not None else "nothing"
    if qtype == "exists":
        if rng.random() < 0.5:
            obj = scene.objects[rng.integers(len(scene.objects))]
            color, shape = obj.color, obj.shape
        else:
            color, shape = list(COLORS)[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))]
        present = any(o.color == color and o.shape == shape for o in scene.objects)
        return qtype, f"is there a {color} {shape}?", "yes" if present else "no"
    if qtype == "where":
        unique = [o for o in scene.objects if sum(p.color == o.color and p.shape == o.shape for p in scene.objects) == 1]
        if not unique:  # every (colour, shape) repeats: "where" has no single answer
            return sample_question(scene, rng, "count")
        obj = unique[rng.integers(len(unique))]
        return qtype, f"where is the {obj.color} {obj.shape}?", obj.position
    raise ValueError(f"unknown question type {qtype!r}; known: {QUESTION_TYPES}")
