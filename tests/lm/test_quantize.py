"""int8/int4 weight quantization: round trip of the packing, files, and the stated tolerance against float.

Stated tolerance (docs/lm_deploy.md), measured on teacher-forced logits of a random-init debug decoder over 4 x 96
tokens (logits have unit-ish spread, so argmax margins are small and this is a harsh setting):
- int8 (per channel): max |logit - float logit| <= 0.15 x std(float logits); top-1 agreement >= 0.97.
- int4 (groups of 16): mean |logit - float logit| <= 0.15 x std; max <= 1.0 x std; top-1 agreement >= 0.85.
Greedy generation from the loaded files agrees with float on >= 90% (int8) / 75% (int4) of tokens.
"""

from __future__ import annotations

import json

import pytest
import torch

from tessera.lm.generate import generate
from tessera.lm.model import Decoder, config_from_name
from tessera.lm.quantize import (
    QuantizedEmbedding,
    QuantizedLinear,
    dequantize_tensor,
    load_quantized,
    quantize_model,
    quantize_tensor,
    save_quantized,
    weight_bytes,
)

BOUNDS = {8: dict(max_err=0.15, mean_err=0.05, agree=0.97, gen=0.9), 4: dict(max_err=1.0, mean_err=0.15, agree=0.85, gen=0.75)}


@pytest.fixture(scope="module")
def float_model() -> Decoder:
    torch.manual_seed(0)
    return Decoder(config_from_name("debug", max_seq_len=256)).eval()


@pytest.mark.parametrize("bits", [8, 4])
def test_tensor_round_trip_error_is_within_half_a_step(bits):
    torch.manual_seed(1)
    w = torch.randn(24, 64)
    codes, scales = quantize_tensor(w, bits, group_size=16)
    assert codes.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert codes.shape == ((24, 64) if bits == 8 else (24, 32))  # int4: two values per byte
    back = dequantize_tensor(codes, scales, bits)
    step = scales if bits == 8 else scales.repeat_interleave(16, dim=1)
    assert bool(((back - w).abs() <= step / 2 + 1e-6).all())


def test_int4_packing_keeps_column_order():
    # Integers in [-7, 7] with max |w| = 7 per group: scale 1, so every value is exact and any column mix-up shows.
    w = torch.tensor([[3, -7, 0, 5, -1, 7, 2, -4, 6, -2, 1, -5, 4, -3, -6, 7]], dtype=torch.float32).repeat(3, 2)
    codes, scales = quantize_tensor(w, 4, group_size=16)
    assert torch.equal(scales, torch.ones(3, 2))
    assert torch.equal(dequantize_tensor(codes, scales, 4), w)


def test_bad_inputs_are_clear_errors(float_model):
    with pytest.raises(ValueError, match="NaN"):
        quantize_tensor(torch.tensor([[float("nan"), 1.0]]), 8)
    with pytest.raises(ValueError, match="group_size"):
        quantize_model(float_model, bits=4, group_size=24)
    with pytest.raises(ValueError, match="bits"):
        quantize_model(float_model, bits=3)
    with pytest.raises(ValueError, match="not a quantized"):
        import tempfile

        d = tempfile.mkdtemp()
        float_model.save_pretrained(d)
        load_quantized(d)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_model_saves_loads_and_stays_within_tolerance(float_model, bits, tmp_path):
    q = quantize_model(float_model, bits=bits, group_size=16)
    assert any(isinstance(m, QuantizedLinear) for m in q.modules())
    assert isinstance(q.embed_tokens, QuantizedEmbedding)
    assert not any(isinstance(m, QuantizedLinear) for m in float_model.modules())  # the original is untouched
    assert weight_bytes(q) < weight_bytes(float_model) * (0.3 if bits == 8 else 0.22)

    save_quantized(q, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["quantization"]["bits"] == bits
    loaded = load_quantized(tmp_path)
    assert (tmp_path / "model.safetensors").stat().st_size < weight_bytes(float_model) * 0.35

    ids = torch.randint(4, 640, (4, 96), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = float_model(ids).logits
        out = loaded(ids).logits
        assert torch.equal(out, q(ids).logits)  # the file holds exactly the quantized model
    err = (out - ref).abs() / ref.std()
    agree = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    b = BOUNDS[bits]
    assert float(err.max()) <= b["max_err"] and float(err.mean()) <= b["mean_err"], (float(err.max()), float(err.mean()))
    assert agree >= b["agree"], agree

    prompts = ids[:, :16]
    g_ref = generate(float_model, prompts, max_new_tokens=24, stop_tokens=()).tokens
    g_q = generate(loaded, prompts, max_new_tokens=24, stop_tokens=()).tokens
    assert g_q.shape == g_ref.shape == (4, 24)
    assert float((g_q == g_ref).float().mean()) >= b["gen"]


def test_load_pretrained_reads_a_quantized_folder(float_model, tmp_path, vocab, image_tokenizer):
    from tessera.lm.pretrained import load_pretrained, save_pretrained
    from tessera.lm.processor import Processor

    model = Decoder(config_from_name("debug", vocab_size=vocab.size)).eval()
    save_pretrained(model, Processor(vocab, image_tokenizer), tmp_path)
    save_quantized(quantize_model(model, bits=4, group_size=16), tmp_path)  # replaces config.json + weights
    loaded, proc = load_pretrained(tmp_path, image_tokenizer=image_tokenizer)
    assert loaded.quant_config.bits == 4 and proc.vocab.size == vocab.size


def test_cli_quantizes_a_model_folder_that_generate_reads(tmp_path, vocab, image_tokenizer, capsys, monkeypatch):
    from tessera.cli import main
    from tessera.lm.pretrained import load_pretrained, save_pretrained
    from tessera.lm.processor import Processor

    model = Decoder(config_from_name("debug", vocab_size=vocab.size)).eval()
    save_pretrained(model, Processor(vocab, image_tokenizer), tmp_path / "float")
    assert main(["lm", "quantize", "--checkpoint", str(tmp_path / "float"), "--bits", "4", "--group-size", "16",
                 "--out", str(tmp_path / "int4")]) == 0
    assert "int4" in capsys.readouterr().out
    loaded, _ = load_pretrained(tmp_path / "int4", image_tokenizer=image_tokenizer)
    assert loaded.quant_config.bits == 4
    assert main(["lm", "quantize", "--checkpoint", str(tmp_path / "int4"), "--out", str(tmp_path / "x")]) != 0
    assert "already quantized" in capsys.readouterr().err
