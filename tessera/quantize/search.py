"""Nearest-code search with bounded memory.

Axis legend: N vectors, K codes, D code dimension.

The distance matrix of a call is N x K floats: 1,000,000 vectors against 65,536 codes would need 262 GB. We walk the
vectors in row chunks, so the extra peak memory of a search is one chunk's score matrix (at most `max_chunk_bytes`,
256 MiB by default) plus O(N) for the indices, whatever N and K are.

Block size. On CPU the score block is kept small enough to stay in the core's cache while the argmin reads it back
(128 rows x at most 4,096 codes, 2 MiB; measured on 2-core Xeon and EPYC machines, see benchmarks/quantizer_speed.py):
a 32 MB block written by the matmul and re-read by the argmin ran 1.5-2.5x slower. Larger codebooks are walked in
blocks of 4,096 codes with a running minimum (2-2.5x faster at K = 65,536 than one 32-row x 65,536-code block); a
later block replaces the running best only when strictly better, so ties still go to the lowest index. On
accelerators one large block per call is fastest, so there the chunk fills `max_chunk_bytes` and K is not split.

Euclidean search minimises |x|^2 - 2 x.c + |c|^2; the |x|^2 term does not change the argmin, so a chunk costs one
fused `addmm` (|c|^2 - 2 x c^T) and an argmin. Cosine search maximises x.c on unit vectors. Everything runs in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tessera.validate import check_finite as _check_finite

__all__ = ["nearest_codes", "DEFAULT_MAX_CHUNK_BYTES", "CPU_CODE_BLOCK"]

DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
CPU_CODE_BLOCK = 4096  # codes per score block on CPU (see "Block size")


def nearest_codes(
    x: Tensor,
    codebook: Tensor,
    *,
    distance: str = "euclidean",
    codebook_sq_norms: Tensor | None = None,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    check_finite: bool = True,
) -> Tensor:
    """Index of the nearest code for every row of `x`.

    Args:
        x: (N, D) vectors. For cosine search they must already be l2-normalised.
        codebook: (K, D) codes. For cosine search they must already be l2-normalised.
        distance: "euclidean" (smallest squared distance) or "cosine" (largest inner product).
        codebook_sq_norms: optional precomputed (K,) squared norms of the codes (Euclidean only).
        max_chunk_bytes: bound on the score matrix held at once (see module docstring).
        check_finite: refuse NaN/Inf in `x` or the codebook (one pass over each; callers that already checked skip it).

    Returns:
        (N,) int64 indices into the codebook. Ties go to the lowest index.
    """
    if x.ndim != 2 or codebook.ndim != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f"expected x (N, D) and codebook (K, D), got {tuple(x.shape)} and {tuple(codebook.shape)}")
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
    n, k = x.shape[0], codebook.shape[0]
    if k == 0:
        raise ValueError(f"the codebook is empty (shape {tuple(codebook.shape)})")
    if check_finite:  # NaN distances would silently map every vector to code 0
        _check_finite(x, "x")
        _check_finite(codebook, "codebook")
    x = x.float()
    codebook = codebook.float()
    out = torch.empty(n, dtype=torch.long, device=x.device)
    if n == 0:
        return out
    block = min(k, CPU_CODE_BLOCK) if x.device.type == "cpu" else k
    rows = _chunk_rows(x.device, block, max_chunk_bytes)
    code_t = codebook.t()
    if distance == "euclidean":
        sq = codebook_sq_norms.float() if codebook_sq_norms is not None else (codebook * codebook).sum(-1)
        sq = sq.unsqueeze(0)  # (1, K)
    # fp32 scores even inside a caller's autocast region: low-precision distances flip near-ties (peer issues #100, #229).
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        for start in range(0, n, rows):
            chunk = x[start : start + rows]
            best_val: Tensor | None = None
            best_idx = out[start : start + rows]
            for k0 in range(0, k, block):
                if distance == "euclidean":
                    # (n_chunk, block) = |c|^2 - 2 x.c: smallest is nearest
                    scores = torch.addmm(sq[:, k0 : k0 + block], chunk, code_t[:, k0 : k0 + block], beta=1.0, alpha=-2.0)
                    # min(dim) returns the first minimum like argmin but runs ~2.5x faster on CPU (torch 2.14)
                    val, idx = scores.min(dim=-1)
                    better = None if best_val is None else val < best_val
                else:
                    scores = chunk @ code_t[:, k0 : k0 + block]  # (n_chunk, block)
                    val, idx = scores.max(dim=-1)
                    better = None if best_val is None else val > best_val
                if better is None:
                    best_val = val
                    best_idx.copy_(idx)
                else:
                    best_val = torch.where(better, val, best_val)
                    best_idx.copy_(torch.where(better, idx + k0, best_idx))
    return out


def _chunk_rows(device: torch.device, k: int, max_chunk_bytes: int) -> int:
    cap = max(1, int(max_chunk_bytes // (4 * k)))
    if device.type == "cpu":
        return min(cap, max(32, min(128, (4 * 2**20) // (4 * k))))
    return cap
