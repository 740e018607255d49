"""Guards for long runs, used by `tessera.train.fit`: goodput accounting, an in-memory snapshot with rollback on a
non-finite loss, and a replay check for silent data corruption.

- Goodput (Gemini 1.0 report: time spent computing useful new steps over the elapsed time): useful step time /
  elapsed time since `fit` started. Useful = forward, backward and optimiser time of steps whose update was kept. Not
  useful: data loading, evaluation, checkpoint writing, steps that were skipped or rolled back, replays, start-up.
- Snapshot and rollback (Gemini 1.0 keeps redundant in-memory copies of the model state instead of relying on
  disk checkpoints; PaLM, arXiv 2204.02311, restarts from ~100 steps before a loss spike and skips the batches in
  between): every `snapshot_every` steps the module and optimiser states are copied
  in memory (no disk I/O); a non-finite loss (or gradient norm) restores that copy, and training continues with the
  *next* step's batch, so the batches between snapshot and failure are skipped and the learning-rate schedule keeps
  its place. RNG states are not rewound (batches are a function of the step, not of the RNG).
- Replay check (silent data corruption: Gemini 1.0, arXiv 2312.11805, isolates incorrect computations by
  deterministic replay): every `replay_every` steps the step's forward and backward run
  a second time with the same batch and the same RNG state, and the loss and a gradient checksum are compared.
  On CPU the two runs are bitwise equal; `replay_rtol` allows for nondeterministic GPU kernels. A mismatch raises
  `ReplayMismatchError` (or only warns), naming the step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["GoodputMeter", "Snapshot", "ReplayMismatchError", "grad_checksum", "checksums_match"]


class GoodputMeter:
    """Useful step time over elapsed wall-clock time, from the moment it is created."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.useful_s = 0.0
        self.lost_s = 0.0  # step time that was thrown away (skipped, rolled back) or spent on replays
        self._t0: float | None = None

    def begin(self) -> None:
        """Mark the start of a step's compute."""
        self._t0 = time.perf_counter()

    def end(self, useful: bool) -> float:
        """Mark the end of a step's compute; `useful` when its update was kept. Returns the step's seconds."""
        if self._t0 is None:
            raise RuntimeError("GoodputMeter.end() without begin()")
        dt = time.perf_counter() - self._t0
        self._t0 = None
        if useful:
            self.useful_s += dt
        else:
            self.lost_s += dt
        return dt

    def add_lost(self, seconds: float) -> None:
        """Count `seconds` of compute as not useful (e.g. a replay inside a step that was itself kept)."""
        self.useful_s -= seconds
        self.lost_s += seconds

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start

    def goodput(self) -> float:
        """useful_s / elapsed_s, in [0, 1]."""
        elapsed = self.elapsed_s
        return max(0.0, min(1.0, self.useful_s / elapsed)) if elapsed > 0 else 0.0


def _clone_tree(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone_tree(v) for v in obj)
    return obj


@dataclass
class Snapshot:
    """An in-memory copy of a module's and an optimiser's state at `step` (on the same device as the originals;
    under FSDP each rank copies its own shards)."""

    step: int
    model: dict
    optimizer: dict

    @classmethod
    def take(cls, step: int, module: nn.Module, optimizer: torch.optim.Optimizer) -> Snapshot:
        return cls(step, _clone_tree(module.state_dict()), _clone_tree(optimizer.state_dict()))

    def restore(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Copy the saved state back into `module` and `optimizer` (the learning-rate schedule is left alone)."""
        lrs = [g["lr"] for g in optimizer.param_groups]  # the scheduler owns the lr: keep its current value
        with torch.no_grad():
            module.load_state_dict(_clone_tree(self.model))
        optimizer.load_state_dict(_clone_tree(self.optimizer))
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr


class ReplayMismatchError(RuntimeError):
    """A replayed step gave a different loss or gradient checksum: the hardware (or a nondeterministic kernel) is
    not computing reproducibly."""


def grad_checksum(module: nn.Module) -> torch.Tensor:
    """(3,) float64 fingerprint of all gradients: sum, sum of squares and a position-weighted sum (so a swap of two
    values, or a sign flip that keeps the sum of squares, still changes it). Local shards under FSDP."""
    total = torch.zeros(3, dtype=torch.float64)
    for p in module.parameters():
        g = p.grad
        if g is None:
            continue
        g = g.to_local() if hasattr(g, "to_local") else g  # DTensor shard under FSDP
        g = g.detach().reshape(-1).double().cpu()
        weights = torch.arange(1, g.numel() + 1, dtype=torch.float64).remainder_(977).add_(1)
        total += torch.stack((g.sum(), g.square().sum(), (g * weights).sum()))
    return total


def checksums_match(a: torch.Tensor, b: torch.Tensor, rtol: float = 0.0) -> bool:
    """Equal checksums (bitwise with rtol=0); NaN anywhere is a mismatch."""
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return False
    if rtol == 0.0:
        return bool(torch.equal(a, b))
    return bool(torch.allclose(a, b, rtol=rtol, atol=0.0))
