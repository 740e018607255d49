"""The vector-quantization layer: nearest-code lookup, gradient estimator, codebook updates, losses and metrics.

Axis legend: B batch, N vectors per item, D input dimension (`dim`), C code dimension (`codebook_dim`), K codes,
H W (T) spatial (temporal) axes of channel-first maps, M = B * N flattened vectors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.quantize.codebook import Codebook
from tessera.quantize.estimators import rotation_trick, straight_through
from tessera.quantize.metrics import codebook_metrics
from tessera.quantize.search import DEFAULT_MAX_CHUNK_BYTES

__all__ = ["VectorQuantizer", "QuantizerOutput"]

_ESTIMATORS = {"rotation": rotation_trick, "ste": straight_through}


class QuantizerOutput(NamedTuple):
    """What `VectorQuantizer.forward` returns.

    Attributes:
        quantized: same shape and layout as the input; equal to the code vectors (projected out to `dim`), with the
            gradient of the chosen estimator. Masked-out positions carry the input unchanged.
        indices: int64 code indices, (B, N) for (B, N, D) input or (B, *spatial) for channel-first input; -1 at
            masked-out positions.
        loss: scalar auxiliary loss (commitment, plus the codebook loss for a learned codebook), already weighted.
        metrics: detached scalars over the valid vectors of this call (this rank only): `usage` (fraction of the K
            codes used), `perplexity` (exp of the entropy of the code distribution) and `quantization_error`
            (mean over vectors of |e - q|^2 in code space).
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    metrics: dict[str, Tensor]


