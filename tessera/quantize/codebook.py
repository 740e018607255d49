"""Codebook state and its updates: EMA statistics, k-means initialisation, dead-code restart.

Axis legend: N vectors, K codes, D code dimension.

EMA update (van den Oord et al. 2017, App. A.1; Laplace smoothing as in Sonnet and lucidrains):
    N_k <- decay N_k + (1 - decay) n_k             n_k: vectors assigned to code k in this batch
    m_k <- decay m_k + (1 - decay) sum_{e -> k} e
    c_k <- m_k / N~_k,   N~_k = (N_k + eps) / (sum N + K eps) * sum N
In cosine mode the sums accumulate unit vectors and c_k is renormalised.

`cluster_size` starts at 1 with `embed_avg` equal to the initial codes, so c_k = m_k / N~_k holds from the first step;
starting the sizes at 0 (as the rotation-trick paper's local copy does) inflates never-used codes by ~1/eps and then
drives them to near-zero norm, the regime where the rotation trick's gradient over-rotates (paper Sec. 6).

All statistics are kept and combined in fp32, also when the module is cast to half precision. Under torch.distributed the per-batch counts and sums are summed over
ranks before they enter the EMA, k-means runs on the union of all ranks' vectors, and restart samples are drawn from
that union with a generator every rank seeds identically, so all ranks hold the same codebook after every step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.quantize.distributed import all_reduce_sum, sample_rows
from tessera.quantize.search import DEFAULT_MAX_CHUNK_BYTES, nearest_codes

__all__ = ["Codebook"]


class Codebook(nn.Module):
    """K code vectors of dimension D and the statistics that update them.

    Args:
        codebook_size: K.
        codebook_dim: D.
        distance: "euclidean" or "cosine" (codes kept l2-normalised).
        update: "ema" (codes are buffers moved by EMA statistics) or "learned" (codes are a parameter trained by the
            codebook loss).
        decay: EMA decay.
        eps: Laplace smoothing constant.
        dead_code_threshold: codes whose EMA cluster size falls below this are restarted from batch vectors
            (0 disables restarts).
        sync: sum statistics over ranks under torch.distributed.
        max_chunk_bytes: memory bound for the nearest-code search.
        seed: seed of the generator behind k-means and restart sampling.
    """

    def __init__(
        self,
        codebook_size: int,
        codebook_dim: int,
        *,
        distance: str = "euclidean",
        update: str = "ema",
        decay: float = 0.8,
        eps: float = 1e-5,
        dead_code_threshold: float = 0.0,
        sync: bool = True,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.distance = distance
        self.update = update
        self.decay = decay
        self.eps = eps
        self.dead_code_threshold = dead_code_threshold
        self.sync = sync
        self.max_chunk_bytes = max_chunk_bytes
        self.seed = seed

        init = torch.empty(codebook_size, codebook_dim)
        # Kaiming-uniform, as lucidrains and the paper's code initialise codes; unit rows for cosine.
        bound = 1.0 / math.sqrt(codebook_dim)
        nn.init.uniform_(init, -bound, bound)
        if distance == "cosine":
            init = F.normalize(init, dim=-1)
        if update == "learned":
            self.weight = nn.Parameter(init)
        else:
            self.register_buffer("weight", init)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_avg", init.clone())
        self.register_buffer("initialized", torch.tensor(False))
        # Counts draws of the sampling generator, so restarts stay reproducible across checkpoint/resume.
        self.register_buffer("sample_count", torch.tensor(0, dtype=torch.long))

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # Codes and statistics stay fp32 under module.half()/.to(bf16): EMA sums in low precision lose small updates.
        super()._apply(fn, recurse)
        for t in list(self._buffers.values()) + list(self._parameters.values()):
            if t is not None and t.is_floating_point() and t.dtype != torch.float32:
                t.data = t.data.float()
        return self

    # -- lookup ------------------------------------------------------------------------------------------------
    def codes(self) -> Tensor:
        """(K, D) code vectors in fp32 (unit rows in cosine mode)."""
        w = self.weight.float()
        return F.normalize(w, dim=-1) if self.distance == "cosine" and self.update == "learned" else w

    def nearest(self, x: Tensor) -> Tensor:
        """(N,) index of the nearest code for each row of `x` (N, D)."""
        return nearest_codes(x.detach(), self.codes().detach(), distance=self.distance, max_chunk_bytes=self.max_chunk_bytes, check_finite=False)

    # -- sampling shared by k-means and restarts ---------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.sample_count))
        self.sample_count += 1
        return g

    # -- k-means initialisation --------------------------------------------------------------------------------
    @torch.no_grad()
    def kmeans_init(self, x: Tensor, iters: int = 10) -> bool:
        """Initialise the codes with k-means on the rows of `x` (N, D), over all ranks. Returns False if no rank has rows."""
        x = x.detach().float()
        centroids = sample_rows(x, self.codebook_size, self._generator(), self.sync)
        if centroids is None:
            return False
        if self.distance == "cosine":
            centroids = F.normalize(centroids, dim=-1)
        counts = torch.zeros(self.codebook_size, device=x.device)
        for _ in range(iters):
            idx = nearest_codes(x, centroids, distance=self.distance, max_chunk_bytes=self.max_chunk_bytes, check_finite=False)
            sums = torch.zeros_like(centroids).index_add_(0, idx, x)
            counts = torch.bincount(idx, minlength=self.codebook_size).float()
            all_reduce_sum(sums, self.sync)
            all_reduce_sum(counts, self.sync)
            used = counts > 0
            new = sums / counts.clamp_min(1.0).unsqueeze(1)
            if self.distance == "cosine":
                new = F.normalize(new, dim=-1)
            centroids = torch.where(used.unsqueeze(1), new, centroids)
        self.weight.data.copy_(centroids)
        self.cluster_size.copy_(counts.clamp_min(1.0))
        self.embed_avg.copy_(centroids * self.cluster_size.unsqueeze(1))
        self.initialized.fill_(True)
        return True

    # -- EMA update --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def ema_update(self, x: Tensor, idx: Tensor) -> None:
        """Move the EMA statistics towards the batch assignment of rows `x` (N, D) to codes `idx` (N,).

        In "learned" mode only the statistics move (they drive dead-code restarts); the codes are left to the optimiser.
        """
        x = x.detach().float()
        counts = torch.bincount(idx, minlength=self.codebook_size).float()
        sums = torch.zeros(self.codebook_size, self.codebook_dim, device=x.device).index_add_(0, idx, x)
        all_reduce_sum(counts, self.sync)
        all_reduce_sum(sums, self.sync)
        if float(counts.sum()) == 0:
            return  # no rank saw a valid vector: leave the codebook as it is
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        if self.update != "ema":
            return
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        new = self.embed_avg / smoothed.unsqueeze(1)
        if self.distance == "cosine":
            new = F.normalize(new, dim=-1)
        self.weight.data.copy_(new)

    # -- dead-code restart -------------------------------------------------------------------------------------
    @torch.no_grad()
    def restart_dead_codes(self, x: Tensor) -> int:
        """Replace codes whose EMA cluster size is below the threshold by rows drawn from `x` (all ranks).

        Returns the number of codes restarted (the same on every rank).
        """
        if self.dead_code_threshold <= 0:
            return 0
        dead = self.cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        samples = sample_rows(x.detach().float(), n_dead, self._generator(), self.sync)
        if samples is None:
            return 0
        if self.distance == "cosine":
            samples = F.normalize(samples, dim=-1)
        self.weight.data[dead] = samples.to(self.weight.dtype)
        self.cluster_size[dead] = self.dead_code_threshold
        self.embed_avg[dead] = samples * self.dead_code_threshold
        return n_dead
