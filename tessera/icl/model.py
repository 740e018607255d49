"""CAML: Context-Aware Meta-Learning (Fifty et al., ICLR 2024), a non-causal transformer over labelled embeddings.

Axis legend: B episodes, N support items, Q queries, C maximum way (ELMES rows, logits), D_f frozen feature size,
p label-embedding size, W = D_f + p token width, H heads, E = W / H head size, L layers.

An episode is a set of support embeddings with labels and a set of query embeddings. Each item becomes one token,
[feature || label vector]: the support's label vector is its ELMES row times a learned scale, the query's is a learned
"unknown" vector. There is no input projection and no positional embedding, so the support is a set: permuting it
permutes nothing in the output (papers-digest B1). A stack of pre-LN ViT blocks (LN -> MHA -> residual,
LN -> GELU MLP -> residual), a final LN, and a bias-free linear readout at the query's position give C logits; logits
of labels beyond the episode's way are masked to -inf, so any way up to C works with one model.

Two attention patterns:
- `exact` (the paper): each query forms its own sequence [query; support] in which every token attends to every other,
  so the support's states depend on the query from layer 1 on. Batched here without copying the support: layer 1's
  LayerNorm and Q/K/V projections of the support are computed once per episode and the support's attention over
  [query_i; support] is assembled from a shared support-support part (papers-digest B6); the states of later layers
  are per query by definition and computed as a (B*Q, N+1) batch. Equal to a per-query loop (tested).
- `amortized`: support tokens attend only to the support, each query to the support and itself. The support is then
  encoded once per episode, so an episode costs N + Q tokens instead of Q (N + 1). It is a different model (queries
  no longer condition the support), trained with its own mask: `CAMLConfig.attention`.

Softmax statistics are computed in float32 whatever the activation dtype.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tessera.icl.elmes import elmes
from tessera.validate import check_finite, check_tensor

__all__ = ["CAMLConfig", "CAML", "CAMLOutput", "CAML_PRESETS", "CheckpointMismatchError", "FeatureNorm"]

Attention = Literal["exact", "amortized"]


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model or extractor it is loaded with (the message names the file)."""


@dataclass
class CAMLConfig:
    """CAML architecture. The token width is `feature_dim + label_dim` (no input projection, as in the paper)."""

    name: str = "caml-s"
    feature_dim: int = 256  # D_f: the frozen extractor's embedding size
    label_dim: int = 64  # p: label-vector size (the paper: 256)
    max_way: int = 10  # C: ELMES rows and logits; episodes may use any way <= C
    num_layers: int = 4
    num_heads: int = 5
    mlp_dim: int = 640
    label_encoder: Literal["elmes", "learned"] = "elmes"  # "learned": the paper's ablation (Kaiming-uniform init)
    attention: Attention = "exact"  # the attention pattern the model is trained and run with
    dropout: float = 0.0  # residual/MLP dropout (the paper: 0)
    norm_eps: float = 1e-6
    elmes_seed: int = 50
    # Fixed preprocessing of the frozen features (see FeatureNorm): "none" (the paper), "l2", or "cl2n" (subtract the
    # base-data mean stored in the checkpoint, then L2-normalise), times `feature_scale`.
    feature_norm: Literal["none", "l2", "cl2n"] = "none"
    feature_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.feature_dim < 1 or self.label_dim < 1 or self.num_layers < 1 or self.mlp_dim < 1:
            raise ValueError("caml: feature_dim, label_dim, num_layers and mlp_dim must be >= 1")
        if self.max_way < 2:
            raise ValueError(f"caml.max_way must be >= 2, got {self.max_way}")
        if self.width % self.num_heads:
            raise ValueError(f"caml: width {self.width} (feature_dim + label_dim) is not divisible by num_heads {self.num_heads}")
        if self.label_encoder == "elmes" and self.label_dim < self.max_way:
            raise ValueError(f"caml: an ELMES of {self.max_way} classes needs label_dim >= {self.max_way}, got {self.label_dim}")
        if self.attention not in ("exact", "amortized"):
            raise ValueError(f"caml.attention must be 'exact' or 'amortized', got {self.attention!r}")
        if self.feature_norm not in ("none", "l2", "cl2n") or self.feature_scale <= 0:
            raise ValueError(f"caml: feature_norm must be 'none', 'l2' or 'cl2n' with feature_scale > 0, got {self.feature_norm!r}, {self.feature_scale}")

    @property
    def width(self) -> int:
        return self.feature_dim + self.label_dim

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> CAMLConfig:
        """A preset (`CAML_PRESETS`) with field overrides, e.g. `from_name("caml-large", feature_dim=1280)`."""
        if name not in CAML_PRESETS:
            raise ValueError(f"unknown CAML preset {name!r} (known: {', '.join(CAML_PRESETS)})")
        return dataclasses.replace(CAML_PRESETS[name], **overrides)


