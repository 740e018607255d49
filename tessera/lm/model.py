"""The Tessera decoder: a Gemma-style decoder-only transformer that reads and writes one shared token vocabulary.

Axis legend: B batch, T new (query) positions, S key positions (cache + new), D embed_dim, H query heads,
N key/value heads, G = H // N query heads per key/value head, E head_dim, F mlp_dim, V vocab_size,
P image patches, C*p*p one flattened patch.

What is in here, each traced to its source (Gemma 1/2/3 reports arXiv 2403.08295, 2408.00118, 2503.19786; Chameleon
arXiv 2405.09818; PaliGemma arXiv 2407.07726; HF transformers' Gemma ports):
- RMSNorm computed in fp32 and applied as (1 + w) with w initialised to zero (Gemma 1/2/3).
- Rotate-half RoPE with tables computed in fp32 and cast to the activation dtype (HF Gemma, transformers #29285).
- GeGLU MLP with tanh-approximated GELU, no biases (Gemma).
- Multi-query / grouped-query attention through `scaled_dot_product_attention`; optional QK-norm (Gemma-3,
  Chameleon), attention logit soft-capping (Gemma-2; needs explicit scores, so it takes the eager path), sliding-window
  ("local") layers interleaved with global ones in a configurable pattern with their own RoPE base (Gemma-2/3),
  optional post-norms around attention and MLP (Gemma-2/3), final-logit soft-capping (Gemma-2).
- Tied input/output embeddings, inputs scaled by sqrt(D) with the normaliser cast to the activation dtype first
  (Gemma; transformers PR #29402: in bf16 sqrt(3072) is 55.5, not 55.4256).
- Optional continuous image input: flattened pixel patches pass through a zero-initialised linear projection
  (PaliGemma) and replace `<patch>` placeholder tokens, so a variable number of patches (variable resolution) enters
  the same sequence as the discrete tokens (Fuyu-style rows; the Processor lays them out).
- Packed training: `segment_ids` restrict attention to one document and restart positions at each document start.
- A KV cache (`KVCache`): a flat buffer per global layer and a ring buffer of `sliding_window` slots per local layer,
  with per-slot positions, so left padding, chunked prefill and decoding past the window all use one mask rule.

The z-loss and per-modality loss weights belong to the training objective (`tessera.lm.objective`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tessera.validate import check_ids, check_same_shape, read_json

__all__ = [
    "DecoderConfig",
    "PRESETS",
    "config_from_name",
    "list_presets",
    "Decoder",
    "DecoderOutput",
    "KVCache",
    "RMSNorm",
    "apply_rope",
    "count_parameters",
]

LayerType = Literal["global", "local"]


# -- config --------------------------------------------------------------------------------------------------------
@dataclass
class DecoderConfig:
    """Shape and features of a decoder. Defaults: the nano shape in the plain Gemma-1 layout (all-global attention, no
    QK-norm); the `nano` preset adds QK-norm and local/global layers."""

    vocab_size: int = 2560  # all token ids: text pieces, specials, image codes (see tessera.lm.vocab)
    embed_dim: int = 128  # D, residual width
    num_layers: int = 4
    num_heads: int = 4  # H query heads
    num_kv_heads: int = 1  # N key/value heads: 1 = multi-query, 1 < N < H = grouped-query, N = H = multi-head
    head_dim: int = 32  # E (Gemma decouples it from D / H)
    mlp_dim: int = 512  # F, width of each GeGLU branch
    mlp_activation: Literal["gelu_tanh", "gelu"] = "gelu_tanh"  # Gemma uses tanh GELU; "gelu" (exact) only for imports
    max_seq_len: int = 1024  # longest sequence (prompt + generation) the model accepts
    layer_types: tuple[LayerType, ...] = ("global",)  # attention pattern, repeated over the layers
    sliding_window: int | None = None  # keys a local layer sees, the query itself included (Gemma-2 semantics)
    rope_theta: float = 10_000.0  # RoPE base of global layers
    rope_local_theta: float | None = None  # RoPE base of local layers (None: rope_theta); Gemma-3 uses 10k/1M
    rope_scaling: float = 1.0  # linear position interpolation on global layers: positions / factor (Gemma-3: 8)
    qk_norm: bool = False  # RMSNorm on each query and key head (Gemma-3; Chameleon's stabiliser)
    post_norms: bool = False  # extra RMSNorm on the attention and MLP outputs before the residual add (Gemma-2/3)
    attn_softcap: float | None = None  # cap * tanh(score / cap) on attention scores (Gemma-2 uses 50)
    final_softcap: float | None = None  # same on the output logits (Gemma-2 uses 30)
    query_pre_attn_scalar: float | None = None  # queries scaled by this**-0.5 (None: head_dim)
    norm_eps: float = 1e-6
    tie_embeddings: bool = True  # output projection = input embedding (Gemma)
    patch_size: int = 0  # > 0 adds the continuous patch projection for image input (p)
    patch_channels: int = 3
    init_std: float | None = None  # std of linear weights (None: 1/sqrt(fan_in)); embeddings use 1/sqrt(D)

    def __post_init__(self) -> None:
        self.layer_types = tuple(self.layer_types)
        for name in ("vocab_size", "embed_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.num_heads ({self.num_heads}) must be a multiple of model.num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"model.head_dim must be even for rotate-half RoPE, got {self.head_dim}")
        if not self.layer_types or any(t not in ("global", "local") for t in self.layer_types):
            raise ValueError(f"model.layer_types must be a non-empty list of 'global'/'local', got {list(self.layer_types)}")
        if "local" in self.layer_types and (self.sliding_window is None or self.sliding_window < 1):
            raise ValueError("model.sliding_window must be >= 1 when model.layer_types contains 'local'")
        for name in ("attn_softcap", "final_softcap", "query_pre_attn_scalar"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"model.{name} must be > 0 or null, got {value}")
        if self.mlp_activation not in ("gelu_tanh", "gelu"):
            raise ValueError(f"model.mlp_activation must be 'gelu_tanh' or 'gelu', got {self.mlp_activation!r}")
        if self.patch_size < 0:
            raise ValueError(f"model.patch_size must be >= 0, got {self.patch_size}")
        if not self.rope_scaling > 0:
            raise ValueError(f"model.rope_scaling must be > 0, got {self.rope_scaling}")

    def layer_type(self, i: int) -> LayerType:
        """Attention type of layer `i` (the pattern repeats)."""
        return self.layer_types[i % len(self.layer_types)]

    @property
    def has_local_layers(self) -> bool:
        return any(self.layer_type(i) == "local" for i in range(self.num_layers))


_CPU_FEATURES = dict(qk_norm=True, layer_types=("local", "global"), sliding_window=256, max_seq_len=1024)

# Named presets. nano/pro/ultra are sized for CPU training with the Tessera vocabulary (~2.6k ids; recipes set the
# exact vocab_size); the gemma* presets are the published shapes, built on the meta device to check parameter counts.
# Gemma vocab: the papers count 256,128 embedding rows (Gemma-1 Table 2, Gemma-2 Table 1); HF checkpoints ship 256,000.
PRESETS: dict[str, DecoderConfig] = {
    "debug": DecoderConfig(
        vocab_size=640, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
        max_seq_len=512, qk_norm=True, layer_types=("local", "global"), sliding_window=64,
    ),
    "nano": DecoderConfig(embed_dim=128, num_layers=4, num_heads=4, num_kv_heads=1, head_dim=32, mlp_dim=512, **_CPU_FEATURES),
    "pro": DecoderConfig(embed_dim=256, num_layers=6, num_heads=4, num_kv_heads=1, head_dim=64, mlp_dim=1024, **_CPU_FEATURES),
    "ultra": DecoderConfig(embed_dim=384, num_layers=10, num_heads=6, num_kv_heads=2, head_dim=64, mlp_dim=1536, **_CPU_FEATURES),
    "gemma-2b": DecoderConfig(
        vocab_size=256_128, embed_dim=2048, num_layers=18, num_heads=8, num_kv_heads=1, head_dim=256, mlp_dim=16_384,
        max_seq_len=8192,
    ),
    "gemma-7b": DecoderConfig(
        vocab_size=256_128, embed_dim=3072, num_layers=28, num_heads=16, num_kv_heads=16, head_dim=256, mlp_dim=24_576,
        max_seq_len=8192,
    ),
    "gemma2-2b": DecoderConfig(
        vocab_size=256_128, embed_dim=2304, num_layers=26, num_heads=8, num_kv_heads=4, head_dim=256, mlp_dim=9216,
        max_seq_len=8192, layer_types=("local", "global"), sliding_window=4096, post_norms=True,
        attn_softcap=50.0, final_softcap=30.0, query_pre_attn_scalar=256.0,
    ),
    "gemma3-1b": DecoderConfig(
        vocab_size=262_144, embed_dim=1152, num_layers=26, num_heads=4, num_kv_heads=1, head_dim=256, mlp_dim=6912,
        max_seq_len=32_768, layer_types=("local",) * 5 + ("global",), sliding_window=512, post_norms=True,
        qk_norm=True, rope_theta=1_000_000.0, rope_local_theta=10_000.0, query_pre_attn_scalar=256.0,
    ),
}


def list_presets() -> list[str]:
    """Names accepted by `config_from_name`."""
    return sorted(PRESETS)


def config_from_name(name: str, **overrides) -> DecoderConfig:
    """A preset's config with field overrides, e.g. `config_from_name("nano", vocab_size=3000)`.

    Raises:
        ValueError: unknown preset name or unknown/invalid override.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown decoder preset {name!r}; known: {', '.join(list_presets())}")
    known = set(DecoderConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown DecoderConfig field(s) {unknown}; known: {sorted(known)}")
    return replace(PRESETS[name], **overrides)


# -- building blocks -------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """Gemma RMSNorm: x / rms(x) * (1 + w), computed in fp32 and cast back (the bf16 (1 + w) bug: transformers #29285)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))  # zero-init: the norm starts as a plain RMS normalisation
        self._gain: tuple[torch.Tensor | None, int, torch.Tensor | None] = (None, -1, None)

    def gain(self) -> torch.Tensor:
        """1 + weight in fp32; cached for inference (rebuilt when the weight tensor or its version changes)."""
        w = self.weight
        if torch.is_grad_enabled():
            return 1.0 + w.float()
        source, version, gain = self._gain
        if source is not w or version != w._version or gain is None or gain.device != w.device:
            with torch.no_grad():
                gain = 1.0 + w.float()
            self._gain = (w, w._version, gain)
        return gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        if _HAS_RMS_NORM:  # fused, and in fp32 bitwise equal to the explicit formula below
            return F.rms_norm(xf, (xf.shape[-1],), self.gain(), self.eps).type_as(x)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.gain()).type_as(x)


