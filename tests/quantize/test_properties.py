"""Property-based checks of the quantizer over random shapes, sizes, dtypes, masks and settings (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.quantize import VectorQuantizer

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def quantizer_case(draw):
    dim = draw(st.integers(1, 12))
    layout = draw(st.sampled_from(["tokens", "image", "video"]))
    b = draw(st.integers(1, 3))
    if layout == "tokens":
        shape = (b, draw(st.integers(1, 9)), dim)
        grid = shape[:2]
    elif layout == "image":
        h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        shape, grid = (b, dim, h, w), (b, h, w)
    else:
        t, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        shape, grid = (b, dim, t, h, w), (b, t, h, w)
    return {
        "dim": dim,
        "shape": shape,
        "grid": grid,
        "codebook_size": draw(st.integers(1, 17)),
        "codebook_dim": draw(st.one_of(st.none(), st.integers(1, 6))),
        "distance": draw(st.sampled_from(["euclidean", "cosine"])),
        "estimator": draw(st.sampled_from(["rotation", "ste"])),
        "update": draw(st.sampled_from(["ema", "learned"])),
        "kmeans": draw(st.booleans()),
        "dead": draw(st.sampled_from([0.0, 0.5, 2.0])),
        "scale": draw(st.floats(1e-3, 1e3)),
        "masked": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


@SETTINGS
@given(case=quantizer_case())
def test_quantizer_invariants(case):
    torch.manual_seed(case["seed"])
    vq = VectorQuantizer(
        case["dim"],
        case["codebook_size"],
        codebook_dim=case["codebook_dim"],
        distance=case["distance"],
        estimator=case["estimator"],
        codebook_update=case["update"],
        kmeans_init=case["kmeans"],
        dead_code_threshold=case["dead"],
    )
    x = (torch.randn(case["shape"]) * case["scale"]).requires_grad_(True)
    mask = torch.rand(case["grid"]) > 0.3 if case["masked"] else None
    for _ in range(2):  # two training steps: EMA, k-means and restarts all get exercised
        out = vq(x, mask=mask)
        (out.quantized.float().square().mean() + out.loss).backward()
    assert out.quantized.shape == x.shape and out.indices.shape == case["grid"]
    valid = mask if mask is not None else torch.ones(case["grid"], dtype=torch.bool)
    assert ((out.indices >= 0) & (out.indices < case["codebook_size"]))[valid].all()
    assert (out.indices[~valid] == -1).all()
    assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all()
    for t in (vq.codebook.weight, vq.codebook.cluster_size, vq.codebook.embed_avg):
        assert torch.isfinite(t).all()
    assert 0.0 <= float(out.metrics["usage"]) <= 1.0 and float(out.metrics["perplexity"]) >= 1.0 - 1e-5
    vq.eval()
    with torch.no_grad():
        ev = vq(x.detach())
        assert torch.equal(vq.codes_to_vectors(ev.indices), ev.quantized)