CAML_PRESETS: dict[str, CAMLConfig] = {
    # The official sizes (papers-digest B1): 24 layers, 16 heads, MLP 4096, 5-way, label size 256.
    "caml-large": CAMLConfig("caml-large", 768, 256, 5, 24, 16, 4096),  # CLIP ViT-B/16 (width 1024)
    "caml-laion": CAMLConfig("caml-laion", 1280, 256, 5, 24, 16, 4096),  # Laion-2b ViT-H/14 (width 1536)
    "caml-resnet34": CAMLConfig("caml-resnet34", 512, 256, 5, 24, 16, 4096),  # ResNet-34 (width 768)
    # CPU-sized, for Tessera's own 256-d feature network; CL2N features (see FeatureNorm).
    "caml-s": CAMLConfig("caml-s", 256, 64, 10, 4, 5, 640, feature_norm="cl2n"),
    "caml-xs": CAMLConfig("caml-xs", 256, 64, 10, 2, 5, 320, feature_norm="cl2n"),
    "caml-debug": CAMLConfig("caml-debug", 32, 16, 5, 2, 2, 64, feature_norm="cl2n"),
}


class FeatureNorm(nn.Module):
    """Fixed preprocessing of frozen features before they enter a sequence model.

    The paper feeds raw CLIP features (norm ~ 25) next to unit-norm label vectors and trains for 360k steps. With a
    CPU budget of a few thousand steps that ratio is the difference between learning and not: with raw-scale
    features a CAML sat at chance for 300+ steps on separable synthetic episodes, with unit-norm features it reached
    86% in 200 (run in the development log of docs/icl.md). "cl2n" is SimpleShot's centring + L2 normalisation
    (Wang et al. 2019): subtract the mean base-training feature (a buffer saved with the checkpoint, set by the
    training recipe), divide by the norm, multiply by `scale`. "none" is the identity (the paper).
    """

    def __init__(self, dim: int, mode: str = "none", scale: float = 1.0) -> None:
        super().__init__()
        self.mode, self.scale = mode, scale
        self.register_buffer("center", torch.zeros(dim))

    def set_center(self, center: Tensor) -> None:
        self.center.copy_(center.to(self.center))

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "none":
            return x
        if self.mode == "cl2n":
            x = x - self.center.to(x.dtype)
        return F.normalize(x, dim=-1) * self.scale


class CAMLOutput(NamedTuple):
    """Named outputs of `CAML.forward`."""

    logits: Tensor  # (B, Q, C) float32; labels >= the episode's way are -inf
    way: Tensor  # (B,) way of each episode


class _Block(nn.Module):
    """Pre-LN transformer block (ViT / torchvision `EncoderBlock` layout, MHA with biases, GELU MLP)."""

    def __init__(self, cfg: CAMLConfig) -> None:
        super().__init__()
        w = cfg.width
        self.num_heads = cfg.num_heads
        self.ln_1 = nn.LayerNorm(w, eps=cfg.norm_eps)
        self.qkv = nn.Linear(w, 3 * w)
        self.proj = nn.Linear(w, w)
        self.ln_2 = nn.LayerNorm(w, eps=cfg.norm_eps)
        self.mlp = nn.Sequential(nn.Linear(w, cfg.mlp_dim), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.mlp_dim, w), nn.Dropout(cfg.dropout))
        self.drop = nn.Dropout(cfg.dropout)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """LN, then Q/K/V split into heads: (..., T, W) -> 3 x (..., H, T, E)."""
        qkv = self.qkv(self.ln_1(x))
        *lead, t, _ = qkv.shape
        qkv = qkv.view(*lead, t, 3, self.num_heads, -1).movedim(-3, 0).transpose(-3, -2)  # (3, ..., H, T, E)
        return qkv[0], qkv[1], qkv[2]

    def finish(self, x: Tensor, attn: Tensor) -> Tensor:
        """Residual after attention (attn: (..., H, T, E)), then the MLP half of the block."""
        attn = attn.transpose(-3, -2).flatten(-2)  # (..., T, W)
        x = x + self.drop(self.proj(attn))
        return x + self.mlp(self.ln_2(x))

    def forward(self, x: Tensor) -> Tensor:
        """Full (non-causal) self-attention over (B', T, W)."""
        q, k, v = self.heads(x)
        return self.finish(x, F.scaled_dot_product_attention(q, k, v))


