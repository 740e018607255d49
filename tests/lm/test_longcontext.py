"""Long context: RoPE scaling, an 8k-token nano with bounded local KV cache, retrieval prompts and the sweep API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tessera.lm.longcontext import (
    RetrievalSpec,
    kv_cache_bytes,
    long_context_config,
    retrieval_accuracy,
    retrieval_batch,
    retrieval_prompt,
)
from tessera.lm.model import Decoder, DecoderConfig, config_from_name


def test_rope_scaling_divides_global_frequencies_only():
    base = Decoder(config_from_name("debug"))
    scaled = Decoder(config_from_name("debug", rope_scaling=4.0))
    assert torch.allclose(scaled.inv_freq_global * 4.0, base.inv_freq_global)
    assert torch.equal(scaled.inv_freq_local, base.inv_freq_local)
    with pytest.raises(ValueError, match="rope_scaling"):
        DecoderConfig(rope_scaling=0.0)


def test_chunked_prefill_matches_one_pass():
    torch.manual_seed(0)
    model = Decoder(long_context_config("debug", 2048, sliding_window=32, vocab_size=640)).eval()
    ids = torch.randint(8, 600, (2, 300))
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        cache = model.new_cache(2, 300)
        for s in range(0, 300, 64):
            out = model(ids[:, s : s + 64], cache=cache, last_only=True)
    assert torch.allclose(out.logits[:, -1], full, atol=1e-4)


@pytest.mark.slow
def test_nano_reaches_8k_tokens_on_cpu_with_bounded_local_cache():
    cfg = long_context_config("nano", 8192, vocab_size=2560)
    assert cfg.max_seq_len == 8192 and cfg.embed_dim == 128 and cfg.num_layers == 4
    model = Decoder(cfg).eval()
    ids = torch.randint(300, 2000, (1, 8192))
    with torch.no_grad():
        cache = model.new_cache(1, 8192)
        for s in range(0, 8192, 1024):
            out = model(ids[:, s : s + 1024], cache=cache, last_only=True)
    assert out.logits.shape == (1, 1, 2560) and bool(torch.isfinite(out.logits).all())
    for kind, layer in zip(cache.kinds, cache.layers, strict=True):
        assert layer.k.shape[2] == (cfg.sliding_window if kind == "local" else 8192)  # the ring stays one window
    kv = kv_cache_bytes(cfg, 8192)
    assert kv["local"] == 2 * cfg.sliding_window * 2 * 32 * 4 and kv["global"] == 2 * 8192 * 2 * 32 * 4


def test_retrieval_prompt_layout():
    spec = RetrievalSpec.for_vocab_size(2560)
    rng = np.random.default_rng(0)
    for depth in (0.0, 0.5, 1.0):
        ids, answers = retrieval_prompt(spec, rng, 200, depth)
        assert len(ids) == 200 and ids[0] == spec.bos_id
        (pos, value), = answers
        assert pos == 199 and ids[-3] == spec.query_id and ids[-1] == spec.sep_id
        key = ids[-2]
        k = ids.index(key)  # the queried key appears once in the block, followed by sep and its value
        assert ids[k + 1] == spec.sep_id and ids[k + 2] == value and value in spec.value_ids
        block_start = min(i for i, t in enumerate(ids[:-3]) if t in spec.key_ids)
        if depth == 0.0:
            assert block_start == 1
        if depth == 1.0:
            assert block_start == 200 - 3 - 3 * spec.num_pairs
    plain = RetrievalSpec.for_vocab_size(2560, use_sep=False)
    ids, ((pos, value),) = retrieval_prompt(plain, rng, 50, 0.0)
    assert ids[-2] == plain.query_id and ids[ids.index(ids[-1]) + 1] == value and plain.sep_id not in ids
    b = retrieval_batch(spec, rng, 3, 100, None, num_queries=4)
    assert b["input_ids"].shape == (3, 100) and int((b["targets"] != -100).sum()) == 12
    with pytest.raises(ValueError, match="too short"):
        retrieval_prompt(spec, rng, 10, 0.0)
    with pytest.raises(ValueError, match="disjoint"):
        RetrievalSpec([5, 6], [6, 7], [8], 9, 10, num_pairs=1)


def test_retrieval_accuracy_api_on_a_short_model():
    torch.manual_seed(0)
    model = Decoder(config_from_name("debug", max_seq_len=256))
    res = retrieval_accuracy(model, lengths=(64, 512), depths=(0.0, 1.0), trials=4)
    assert res["lengths"] == [64, 512] and res["accuracy"][1] == [None, None]  # beyond max_seq_len: not run
    assert all(0.0 <= a <= 1.0 for a in res["accuracy"][0]) and res["chance"] == pytest.approx(1 / 16)
    assert model.training  # mode restored