_HAS_RMS_NORM = hasattr(F, "rms_norm")


def _inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    # The same expression as HF Gemma (int64 arange, then float) so the fp32 tables agree bit for bit.
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rope_inv_freqs(cfg: DecoderConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse frequencies (E/2,) of the global and the local layers. Linear scaling divides the global layers'
    frequencies (= their positions) by `rope_scaling`, as Gemma-3 does for its long-context global layers; local
    layers only ever see `sliding_window` relative positions, so they keep theirs."""
    inv_global = _inv_freq(cfg.head_dim, cfg.rope_theta)
    if cfg.rope_scaling != 1.0:
        inv_global = inv_global / cfg.rope_scaling
    return inv_global, _inv_freq(cfg.head_dim, cfg.rope_local_theta or cfg.rope_theta)


def rope_tables(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (B, 1, T, E) for integer `positions` (B, T), computed in fp32 and cast to `dtype`."""
    freqs = positions.float()[..., None] * inv_freq.float()  # (B, T, E/2)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, E): rotate-half layout
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on (B, heads, T, E)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else cap * torch.tanh(x / cap)


class _FusedWeight:
    """Concatenated weights of several linears for inference, rebuilt whenever one of them changes.

    Decoding small models on CPU is bound by the number of kernel launches, so q/k/v (and gate/up) run as one
    matmul when no gradient is needed. The parameters stay separate (checkpoint names match Gemma's); a change is
    detected from each tensor's identity and version counter (optimiser steps and load_state_dict bump it).
    """

    def __init__(self) -> None:
        self.sources: tuple[torch.Tensor, ...] = ()
        self.versions: tuple[int, ...] = ()
        self.weight: torch.Tensor | None = None

    def get(self, *weights: torch.Tensor) -> torch.Tensor:
        # Same tensor objects at the same versions: nothing changed (.to() and load_state_dict(assign=True) make new
        # tensors; in-place updates bump the version). Kept cheap: this runs for every layer of every decoding step.
        if (
            self.weight is None
            or len(weights) != len(self.sources)
            or any(w is not s for w, s in zip(weights, self.sources, strict=True))
            or tuple(w._version for w in weights) != self.versions
            or self.weight.dtype != weights[0].dtype
            or self.weight.device != weights[0].device
        ):
            with torch.no_grad():
                self.weight = torch.cat(weights, dim=0)
            self.sources = weights
            self.versions = tuple(w._version for w in weights)
        return self.weight


class MLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x)), no biases."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu_tanh") -> None:
        super().__init__()
        self.approximate = "tanh" if activation == "gelu_tanh" else "none"
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

        self._fused = _FusedWeight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = F.linear(x, self._fused.get(self.gate_proj.weight, self.up_proj.weight)).chunk(2, dim=-1)
        return self.down_proj(F.gelu(gate, approximate=self.approximate) * up)


