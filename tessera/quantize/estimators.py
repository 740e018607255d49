"""Gradient estimators that carry the decoder's gradient from a code vector back to the encoder output.

Axis legend: `...` any leading axes, D vector dimension.

Both estimators return exactly `q` in the forward pass; they differ only in the backward pass:

* `straight_through`: dL/de = dL/dq (the gradient is copied unchanged).
* `rotation_trick` (Fifty et al., ICLR 2025, arXiv 2410.06424, Sec. 4): the forward map is written as
  q = lambda * R e with lambda = |q| / |e| and R the rotation taking e/|e| to q/|q| in span{e, q}. Lambda and R are
  treated as constants, so dL/de = lambda * R^T dL/dq. The angle between e and dL/de then equals the angle between
  q and dL/dq, and |dL/de| = lambda |dL/dq| (Remark 3 of the paper).

R is never built: with e_hat = e/|e|, q_hat = q/|q| and r = (e_hat + q_hat)/|e_hat + q_hat| the paper writes
R = I - 2 r r^T + 2 q_hat e_hat^T (two Householder reflections), so R^T g = g - 2 r (r.g) + 2 e_hat (q_hat.g),
O(D) per vector.

Degenerate rows. The rotation is undefined when |e| or |q| is (numerically) zero (<= 1e-12 in fp32), or when e
points (almost) exactly away from q (every half-turn in a plane through e qualifies; |e_hat + q_hat|^2 < 1e-6). Those rows fall back to the straight-through gradient;
any row whose rotated gradient would overflow does too, so the gradient is always finite. With D = 1 this means
rows where e and q have opposite signs take the straight-through gradient (no rotation maps +1 to -1 in 1-D).

Precision. fp16/bf16 inputs are computed in fp32 and the gradient is returned in the input dtype; float64 stays
float64 (used by the reference tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rotation_trick", "straight_through"]

# |e| or |q| at or below this (in the compute dtype) counts as zero. In fp32 this also keeps the per-row coefficients
# below (lambda / |e| ~ |q| / |e|^2) far from overflow for vectors of ordinary scale.
_TINY = {torch.float32: 1e-12, torch.float64: 1e-150}
# |e_hat + q_hat|^2 = 2 (1 + cos) below this means "antiparallel": r would be dominated by rounding error.
_ANTIPARALLEL = {torch.float32: 1e-6, torch.float64: 1e-12}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_pair(e: Tensor, q: Tensor) -> None:
    if e.shape != q.shape:
        raise ValueError(f"e and q must have the same shape, got {tuple(e.shape)} and {tuple(q.shape)}")
    if e.ndim < 1:
        raise ValueError("e and q must have at least one axis (the vector dimension D)")
    if not (e.is_floating_point() and q.is_floating_point()):
        raise TypeError(f"e and q must be floating point, got {e.dtype} and {q.dtype}")


def _dot(a: Tensor, b: Tensor) -> Tensor:
    # (..., 1). vecdot is one fused pass with no (..., D) temporary; einsum lowers to a batched matmul of N 1xD by
    # Dx1 products, which was 2.5x slower on CPU and the largest part of this backward.
    return torch.linalg.vecdot(a, b).unsqueeze(-1)


def _rotated_grad(e: Tensor, q: Tensor, g: Tensor) -> Tensor:
    """lambda * R^T g per row in the compute dtype, with straight-through on degenerate rows.

    With c = cos(e, q), a = e_hat.g, b = q_hat.g and |e_hat + q_hat|^2 = 2 (1 + c):
        R^T g = g - (e_hat + q_hat)(a + b) / (1 + c) + 2 e_hat b,
    so the gradient is lambda g + alpha e + beta q with per-row scalars alpha, beta: five row dot products and one
    fused pass over (..., D), instead of materialising e_hat, q_hat and r.
    """
    cdt = _compute_dtype(e.dtype)
    e, q, g = e.to(cdt), q.to(cdt), g.to(cdt)
    tiny = _TINY[cdt]
    e_norm = _dot(e, e).sqrt()
    q_norm = _dot(q, q).sqrt()
    inv_e = 1.0 / e_norm.clamp_min(tiny)
    inv_q = 1.0 / q_norm.clamp_min(tiny)
    cos = _dot(e, q) * inv_e * inv_q
    a = _dot(e, g) * inv_e
    b = _dot(q, g) * inv_q
    lam = q_norm * inv_e
    one_plus_cos = 1.0 + cos
    k = (a + b) / one_plus_cos.clamp_min(_ANTIPARALLEL[cdt] / 2)
    alpha = lam * (2.0 * b - k) * inv_e
    beta = -lam * k * inv_q
    degenerate = (e_norm <= tiny) | (q_norm <= tiny) | (2.0 * one_plus_cos < _ANTIPARALLEL[cdt])
    degenerate |= ~(torch.isfinite(alpha) & torch.isfinite(beta) & torch.isfinite(lam))
    lam = torch.where(degenerate, torch.ones_like(lam), lam)
    alpha = torch.where(degenerate, torch.zeros_like(alpha), alpha)
    beta = torch.where(degenerate, torch.zeros_like(beta), beta)
    return torch.addcmul(torch.addcmul(lam * g, alpha, e), beta, q)


class _RotationTrick(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e: Tensor, q: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(e, q)
        return q.detach().clone()

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, None]:  # type: ignore[override]
        e, q = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        return _rotated_grad(e, q.detach(), g).to(e.dtype), None


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e: Tensor, q: Tensor) -> Tensor:  # type: ignore[override]
        ctx.e_dtype = e.dtype
        return q.detach().clone()

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, None]:  # type: ignore[override]
        return g.to(ctx.e_dtype), None


def rotation_trick(e: Tensor, q: Tensor) -> Tensor:
    """Return `q` in the forward pass and send `lambda * R^T grad` back to `e` (rotation trick).

    Args:
        e: encoder outputs, shape (..., D), floating point.
        q: their code vectors, same shape. `q` receives no gradient through this function; train the codebook
            with EMA updates or a codebook loss.

    Returns:
        A tensor equal to `q` (same dtype as `q`) whose gradient flows to `e` as described in the module docstring.

    Raises:
        ValueError: if the shapes differ or `e` has no axes.
        TypeError: if either input is not floating point.
    """
    _check_pair(e, q)
    return _RotationTrick.apply(e, q)


def straight_through(e: Tensor, q: Tensor) -> Tensor:
    """Return `q` in the forward pass and copy the gradient unchanged to `e` (straight-through estimator).

    Args:
        e: encoder outputs, shape (..., D), floating point.
        q: their code vectors, same shape; they receive no gradient through this function.

    Returns:
        A tensor equal to `q` whose gradient w.r.t. `e` is the identity.
    """
    _check_pair(e, q)
    return _StraightThrough.apply(e, q)
