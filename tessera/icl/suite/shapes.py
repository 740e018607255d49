"""Procedural shape x texture x colour classes (a synthetic stand-in for object categories).

Axis legend: H W height and width.

A class is a combination (shape, fill texture, foreground hue, background tone); an instance draws it at a random
rotation, scale and position, with jittered hue/saturation/value, texture frequency and phase, and background noise.
So a class is recognisable only through the conjunction of its factors: two classes may share a shape, or a texture,
or a colour. Classes are sampled without replacement from the full product, seeded.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "TEXTURES", "HUES", "BACKGROUNDS", "shape_classes", "render_shape"]


def _regular(n: int, phase: float = 0.0) -> list[tuple[float, float]]:
    return [(math.cos(phase + 2 * math.pi * k / n), math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star(n: int, inner: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * n):
        r = 1.0 if k % 2 == 0 else inner
        a = math.pi * k / n - math.pi / 2
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


# Outlines in the unit square [-1, 1]^2 (polygons); "circle", "ring", "crescent", "ellipse" are drawn specially.
SHAPES: dict[str, list[tuple[float, float]] | None] = {
    "circle": None,
    "ellipse": None,
    "ring": None,
    "crescent": None,
    "triangle": _regular(3, -math.pi / 2),
    "square": _regular(4, math.pi / 4),
    "pentagon": _regular(5, -math.pi / 2),
    "hexagon": _regular(6),
    "octagon": _regular(8, math.pi / 8),
    "star5": _star(5, 0.45),
    "star8": _star(8, 0.6),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "arrow": [(-1, -0.3), (0.2, -0.3), (0.2, -0.75), (1, 0), (0.2, 0.75), (0.2, 0.3), (-1, 0.3)],
    "diamond": [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)],
    "trapezoid": [(-1, 0.6), (1, 0.6), (0.45, -0.6), (-0.45, -0.6)],
    "lshape": [(-0.8, -1), (-0.2, -1), (-0.2, 0.4), (0.8, 0.4), (0.8, 1), (-0.8, 1)],
    "chevron": [(-1, -0.8), (0, 0.1), (1, -0.8), (1, -0.1), (0, 0.8), (-1, -0.1)],
    "semicircle": [(math.cos(a), -math.sin(a) * 1.0 + 0.4) for a in np.linspace(0, math.pi, 24)],
}
TEXTURES = ("solid", "hstripes", "dstripes", "dots", "checker", "rings", "speckle", "gradient")
HUES = tuple(range(0, 360, 45))  # 8 foreground hues
BACKGROUNDS = ("dark", "light")


def shape_classes(num_classes: int, seed: int) -> list[tuple[str, str, int, str]]:
    """`num_classes` distinct (shape, texture, hue, background) combinations, sampled with `seed`."""
    combos = [(s, t, h, b) for s in SHAPES for t in TEXTURES for h in HUES for b in BACKGROUNDS]
    if num_classes > len(combos):
        raise ValueError(f"at most {len(combos)} shape classes exist, asked for {num_classes}")
    pick = np.random.default_rng(seed).permutation(len(combos))[:num_classes]
    return [combos[i] for i in sorted(pick)]


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h % 360) / 360.0, min(max(s, 0), 1), min(max(v, 0), 1)), dtype=np.float32)


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) pattern in [0, 1]: 1 = foreground colour, 0 = its darker/lighter partner."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    period = rng.uniform(0.14, 0.22)
    phase = rng.uniform(0, 1)
    theta = rng.uniform(0, math.pi)
    if kind == "solid":
        return np.ones((size, size), np.float32)
    if kind == "hstripes":
        return (np.sin(2 * math.pi * (yy / period + phase)) > 0).astype(np.float32)
    if kind == "dstripes":
        u = xx * math.cos(math.pi / 4 + theta * 0.1) + yy * math.sin(math.pi / 4 + theta * 0.1)
        return (np.sin(2 * math.pi * (u / period + phase)) > 0).astype(np.float32)
    if kind == "dots":
        p = period * 0.9
        dx = ((xx / p + phase) % 1) - 0.5
        dy = ((yy / p + phase) % 1) - 0.5
        return (dx**2 + dy**2 > 0.09).astype(np.float32)
    if kind == "checker":
        p = period
        return (((np.floor(xx / p + phase) + np.floor(yy / p + phase)) % 2) == 0).astype(np.float32)
    if kind == "rings":
        r = np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
        return (np.sin(2 * math.pi * (r / (period * 0.8) + phase)) > 0).astype(np.float32)
    if kind == "speckle":
        return (rng.random((size, size)) > 0.45).astype(np.float32)
    if kind == "gradient":
        return np.clip(xx * math.cos(theta) + yy * math.sin(theta), 0, 1).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def render_shape(cls: tuple[str, str, int, str], rng: np.random.Generator, resolution: int) -> np.ndarray:
    """One instance of class `cls`: uint8 (resolution, resolution, 3)."""
    shape, texture, hue, background = cls
    big = resolution * 4
    # Mask of the shape at a random rotation, scale and position.
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    scale = rng.uniform(0.28, 0.42) * big
    cx, cy = big / 2 + rng.uniform(-0.1, 0.1, size=2) * big
    angle = rng.uniform(0, 2 * math.pi)
    ca, sa = math.cos(angle), math.sin(angle)

    def place(pts):
        return [(cx + scale * (x * ca - y * sa), cy + scale * (x * sa + y * ca)) for x, y in pts]

    if shape == "circle":
        draw.ellipse([cx - scale, cy - scale, cx + scale, cy + scale], fill=255)
    elif shape == "ellipse":
        draw.polygon(place([(math.cos(a), 0.55 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 48)]), fill=255)
    elif shape == "ring":
        draw.ellipse([cx - scale, cy - scale, cx + scale, cy + scale], fill=255)
        draw.ellipse([cx - 0.55 * scale, cy - 0.55 * scale, cx + 0.55 * scale, cy + 0.55 * scale], fill=0)
    elif shape == "crescent":
        draw.ellipse([cx - scale, cy - scale, cx + scale, cy + scale], fill=255)
        ox, oy = place([(0.45, 0.0)])[0]
        draw.ellipse([ox - 0.85 * scale, oy - 0.85 * scale, ox + 0.85 * scale, oy + 0.85 * scale], fill=0)
    else:
        draw.polygon(place(SHAPES[shape]), fill=255)
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0

    # Colours: jittered foreground hue; the texture alternates the colour with a darker (or lighter) partner.
    h = hue + rng.uniform(-12, 12)
    fg = _rgb(h, rng.uniform(0.65, 0.95), rng.uniform(0.75, 0.95))
    partner = fg * rng.uniform(0.25, 0.45) if background == "light" else np.clip(fg + rng.uniform(0.3, 0.5), 0, 1) * 0.9
    pattern = _texture(texture, big, rng)[..., None]
    fill = pattern * fg + (1 - pattern) * partner
    bg_v = rng.uniform(0.05, 0.2) if background == "dark" else rng.uniform(0.82, 0.97)
    bg = _rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.25), bg_v)
    img = m * fill + (1 - m) * bg
    img = img + rng.normal(0, 0.03, size=img.shape).astype(np.float32)  # sensor-like noise
    out = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(out, dtype=np.uint8)