class _Mask(NamedTuple):
    """Which keys each query may see in one layer type: `None` (plain causal over the new tokens) or a bool mask."""

    mask: torch.Tensor | None  # (B, 1, T, S) True = attend; None with is_causal / no mask at all
    is_causal: bool


class Attention(nn.Module):
    """Multi-query / grouped-query self-attention with RoPE, optional QK-norm and score soft-capping."""

    def __init__(self, cfg: DecoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.layer_type = cfg.layer_type(layer_idx)
        self.softcap = cfg.attn_softcap
        self.scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        self.q_proj = nn.Linear(cfg.embed_dim, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.embed_dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.embed_dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.embed_dim, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self._fused = _FusedWeight()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: _Mask,
        cache: _LayerCache | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, N, E = self.num_heads, self.num_kv_heads, self.head_dim
        if torch.is_grad_enabled():
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = F.linear(x, self._fused.get(self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)).split([H * E, N * E, N * E], -1)
        q = q.view(B, T, H, E).transpose(1, 2)  # (B, H, T, E)
        k = k.view(B, T, N, E).transpose(1, 2)  # (B, N, T, E)
        v = v.view(B, T, N, E).transpose(1, 2)  # (B, N, T, E)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope
        if T == 1:  # one rotation for queries and keys together: fewer small kernels while decoding
            qk = apply_rope(torch.cat([q, k], dim=1), cos, sin)  # (B, H + N, 1, E)
            q, k = qk[:, :H], qk[:, H:]
        else:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, N, S, E): the keys this chunk attends to
        if self.softcap is not None:
            out = self._eager(q, k, v, mask)
        elif T == 1 and mask.mask is None and not mask.is_causal:
            # Decoding: fold the G query heads that share a key/value head into the query axis, so MQA/GQA read the
            # cache once without repeating it (measured ~2x faster than enable_gqa on CPU).
            G = self.num_heads // self.num_kv_heads
            qf = q.reshape(B, self.num_kv_heads, G, self.head_dim)  # (B, N, G, E): T == 1
            out = F.scaled_dot_product_attention(qf, k, v, scale=self.scale).reshape(B, self.num_heads, 1, self.head_dim)
        else:
            out = _sdpa_gqa(q, k, v, mask, self.scale)  # (B, H, T, E)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))

    def _eager(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: _Mask) -> torch.Tensor:
        """Explicit scores, needed for soft-capping; softmax statistics in fp32."""
        G = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(G, dim=1)  # (B, H, S, E)
        v = v.repeat_interleave(G, dim=1)
        scores = _softcap(torch.matmul(q, k.transpose(-1, -2)) * self.scale, self.softcap)  # (B, H, T, S)
        allowed = mask.mask
        if allowed is None and mask.is_causal:
            T, S = scores.shape[-2:]
            allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return torch.matmul(probs, v)


def _sdpa_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: _Mask, scale: float) -> torch.Tensor:
    """SDPA with fewer key/value heads than query heads (native `enable_gqa` on torch >= 2.5, else repeated heads)."""
    H, N = q.shape[1], k.shape[1]
    if H != N and not _HAS_ENABLE_GQA:
        k, v = k.repeat_interleave(H // N, dim=1), v.repeat_interleave(H // N, dim=1)  # (B, H, S, E)
    kwargs = {"enable_gqa": True} if H != N and _HAS_ENABLE_GQA else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.mask, is_causal=mask.is_causal, scale=scale, **kwargs)


