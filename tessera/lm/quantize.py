"""Weight-only quantization of a `Decoder` for deployment: int8 per output channel, or group-wise int4 packed two
values per byte, with a dequantising matmul.

Axis legend: O output features (rows of a weight), I input features, G groups per row (I / group_size),
V vocab_size, D embed_dim.

Scheme (symmetric, round-to-nearest, no calibration data):
- int8: one fp32 scale per output row, q = round(w / s) in [-127, 127], s = max|w_row| / 127 (LLM.int8()'s
  per-channel absmax without the outlier split; our models have no outlier features at this size).
- int4: one fp32 scale per `group_size` consecutive input features of a row, q in [-8, 7], s = max|w_group| / 7
  (the GPTQ/AWQ storage layout without their error-compensating search); two 4-bit values share a byte, low nibble
  first.
The forward pass dequantises a layer's weight to the activation dtype just before its matmul, so only one layer's
float weight exists at a time: weights are stored small, compute stays in float. torchao's CPU int4 kernels were not
used: this torch (2.14) is newer than what the installable torchao release supports, and a dequantising matmul
in plain PyTorch keeps the code portable (see docs/lm_deploy.md).

What is quantized: every `nn.Linear` inside the transformer blocks, and (by default) the token embedding table,
which the tied output projection shares (rows = vocabulary entries, so each row/group has its own scale). Norm gains,
RoPE tables and the optional patch projection stay float.

Files: `save_quantized` writes `config.json` (format "tessera.lm.QuantizedDecoder": the decoder config plus the
quantization settings) and `model.safetensors` (int8/uint8 codes and fp32 scales); `load_quantized` reads them back
without ever materialising the float model. `tessera.lm.load_pretrained` reads such folders too.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tessera.lm.model import Decoder, DecoderConfig, rope_inv_freqs

__all__ = [
    "QuantConfig",
    "QuantizedLinear",
    "QuantizedEmbedding",
    "quantize_tensor",
    "dequantize_tensor",
    "quantize_model",
    "save_quantized",
    "load_quantized",
    "is_quantized_folder",
    "weight_bytes",
]

FORMAT = "tessera.lm.QuantizedDecoder"


@dataclass
class QuantConfig:
    """How weights are quantized."""

    bits: int = 8  # 8 (per-channel int8) or 4 (group-wise int4, packed)
    group_size: int = 32  # input features per int4 scale (ignored for int8)
    embeddings: bool = True  # also quantize the (tied) token embedding table

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"quantize.bits must be 4 or 8, got {self.bits}")
        if self.group_size < 2 or self.group_size % 2:
            raise ValueError(f"quantize.group_size must be an even number >= 2, got {self.group_size}")


# -- tensors ---------------------------------------------------------------------------------------------------------
def quantize_tensor(w: torch.Tensor, bits: int, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a (O, I) float matrix.

    Returns:
        (codes, scales): int8 (O, I) and fp32 (O, 1) for bits=8; uint8 (O, I/2) packed nibbles and fp32 (O, G) for
        bits=4.

    Raises:
        ValueError: not a 2-D float matrix, non-finite values, or I not divisible by group_size (int4).
    """
    if w.ndim != 2 or not w.is_floating_point():
        raise ValueError(f"expected a 2-D float weight, got {tuple(w.shape)} {w.dtype}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("cannot quantize a weight with NaN/Inf values")
    w = w.detach().float()
    rows, cols = w.shape
    if bits == 8:
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0  # (O, 1)
        q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
        return q, scale
    if bits != 4:
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if cols % group_size:
        raise ValueError(f"int4: input features {cols} are not divisible by group_size {group_size}")
    groups = w.view(rows, cols // group_size, group_size)  # (O, G, group)
    scale = groups.abs().amax(dim=2).clamp_min(1e-12) / 7.0  # (O, G)
    q = torch.round(groups / scale[..., None]).clamp(-8, 7).to(torch.int16).view(rows, cols) + 8  # [0, 15]
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)  # (O, I/2): low nibble = even column
    return packed, scale


def dequantize_tensor(codes: torch.Tensor, scales: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of `quantize_tensor` (up to rounding): the (O, I) float matrix in `dtype`."""
    if bits == 8:
        return (codes.float() * scales).to(dtype)
    rows = codes.shape[0]
    low = (codes & 0x0F).to(torch.int8) - 8  # (O, I/2)
    high = (codes >> 4).to(torch.int8) - 8
    q = torch.stack((low, high), dim=2).view(rows, -1)  # (O, I): interleave back to column order
    groups = scales.shape[1]
    w = q.view(rows, groups, -1).float() * scales[..., None]  # (O, G, group)
    return w.view(rows, -1).to(dtype)


# -- modules ---------------------------------------------------------------------------------------------------------
class _QuantWeight(nn.Module):
    """Holds codes + scales as buffers (saved in the state dict) and exposes the dequantised `weight`."""

    def __init__(self, out_features: int, in_features: int, bits: int, group_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.bits, self.group_size = bits, group_size
        self.out_features, self.in_features = out_features, in_features
        self.compute_dtype = dtype
        if bits == 8:
            codes = torch.zeros(out_features, in_features, dtype=torch.int8)
            scales = torch.zeros(out_features, 1)
        else:
            codes = torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
            scales = torch.zeros(out_features, in_features // group_size)
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)

    def set_from(self, weight: torch.Tensor) -> None:
        codes, scales = quantize_tensor(weight, self.bits, self.group_size)
        self.codes, self.scales = codes.to(weight.device), scales.to(weight.device)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised (O, I) weight (a fresh tensor: the float copy lives only as long as its user needs it)."""
        return dequantize_tensor(self.codes, self.scales, self.bits, self.compute_dtype)

    def _apply(self, fn, recurse=True):  # .to(dtype) changes the compute dtype, never the integer codes
        probe = fn(torch.zeros((), dtype=self.compute_dtype))
        if probe.is_floating_point():
            self.compute_dtype = probe.dtype
        codes, scales = self.codes, self.scales
        super()._apply(fn, recurse)
        self.codes = codes.to(self.codes.device)  # device moves apply, dtype casts do not
        self.scales = scales.to(self.codes.device)
        return self

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"{self.in_features}, {self.out_features}, bits={self.bits}{group}"


class QuantizedLinear(_QuantWeight):
    """Bias-free `nn.Linear` replacement with int8/int4 weights and a dequantising matmul."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int) -> QuantizedLinear:
        if linear.bias is not None:
            raise ValueError("QuantizedLinear supports bias-free linears only (the decoder's blocks have no biases)")
        q = cls(linear.out_features, linear.in_features, bits, group_size, linear.weight.dtype)
        q.set_from(linear.weight)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class QuantizedEmbedding(_QuantWeight):
    """`nn.Embedding` replacement: looks up and dequantises only the rows it needs; `weight` (the tied output
    projection) dequantises the whole table."""

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, bits: int, group_size: int) -> QuantizedEmbedding:
        q = cls(emb.num_embeddings, emb.embedding_dim, bits, group_size, emb.weight.dtype)
        q.set_from(emb.weight)
        return q

    @property
    def num_embeddings(self) -> int:
        return self.out_features

    @property
    def embedding_dim(self) -> int:
        return self.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = dequantize_tensor(self.codes[flat], self.scales[flat], self.bits, self.compute_dtype)  # (N, D)
        return rows.view(*ids.shape, self.in_features)


class _Unfused:
    """Stands in for the decoder's fused-weight cache: concatenates the dequantised weights per call and keeps
    nothing, so a quantized model never holds float copies of its weights between calls."""

    def get(self, *weights: torch.Tensor) -> torch.Tensor:
        return torch.cat(weights, dim=0)


# -- models ----------------------------------------------------------------------------------------------------------
def _check_shapes(model: Decoder, cfg: QuantConfig) -> None:
    if cfg.bits != 4:
        return
    for name, mod in model.layers.named_modules():
        if isinstance(mod, nn.Linear) and mod.in_features % cfg.group_size:
            raise ValueError(f"int4: layers.{name} has {mod.in_features} input features, not divisible by group_size {cfg.group_size}")
    if cfg.embeddings and model.cfg.embed_dim % cfg.group_size:
        raise ValueError(f"int4: embed_dim {model.cfg.embed_dim} is not divisible by group_size {cfg.group_size}")


def _convert(model: Decoder, cfg: QuantConfig, from_weights: bool) -> Decoder:
    """Swap linears (and the embedding) for quantized ones, in place; `from_weights` quantizes the current weights."""
    _check_shapes(model, cfg)
    for block in model.layers:
        for parent in block.modules():
            for child_name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    if from_weights:
                        new = QuantizedLinear.from_linear(child, cfg.bits, cfg.group_size)
                    else:
                        new = QuantizedLinear(child.out_features, child.in_features, cfg.bits, cfg.group_size, torch.float32)
                    setattr(parent, child_name, new)
            if hasattr(parent, "_fused"):
                parent._fused = _Unfused()
    if cfg.embeddings:
        emb = model.embed_tokens
        if from_weights:
            model.embed_tokens = QuantizedEmbedding.from_embedding(emb, cfg.bits, cfg.group_size)
        else:
            model.embed_tokens = QuantizedEmbedding(emb.num_embeddings, emb.embedding_dim, cfg.bits, cfg.group_size, torch.float32)
    if model.lm_head is not None:
        if from_weights:
            model.lm_head = QuantizedLinear.from_linear(model.lm_head, cfg.bits, cfg.group_size)
        else:
            model.lm_head = QuantizedLinear(model.lm_head.out_features, model.lm_head.in_features, cfg.bits, cfg.group_size, torch.float32)
    model.quant_config = cfg  # type: ignore[assignment]
    return model


def quantize_model(model: Decoder, bits: int = 8, group_size: int = 32, *, embeddings: bool = True) -> Decoder:
    """A quantized copy of `model` (the original is left untouched), in eval mode.

    Args:
        model: a float `Decoder`.
        bits: 8 (int8, one scale per output channel) or 4 (int4 in groups of `group_size` input features, packed).
        group_size: input features per int4 scale; must divide every quantized layer's input width.
        embeddings: also quantize the token embedding table (= the tied output projection).

    Raises:
        ValueError: bad bits/group_size, a layer width not divisible by group_size, or non-finite weights.
    """
    if not isinstance(model, Decoder):
        raise TypeError(f"quantize_model expects a tessera.lm.Decoder, got {type(model).__name__}")
    if getattr(model, "quant_config", None) is not None:
        raise ValueError("the model is already quantized")
    cfg = QuantConfig(bits=bits, group_size=group_size, embeddings=embeddings)
    return _convert(copy.deepcopy(model), cfg, from_weights=True).eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer (what `save_quantized`/`save_pretrained` store)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def save_quantized(model: Decoder, folder: str | Path) -> Path:
    """Write a quantized decoder: `config.json` + `model.safetensors` (atomically).

    Raises:
        ValueError: the model is not quantized (use `Decoder.save_pretrained` for float models).
    """
    from tessera.config import to_dict
    from tessera.lm._io import atomic_write_json, save_safetensors

    qcfg = getattr(model, "quant_config", None)
    if qcfg is None:
        raise ValueError("save_quantized needs a model from quantize_model (float models: Decoder.save_pretrained)")
    folder = Path(folder)
    save_safetensors(folder / "model.safetensors", dict(model.state_dict()))
    atomic_write_json(folder / "config.json", {
        "format": FORMAT, "version": 1, "config": to_dict(model.cfg), "patch_token_id": model.patch_token_id,
        "quantization": to_dict(qcfg),
    })
    return folder


def is_quantized_folder(folder: str | Path) -> bool:
    """Whether `folder/config.json` describes a quantized decoder."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except json.JSONDecodeError:
        return False


def load_quantized(folder: str | Path, device: str | torch.device = "cpu") -> Decoder:
    """Load a folder written by `save_quantized` (eval mode), without building the float model first.

    Raises:
        FileNotFoundError: missing files. ValueError: not a quantized Tessera decoder, or weights that do not fit.
    """
    from tessera.config import ConfigError, from_dict
    from tessera.lm._io import load_safetensors

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not a model folder)")
    meta = json.loads(cfg_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: not a quantized Tessera decoder (format {meta.get('format')!r}); "
                         "float models load with tessera.lm.Decoder.from_pretrained")
    try:
        cfg = from_dict(DecoderConfig, meta["config"], prefix="model")
        qcfg = from_dict(QuantConfig, meta["quantization"], prefix="quantization")
    except ConfigError as exc:
        raise ValueError(f"{cfg_path}: {exc}") from exc
    state = load_safetensors(folder / "model.safetensors")
    with torch.device("meta"):  # a skeleton: no float weights are ever allocated
        model = Decoder(cfg, patch_token_id=meta.get("patch_token_id"))
        _convert(model, qcfg, from_weights=False)
    try:
        model.load_state_dict(state, assign=True, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{folder}: weights do not match config.json: {exc}") from exc
    # Non-persistent buffers (RoPE inverse frequencies) are not in the file: rebuild them.
    model.inv_freq_global, model.inv_freq_local = rope_inv_freqs(cfg)
    for mod in model.modules():
        if isinstance(mod, _QuantWeight):
            mod.compute_dtype = torch.float32
    return model.to(device).eval()
