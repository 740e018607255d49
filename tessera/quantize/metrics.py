"""Codebook health statistics, computed from code counts (no N x K one-hot is ever built).

Axis legend: N vectors, K codes, D code dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["codebook_metrics", "code_usage", "perplexity"]


def code_usage(indices: Tensor, codebook_size: int) -> Tensor:
    """Fraction of the K codes that appear at least once in `indices` (any shape, negative entries ignored)."""
    flat = indices.reshape(-1)
    flat = flat[flat >= 0]
    if flat.numel() == 0:
        return torch.zeros((), device=indices.device)
    return (torch.bincount(flat, minlength=codebook_size) > 0).float().mean()


def perplexity(indices: Tensor, codebook_size: int) -> Tensor:
    """exp(H(p)) of the empirical code distribution p in `indices` (negative entries ignored); 1 for an empty set."""
    flat = indices.reshape(-1)
    flat = flat[flat >= 0]
    if flat.numel() == 0:
        return torch.ones((), device=indices.device)
    p = torch.bincount(flat, minlength=codebook_size).float() / flat.numel()
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    return torch.exp(entropy)


def codebook_metrics(x: Tensor, q: Tensor, indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Usage fraction, perplexity and quantization error (mean over vectors of |x - q|^2) for valid rows.

    Args:
        x: (N, D) inputs in code space (valid rows only).
        q: (N, D) their codes.
        indices: (N,) their code indices.
        codebook_size: K.
    """
    with torch.no_grad():
        if x.shape[0] == 0:
            qerr = torch.zeros((), device=x.device)
        else:
            qerr = ((x.float() - q.float()) ** 2).sum(-1).mean()
        return {
            "usage": code_usage(indices, codebook_size),
            "perplexity": perplexity(indices, codebook_size),
            "quantization_error": qerr,
        }