def _softmax_f32(scores: Tensor) -> Tensor:
    return torch.softmax(scores.float(), dim=-1)


class CAML(nn.Module):
    """The CAML sequence model over frozen embeddings (the extractor is separate; see `tessera.icl.predict`)."""

    def __init__(self, cfg: CAMLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.label_encoder == "elmes":
            # A frozen Parameter (not a buffer) so it travels with checkpoints, as in the official code.
            self.label_vectors = nn.Parameter(elmes(cfg.max_way, cfg.label_dim, cfg.elmes_seed), requires_grad=False)
        else:
            self.label_vectors = nn.Parameter(torch.empty(cfg.max_way, cfg.label_dim))
            nn.init.kaiming_uniform_(self.label_vectors, a=math.sqrt(5))
        self.feature_norm = FeatureNorm(cfg.feature_dim, cfg.feature_norm, cfg.feature_scale)
        self.elmes_scale = nn.Parameter(torch.ones(1))  # learned norm of the label vectors (the paper learns 1.32)
        self.unk_emb = nn.Parameter(torch.zeros(cfg.label_dim))  # the query's "unknown label" vector
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.width, cfg.max_way, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):  # torchvision ViT / nn.MultiheadAttention style
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"label_vectors", "elmes_scale", "unk_emb"}

    # -- inputs -------------------------------------------------------------------------------------------------------
    def _tokens(self, support: Tensor, labels: Tensor, query: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Validate and build tokens: support (B, N, W), query (B, Q, W), way (B,)."""
        cfg = self.cfg
        if support.ndim == 2:
            support, labels, query = support.unsqueeze(0), labels.unsqueeze(0), query.unsqueeze(0)
        if support.ndim != 3 or query.ndim != 3 or labels.ndim != 2:
            raise ValueError(f"expected support (B, N, D), labels (B, N), query (B, Q, D); got {tuple(support.shape)}, {tuple(labels.shape)}, {tuple(query.shape)}")
        b, n, d = support.shape
        if d != cfg.feature_dim or query.shape[-1] != cfg.feature_dim:
            raise ValueError(f"feature size {d}/{query.shape[-1]} does not match the model's feature_dim {cfg.feature_dim} (wrong extractor?)")
        if labels.shape != (b, n) or query.shape[0] != b:
            raise ValueError(f"support {tuple(support.shape)}, labels {tuple(labels.shape)} and query {tuple(query.shape)} disagree")
        if n == 0:
            raise ValueError("empty support set")
        for name, x in (("support", support), ("query", query)):
            check_tensor(x, name, kind="float")
            check_finite(x, name)  # one NaN feature would silently turn every logit of the episode into NaN
        if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"labels must be integers, got {labels.dtype}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= cfg.max_way:
            raise ValueError(f"labels must lie in [0, {cfg.max_way}): this model supports at most {cfg.max_way} classes, got labels {lo}..{hi}")
        support, query = self.feature_norm(support), self.feature_norm(query)
        label_vec = (self.elmes_scale * self.label_vectors)[labels.long()]  # (B, N, p)
        xs = torch.cat([support, label_vec.to(support.dtype)], dim=-1)  # (B, N, W)
        unk = self.unk_emb.to(query.dtype).expand(b, query.shape[1], -1)
        xq = torch.cat([query, unk], dim=-1)  # (B, Q, W)
        way = labels.long().amax(dim=1) + 1
        return xs, xq, way

    def _readout(self, hq: Tensor, way: Tensor) -> Tensor:
        logits = self.head(self.norm(hq)).float()  # (B, Q, C)
        mask = torch.arange(self.cfg.max_way, device=logits.device) >= way.view(-1, 1, 1)
        return logits.masked_fill(mask, float("-inf"))

    # -- forward ------------------------------------------------------------------------------------------------------
    def forward(self, support: Tensor, support_labels: Tensor, query: Tensor, attention: Attention | None = None) -> CAMLOutput:
        """Logits of each query.

        Args:
            support: (B, N, D_f) or (N, D_f) support embeddings.
            support_labels: (B, N) or (N,) integer labels in [0, way); way = max label + 1 <= C.
            query: (B, Q, D_f) or (Q, D_f) query embeddings.
            attention: "exact" or "amortized" (default: the pattern the model was configured/trained with).

        Returns:
            CAMLOutput(logits (B, Q, C) with -inf beyond each episode's way, way (B,)).
        """
        xs, xq, way = self._tokens(support, support_labels, query)
        mode = attention or self.cfg.attention
        if xq.shape[1] == 0:
            return CAMLOutput(xq.new_zeros(xq.shape[0], 0, self.cfg.max_way, dtype=torch.float32), way)
        if mode == "exact":
            hq = self._exact(xs, xq)
        elif mode == "amortized":
            hq = self._amortized(xs, xq)
        else:
            raise ValueError(f"attention must be 'exact' or 'amortized', got {mode!r}")
        return CAMLOutput(self._readout(hq, way), way)

    def _exact(self, xs: Tensor, xq: Tensor) -> Tensor:
        """Exact CAML for all queries at once; returns the final query states (B, Q, W)."""
        b, n, w = xs.shape
        nq = xq.shape[1]
        blk = self.blocks[0]
        qs, ks, vs = blk.heads(xs)  # (B, H, N, E), once per episode
        qq, kq, vq = blk.heads(xq)  # (B, H, Q, E)
        scale = qs.shape[-1] ** -0.5
        # Query token of sequence i attends to [itself; support].
        s_self = (qq * kq).sum(-1, keepdim=True) * scale  # (B, H, Q, 1)
        s_qs = qq @ ks.transpose(-1, -2) * scale  # (B, H, Q, N)
        p = _softmax_f32(torch.cat([s_self, s_qs], dim=-1)).to(vq.dtype)
        out_q = p[..., :1] * vq + p[..., 1:] @ vs  # (B, H, Q, E)
        # Support token j of sequence i attends to [query_i; support]: combine the shared support-support softmax
        # terms with the per-query term, each stabilised by its own maximum (no cross-query underflow).
        s_ss = (qs @ ks.transpose(-1, -2) * scale).float()  # (B, H, N, N), shared by all queries
        s_sq = (qs @ kq.transpose(-1, -2) * scale).float()  # (B, H, N, Q): support j vs query i
        m_ss = s_ss.amax(-1, keepdim=True)  # (B, H, N, 1)
        e_ss = torch.exp(s_ss - m_ss)
        z_ss = e_ss.sum(-1, keepdim=True)  # (B, H, N, 1)
        a_ss = (e_ss.to(vs.dtype) @ vs).float()  # (B, H, N, E): unnormalised support-support output
        m = torch.maximum(m_ss, s_sq)  # (B, H, N, Q)
        a = torch.exp(s_sq - m)  # weight of the query key
        c = torch.exp(m_ss - m)  # rescaling of the shared part
        denom = a + c * z_ss  # (B, H, N, Q)
        # (B, H, Q, N, E): per-query support attention output
        out_s = (a.transpose(-1, -2).unsqueeze(-1) * vq.float().unsqueeze(-2) + c.transpose(-1, -2).unsqueeze(-1) * a_ss.unsqueeze(2))
        out_s = (out_s / denom.transpose(-1, -2).unsqueeze(-1)).to(vs.dtype)
        attn = torch.cat([out_q.unsqueeze(3), out_s], dim=3)  # (B, H, Q, N+1, E)
        attn = attn.permute(0, 2, 1, 3, 4)  # (B, Q, H, N+1, E)
        x = torch.cat([xq.unsqueeze(2), xs.unsqueeze(1).expand(b, nq, n, w)], dim=2)  # (B, Q, N+1, W)
        x = blk.finish(x, attn)  # per-query states from here on
        x = x.reshape(b * nq, n + 1, w)  # (B*Q, N+1, W)
        for blk in self.blocks[1:]:
            x = blk(x)
        return x[:, 0].view(b, nq, w)

    def _amortized(self, xs: Tensor, xq: Tensor) -> Tensor:
        """Support attends to support; each query to the support and itself. Returns query states (B, Q, W).

        Support and query tokens go through every linear layer as one (B, N+Q, W) sequence: the projections and MLPs
        are then one matrix product per layer instead of two smaller ones (which is what bounds speed on a CPU). The
        pattern is a boolean mask: every row sees the support columns, query rows also see their own column.
        """
        n, t = xs.shape[1], xs.shape[1] + xq.shape[1]
        cols = torch.arange(t, device=xs.device)
        mask = (cols < n) | (cols.view(-1, 1) == cols)  # (T, T): support columns, plus the diagonal
        x = torch.cat([xs, xq], dim=1)
        for blk in self.blocks:
            q, k, v = blk.heads(x)
            x = blk.finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        return x[:, n:]

    # -- references (tests and the speed benchmark) ------------------------------------------------------------------
    def forward_per_query(self, support: Tensor, support_labels: Tensor, query: Tensor, attention: Attention | None = None) -> CAMLOutput:
        """Reference semantics: one plain full-attention pass per query sequence (masked for `amortized`)."""
        xs, xq, way = self._tokens(support, support_labels, query)
        mode = attention or self.cfg.attention
        b, n, w = xs.shape
        outs = []
        for e in range(b):
            row = []
            for i in range(xq.shape[1]):
                x = torch.cat([xq[e, i : i + 1], xs[e]], dim=0).unsqueeze(0)  # (1, N+1, W)
                mask = None
                if mode == "amortized":  # query row sees everything; support rows see the support only
                    mask = torch.ones(n + 1, n + 1, dtype=torch.bool, device=x.device)
                    mask[1:, 0] = False
                for blk in self.blocks:
                    q, k, v = blk.heads(x)
                    x = blk.finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
                row.append(x[0, 0])
            outs.append(torch.stack(row) if row else xq.new_zeros(0, w))
        return CAMLOutput(self._readout(torch.stack(outs), way), way)

    def forward_copied(self, support: Tensor, support_labels: Tensor, query: Tensor) -> CAMLOutput:
        """The official `meta_test` scheme (exact attention): the support `.repeat`-ed once per query, one batch."""
        xs, xq, way = self._tokens(support, support_labels, query)
        b, n, w = xs.shape
        nq = xq.shape[1]
        x = torch.cat([xq.reshape(b * nq, 1, w), xs.repeat_interleave(nq, dim=0)], dim=1)  # (B*Q, N+1, W), copied
        for blk in self.blocks:
            x = blk(x)
        return CAMLOutput(self._readout(x[:, 0].view(b, nq, w), way), way)

    # -- (de)serialisation --------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, extractor: str | None = None, metadata: dict | None = None, half: bool = True) -> Path:
        """Write `config.json` (architecture, the extractor it was trained on, metadata) and `model.safetensors`.

        Args:
            folder: output folder (created).
            extractor: name of the frozen extractor whose embeddings the model reads (checked on load).
            metadata: anything JSON-serialisable (training recipe, data, results).
            half: store floating-point weights as float16 (loaded back as float32).
        """
        from tessera.io import atomic_write_bytes

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v.half() if half and v.is_floating_point() and not k.startswith("feature_norm.") else v).detach().contiguous().cpu()
            for k, v in self.state_dict().items()
        }
        if self.cfg.label_encoder == "elmes":  # rebuilt exactly from the config; storing fp16 would round it
            state.pop("label_vectors")
        tmp = folder / ".model.safetensors.tmp"
        save_file(state, str(tmp), metadata={"format": "pt", "tessera": "caml"})
        atomic_write_bytes(folder / "model.safetensors", tmp.read_bytes())
        tmp.unlink()
        doc = {"kind": "caml", "config": dataclasses.asdict(self.cfg), "extractor": extractor, "metadata": metadata or {}}
        atomic_write_bytes(folder / "config.json", (json.dumps(doc, indent=2) + "\n").encode())
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> tuple[CAML, dict[str, Any]]:
        """Load a folder written by `save_pretrained`; returns (model in eval mode, the config document).

        Raises:
            FileNotFoundError: a file is missing.
            CheckpointMismatchError: not a CAML folder, a bad config, or weights that do not fit it.
        """
        folder = Path(folder)
        cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing (a CAML checkpoint folder has config.json and model.safetensors)")
        try:
            doc = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointMismatchError(f"{cfg_path}: not valid JSON ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("kind") != "caml":
            raise CheckpointMismatchError(f"{cfg_path}: not a CAML checkpoint (kind={doc.get('kind') if isinstance(doc, dict) else None!r})")
        try:
            cfg = CAMLConfig(**doc["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointMismatchError(f"{cfg_path}: bad CAML config ({exc})") from exc
        model = cls(cfg)
        try:
            state = load_file(str(w_path))
        except Exception as exc:  # safetensors raises its own types for truncated or corrupt files
            raise CheckpointMismatchError(f"{w_path}: unreadable safetensors file ({exc})") from exc
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        if cfg.label_encoder == "elmes":
            state.setdefault("label_vectors", model.label_vectors.data)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise CheckpointMismatchError(f"{w_path}: weights do not fit the config in {cfg_path} ({str(exc).splitlines()[-1].strip()})") from exc
        if missing or unexpected:
            raise CheckpointMismatchError(f"{w_path}: weights do not fit the config in {cfg_path} (missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})")
        return model.eval(), doc
