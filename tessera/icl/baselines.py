"""The methods CAML is compared with (papers-digest B4), all on the same frozen embeddings.

Axis legend: N support items, Q queries, W way, C maximum way, D embedding size, T sequence length.

Every method maps (support (N, D), support labels (N,) in [0, W), queries (Q, D), way W) to scores (Q, W), higher
is more likely. Labels are first-appearance labels (`tessera.icl.episodes`).

Fitted on the support only (no training):
- `protonet`: Prototypical Networks (Snell et al. 2017): negative squared Euclidean distance to class means.
- `simpleshot`: SimpleShot (Wang et al. 2019, "CL2N"): centre by the base-data mean, L2-normalise, cosine to means.
- `knn`: k-nearest neighbours by cosine similarity (k = 1 by default).
- `metaopt_svm`: MetaOptNet's base learner (Lee et al. 2019), the Crammer-Singer multi-class SVM fitted on the
  support in its dual exactly as MetaOptNet poses it (C = 0.1, +I on the Gram matrix), solved by accelerated
  projected gradient instead of a QP library (the official code needs an external `qpth` fork).
Meta-trained on the base datasets (`tessera/recipes/train_icl.py`, same episodes and budget rules as CAML):
- `MetaQDA`: Bayesian QDA with a meta-learned Normal-inverse-Wishart prior (Zhang et al. 2021), the fully Bayesian
  (Student-t predictive) variant with the official regularisation of the precision towards I (0.5).
- `SNAIL`: temporal convolutions + causal attention over [support; query] with one-hot labels (Mishra et al.
  2018), the block layout of CAML's baseline. The softmax runs over keys (the widely copied snail-pytorch code
  normalised over queries, dim=1).
- `GPICL`: the GPICL-style sequence model of CAML's comparison: a transformer over [support; query] tokens
  (feature || one-hot label, a zero label for the query) with an input projection and learned positional
  embeddings, read at the query position. Unlike CAML it sees the support's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.icl.model import CAMLConfig, FeatureNorm, _Block

__all__ = [
    "prototypes",
    "protonet",
    "simpleshot",
    "knn",
    "metaopt_svm",
    "MetaQDA",
    "SNAIL",
    "SNAILConfig",
    "GPICL",
    "GPICLConfig",
]


def prototypes(support: Tensor, labels: Tensor, way: int) -> Tensor:
    """Class means (W, D)."""
    protos = torch.zeros(way, support.shape[1], dtype=support.dtype, device=support.device).index_add_(0, labels, support)
    return protos / torch.bincount(labels, minlength=way).clamp_min(1).unsqueeze(1).to(support.dtype)


def protonet(support: Tensor, labels: Tensor, query: Tensor, way: int) -> Tensor:
    """Prototypical Networks: -||q - mean_c||^2."""
    return -torch.cdist(query, prototypes(support, labels, way)).square()


def simpleshot(support: Tensor, labels: Tensor, query: Tensor, way: int, center: Tensor | None = None) -> Tensor:
    """SimpleShot CL2N: subtract `center` (the mean base-class feature), L2-normalise, cosine to class means."""
    if center is not None:
        support, query = support - center, query - center
    support, query = F.normalize(support, dim=1), F.normalize(query, dim=1)  # easyfsl's feature_normalization=2
    return query @ F.normalize(prototypes(support, labels, way), dim=1).T


def knn(support: Tensor, labels: Tensor, query: Tensor, way: int, k: int = 1) -> Tensor:
    """k-NN by cosine similarity: votes of the k nearest support items, ties broken by summed similarity."""
    sim = F.normalize(query, dim=1) @ F.normalize(support, dim=1).T  # (Q, N)
    k = min(k, support.shape[0])
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(query.shape[0], way, dtype=sim.dtype, device=sim.device)
    votes.scatter_add_(1, labels[idx], torch.ones_like(top))
    tie = torch.zeros_like(votes).scatter_add_(1, labels[idx], top)
    return votes + 1e-3 * tie / k


def _project_capped_simplex(v: Tensor, total: float) -> Tensor:
    """Euclidean projection of each row of `v` onto {b >= 0, sum(b) = total} (sort-based, Duchi et al. 2008)."""
    u, _ = torch.sort(v, dim=1, descending=True)
    css = u.cumsum(dim=1) - total
    ind = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    cond = (u - css / ind) > 0
    rho = cond.to(v.dtype).cumsum(dim=1).argmax(dim=1, keepdim=True)  # last index where cond holds
    theta = css.gather(1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def metaopt_svm(support: Tensor, labels: Tensor, query: Tensor, way: int, c_reg: float = 0.1, iters: int = 300) -> Tensor:
    """MetaOptNet's Crammer-Singer SVM head on the support; scores = sum_i alpha_ik <x_i, x_q>.

    Dual (MetaOptNet, `MetaOptNetHead_SVM_CS`): minimise 1/2 a^T ((K kron I) + I) a - sum_i a_{i,y_i} subject to
    a_ik <= C [k = y_i] and sum_k a_ik = 0. With b_i = C e_{y_i} - a_i the feasible set of each row is the scaled
    simplex {b >= 0, sum b = C}, onto which FISTA projects exactly.
    """
    x = support.double()
    kern = x @ x.T  # (N, N)
    y = F.one_hot(labels, way).double()  # (N, W)
    lip = float(torch.linalg.eigvalsh(kern)[-1].clamp_min(0)) + 1.0  # Lipschitz constant of the gradient
    step = 1.0 / lip
    alpha = torch.zeros_like(y)
    z, t = alpha.clone(), 1.0
    for _ in range(iters):
        grad = kern @ z + z - y
        v = z - step * grad
        new = c_reg * y - _project_capped_simplex(c_reg * y - v, c_reg)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = new + ((t - 1) / t_new) * (new - alpha)
        alpha, t = new, t_new
    return (query.double() @ x.T @ alpha).to(query.dtype)  # (Q, W)


class MetaQDA(nn.Module):
    """MetaQDA, fully Bayesian variant: a meta-learned NIW prior, class posteriors, Student-t predictive log-density.

    Parameters follow the official code: prior mean `m`, pseudo-count `kappa`, degrees of freedom `nu` (clamped to
    > D - 1) and the prior scale matrix Psi = L L^T with L lower-triangular (|diag|); the predictive precision is
    regularised towards the identity, (1 - reg) Sigma^-1 + reg I.
    """

    def __init__(self, dim: int, reg: float = 0.5) -> None:
        super().__init__()
        self.dim = dim
        self.reg = reg
        self.m = nn.Parameter(torch.zeros(dim))
        self.kappa = nn.Parameter(torch.tensor(0.1))
        self.nu = nn.Parameter(torch.tensor(float(dim)))
        self.triu_diag = nn.Parameter(torch.ones(dim))
        self.tril = nn.Parameter(torch.zeros(dim, dim))
        self.register_buffer("mask", torch.tril(torch.ones(dim, dim), diagonal=-1), persistent=False)

    def forward(self, support: Tensor, labels: Tensor, query: Tensor, way: int) -> Tensor:
        d = self.dim
        x, q = support.double(), query.double()
        lower = torch.diag(self.triu_diag.abs()) + self.tril * self.mask
        psi = (lower @ lower.T).double()
        kappa = self.kappa.abs().double() + 1e-6
        nu = self.nu.double().clamp_min(d - 1 + 1e-6)
        m = self.m.double()
        y = F.one_hot(labels, way).double()  # (N, W)
        n = y.sum(0)  # (W,)
        mean = (y.T @ x) / n.unsqueeze(1)  # (W, D)
        mu = (kappa * m + n.unsqueeze(1) * mean) / (kappa + n).unsqueeze(1)
        centred = x.unsqueeze(0) - mean.unsqueeze(1)  # (W, N, D)
        scatter = torch.einsum("wn,wnd,wne->wde", y.T, centred, centred)  # (W, D, D), class scatter matrices
        dm = (mean - m).unsqueeze(2)  # (W, D, 1)
        s = psi + scatter + (kappa * n / (kappa + n)).view(-1, 1, 1) * (dm @ dm.transpose(1, 2))  # posterior scale
        sigma = s / ((nu + n - d + 1) * (kappa + n)).view(-1, 1, 1) * (kappa + n + 1).view(-1, 1, 1)
        chol = torch.linalg.cholesky(sigma)
        sigma_inv = torch.cholesky_inverse(chol)
        prec = (1 - self.reg) * sigma_inv + self.reg * torch.eye(d, dtype=sigma.dtype, device=sigma.device)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(-1)  # (W,)
        common = nu + n + 1 - d  # (W,)
        bias = torch.lgamma(0.5 * (common + d)) - torch.lgamma(0.5 * common) - 0.5 * d * torch.log(common) - 0.5 * logdet
        diff = q.unsqueeze(0) - mu.unsqueeze(1)  # (W, Q, D)
        maha = torch.einsum("wqd,wde,wqe->wq", diff, prec, diff)  # (W, Q)
        logp = bias.unsqueeze(1) - 0.5 * (common + d).unsqueeze(1) * torch.log1p(maha / common.unsqueeze(1))
        return logp.T.to(query.dtype)  # (Q, W)


# -- sequence-model baselines ---------------------------------------------------------------------------------------
@dataclass
class SNAILConfig:
    feature_dim: int = 256
    max_way: int = 10
    max_shot: int = 5  # the temporal-convolution stack covers sequences up to max_way * max_shot + 1
    # CAML's SNAIL on 768-d CLIP features: filters 128, attention (key, value) sizes (64, 32), (256, 128), (512, 256).
    # Halved by default for Tessera's 256-d features (and a CPU budget comparable to caml-s).
    filters: int = 64
    attention_sizes: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((32, 16), (128, 64), (256, 128))
    feature_norm: str = "cl2n"  # the same fixed feature preprocessing as CAML (see tessera.icl.model.FeatureNorm)


class _CausalConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(c_in, c_out, 2, padding=dilation, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, C', T), output t sees inputs <= t
        return self.conv(x)[:, :, : -self.dilation]


class _DenseBlock(nn.Module):
    def __init__(self, c_in: int, dilation: int, filters: int) -> None:
        super().__init__()
        self.f = _CausalConv(c_in, filters, dilation)
        self.g = _CausalConv(c_in, filters, dilation)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, torch.tanh(self.f(x)) * torch.sigmoid(self.g(x))], dim=1)


class _TCBlock(nn.Module):
    def __init__(self, c_in: int, seq_len: int, filters: int) -> None:
        super().__init__()
        n = int(math.ceil(math.log2(seq_len)))
        self.blocks = nn.ModuleList(_DenseBlock(c_in + i * filters, 2 ** (i + 1), filters) for i in range(n))
        self.out_channels = c_in + n * filters

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C)
        x = x.transpose(1, 2)
        for blk in self.blocks:
            x = blk(x)
        return x.transpose(1, 2)


class _CausalAttention(nn.Module):
    def __init__(self, c_in: int, key: int, value: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(c_in, key), nn.Linear(c_in, key), nn.Linear(c_in, value)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C + value)
        out = F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x), is_causal=True)
        return torch.cat([x, out], dim=-1)


class SNAIL(nn.Module):
    """SNAIL over per-query sequences [support; query] (label one-hots; a zero label for the query)."""

    def __init__(self, cfg: SNAILConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_norm = FeatureNorm(cfg.feature_dim, cfg.feature_norm)
        t = cfg.max_way * cfg.max_shot + 1
        c = cfg.feature_dim + cfg.max_way
        (k1, v1), (k2, v2), (k3, v3) = cfg.attention_sizes
        self.att1 = _CausalAttention(c, k1, v1)
        c += v1
        self.tc1 = _TCBlock(c, t, cfg.filters)
        c = self.tc1.out_channels
        self.att2 = _CausalAttention(c, k2, v2)
        c += v2
        self.tc2 = _TCBlock(c, t, cfg.filters)
        c = self.tc2.out_channels
        self.att3 = _CausalAttention(c, k3, v3)
        c += v3
        self.fc = nn.Linear(c, cfg.max_way)

    def forward(self, support: Tensor, labels: Tensor, query: Tensor, way: int) -> Tensor:
        n, nq = support.shape[0], query.shape[0]
        support, query = self.feature_norm(support), self.feature_norm(query)
        lab = F.one_hot(labels, self.cfg.max_way).to(support.dtype)  # (N, C)
        demo = torch.cat([support, lab], dim=-1).unsqueeze(0).expand(nq, n, -1)  # (Q, N, D + C)
        qtok = torch.cat([query, query.new_zeros(nq, self.cfg.max_way)], dim=-1).unsqueeze(1)  # (Q, 1, D + C)
        x = torch.cat([demo, qtok], dim=1)  # (Q, N + 1, D + C)
        x = self.att3(self.tc2(self.att2(self.tc1(self.att1(x)))))
        return self.fc(x[:, -1])[:, :way]


@dataclass
class GPICLConfig:
    feature_dim: int = 256
    max_way: int = 10
    max_len: int = 64  # longest [support; query] sequence (learned positional embeddings)
    width: int = 320
    num_layers: int = 4
    num_heads: int = 5
    mlp_dim: int = 640
    feature_norm: str = "cl2n"  # the same fixed feature preprocessing as CAML


class GPICL(nn.Module):
    """GPICL-style transformer: projected [feature || one-hot] tokens + learned positions, query read last."""

    def __init__(self, cfg: GPICLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        block_cfg = CAMLConfig(name="gpicl", feature_dim=cfg.width - 16, label_dim=16, max_way=cfg.max_way,
                               num_layers=cfg.num_layers, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim)
        self.feature_norm = FeatureNorm(cfg.feature_dim, cfg.feature_norm)
        self.proj = nn.Linear(cfg.feature_dim + cfg.max_way, cfg.width)
        self.pos = nn.Parameter(torch.zeros(cfg.max_len, cfg.width))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(_Block(block_cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.head = nn.Linear(cfg.width, cfg.max_way, bias=False)

    def forward(self, support: Tensor, labels: Tensor, query: Tensor, way: int) -> Tensor:
        n, nq = support.shape[0], query.shape[0]
        if n + 1 > self.cfg.max_len:
            raise ValueError(f"GPICL sequences are limited to {self.cfg.max_len} tokens, got {n + 1}")
        support, query = self.feature_norm(support), self.feature_norm(query)
        lab = F.one_hot(labels, self.cfg.max_way).to(support.dtype)
        demo = torch.cat([support, lab], dim=-1).unsqueeze(0).expand(nq, n, -1)
        qtok = torch.cat([query, query.new_zeros(nq, self.cfg.max_way)], dim=-1).unsqueeze(1)
        x = self.proj(torch.cat([demo, qtok], dim=1)) + self.pos[: n + 1]  # (Q, N + 1, width)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, -1]))[:, :way]
