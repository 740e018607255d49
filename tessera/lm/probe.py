"""The scene probe: a small CNN, trained on real renders only, that reads each grid cell's colour, shape and size.

Axis legend: B batch, C channels, H, W pixels, G = 4 grid cells.

It measures caption-to-image fidelity: a model draws an image for a caption, the probe says what is in each cell,
and we count how many requested attributes it recognises. The probe never sees generated images or tokenizer
reconstructions while training, and its training scenes come from their own seed stream (any colour-shape pair,
so it knows the held-out pairs too), disjoint from the LM's training data. Its accuracy on held-out real renders
and on tokenizer reconstructions of them are reported next to the fidelity numbers as ceilings.

Heads per cell: colour-or-empty (9 classes), shape (4) and size (2); shape/size losses count only occupied cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tessera.lm import scenes as S

__all__ = ["SceneProbe", "ProbeConfig", "train_probe", "scene_targets", "probe_scores"]

_COLORS = list(S.COLORS)


@dataclass
class ProbeConfig:
    """Probe training settings."""

    num_scenes: int = 12_000
    steps: int = 800
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 12_345  # its own seed stream, disjoint from the LM corpus
    image_size: int = 32


class SceneProbe(nn.Module):
    """CNN with per-cell heads: (B, 3, H, W) in [0, 1] -> logits dict of (B, G, classes)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(2),  # one feature vector per grid cell
        )
        d = 2 * width
        self.color = nn.Linear(d, len(_COLORS) + 1)
        self.shape = nn.Linear(d, len(S.SHAPES))
        self.size = nn.Linear(d, len(S.SIZES))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images * 2 - 1)  # (B, D, 2, 2)
        f = f.flatten(2).transpose(1, 2)  # (B, G, D), cells in reading order
        return {"color": self.color(f), "shape": self.shape(f), "size": self.size(f)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Class indices per cell: color (0 = empty, 1.. = COLORS order), shape, size; each (B, G)."""
        self.eval()
        outs = [self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return {k: torch.cat([o[k] for o in outs]).argmax(-1) for k in ("color", "shape", "size")}


def scene_targets(scenes: list[S.Scene]) -> dict[str, torch.Tensor]:
    """Per-cell targets (B, G): color 0 = empty, else 1 + colour index; shape/size -1 where empty."""
    B, G = len(scenes), len(S.POSITIONS)
    color = torch.zeros(B, G, dtype=torch.long)
    shape = torch.full((B, G), -1, dtype=torch.long)
    size = torch.full((B, G), -1, dtype=torch.long)
    for b, scene in enumerate(scenes):
        for o in scene.objects:
            color[b, o.cell] = 1 + _COLORS.index(o.color)
            shape[b, o.cell] = S.SHAPES.index(o.shape)
            size[b, o.cell] = S.SIZES.index(o.size)
    return {"color": color, "shape": shape, "size": size}


def probe_scores(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, float]:
    """Attribute recognition rates: per requested object colour/shape/size at its cell, empty cells empty, overall."""
    occ = target["color"] > 0
    out = {
        "color": float((pred["color"] == target["color"])[occ].float().mean()),
        "shape": float((pred["shape"] == target["shape"])[occ].float().mean()),
        "size": float((pred["size"] == target["size"])[occ].float().mean()),
        "empty": float((pred["color"] == 0)[~occ].float().mean()) if bool((~occ).any()) else float("nan"),
    }
    slots = torch.cat([
        (pred["color"] == target["color"])[occ].float(),
        (pred["shape"] == target["shape"])[occ].float(),
        (pred["size"] == target["size"])[occ].float(),
        (pred["color"] == 0)[~occ].float(),
    ])
    out["all"] = float(slots.mean())
    return out


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)


def train_probe(cfg: ProbeConfig | None = None, progress: bool = False) -> tuple[SceneProbe, dict[str, float]]:
    """Train the probe on fresh real renders; returns it (eval mode) and its accuracy on held-out real renders."""
    cfg = cfg or ProbeConfig()
    rng = np.random.default_rng([cfg.seed, 0])
    scenes = [S.sample_scene(rng, "any", 1, 4) for _ in range(cfg.num_scenes)]
    images = _to_tensor(S.render_scenes(scenes, cfg.image_size))
    targets = scene_targets(scenes)
    val_rng = np.random.default_rng([cfg.seed, 1])
    val_scenes = [S.sample_scene(val_rng, "any", 1, 4) for _ in range(1000)]
    val_images = _to_tensor(S.render_scenes(val_scenes, cfg.image_size))
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    probe = SceneProbe()
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    probe.train()
    for step in range(cfg.steps):
        idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
        x = images[idx]
        # Mild photometric jitter so the probe tolerates the small colour shifts of decoded images.
        x = (x * (1 + 0.1 * (torch.rand(len(x), 1, 1, 1, generator=gen) - 0.5))
             + 0.03 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        out = probe(x)
        t = {k: v[idx] for k, v in targets.items()}
        loss = F.cross_entropy(out["color"].flatten(0, 1), t["color"].flatten())
        loss = loss + F.cross_entropy(out["shape"].flatten(0, 1), t["shape"].flatten(), ignore_index=-1)
        loss = loss + F.cross_entropy(out["size"].flatten(0, 1), t["size"].flatten(), ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and step % 200 == 0:
            print(f"probe step {step}: loss {float(loss.detach()):.4f}", flush=True)
    probe.eval()
    scores = probe_scores(probe.predict(val_images), scene_targets(val_scenes))
    return probe, scores
