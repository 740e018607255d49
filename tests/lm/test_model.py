"""Decoder: presets and Gemma parameter counts, KV cache == recompute, causality, packing, padding, patches."""

from __future__ import annotations

import pytest
import torch

from tessera.lm.generate import generate
from tessera.lm.model import Decoder, DecoderConfig, RMSNorm, config_from_name, list_presets


def tiny(**kw) -> Decoder:
    torch.manual_seed(0)
    cfg = config_from_name("debug", vocab_size=97, **kw)
    return Decoder(cfg).eval()


# -- presets -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,lo,hi", [("nano", 1e6, 2e6), ("pro", 5e6, 10e6), ("ultra", 20e6, 40e6)])
def test_cpu_presets_are_sized_as_documented(name, lo, hi, vocab):
    with torch.device("meta"):
        model = Decoder(config_from_name(name, vocab_size=vocab.size))
    assert lo <= model.num_parameters() <= hi


# Published counts: Gemma-1 report Table 2 (2B, 7B: embedding + non-embedding), Gemma-2 report Table 1 (2B);
# Gemma-3 report Table 1 gives 302M + 698M for 1B (rounded).
@pytest.mark.parametrize(
    "name,embedding,non_embedding",
    [
        ("gemma-2b", 524_550_144, 1_981_884_416),
        ("gemma-7b", 786_825_216, 7_751_248_896),
        ("gemma2-2b", 590_118_912, 2_024_517_888),
    ],
)
def test_gemma_shapes_match_published_parameter_counts(name, embedding, non_embedding):
    with torch.device("meta"):
        model = Decoder(config_from_name(name))
    assert model.num_parameters(exclude_embeddings=True) == non_embedding
    assert model.num_parameters() - model.num_parameters(exclude_embeddings=True) == embedding
    assert model.num_parameters() == embedding + non_embedding  # tied: the output projection is not counted twice


def test_gemma3_1b_counts_round_to_published():
    with torch.device("meta"):
        model = Decoder(config_from_name("gemma3-1b"))
    emb = model.num_parameters() - model.num_parameters(exclude_embeddings=True)
    assert round(emb / 1e6) == 302 and round(model.num_parameters(exclude_embeddings=True) / 1e6) == 698


def test_presets_listed_and_bad_configs_rejected():
    assert {"debug", "nano", "pro", "ultra", "gemma-2b"} <= set(list_presets())
    with pytest.raises(ValueError, match="unknown decoder preset"):
        config_from_name("mega")
    with pytest.raises(ValueError, match="multiple of model.num_kv_heads"):
        DecoderConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="sliding_window"):
        DecoderConfig(layer_types=("local",))


# -- numerics ------------------------------------------------------------------------------------------------------
def test_rmsnorm_runs_in_fp32_and_uses_one_plus_weight():
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.fill_(0.5)
    x = torch.randn(3, 8) * 100
    ref = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * 1.5
    torch.testing.assert_close(norm(x), ref)
    xb = x.bfloat16()
    assert norm(xb).dtype == torch.bfloat16
    torch.testing.assert_close(norm(xb), (xb.float() / xb.float().pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * 1.5).bfloat16())


def test_embedding_normaliser_is_cast_to_activation_dtype():
    cfg = config_from_name("debug", vocab_size=16, embed_dim=3072, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8, mlp_dim=8)
    model = Decoder(cfg).bfloat16()
    ids = torch.tensor([[3]])
    raw = model.embed_tokens(ids)
    assert torch.equal(model.embed(ids), raw * torch.tensor(55.5, dtype=torch.bfloat16))  # sqrt(3072) -> 55.5 in bf16
    assert not torch.equal(model.embed(ids), (raw.float() * 3072**0.5).bfloat16())  # what an fp32 normaliser gives


# -- cache and masks -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        dict(num_kv_heads=1, layer_types=("global",)),  # multi-query
        dict(num_kv_heads=2, layer_types=("global",)),  # grouped-query
        dict(num_kv_heads=1, layer_types=("local", "global"), sliding_window=6),  # MQA past the window
        dict(num_kv_heads=2, layer_types=("local",), sliding_window=5, attn_softcap=20.0, final_softcap=15.0, post_norms=True),
    ],
    ids=["mqa", "gqa", "mqa-window", "gqa-local-softcap"],
)
def test_kv_cache_generation_equals_recompute(kw):
    model = tiny(**kw)
    prompt = torch.randint(4, 97, (3, 7))
    cached = generate(model, prompt, max_new_tokens=30, stop_tokens=(), return_logits=True, use_cache=True)
    full = generate(model, prompt, max_new_tokens=30, stop_tokens=(), return_logits=True, use_cache=False)
    assert torch.equal(cached.tokens, full.tokens)
    torch.testing.assert_close(cached.logits, full.logits, atol=1e-4, rtol=1e-4)
    # And the logits of every generated position equal one forward pass over the whole sequence.
    seq = torch.cat([prompt, cached.tokens], 1)
    with torch.no_grad():
        ref = model(seq).logits[:, prompt.shape[1] - 1 : -1]
    torch.testing.assert_close(cached.logits, ref, atol=1e-4, rtol=1e-4)


def test_chunked_prefill_and_ring_buffer_match_full_forward():
    model = tiny(num_kv_heads=1, layer_types=("local", "global"), sliding_window=4)
    x = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(2, 23)
        parts = [model(x[:, a:b], cache=cache).logits for a, b in ((0, 9), (9, 10), (10, 17), (17, 23))]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.layers[0].k.shape[2] == 4 and cache.slots["local"].ring  # a 4-slot ring, not 23 slots


