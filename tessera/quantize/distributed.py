"""The few collectives the codebook needs, written so that every rank always makes the same calls.

Axis legend: N vectors (local to a rank), D code dimension.

Every function here issues its collectives unconditionally, also on a rank whose batch holds no valid vector, so a
rank with an empty mask cannot leave the others waiting (the DDP hangs reported against peer libraries came from
ranks skipping a collective). With no process group, or a group of one, they are plain local operations.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_distributed", "all_reduce_sum", "sample_rows"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: Tensor, enabled: bool) -> Tensor:
    """Sum `t` over ranks in place (when `enabled` and distributed) and return it."""
    if enabled and is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def sample_rows(x: Tensor, n: int, generator: torch.Generator, sync: bool) -> Tensor | None:
    """Draw `n` rows from the union of every rank's `x`, identically on every rank.

    The union is the rank-order concatenation of the local batches, so a run on R ranks draws the same rows as one
    process holding the whole global batch, given the same generator state. Rows are drawn without replacement when
    the union has at least `n` rows, else with replacement.

    Args:
        x: (N, D) local rows (N may be 0).
        n: number of rows wanted.
        generator: CPU generator seeded identically on every rank.
        sync: whether to gather across ranks.

    Returns:
        (n, D) rows, or None when no rank holds any row.
    """
    sync = sync and is_distributed()
    if sync:
        counts = torch.zeros(dist.get_world_size(), dtype=torch.long, device=x.device)
        counts[dist.get_rank()] = x.shape[0]
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        counts = counts.cpu()
        offset = int(counts[: dist.get_rank()].sum())
    else:
        counts = torch.tensor([x.shape[0]])
        offset = 0
    total = int(counts.sum())
    if total == 0:
        return None
    if total >= n:
        picks = torch.randperm(total, generator=generator)[:n]
    else:
        picks = torch.randint(total, (n,), generator=generator)
    local = (picks >= offset) & (picks < offset + x.shape[0])
    out = torch.zeros(n, x.shape[1], dtype=torch.float32, device=x.device)
    rows = local.nonzero().squeeze(1)
    out[rows.to(x.device)] = x[(picks[local] - offset).to(x.device)].float()
    if sync:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