_HAS_ENABLE_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


class DecoderLayer(nn.Module):
    """Pre-norm block; with `post_norms`, Gemma-2/3's sandwich: x + post(attn(pre(x))), then the same for the MLP.

    Names follow Gemma-2/3 checkpoints. In Gemma-1 checkpoints `post_attention_layernorm` is the norm *before* the
    MLP (Llama layout): `tessera.lm.hf` maps it to `pre_feedforward_layernorm`.
    """

    def __init__(self, cfg: DecoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_type = cfg.layer_type(layer_idx)
        self.input_layernorm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.pre_feedforward_layernorm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.mlp = MLP(cfg.embed_dim, cfg.mlp_dim, cfg.mlp_activation)
        if cfg.post_norms:
            self.post_attention_layernorm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
            self.post_feedforward_layernorm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        else:
            self.post_attention_layernorm = self.post_feedforward_layernorm = None

    def forward(self, x, rope, mask, cache=None) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), rope, mask, cache)
        if self.post_attention_layernorm is not None:
            h = self.post_attention_layernorm(h)
        x = x + h
        h = self.mlp(self.pre_feedforward_layernorm(x))
        if self.post_feedforward_layernorm is not None:
            h = self.post_feedforward_layernorm(h)
        return x + h


# -- KV cache --------------------------------------------------------------------------------------------------------
class _Slots:
    """Slot bookkeeping shared by every layer of one attention type (all global layers, or all local layers).

    Global: slot = running token index. Local: a ring of `window` slots (slot = index % window). Each slot remembers
    the RoPE position of its key (-1: empty or padding), so the attention mask is one rule for all cases: the key is
    a real token, not after the query, and (local layers) fewer than `window` positions before it.
    """

    def __init__(self, batch: int, size: int, ring: bool, device) -> None:
        self.pos = torch.full((batch, size), -1, dtype=torch.long, device=device)
        self.size = size
        self.ring = ring
        self.offset = 0  # tokens written so far (padding included)

    def advance(self, pos: torch.Tensor) -> tuple[tuple, torch.Tensor]:
        """Reserve slots for a chunk with positions `pos` (B, T); returns (write plan, key positions (B, S))."""
        T = pos.shape[1]
        start = self.offset
        if not self.ring:
            if start + T > self.size:
                raise ValueError(f"KV cache is full: {start + T} tokens > capacity {self.size}")
            self.pos[:, start : start + T] = pos
            self.offset += T
            return ("flat", start, start + T), self.pos[:, : start + T]
        key_pos = torch.cat([self.pos, pos], dim=1)  # old ring contents + the whole chunk, before overwriting
        keep = min(T, self.size)
        idx = torch.arange(start + T - keep, start + T, device=pos.device) % self.size
        self.pos[:, idx] = pos[:, T - keep :]
        self.offset += T
        return ("ring", idx, keep), key_pos


