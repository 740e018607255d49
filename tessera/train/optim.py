"""AdamW with decoupled weight decay on matrices only, and a linear-warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["OptimConfig", "default_param_groups", "build_optimizer", "warmup_cosine"]


@dataclass
class OptimConfig:
    """Optimiser and schedule settings."""

    lr: float = 1e-3  # peak learning rate, reached at the end of warmup
    weight_decay: float = 0.0  # AdamW decay, applied to weight matrices only (see default_param_groups)
    betas: tuple[float, float] = (0.9, 0.99)  # the rotation-trick code uses (0.9, 0.99)
    eps: float = 1e-8
    warmup_steps: int = 100  # linear warmup from 0
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0 or self.grad_clip < 0:
            raise ValueError("optim: need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1, grad_clip >= 0")


def default_param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight matrices (decayed) and everything else (biases, norms, scales; not decayed).

    A module may name more parameters to leave undecayed through a `no_weight_decay() -> set[str]` method
    (timm's convention), e.g. embeddings or learned label vectors.
    """
    skip = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name in skip else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `groups`; a group may carry its own `lr_scale` (multiplies cfg.lr)."""
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        g["lr"] = cfg.lr * g.pop("lr_scale", 1.0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def warmup_cosine(total_steps: int, warmup_steps: int, min_lr_ratio: float):
    """LambdaLR multiplier: linear 0 -> 1 over `warmup_steps`, cosine 1 -> `min_lr_ratio` at `total_steps`, then flat.

    Progress is clamped, so training past `total_steps` keeps the floor (the CAML code's schedule rose again there).
    """

    def fn(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn
