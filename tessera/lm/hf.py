"""Hugging Face Gemma checkpoints <-> Tessera decoders (Gemma 1, Gemma 2 and Gemma 3 text models).

`from_hf(path)` reads a checkpoint folder (config.json + model.safetensors, or sharded safetensors with an index)
and returns a `Decoder` whose logits equal transformers' `GemmaForCausalLM` / `Gemma2ForCausalLM` /
`Gemma3ForCausalLM` (eager attention) in float32; `to_hf(model, path)` writes one back. Only the standard library,
safetensors and torch are needed here; `transformers` is used by the parity tests (the `hf` extra). Nothing is ever
downloaded: pass a local folder.

Name mapping (HF -> Tessera; the `model.` prefix is dropped):
- `model.layers.i.post_attention_layernorm` -> `layers.i.pre_feedforward_layernorm` for Gemma-1 only. Gemma-1 uses the
  Llama layout, where that norm sits *before the MLP*; Gemma-2/3 have true post-norms under the same name.
- everything else keeps its name (`self_attn.{q,k,v,o}_proj`, `self_attn.{q,k}_norm`, `mlp.{gate,up,down}_proj`,
  `input_layernorm`, `pre/post_feedforward_layernorm`, `embed_tokens`, `norm`, `lm_head` when untied).

Activation: transformers 4.x's Gemma-1 MLP reads `hidden_act`, Gemma-2/3 read `hidden_activation`; we read the same
field so imported models compute what transformers computes ("gelu_pytorch_tanh" -> tanh GELU, "gelu" -> exact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tessera.lm._io import atomic_write_json, load_safetensors, save_safetensors
from tessera.lm.model import Decoder, DecoderConfig, rope_inv_freqs
from tessera.validate import read_json

__all__ = ["from_hf", "to_hf", "config_from_hf", "config_to_hf"]

_TANH = {"gelu_pytorch_tanh", "gelu_tanh", "gelu_new", "gelu_fast"}
_ARCH = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}


def _activation(name: str | None, where: str) -> str:
    if name in _TANH:
        return "gelu_tanh"
    if name == "gelu":
        return "gelu"
    raise ValueError(f"{where}: unsupported activation {name!r} (Gemma uses gelu_pytorch_tanh)")


def _pattern(layer_types: list[str], where: str) -> tuple[str, ...]:
    """HF's per-layer list -> the shortest repeating Tessera pattern."""
    names = {"full_attention": "global", "sliding_attention": "local"}
    try:
        kinds = [names[t] for t in layer_types]
    except KeyError as exc:
        raise ValueError(f"{where}: unsupported layer type {exc.args[0]!r}") from None
    for period in range(1, len(kinds) + 1):
        if all(kinds[i] == kinds[i % period] for i in range(len(kinds))):
            return tuple(kinds[:period])
    return tuple(kinds)


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> DecoderConfig:
    """Translate a Gemma/Gemma2/Gemma3-text `config.json` mapping into a `DecoderConfig`.

    Raises:
        ValueError: another model type, or a feature Tessera does not implement (biases, RoPE scaling, ...).
    """
    mtype = hf.get("model_type")
    if mtype not in _ARCH:
        raise ValueError(f"{where}: model_type {mtype!r} is not a Gemma text model (supported: {', '.join(_ARCH)})")
    if hf.get("attention_bias", False):
        raise ValueError(f"{where}: attention_bias=true is not supported (Gemma has no biases)")
    scaling = hf.get("rope_scaling")
    if scaling not in (None, {}) and (scaling.get("rope_type", scaling.get("type")) != "default"):
        raise ValueError(f"{where}: rope_scaling {scaling} is not supported (only unscaled RoPE)")
    if hf.get("use_bidirectional_attention", False):
        raise ValueError(f"{where}: use_bidirectional_attention=true is not supported")
    num_heads = hf["num_attention_heads"]
    common = dict(
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads", num_heads),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        mlp_dim=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 8192),
        rope_theta=float(hf.get("rope_theta", 10_000.0)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )
    if mtype == "gemma":
        return DecoderConfig(**common, mlp_activation=_activation(hf.get("hidden_act", "gelu_pytorch_tanh"), where))
    # Missing fields take transformers 4.x's constructor defaults for that model type.
    g2 = mtype == "gemma2"
    if "rope_theta" not in hf and not g2:
        common["rope_theta"] = 1_000_000.0
    n = common["num_layers"]
    if hf.get("layer_types"):
        layer_types = _pattern(list(hf["layer_types"]), where)
    elif g2:  # older configs: even layers local
        layer_types = ("local", "global")
    else:
        period = hf.get("sliding_window_pattern", 6)
        layer_types = _pattern(["sliding_attention" if (i + 1) % period else "full_attention" for i in range(n)], where)
    extra = dict(
        mlp_activation=_activation(hf.get("hidden_activation") or "gelu_pytorch_tanh", where),
        layer_types=layer_types,
        sliding_window=hf.get("sliding_window", 4096) if "local" in layer_types else None,
        post_norms=True,
        attn_softcap=hf.get("attn_logit_softcapping", 50.0 if g2 else None),
        final_softcap=hf.get("final_logit_softcapping", 30.0 if g2 else None),
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
    )
    if mtype == "gemma3_text":
        extra.update(qk_norm=True, rope_local_theta=float(hf.get("rope_local_base_freq") or 10_000.0))
        scaling = hf.get("rope_scaling") or {}
        if scaling:
            if scaling.get("rope_type", scaling.get("type")) != "linear":
                raise ValueError(f"{where}: only linear rope_scaling is supported, got {scaling}")
            extra.update(rope_scaling=float(scaling["factor"]))
    return DecoderConfig(**common, **extra)


def config_to_hf(cfg: DecoderConfig) -> dict[str, Any]:
    """The `config.json` mapping transformers needs for this decoder (the closest Gemma generation).

    Raises:
        ValueError: the config has no Gemma equivalent (e.g. QK-norm without post-norms, a patch projection).
    """
    if cfg.patch_size:
        raise ValueError("to_hf: the patch projection (model.patch_size > 0) has no Gemma equivalent")
    if cfg.rope_scaling != 1.0 and not (cfg.post_norms and cfg.qk_norm):
        raise ValueError("to_hf: rope_scaling != 1 exists only in Gemma-3 configs (post_norms and qk_norm)")
    gemma1 = not (cfg.post_norms or cfg.qk_norm or cfg.attn_softcap or cfg.final_softcap or cfg.has_local_layers
                  or cfg.query_pre_attn_scalar not in (None, cfg.head_dim) or cfg.rope_local_theta not in (None, cfg.rope_theta))
    if gemma1:
        mtype = "gemma"
    elif cfg.post_norms and cfg.qk_norm:
        mtype = "gemma3_text"
    elif cfg.post_norms and cfg.rope_local_theta in (None, cfg.rope_theta):
        mtype = "gemma2"
    else:
        raise ValueError(
            "to_hf: no Gemma generation matches this config (Gemma-2 needs post_norms without qk_norm, Gemma-3 needs "
            "post_norms with qk_norm, Gemma-1 neither, nor windows or softcaps)"
        )
    act = "gelu_pytorch_tanh" if cfg.mlp_activation == "gelu_tanh" else "gelu"
    hf: dict[str, Any] = {
        "architectures": [_ARCH[mtype]],
        "model_type": mtype,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "torch_dtype": "float32",
    }
    if mtype == "gemma":
        hf["hidden_act"] = act
        return hf
    hf.update(
        hidden_activation=act,
        layer_types=["sliding_attention" if cfg.layer_type(i) == "local" else "full_attention" for i in range(cfg.num_layers)],
        sliding_window=cfg.sliding_window or cfg.max_seq_len,
        query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
        attn_logit_softcapping=cfg.attn_softcap,
        final_logit_softcapping=cfg.final_softcap,
    )
    if mtype == "gemma3_text":
        scaling = None if cfg.rope_scaling == 1.0 else {"rope_type": "linear", "factor": cfg.rope_scaling}
        hf.update(rope_local_base_freq=cfg.rope_local_theta or cfg.rope_theta, rope_scaling=scaling)
    return hf


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    single = folder / "model.safetensors"
    if single.is_file():
        return load_safetensors(single)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        index_doc = read_json(index, "safetensors index")
        if not isinstance(index_doc, dict) or not isinstance(index_doc.get("weight_map"), dict):
            raise ValueError(f"{index}: no \"weight_map\" mapping (not a safetensors index)")
        shards = sorted(set(index_doc["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(load_safetensors(folder / shard))
        return out
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json (pickled .bin files are not read)")


def from_hf(path: str | Path, dtype: torch.dtype = torch.float32) -> Decoder:
    """Load a local Hugging Face Gemma (1/2/3-text) checkpoint folder as a Tessera `Decoder`.

    Args:
        path: folder with config.json and safetensors weights.
        dtype: parameter dtype of the returned model.

    Returns:
        The decoder in eval mode.

    Raises:
        FileNotFoundError: missing folder, config or weights.
        ValueError: unsupported config, or weights that do not match the config.
    """
    folder = Path(path)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected a Hugging Face checkpoint folder)")
    hf_cfg = read_json(cfg_path, "Hugging Face config")
    if not isinstance(hf_cfg, dict) or "model_type" not in hf_cfg:
        raise ValueError(f"{cfg_path}: no \"model_type\" (not a Hugging Face model config)")
    cfg = config_from_hf(hf_cfg, str(cfg_path))
    gemma1 = hf_cfg["model_type"] == "gemma"
    weights = _read_weights(folder)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # tied: the embedding table is the output projection
        new = name[len("model."):] if name.startswith("model.") else name
        if gemma1 and new.endswith("post_attention_layernorm.weight"):
            new = new.replace("post_attention_layernorm", "pre_feedforward_layernorm")
        state[new] = tensor.to(dtype)
    with torch.device("meta"):
        model = Decoder(cfg)
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"{folder}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, assign=True)
    # Buffers built on the meta device hold no values: rebuild them.
    model.inv_freq_global = _real(model, "global")
    model.inv_freq_local = _real(model, "local")
    return model.eval()


def _real(model: Decoder, kind: str) -> torch.Tensor:
    inv_global, inv_local = rope_inv_freqs(model.cfg)
    return inv_global if kind == "global" else inv_local


def to_hf(model: Decoder, path: str | Path) -> Path:
    """Write `model` as a Hugging Face Gemma checkpoint folder (config.json + model.safetensors).

    Returns:
        The folder.

    Raises:
        ValueError: the config has no Gemma equivalent (see `config_to_hf`).
    """
    hf_cfg = config_to_hf(model.cfg)
    gemma1 = hf_cfg["model_type"] == "gemma"
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if gemma1 and name.endswith("pre_feedforward_layernorm.weight"):
            name = name.replace("pre_feedforward_layernorm", "post_attention_layernorm")
        out[name if name.startswith("lm_head") else f"model.{name}"] = tensor.detach().cpu().contiguous()
    save_safetensors(folder / "model.safetensors", out)
    atomic_write_json(folder / "config.json", hf_cfg)
    return folder