class VectorQuantizer(nn.Module):
    """Vector quantizer with the rotation trick as its default gradient estimator.

    A drop-in for `vector_quantize_pytorch.VectorQuantize`: the defaults are the rotation-trick paper's VQ-VAE
    settings (arXiv 2410.06424, App. A.10 Table 8, Euclidean rows): Euclidean lookup, EMA codebook with decay 0.8 and
    Laplace eps 1e-5, commitment weight 1.0, no k-means init, no dead-code restarts. Unlike the peer, `forward`
    returns a 4-field named tuple `(quantized, indices, loss, metrics)`.

    Args:
        dim: input dimension D.
        codebook_size: number of codes K.
        codebook_dim: code dimension C; when it differs from `dim`, a linear projection maps in and out
            (factorised codes, as ViT-VQGAN; with cosine distance the projected vectors are l2-normalised).
        distance: "euclidean" or "cosine" (inputs and codes l2-normalised; the rotation is then between unit vectors).
        estimator: "rotation" (rotation trick) or "ste" (straight-through).
        codebook_update: "ema" (EMA statistics move the codes) or "learned" (codes are a parameter trained by a
            codebook loss `codebook_weight * |sg(e) - q|^2`).
        ema_decay: EMA decay.
        eps: Laplace smoothing of the EMA cluster sizes.
        commitment_weight: weight beta of the commitment loss `|e - sg(q)|^2` (mean over elements).
        codebook_weight: weight of the codebook loss (learned codebooks only).
        kmeans_init: initialise the codes by k-means on the first training batch (all ranks).
        kmeans_iters: k-means iterations.
        dead_code_threshold: restart codes whose EMA cluster size drops below this from batch vectors (0: never).
        sync_codebook: sum codebook statistics over ranks; None means "when torch.distributed is initialised".
        check_finite: raise on NaN/Inf inputs (set False to skip the check, one pass over the input).
        max_chunk_bytes: bound on the extra memory of the nearest-code search (see `tessera.quantize.search`).
        seed: seed for k-means and restart sampling (identical on every rank).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        codebook_dim: int | None = None,
        distance: str = "euclidean",
        estimator: str = "rotation",
        codebook_update: str = "ema",
        ema_decay: float = 0.8,
        eps: float = 1e-5,
        commitment_weight: float = 1.0,
        codebook_weight: float = 1.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        sync_codebook: bool | None = None,
        check_finite: bool = True,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
        seed: int = 0,
    ) -> None:
        super().__init__()
        codebook_dim = dim if codebook_dim is None else codebook_dim
        for name, value in (("dim", dim), ("codebook_size", codebook_size), ("codebook_dim", codebook_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {sorted(_ESTIMATORS)}, got {estimator!r}")
        if codebook_update not in ("ema", "learned"):
            raise ValueError(f"codebook_update must be 'ema' or 'learned', got {codebook_update!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if eps < 0 or dead_code_threshold < 0 or commitment_weight < 0 or codebook_weight < 0:
            raise ValueError("eps, dead_code_threshold, commitment_weight and codebook_weight must be >= 0")
        if codebook_size * 4 > max_chunk_bytes:
            raise ValueError(
                f"codebook_size={codebook_size} needs {codebook_size * 4} bytes of scores per vector, more than "
                f"max_chunk_bytes={max_chunk_bytes}; raise max_chunk_bytes or use a smaller codebook"
            )
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.distance = distance
        self.estimator = estimator
        self.codebook_update = codebook_update
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.check_finite = check_finite
        self.project_in = nn.Linear(dim, codebook_dim) if codebook_dim != dim else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if codebook_dim != dim else nn.Identity()
        self.codebook = Codebook(
            codebook_size,
            codebook_dim,
            distance=distance,
            update=codebook_update,
            decay=ema_decay,
            eps=eps,
            dead_code_threshold=dead_code_threshold,
            sync=True if sync_codebook is None else sync_codebook,
            max_chunk_bytes=max_chunk_bytes,
            seed=seed,
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, codebook_dim={self.codebook_dim}, "
            f"distance={self.distance!r}, estimator={self.estimator!r}, codebook_update={self.codebook_update!r}"
        )

    # -- layout --------------------------------------------------------------------------------------------------
    def _flatten(self, x: Tensor) -> tuple[Tensor, tuple[int, ...], bool]:
        if not x.is_floating_point():
            raise TypeError(f"VectorQuantizer input must be floating point, got {x.dtype}")
        if x.ndim == 3:
            if x.shape[-1] != self.dim:
                raise ValueError(f"expected input (B, N, {self.dim}), got {tuple(x.shape)}: last axis must be dim={self.dim}")
            return x.reshape(-1, self.dim), tuple(x.shape[:2]), False
        if x.ndim in (4, 5):
            if x.shape[1] != self.dim:
                raise ValueError(
                    f"expected a channel-first map (B, {self.dim}, *spatial), got {tuple(x.shape)}: axis 1 must be dim={self.dim}"
                )
            grid = (x.shape[0], *x.shape[2:])
            return x.movedim(1, -1).reshape(-1, self.dim), grid, True  # (B, D, H, W) -> (B*H*W, D)
        raise ValueError(f"expected input (B, N, D) or a channel-first map (B, D, H, W[, ...]), got rank {x.ndim} shape {tuple(x.shape)}")

    @staticmethod
    def _restore(flat: Tensor, grid: tuple[int, ...], channel_first: bool) -> Tensor:
        out = flat.reshape(*grid, flat.shape[-1])  # (B, *grid, D)
        return out.movedim(-1, 1) if channel_first else out

    # -- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """Quantize `x`.

        Args:
            x: (B, N, D) vectors or a channel-first map (B, D, H, W) / (B, D, T, H, W).
            mask: optional bool tensor of the index shape ((B, N) or (B, *spatial)); False marks padding, which is
                left out of the codebook statistics, the loss and the metrics, passes through unchanged and gets
                index -1.

        Returns:
            A `QuantizerOutput`.

        Raises:
            ValueError: wrong rank or dimension, empty input, NaN/Inf values, or a mask of the wrong shape.
            TypeError: non-floating input or non-bool mask.
        """
        flat, grid, channel_first = self._flatten(x)
        if flat.shape[0] == 0:
            raise ValueError(f"VectorQuantizer got an empty input of shape {tuple(x.shape)}")
        if self.check_finite and not bool(torch.isfinite(flat).all()):
            raise ValueError("VectorQuantizer input contains NaN or Inf (pass check_finite=False to skip this check)")
        valid = None
        if mask is not None:
            if mask.dtype != torch.bool:
                raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
            if tuple(mask.shape) != grid:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match the index shape {grid}")
            valid = mask.reshape(-1)

        z = self.project_in(flat)
        if self.distance == "cosine":
            z = F.normalize(z, dim=-1)
        z_valid = z if valid is None else z[valid]

        if self.training and self.kmeans_init and not bool(self.codebook.initialized):
            self.codebook.kmeans_init(z_valid, iters=self.kmeans_iters)

        idx = self.codebook.nearest(z)
        codes = self.codebook.codes()
        q = F.embedding(idx, codes)  # (M, C) fp32; carries gradient to a learned codebook
        if self.training and z.requires_grad:
            out = _ESTIMATORS[self.estimator](z, q.detach().to(z.dtype))
        else:
            out = q.detach().to(z.dtype)

        q_valid = q if valid is None else q[valid]
        idx_valid = idx if valid is None else idx[valid]
        if z_valid.shape[0] > 0:
            loss = self.commitment_weight * F.mse_loss(z_valid.float(), q_valid.detach())
            if self.codebook_update == "learned":
                loss = loss + self.codebook_weight * F.mse_loss(q_valid, z_valid.detach().float())
        else:
            loss = z.float().sum() * 0.0  # keeps the graph connected for DDP when this rank has no valid vector

        if self.training:
            self.codebook.ema_update(z_valid, idx_valid)
            self.codebook.restart_dead_codes(z_valid)

        metrics = codebook_metrics(z_valid.detach(), q_valid.detach(), idx_valid, self.codebook_size)
        quantized = self.project_out(out)
        if valid is not None:
            quantized = torch.where(valid.unsqueeze(1), quantized, flat)
            idx = idx.masked_fill(~valid, -1)
        quantized = self._restore(quantized, grid, channel_first)
        indices = idx.reshape(grid)
        return QuantizerOutput(quantized, indices, loss, metrics)

    # -- decoding ------------------------------------------------------------------------------------------------
    def codes_to_vectors(self, indices: Tensor) -> Tensor:
        """Map code indices back to the vectors `forward` returns for them (exactly, in eval mode).

        Args:
            indices: (B, N) indices give (B, N, D); (B, *spatial) with two or three spatial axes give a channel-first
                map (B, D, *spatial).

        Raises:
            TypeError: non-integer indices.
            ValueError: indices outside [0, codebook_size) or of an unsupported rank.
        """
        if indices.dtype in (torch.bool,) or indices.is_floating_point() or indices.is_complex():
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        if indices.ndim not in (2, 3, 4):
            raise ValueError(f"indices must be (B, N), (B, H, W) or (B, T, H, W), got shape {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(
                f"indices must lie in [0, {self.codebook_size}), got range [{int(indices.min())}, {int(indices.max())}]"
            )
        codes = self.codebook.codes()
        q = F.embedding(indices.reshape(-1).long(), codes)
        param = next(self.project_out.parameters(), None)
        if param is not None:
            q = q.to(param.dtype)
        out = self.project_out(q)
        return self._restore(out, tuple(indices.shape), channel_first=indices.ndim >= 3)
