"""Rotation trick and straight-through: values, gradients against an explicit D x D reference, edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.quantize import rotation_trick, straight_through


def reference_grad(e: torch.Tensor, q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """lambda R^T g with R built explicitly as a D x D matrix (float64), one row at a time."""
    out = []
    for ei, qi, gi in zip(e.reshape(-1, e.shape[-1]), q.reshape(-1, q.shape[-1]), g.reshape(-1, g.shape[-1]),
                          strict=True):
        eh, qh = ei / ei.norm(), qi / qi.norm()
        r = (eh + qh) / (eh + qh).norm()
        eye = torch.eye(ei.numel(), dtype=torch.float64)
        rot = eye - 2 * torch.outer(r, r) + 2 * torch.outer(qh, eh)
        assert torch.allclose(rot @ rot.T, eye, atol=1e-10)  # a rotation ...
        assert torch.allclose(rot @ eh, qh, atol=1e-10)  # ... taking e_hat to q_hat
        out.append(qi.norm() / ei.norm() * rot.T @ gi)
    return torch.stack(out).reshape(e.shape)


def _grad(fn, e, q, g):
    e = e.clone().requires_grad_(True)
    out = fn(e, q)
    out.backward(g)
    return out.detach(), e.grad


@pytest.mark.parametrize("d", [1, 2, 3, 16, 257])
def test_rotation_matches_explicit_matrix_float64(d):
    torch.manual_seed(d)
    e = torch.randn(6, 5, d, dtype=torch.float64)
    q = torch.randn(6, 5, d, dtype=torch.float64)
    if d == 1:
        q = q.abs() * e.sign()  # same sign: the only non-degenerate case in 1-D
    g = torch.randn(6, 5, d, dtype=torch.float64)
    out, grad = _grad(rotation_trick, e, q, g)
    assert torch.equal(out, q)
    torch.testing.assert_close(grad, reference_grad(e, q, g), rtol=1e-9, atol=1e-12)
    # The forward map lambda R e itself reproduces q (the paper's construction).
    for ei, qi in zip(e.reshape(-1, d), q.reshape(-1, d), strict=True):
        eh, qh = ei / ei.norm(), qi / qi.norm()
        r = (eh + qh) / (eh + qh).norm()
        rot = torch.eye(d, dtype=torch.float64) - 2 * torch.outer(r, r) + 2 * torch.outer(qh, eh)
        torch.testing.assert_close(qi.norm() / ei.norm() * rot @ ei, qi)


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.arccos((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).clamp(0, math.pi)


@settings(max_examples=60, deadline=None)
@given(d=st.integers(2, 48), seed=st.integers(0, 2**31 - 1), scale_e=st.floats(1e-3, 1e3), scale_q=st.floats(1e-3, 1e3))
def test_angle_and_norm_properties(d, seed, scale_e, scale_q):
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(8, d, generator=gen, dtype=torch.float64) * scale_e
    q = torch.randn(8, d, generator=gen, dtype=torch.float64) * scale_q
    g = torch.randn(8, d, generator=gen, dtype=torch.float64)
    cos = (e * q).sum(-1) / (e.norm(dim=-1) * q.norm(dim=-1))
    keep = cos > -0.999  # away from the antiparallel fallback
    _, grad = _grad(rotation_trick, e, q, g)
    # Remark 3 of the paper: angle(grad_e, e) = angle(grad_q, q) and |grad_e| = (|q|/|e|) |grad_q|.
    torch.testing.assert_close(_angle(grad, e)[keep], _angle(g, q)[keep], atol=1e-6, rtol=0)
    ratio = grad.norm(dim=-1) / g.norm(dim=-1)
    torch.testing.assert_close(ratio[keep], (q.norm(dim=-1) / e.norm(dim=-1))[keep], rtol=1e-9, atol=0)


def test_straight_through_value_and_gradient():
    e = torch.randn(4, 3, 8)
    q = torch.randn(4, 3, 8)
    g = torch.randn(4, 3, 8)
    out, grad = _grad(straight_through, e, q, g)
    assert torch.equal(out, q)
    assert torch.equal(grad, g)


@pytest.mark.parametrize("fn", [rotation_trick, straight_through])
def test_q_receives_no_gradient(fn):
    e = torch.randn(5, 4, requires_grad=True)
    q = torch.randn(5, 4, requires_grad=True)
    fn(e, q).sum().backward()
    assert q.grad is None
    assert e.grad is not None


def _edge_rows(d: int = 6) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    base = torch.arange(1.0, d + 1)
    rows = [
        ("e == 0", torch.zeros(d), base),
        ("q == 0", base, torch.zeros(d)),
        ("both zero", torch.zeros(d), torch.zeros(d)),
        ("antiparallel", base, -2.5 * base),
        ("parallel", base, 3.0 * base),
        ("equal", base, base.clone()),
        ("tiny e", base * 1e-30, base),
        ("tiny q", base, base.flip(0) * 1e-30),
        ("huge e", base * 1e30, base.flip(0)),
        ("nearly antiparallel", base, -base + 1e-7),
    ]
    names = [r[0] for r in rows]
    return torch.stack([r[1] for r in rows]), torch.stack([r[2] for r in rows]), names


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_edge_cases_forward_exact_gradient_finite(dtype):
    e, q, names = _edge_rows()
    if dtype in (torch.float16, torch.bfloat16):
        e, q = e.clamp(-6e4, 6e4), q.clamp(-6e4, 6e4)  # representable in fp16
    e, q = e.to(dtype), q.to(dtype)
    g = torch.randn(e.shape).to(dtype)
    out, grad = _grad(rotation_trick, e, q, g)
    assert out.dtype == dtype and grad.dtype == dtype
    assert torch.equal(out, q), "forward value must be q for every row"
    assert torch.isfinite(grad).all(), [n for n, ok in zip(names, torch.isfinite(grad).all(-1), strict=True) if not ok]


def test_degenerate_rows_fall_back_to_straight_through():
    e, q, names = _edge_rows()
    g = torch.randn(e.shape)
    _, grad = _grad(rotation_trick, e, q, g)
    for name, gr, gi in zip(names, grad, g, strict=True):
        if name in ("e == 0", "q == 0", "both zero", "antiparallel", "tiny e", "tiny q"):
            assert torch.equal(gr, gi), name
    # Parallel and equal rows are proper rotations (identity) scaled by |q|/|e|.
    i = names.index("parallel")
    torch.testing.assert_close(grad[i], 3.0 * g[i])
    i = names.index("equal")
    torch.testing.assert_close(grad[i], g[i])


def test_one_dimensional_vectors():
    e = torch.tensor([[2.0], [-1.0], [3.0], [0.0]], requires_grad=True)
    q = torch.tensor([[4.0], [-3.0], [-1.0], [5.0]])
    g = torch.ones(4, 1)
    out = rotation_trick(e, q)
    out.backward(g)
    assert torch.equal(out, q)
    # same sign: identity rotation scaled by |q|/|e|; opposite sign and zero: straight-through
    torch.testing.assert_close(e.grad, torch.tensor([[2.0], [3.0], [1.0], [1.0]]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_computed_in_fp32(dtype):
    torch.manual_seed(1)
    e = torch.randn(64, 32)
    q = torch.randn(64, 32)
    g = torch.randn(64, 32)
    _, grad32 = _grad(rotation_trick, e, q, g)
    out, grad_lp = _grad(rotation_trick, e.to(dtype), q.to(dtype), g.to(dtype))
    assert out.dtype == dtype and grad_lp.dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 8e-2
    torch.testing.assert_close(grad_lp.float(), grad32, rtol=tol, atol=tol * grad32.abs().max().item())


def test_translation_limit_tends_to_straight_through():
    # App. A.4 of the paper: shifting e and q far away makes theta -> 0 and lambda -> 1, so R -> I.
    torch.manual_seed(2)
    e = torch.randn(16, 8, dtype=torch.float64)
    q = e + 0.1 * torch.randn(16, 8, dtype=torch.float64)
    shift = 1e8 * torch.ones(8, dtype=torch.float64)
    g = torch.randn(16, 8, dtype=torch.float64)
    _, grad = _grad(rotation_trick, e + shift, q + shift, g)
    torch.testing.assert_close(grad, g, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fn", [rotation_trick, straight_through])
def test_bad_inputs(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(TypeError, match="floating"):
        fn(torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one axis"):
        fn(torch.tensor(1.0), torch.tensor(2.0))


def test_rotation_memory_is_linear_in_d():
    # The backward never builds a D x D matrix: with D = 4096 and 64 rows, a D x D float64 matrix per row would
    # need 8 GB; the O(D) form is instant.
    e = torch.randn(64, 4096, requires_grad=True)
    q = torch.randn(64, 4096)
    rotation_trick(e, q).sum().backward()
    assert e.grad.shape == e.shape and torch.isfinite(e.grad).all()
