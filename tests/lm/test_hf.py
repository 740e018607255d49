"""Hugging Face Gemma interop: logits equal transformers' (eager attention, fp32) within 1e-4, both directions.

The reference models are tiny random-weight Gemma / Gemma-2 / Gemma-3 built locally; nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the `hf` extra (pip install -e '.[hf]')")

from tessera.lm.generate import generate  # noqa: E402
from tessera.lm.hf import from_hf, to_hf  # noqa: E402
from tessera.lm.model import Decoder, config_from_name  # noqa: E402

COMMON = dict(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
              head_dim=16, max_position_embeddings=128)


def _randomise_norms(model) -> None:
    # HF initialises RMSNorm weights to 0 (a (1 + 0) gain) like Tessera; random values make the parity test bite.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.5)


def _reference(kind: str, kv_heads: int):
    torch.manual_seed(0)
    if kind == "gemma":
        cfg = transformers.GemmaConfig(**COMMON, num_key_value_heads=kv_heads)
        model = transformers.GemmaForCausalLM(cfg)
    elif kind == "gemma2":
        cfg = transformers.Gemma2Config(**COMMON, num_key_value_heads=kv_heads, sliding_window=6, query_pre_attn_scalar=24)
        model = transformers.Gemma2ForCausalLM(cfg)
    else:
        cfg = transformers.Gemma3TextConfig(
            **COMMON, num_key_value_heads=kv_heads, sliding_window=6, rope_local_base_freq=10_000.0, rope_theta=1e6,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        )
        model = transformers.Gemma3ForCausalLM(cfg)
    model.config._attn_implementation = "eager"
    _randomise_norms(model)
    return model.eval()


@pytest.mark.parametrize("kind,kv_heads", [("gemma", 1), ("gemma", 2), ("gemma2", 2), ("gemma3", 1)])
def test_from_hf_logits_match_transformers(tmp_path, kind, kv_heads):
    ref = _reference(kind, kv_heads)
    ref.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = from_hf(tmp_path / "hf")
    x = torch.randint(0, COMMON["vocab_size"], (2, 21))
    with torch.no_grad():
        expected = ref(x).logits
        got = ours(x).logits
    assert (got - expected).abs().max() < 1e-4
    # Back out: transformers loads what to_hf writes and computes the same logits.
    to_hf(ours, tmp_path / "back")
    back = type(ref).from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    with torch.no_grad():
        assert (back(x).logits - expected).abs().max() < 1e-4


def test_greedy_generation_matches_transformers(tmp_path):
    ref = _reference("gemma", 1)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ours = from_hf(tmp_path)
    prompt = torch.randint(3, COMMON["vocab_size"], (1, 8))
    with torch.no_grad():
        expected = ref.generate(prompt, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)[:, 8:]
    got = generate(ours, prompt, max_new_tokens=16, stop_tokens=())
    assert torch.equal(got.tokens, expected)


def test_to_hf_then_from_hf_round_trips_a_tessera_model(tmp_path):
    torch.manual_seed(0)
    model = Decoder(config_from_name("debug", vocab_size=100, layer_types=("global",), qk_norm=False)).eval()
    to_hf(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gemma"
    back = from_hf(tmp_path)
    x = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, model(x).logits, rtol=0, atol=0)


def test_unsupported_checkpoints_get_clear_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a Gemma text model"):
        from_hf(tmp_path)
    cfg = {"model_type": "gemma3_text", **COMMON, "num_key_value_heads": 1, "sliding_window": 6, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope_scaling"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "rope_scaling": None}))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_hf(tmp_path)
    with pytest.raises(ValueError, match="no Gemma generation"):
        to_hf(Decoder(config_from_name("debug", vocab_size=100)), tmp_path / "x")  # QK-norm without post-norms
