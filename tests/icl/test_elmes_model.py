"""ELMES properties and the CAML model: invariances, exact = per-query loop, amortized, masking, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tessera.icl import CAML, CAMLConfig, elmes
from tessera.icl.model import CheckpointMismatchError


@pytest.mark.parametrize("c, p", [(2, 2), (5, 256), (10, 64), (20, 32)])
def test_elmes_properties(c, p):
    e = elmes(c, p).double()
    assert e.shape == (c, p) and elmes(c, p).dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(c, dtype=torch.float64), atol=1e-6, rtol=0)
    gram = e @ e.T
    off = gram[~torch.eye(c, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1 / (c - 1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(e.sum(0), torch.zeros(p, dtype=torch.float64), atol=1e-6, rtol=0)


def test_elmes_matches_the_official_construction():
    # The official steps (src/models/TransformerEncoder.py get_elmes), written out independently.
    c, p = 5, 256
    ones = torch.ones((c, 1))
    m_star = torch.sqrt(torch.tensor(c / (c - 1))) * (torch.eye(c) - 1 / c * ones @ ones.T)
    np.random.seed(50)
    u = torch.tensor(np.linalg.qr(np.random.random(size=(p, c)))[0][:, :c]).float()
    official = (u @ m_star).T
    torch.testing.assert_close(elmes(c, p), official, atol=1e-6, rtol=0)
    # The paper's angle: arccos(-1/4) = 1.823 rad.
    assert float(torch.arccos((official[0] @ official[1]).clamp(-1, 1))) == pytest.approx(1.823, abs=1e-3)


def test_elmes_rejects_bad_sizes():
    with pytest.raises(ValueError):
        elmes(1, 8)
    with pytest.raises(ValueError):
        elmes(8, 4)


def _model(attention="exact", **kw) -> CAML:
    torch.manual_seed(0)
    m = CAML(CAMLConfig.from_name("caml-debug", attention=attention, **kw)).eval()
    with torch.no_grad():  # move away from the symmetric init so the checks are not vacuous
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    return m


def _episode(b=2, way=4, shot=3, q=7, d=32):
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(way).repeat(shot)[torch.randperm(way * shot, generator=g)].expand(b, -1).clone()
    return torch.randn(b, way * shot, d, generator=g), labels, torch.randn(b, q, d, generator=g)


@pytest.mark.parametrize("attention", ["exact", "amortized"])
def test_batched_equals_per_query_loop(attention):
    m = _model(attention)
    s, labels, q = _episode()
    with torch.no_grad():
        fast = m(s, labels, q).logits
        ref = m.forward_per_query(s, labels, q).logits
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    if attention == "exact":
        torch.testing.assert_close(fast, m.forward_copied(s, labels, q).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["exact", "amortized"])
def test_support_order_and_query_order_invariance(attention):
    m = _model(attention)
    s, labels, q = _episode(b=1)
    with torch.no_grad():
        base = m(s, labels, q).logits
        perm = torch.randperm(s.shape[1])
        torch.testing.assert_close(m(s[:, perm], labels[:, perm], q).logits, base, atol=1e-5, rtol=1e-5)
        qperm = torch.randperm(q.shape[1])
        torch.testing.assert_close(m(s, labels, q[:, qperm]).logits, base[:, qperm], atol=1e-5, rtol=1e-5)
        # A query's prediction does not depend on which other queries share its batch.
        torch.testing.assert_close(m(s, labels, q[:, :1]).logits, base[:, :1], atol=1e-5, rtol=1e-5)


def test_class_relabelling_invariance_through_first_appearance_mapping():
    """Renaming classes (any label values) cannot change predictions: labels are mapped by first appearance."""
    from tessera.icl.episodes import first_appearance_labels

    m = _model()
    s, labels, q = _episode(b=1)
    names_a = [["cat", "dog", "owl", "emu"][i] for i in labels[0].tolist()]
    names_b = [{"cat": 7, "dog": 3, "owl": 11, "emu": 0}[n] for n in names_a]
    outs = []
    for names in (names_a, names_b):
        mapped, order = first_appearance_labels(names)
        with torch.no_grad():
            p = torch.softmax(m(s, torch.from_numpy(mapped)[None], q).logits[0, :, : len(order)], -1)
        outs.append((p, order))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    assert [{"cat": 7, "dog": 3, "owl": 11, "emu": 0}[n] for n in outs[0][1]] == outs[1][1]


def test_way_below_max_masks_unused_logits_and_any_shot_works():
    m = _model()
    for way, shot in [(2, 1), (3, 4), (5, 2)]:
        s, labels, q = _episode(b=1, way=way, shot=shot)
        with torch.no_grad():
            lg = m(s, labels, q).logits
        assert lg.shape == (1, 7, 5)
        assert torch.isinf(lg[..., way:]).all() and torch.isfinite(lg[..., :way]).all()
        assert (torch.softmax(lg, -1)[..., way:] == 0).all()


def test_batches_with_different_ways_are_masked_per_episode():
    m = _model()
    s, labels, q = _episode(b=2, way=4)
    labels[1] = labels[1] % 2  # second episode is 2-way
    with torch.no_grad():
        lg = m(s, labels, q).logits
    assert torch.isinf(lg[0, :, 4:]).all() and torch.isfinite(lg[0, :, :4]).all()
    assert torch.isinf(lg[1, :, 2:]).all() and torch.isfinite(lg[1, :, :2]).all()


def test_bad_inputs_raise():
    m = _model()
    s, labels, q = _episode(b=1)
    with pytest.raises(ValueError, match="at most 5 classes"):
        m(s, labels + 2, q)
    with pytest.raises(ValueError, match="feature_dim"):
        m(s[..., :16], labels, q[..., :16])
    with pytest.raises(TypeError, match="integers"):
        m(s, labels.float(), q)


def test_gradients_reach_every_trainable_parameter_but_not_elmes():
    m = _model()
    m.train()
    s, labels, q = _episode()
    m(s, labels, q).logits[..., :4].logsumexp(-1).sum().backward()
    assert m.label_vectors.grad is None and not m.label_vectors.requires_grad
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_learned_label_option_is_trainable():
    m = CAML(CAMLConfig.from_name("caml-debug", label_encoder="learned"))
    assert m.label_vectors.requires_grad


def test_checkpoint_roundtrip_and_mismatch(tmp_path):
    m = _model()
    s, labels, q = _episode()
    m.save_pretrained(tmp_path / "c", extractor="tessera-resnet-debug", metadata={"k": 1})
    m2, doc = CAML.from_pretrained(tmp_path / "c")
    assert doc["extractor"] == "tessera-resnet-debug"
    torch.testing.assert_close(m2.label_vectors, m.label_vectors)  # ELMES rebuilt exactly
    with torch.no_grad():
        torch.testing.assert_close(m2(s, labels, q).logits, m(s, labels, q).logits, atol=5e-2, rtol=5e-2)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["config"]["num_layers"] = 3
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="model.safetensors"):
        CAML.from_pretrained(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text('{"kind": "vqgan"}')
    with pytest.raises(CheckpointMismatchError, match="not a CAML"):
        CAML.from_pretrained(tmp_path / "c")


def test_feature_norm_center_is_saved_in_full_precision(tmp_path):
    m = _model()
    center = torch.randn(32) * 3.3333
    m.feature_norm.set_center(center)
    s, labels, q = _episode()
    with torch.no_grad():
        # CL2N makes the model invariant to the features' scale around the centre.
        scaled = m(center + 7 * (s - center), labels, center + 7 * (q - center)).logits
        torch.testing.assert_close(scaled, m(s, labels, q).logits, atol=1e-4, rtol=1e-4)
    m.save_pretrained(tmp_path / "c")
    m2, _ = CAML.from_pretrained(tmp_path / "c")
    assert torch.equal(m2.feature_norm.center, center)