class _LayerCache:
    """Keys and values of one layer, written where its type's `_Slots` plan says."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, slots: int, dtype, device) -> None:
        self.k = torch.zeros(batch, kv_heads, slots, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.plan: tuple = ()

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the chunk (k, v: (B, N, T, E)) per the current plan; return the keys/values it attends to."""
        if self.plan[0] == "flat":
            _, start, end = self.plan
            self.k[:, :, start:end] = k
            self.v[:, :, start:end] = v
            return self.k[:, :, :end], self.v[:, :, :end]
        _, idx, keep = self.plan
        keys = torch.cat([self.k, k], dim=2)  # (B, N, slots + T, E): attend to the old ring plus the chunk
        values = torch.cat([self.v, v], dim=2)
        T = k.shape[2]
        self.k[:, :, idx] = k[:, :, T - keep :]
        self.v[:, :, idx] = v[:, :, T - keep :]
        return keys, values


class KVCache:
    """Key/value cache for incremental decoding with a `Decoder`.

    Args:
        cfg: the model config.
        batch_size: B.
        capacity: tokens (prompt + generated, padding included) the global layers can hold; <= cfg.max_seq_len.
        dtype, device: of the cached keys/values (use the model's).
    """

    def __init__(self, cfg: DecoderConfig, batch_size: int, capacity: int, *, dtype=torch.float32, device=None) -> None:
        if capacity > cfg.max_seq_len:
            raise ValueError(f"KV cache capacity {capacity} exceeds the model's max_seq_len {cfg.max_seq_len}")
        self.capacity = capacity
        self.slots: dict[str, _Slots] = {}
        self.layers: list[_LayerCache] = []
        for i in range(cfg.num_layers):
            kind = cfg.layer_type(i)
            if kind not in self.slots:
                size = min(cfg.sliding_window, capacity) if kind == "local" else capacity  # type: ignore[type-var]
                self.slots[kind] = _Slots(batch_size, size, kind == "local" and size < capacity, device)
            self.layers.append(_LayerCache(batch_size, cfg.num_kv_heads, cfg.head_dim, self.slots[kind].size, dtype, device))
        self.kinds = [cfg.layer_type(i) for i in range(cfg.num_layers)]
        # Next RoPE position of each row (padding does not advance it).
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.has_padding = False  # any padding written so far (then every step needs an explicit mask)

    @property
    def length(self) -> int:
        """Tokens written so far (padding included)."""
        return next(iter(self.slots.values())).offset if self.slots else 0

    def advance(self, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reserve slots for a chunk (each layer type once) and give every layer its write plan.

        Returns the positions (B, S) of the keys the chunk attends to, per layer type.
        """
        key_pos, plans = {}, {}
        for kind, slots in self.slots.items():
            plans[kind], key_pos[kind] = slots.advance(pos)
        for kind, layer in zip(self.kinds, self.layers, strict=True):
            layer.plan = plans[kind]
        return key_pos

    def reorder(self, index: torch.Tensor) -> None:
        """Keep/reorder batch rows (e.g. to drop finished sequences)."""
        for layer in self.layers:
            layer.k, layer.v = layer.k[index], layer.v[index]
        for slots in self.slots.values():
            slots.pos = slots.pos[index]
        self.next_pos = self.next_pos[index]


# -- the model -------------------------------------------------------------------------------------------------------
class DecoderOutput(NamedTuple):
    """What `Decoder.forward` returns."""

    logits: torch.Tensor | None  # (B, T, V) (or (B, 1, V) with last_only), soft-capped; None if not computed
    hidden: torch.Tensor  # (B, T, D) final-normed hidden states (or (B, 1, D))


class Decoder(nn.Module):
    """Decoder-only transformer over one shared vocabulary (text pieces, specials, image codes).

    Args:
        cfg: the decoder config (see `DecoderConfig`, `PRESETS`).
        patch_token_id: id of the `<patch>` placeholder replaced by projected image patches (needs cfg.patch_size > 0).
    """

    def __init__(self, cfg: DecoderConfig, patch_token_id: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_token_id = patch_token_id
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        self.patch_proj = None
        if cfg.patch_size > 0:
            self.patch_proj = nn.Linear(cfg.patch_channels * cfg.patch_size**2, cfg.embed_dim)
        self._normaliser: torch.Tensor | None = None
        inv_global, inv_local = rope_inv_freqs(cfg)
        self.register_buffer("inv_freq_global", inv_global, persistent=False)
        self.register_buffer("inv_freq_local", inv_local, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialisation (Gemma's recipe is unpublished; these are our choices, each with its reason):

        - embeddings ~ N(0, 1/D): after the sqrt(D) input scale each input row has unit RMS, and tied output logits
          of a unit-RMS hidden state start with unit variance;
        - linear weights ~ N(0, 1/fan_in) (or `init_std`); attention/MLP output projections additionally scaled by
          1/sqrt(2 * num_layers) so the residual stream's variance does not grow with depth (GPT-2);
        - RMSNorm weights 0, i.e. a (1 + 0) gain;
        - the patch projection is zero (PaliGemma): images read as patches start as a no-op and cannot disturb the
          token model early in training.
        """
        if self.embed_tokens.weight.is_meta:
            return
        cfg = self.cfg
        nn.init.normal_(self.embed_tokens.weight, std=cfg.embed_dim**-0.5)
        depth_scale = (2 * cfg.num_layers) ** -0.5
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and module is not self.patch_proj:
                std = cfg.init_std if cfg.init_std is not None else module.in_features**-0.5
                if name.endswith(("o_proj", "down_proj")):
                    std *= depth_scale
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.zeros_(module.weight)
        if self.patch_proj is not None:
            nn.init.zeros_(self.patch_proj.weight)
            nn.init.zeros_(self.patch_proj.bias)

    # -- persistence ---------------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        """Write `config.json` and `model.safetensors` (atomically) into `folder`."""
        from tessera.config import to_dict
        from tessera.lm._io import atomic_write_json, save_safetensors

        folder = Path(folder)
        state = {k: v for k, v in self.state_dict().items()}
        save_safetensors(folder / "model.safetensors", state)
        atomic_write_json(folder / "config.json", {
            "format": "tessera.lm.Decoder", "version": 1, "config": to_dict(self.cfg), "patch_token_id": self.patch_token_id,
        })

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype | None = None) -> Decoder:
        """Load a decoder written by `save_pretrained` (eval mode).

        Raises:
            FileNotFoundError: missing files. ValueError: not a Tessera decoder, or weights that do not fit the config.
        """
        from tessera.config import ConfigError, from_dict
        from tessera.lm._io import load_safetensors

        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{folder}: no config.json (not a Tessera decoder folder)")
        meta = read_json(cfg_path, "decoder config")
        if meta.get("format") != "tessera.lm.Decoder":
            hint = " (a Hugging Face checkpoint? use tessera.lm.from_hf)" if "model_type" in meta else ""
            raise ValueError(f"{cfg_path}: not a Tessera decoder config{hint}")
        try:
            cfg = from_dict(DecoderConfig, meta["config"], prefix="model")
        except ConfigError as exc:
            raise ValueError(f"{cfg_path}: {exc}") from exc
        state = load_safetensors(folder / "model.safetensors")
        model = cls(cfg, patch_token_id=meta.get("patch_token_id"))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{folder}: weights do not match config.json: {exc}") from exc
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()

    # -- helpers -------------------------------------------------------------------------------------------------------
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights counted once), optionally without the token embedding table."""
        return count_parameters(self, exclude_embeddings)

    def no_weight_decay(self) -> set[str]:
        """Names the optimiser should not decay (matrices are decayed by default): the embedding table."""
        return {"embed_tokens.weight"}

    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        """An empty KV cache matching this model's dtype and device."""
        w = self.embed_tokens.weight
        return KVCache(self.cfg, batch_size, capacity, dtype=w.dtype, device=w.device)

    def embed(self, input_ids: torch.Tensor, patches: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings scaled by sqrt(D) (normaliser in the activation dtype), with projected patches spliced in."""
        h = self.embed_tokens(input_ids)
        scale = self._normaliser
        if torch.is_grad_enabled() or scale is None or scale.dtype != h.dtype or scale.device != h.device:
            scale = torch.tensor(self.cfg.embed_dim**0.5, dtype=h.dtype, device=h.device)  # cast to h's dtype first
            if not torch.is_grad_enabled():  # cached for decoding (a tensor made under inference_mode must not
                self._normaliser = scale  # reach autograd, so training always makes a fresh one)
        h = h * scale
        if self.patch_token_id is None or self.patch_proj is None:
            if patches is not None:
                raise ValueError("patches were given but this model has no patch projection (model.patch_size = 0)")
            return h
        where = input_ids == self.patch_token_id
        n_slots = int(where.sum())
        n_patches = 0 if patches is None else patches.shape[0]
        if n_slots != n_patches:
            raise ValueError(f"input_ids hold {n_slots} <patch> placeholders but {n_patches} patches were given")
        if n_slots:
            dim = self.patch_proj.in_features
            if patches.ndim != 2 or patches.shape[1] != dim:
                raise ValueError(f"patches must be (P, {dim}) flattened C*p*p pixels, got {tuple(patches.shape)}")
            # Not scaled by sqrt(D): the projection learns its own scale (HF PaliGemma divides by sqrt(D) to cancel it).
            proj = self.patch_proj(patches.to(h.dtype))
            h = h.masked_scatter(where[..., None], proj)
        return h

    # -- forward -------------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        patches: torch.Tensor | None = None,
        last_only: bool = False,
        compute_logits: bool = True,
    ) -> DecoderOutput:
        """Logits for every position of `input_ids` (B, T).

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T) 1/True for real tokens, 0/False for padding; a row's real tokens must be
                contiguous (left padding for generation, right padding for training).
            segment_ids: (B, T) document index per token for packed sequences (padding: any value with
                attention_mask 0). Attention stays inside a document and positions restart at each document.
            cache: a `KVCache`: these tokens continue the cached ones and are appended to it.
            patches: (P, C*p*p) flattened pixel patches for the `<patch>` placeholders, in reading order.
            last_only: compute logits for the last position only (prefill for generation).
            compute_logits: False skips the output projection (`logits` is then None); training objectives project
                only the positions that have targets with `logits(hidden)`.

        Returns:
            `DecoderOutput(logits, hidden)`.
        """
        cfg = self.cfg
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.long, torch.int32):
            raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}")
        B, T = input_ids.shape
        if B == 0 or T == 0:
            raise ValueError(f"input_ids is empty (shape {(B, T)}): an empty batch has nothing to process")
        if not torch.compiler.is_compiling():  # a host sync: kept out of compiled graphs
            check_ids(input_ids, cfg.vocab_size, "input_ids")  # else an embedding 'index out of range' without the range
        check_same_shape(attention_mask, (B, T), "attention_mask", "input_ids")
        check_same_shape(segment_ids, (B, T), "segment_ids", "input_ids")
        past = 0 if cache is None else cache.length
        if past + T > cfg.max_seq_len:
            raise ValueError(f"sequence of {past + T} tokens exceeds the model's max_seq_len {cfg.max_seq_len}")
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed documents) are for training; they cannot be combined with a cache")
        valid = None if attention_mask is None else attention_mask.bool()

        # Positions: restart per document, skip padding, continue from the cache.
        if segment_ids is not None:
            pos = _segment_positions(segment_ids)
        elif valid is not None:
            pos = valid.long().cumsum(1) - 1
        else:
            pos = torch.arange(T, device=input_ids.device).expand(B, T)
        if cache is not None:
            pos = pos + cache.next_pos[:, None]
        key_pos_new = pos if valid is None else pos.masked_fill(~valid, -1)  # -1: a key nobody may attend to

        h = self.embed(input_ids, patches)
        ropes = {"global": rope_tables(pos, self.inv_freq_global, h.dtype)}
        if cfg.has_local_layers:
            ropes["local"] = rope_tables(pos, self.inv_freq_local, h.dtype)
        kinds = {cfg.layer_type(i) for i in range(cfg.num_layers)}
        if cache is None:
            masks = {kind: self._mask(kind, pos, valid, segment_ids, T) for kind in kinds}
        else:
            fast = T == 1 and valid is None and not cache.has_padding  # judged before this chunk is written
            key_pos = cache.advance(key_pos_new)
            masks = {kind: self._cached_mask(kind, pos, key_pos[kind], valid, cache, fast) for kind in kinds}
        for i, layer in enumerate(self.layers):
            kind = layer.layer_type
            h = layer(h, ropes[kind], masks[kind], None if cache is None else cache.layers[i])
        if cache is not None:
            cache.next_pos = cache.next_pos + (T if valid is None else valid.long().sum(1))
            cache.has_padding = cache.has_padding or (valid is not None and not bool(valid.all()))
        if last_only:
            h = h[:, -1:]
        h = self.norm(h)
        return DecoderOutput(self.logits(h) if compute_logits else None, h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output logits (..., V) of final-normed hidden states (..., D), soft-capped when configured."""
        return _softcap(F.linear(hidden, self.output_weight()), self.cfg.final_softcap)

    def _mask(self, kind, q_pos, valid, segment_ids, T: int) -> _Mask:
        """The attention rule for one layer type without a cache, as cheap as the inputs allow."""
        window = self.cfg.sliding_window if kind == "local" else None
        if valid is None and segment_ids is None and (window is None or window >= T):
            return _Mask(None, T > 1)  # plain causal: SDPA's fast path
        # Real tokens are contiguous within a row and within a document, so index differences equal position
        # differences and one (T, T) band serves every row; only documents and padding need (B, T, T).
        idx = torch.arange(T, device=q_pos.device)
        diff = idx[:, None] - idx[None, :]  # (T, T) query index - key index
        band = diff >= 0
        if window is not None:
            band &= diff < window
        allowed = band.expand(q_pos.shape[0], T, T)
        if segment_ids is not None:
            allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
        if valid is not None:
            allowed = _keep_rows(allowed & valid[:, None, :], valid)
        return _Mask(allowed[:, None], False)

    def _cached_mask(self, kind, q_pos, k_pos, valid, cache: KVCache, fast: bool) -> _Mask:
        """The rule for a chunk continuing a cache; `k_pos` (B, S) are the positions of the keys it attends to."""
        window = self.cfg.sliding_window if kind == "local" else None
        slots = cache.slots[kind]
        if fast and not slots.ring and (window is None or slots.offset <= window):
            # One new token and no padding anywhere: it may see every cached key (all are earlier and, for a local
            # layer that is not a ring, the whole cache fits in the window).
            return _Mask(None, False)
        allowed = _allowed(q_pos, k_pos, window)
        return _Mask(_keep_rows(allowed, valid)[:, None], False)


def _allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """(B, T, S): key is a real token, not after the query, and within the window."""
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]
    allowed = (kp >= 0) & (kp <= qp)
    if window is not None:
        allowed &= qp - kp < window
    return allowed


def _keep_rows(allowed: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Padding queries see no key; give them their own slot so softmax stays finite (their outputs are ignored)."""
    if valid is None:
        return allowed
    empty = ~allowed.any(-1, keepdim=True)  # (B, T, 1)
    if bool(empty.any()):
        allowed = allowed | (empty & torch.ones_like(allowed))  # attend to everything: finite, and unused
    return allowed


def _segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 where the segment id changes: (B, T) -> (B, T)."""
    B, T = segment_ids.shape
    idx = torch.arange(T, device=segment_ids.device).expand(B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(1).values
    return idx - start_idx


def count_parameters(module: nn.Module, exclude_embeddings: bool = False) -> int:
    """Parameters of `module` (works on the meta device; shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    skip = id(module.embed_tokens.weight) if exclude_embeddings and hasattr(module, "embed_tokens") else None
    for p in module.parameters():
        if id(p) in seen or id(p) == skip:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