@pytest.mark.parametrize("kw", [dict(), dict(layer_types=("local",), sliding_window=3)], ids=["global", "local"])
def test_future_tokens_never_change_past_logits(kw):
    model = tiny(**kw)
    x = torch.randint(0, 97, (2, 16))
    y = x.clone()
    y[:, 9:] = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_sliding_window_limits_what_a_local_layer_sees():
    model = tiny(layer_types=("local",), sliding_window=3, num_layers=1)
    x = torch.randint(0, 97, (1, 12))
    y = x.clone()
    y[0, 5] = (x[0, 5] + 1) % 97
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    changed = (a - b).abs().amax(-1)[0] > 1e-6
    assert changed.tolist() == [i in (5, 6, 7) for i in range(12)]  # a key is visible to itself and 2 later queries


def test_packed_documents_do_not_see_each_other():
    model = tiny(layer_types=("local", "global"), sliding_window=8)
    doc_a, doc_b = torch.randint(0, 97, (1, 10)), torch.randint(0, 97, (1, 7))
    packed = torch.cat([doc_a, doc_b, torch.zeros(1, 3, dtype=torch.long)], 1)
    seg = torch.tensor([[0] * 10 + [1] * 7 + [-1] * 3])
    with torch.no_grad():
        out = model(packed, segment_ids=seg, attention_mask=seg >= 0).logits
        alone_a, alone_b = model(doc_a).logits, model(doc_b).logits
    torch.testing.assert_close(out[:, :10], alone_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 10:17], alone_b, atol=1e-5, rtol=1e-5)


def test_left_padded_batch_generates_like_single_rows():
    model = tiny(layer_types=("local", "global"), sliding_window=5)
    a, b = torch.randint(4, 97, (9,)), torch.randint(4, 97, (4,))
    ids = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    ids[0], mask[0] = a, True
    ids[1, 5:], mask[1, 5:] = b, True
    batch = generate(model, ids, attention_mask=mask, max_new_tokens=12, stop_tokens=())
    one = generate(model, a[None], max_new_tokens=12, stop_tokens=())
    two = generate(model, b[None], max_new_tokens=12, stop_tokens=())
    assert torch.equal(batch.tokens[0], one.tokens[0]) and torch.equal(batch.tokens[1], two.tokens[0])


def test_over_long_prompt_is_a_clear_error():
    model = tiny(max_seq_len=32)
    with pytest.raises(ValueError, match="context is 32 tokens"):
        generate(model, torch.randint(0, 97, (1, 40)), max_new_tokens=4)
    with pytest.raises(ValueError, match="at most 12 new tokens"):
        generate(model, torch.randint(0, 97, (1, 20)), max_new_tokens=30)
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len"):
        model(torch.randint(0, 97, (1, 33)))
    with pytest.raises(ValueError, match=r"must be \(B, T\)"):
        model(torch.randint(0, 97, (33,)))


# -- continuous patches --------------------------------------------------------------------------------------------
def test_patch_projection_is_zero_initialised_and_learns():
    torch.manual_seed(0)
    cfg = config_from_name("debug", vocab_size=97, patch_size=4)
    model = Decoder(cfg, patch_token_id=5)
    ids = torch.tensor([[2, 4, 5, 5, 5, 6, 9]])
    patches = torch.randn(3, 3 * 4 * 4)
    out = model(ids, patches=patches).logits
    ref = model(torch.tensor([[2, 4, 0, 0, 0, 6, 9]])).logits  # zero projection == a zero embedding... not id 0
    assert out.shape == ref.shape
    h = model.embed(ids, patches)
    assert torch.all(h[0, 2:5] == 0)  # zero-init projection: patches start as a no-op
    out.sum().backward()
    assert model.patch_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="3 <patch> placeholders but 2 patches"):
        model(ids, patches=patches[:2])


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = tiny(qk_norm=True)
    model.save_pretrained(tmp_path)
    back = Decoder.from_pretrained(tmp_path)
    x = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, back(x).logits, rtol=0, atol=0)
    (tmp_path / "config.json").write_text('{"model_type": "gemma"}')
    with pytest.raises(ValueError, match="from_hf"):
        Decoder.from_pretrained(tmp_path)


def test_inference_fast_path_matches_training_path():
    model = tiny(num_kv_heads=2)
    x = torch.randint(0, 97, (2, 11))
    train_logits = model(x).logits  # grad enabled: separate q/k/v and gate/up matmuls
    with torch.no_grad():
        fused = model(x).logits  # no grad: fused weights
        for p in model.parameters():
            p.add_(0.01)  # an optimiser step: the fused weights must be rebuilt
        moved = model(x).logits
    torch.testing.assert_close(fused, train_logits.detach(), atol=1e-5, rtol=1e-5)
    assert torch.allclose(model(x).logits.detach(), moved, atol=1e-5, rtol=1e-5)
    model.double()  # module.to() swaps parameter data in place: cached fused weights must follow
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, model.float()(x).logits.double(), atol=1e-5, rtol=1e-5)
    model.float()
    generate(model, x[:, :4], max_new_tokens=3)  # caches built under inference_mode ...
    model(x).logits.sum().backward()  # ... never reach autograd
    assert all(p.grad is not None for p in model.parameters())
