"""Property-based checks of CAML episodes and the CAML model (hypothesis).

Episodes: for any class sizes and episode shape, `sample_episode` either raises a clear ValueError (not enough
eligible classes) or returns way*shot support items with first-appearance labels, disjoint from the queries, with
one consistent class <-> label mapping. CAML: logits have the episode's way (-inf beyond it, finite within), queries
are classified independently (permuting queries permutes logits), and the support is a set (permuting it changes
nothing, up to float error).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.icl import CAML, CAMLConfig, first_appearance_labels, sample_episode

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=8), way=st.integers(1, 6), shot=st.integers(1, 4),
       query=st.integers(0, 4), min_query=st.integers(0, 2), seed=st.integers(0, 2**16), shuffle=st.booleans())
def test_sample_episode_invariants(sizes, way, shot, query, min_query, seed, shuffle):
    starts = np.cumsum([0, *sizes])
    classes = [np.arange(starts[i], starts[i + 1]) for i in range(len(sizes))]
    item_class = {int(j): c for c, idx in enumerate(classes) for j in idx}
    eligible = sum(len(c) >= shot + min_query for c in classes)
    rng = np.random.default_rng(seed)
    if eligible < way:
        with pytest.raises(ValueError, match=f"{way}-way {shot}-shot"):
            sample_episode(classes, way, shot, query, rng, min_query=min_query, shuffle_support=shuffle)
        return
    ep = sample_episode(classes, way, shot, query, rng, min_query=min_query, shuffle_support=shuffle)
    assert ep.way == way and len(ep.support) == way * shot == len(ep.support_labels)
    assert not set(ep.support.tolist()) & set(ep.query.tolist())
    assert len(set(ep.support.tolist())) == len(ep.support) and len(set(ep.query.tolist())) == len(ep.query)
    relabelled, order = first_appearance_labels(ep.support_labels)
    assert relabelled.tolist() == ep.support_labels.tolist() and order == list(range(way))  # already first-appearance
    for idx, lab in zip(ep.support.tolist(), ep.support_labels.tolist(), strict=True):
        assert item_class[idx] == ep.classes[lab]
    for idx, lab in zip(ep.query.tolist(), ep.query_labels.tolist(), strict=True):
        assert 0 <= lab < way and item_class[idx] == ep.classes[lab]
    for lab in range(way):
        assert (ep.support_labels == lab).sum() == shot
        assert min(query, len(classes[ep.classes[lab]]) - shot) == (ep.query_labels == lab).sum()


@pytest.fixture(scope="module")
def caml() -> CAML:
    torch.manual_seed(0)
    return CAML(CAMLConfig.from_name("caml-debug", feature_dim=16)).eval()


@SETTINGS
@given(way=st.integers(1, 5), shot=st.integers(1, 3), nq=st.integers(1, 6), seed=st.integers(0, 2**16),
       attention=st.sampled_from(["exact", "amortized"]))
def test_caml_logits_are_well_formed_and_equivariant(caml, way, shot, nq, seed, attention):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(way).repeat(shot)
    labels = labels[torch.randperm(len(labels), generator=g)]
    labels, _ = first_appearance_labels(labels)
    labels = torch.from_numpy(labels)
    sup = torch.randn(len(labels), 16, generator=g)
    qry = torch.randn(nq, 16, generator=g)
    with torch.no_grad():
        out = caml(sup, labels, qry, attention=attention)
        logits = out.logits[0]
        assert logits.shape == (nq, caml.cfg.max_way) and int(out.way[0]) == way
        assert torch.isfinite(logits[:, :way]).all() and torch.isinf(logits[:, way:]).all()
        perm = torch.randperm(nq, generator=g)
        torch.testing.assert_close(caml(sup, labels, qry[perm], attention=attention).logits[0], logits[perm], rtol=1e-4, atol=1e-4)
        # the support's order does not matter (set input), only which label each item carries
        order = torch.randperm(len(labels), generator=g)
        torch.testing.assert_close(caml(sup[order], labels[order], qry, attention=attention).logits[0], logits, rtol=1e-4, atol=1e-4)
