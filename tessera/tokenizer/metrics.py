"""Tokenizer evaluation: MSE, PSNR, SSIM, codebook usage, perplexity, quantization error, Frechet distance, grids.

Axis legend: B batch, T frames, C channels, H W image side, N images, K codes, F feature dimension.

Definitions (rotation-trick paper, App. A.4, and `docs/results/rotation_study.md`):
- MSE and PSNR on the [0, 1] scale of the clamped reconstruction (PSNR = 10 log10(1 / MSE) per image, then averaged).
- SSIM: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1, computed per
  channel on the valid region and averaged (as skimage's `structural_similarity(gaussian_weights=True)` without its
  border padding; the tests check the two agree closely).
- Codebook usage: indices of consecutive groups of `group_size` = 256 validation images are pooled and the fraction of
  the K codes that appear is averaged over complete groups, the remainder dropped ("following ViT-VQGAN", the paper's
  `log_codebook_usage`). With fewer than 256 images the whole set is one (smaller) group and `usage_groups` says 0.
- Perplexity: exp(entropy) of the code histogram over the whole evaluation set.
- Quantization error |e - q|^2 in code space, reported both ways because the paper leaves it open: summed over the
  code dimension (`quantization_error_sum`, the paper's formula) and averaged per element (`quantization_error_mean`,
  what lucidrains' commitment MSE reports).
- r-FID: Frechet distance between Inception-v3 pool features of originals and reconstructions when torchvision's
  Inception weights are cached locally; otherwise the same distance on a Tessera feature network, reported under a
  different key (`fd_<network>`), never as FID.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "mse",
    "psnr",
    "ssim",
    "codebook_usage_groups",
    "frechet_distance",
    "evaluate_tokenizer",
    "resolve_fid_network",
    "image_grid",
    "save_reconstruction_grid",
    "summarize",
]


# -- per-image quality ------------------------------------------------------------------------------------------------
def mse(x: Tensor, y: Tensor) -> Tensor:
    """Per-image mean squared error (B,) of image batches (B, C, H, W)."""
    return ((x.float() - y.float()) ** 2).flatten(1).mean(1)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB (B,); identical images give +inf (callers average finite values or clamp)."""
    return 10.0 * torch.log10(data_range**2 / mse(x, y))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()  # (size, size)


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM (B,) of batches (B, C, H, W); images smaller than the window use a window of their size."""
    x, y = x.float(), y.float()
    b, c, h, w = x.shape
    size = min(window, h, w)
    kernel = _gaussian_window(size, sigma).to(x.device).expand(c, 1, size, size).contiguous()  # depthwise (C, 1, k, k)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


# -- codebook statistics ----------------------------------------------------------------------------------------------
def codebook_usage_groups(indices: Tensor, codebook_size: int, group_size: int = 256) -> tuple[float, int]:
    """Mean fraction of codes used per group of `group_size` images (see module docstring).

    Args:
        indices: (N, ...) code indices, one row per image (or clip).

    Returns:
        (usage, number of complete groups averaged; 0 means the whole set was one smaller group).
    """
    n = indices.shape[0]
    groups = n // group_size
    if groups == 0:
        chunks = [indices]
    else:
        chunks = [indices[i * group_size : (i + 1) * group_size] for i in range(groups)]
    used = [float((torch.bincount(ch.reshape(-1), minlength=codebook_size) > 0).float().mean()) for ch in chunks]
    return float(np.mean(used)), groups


def _perplexity(counts: Tensor) -> float:
    p = counts.double() / counts.sum().clamp_min(1)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))


def frechet_distance(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, F) and b (M, F):
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

    The trace of the matrix root is computed as sum_i sqrt(lambda_i) over the eigenvalues of the symmetric PSD matrix
    S_a^(1/2) S_b S_a^(1/2) (same spectrum as S_a S_b), which avoids the complex round-off of a general sqrtm.
    """
    a = np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if isinstance(b, Tensor) else b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets (N, F) with N >= 2 and equal F, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    lam = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    tr_covmean = float(np.sqrt(np.clip(lam, 0.0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_covmean)


# -- Frechet feature network ----------------------------------------------------------------------------------------
class _InceptionPool(nn.Module):
    """torchvision Inception-v3 pool features (2048-d) from locally cached weights, inputs resized to 299."""

    name = "inception-v3-torchvision"
    _FILE = "inception_v3_google-0cc3c7bd.pth"

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        path = Path(torch.hub.get_dir()) / "checkpoints" / self._FILE
        if not path.is_file():
            raise FileNotFoundError(path)
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net.fc = nn.Identity()
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def embed(self, images: Tensor) -> Tensor:
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return self.net((x - self.mean) / self.std)


def resolve_fid_network(preference: str = "auto") -> tuple[nn.Module | None, str]:
    """The network behind the Frechet metric and the metric's key.

    Args:
        preference: "auto" (Inception if its weights are cached, else the default Tessera feature network, else
            none), "inception", "none", or a feature-network name for `tessera.tokenizer.perceptual.load_feature_network`.

    Returns:
        (network or None, key): key is "rfid" for Inception, "fd_<network name>" otherwise ("" when none).
    """
    if preference == "none":
        return None, ""
    if preference in ("auto", "inception"):
        try:
            net = _InceptionPool()
            return net, "rfid"
        except (ImportError, FileNotFoundError, RuntimeError):
            if preference == "inception":
                raise RuntimeError(
                    "r-FID needs torchvision and Inception-v3 weights in the local torch hub cache "
                    f"({Path(torch.hub.get_dir()) / 'checkpoints' / _InceptionPool._FILE}); Tessera never downloads them"
                ) from None
        preference = os.environ.get("TESSERA_FD_NETWORK", "tessera-resnet-s")
        try:
            from tessera.tokenizer.perceptual import load_feature_network

            net = load_feature_network(preference)
        except (ImportError, RuntimeError, ValueError, FileNotFoundError, TypeError):
            return None, ""
        return net, "fd_" + _key(str(getattr(net, "name", preference)))
    from tessera.tokenizer.perceptual import load_feature_network

    net = load_feature_network(preference)
    return net, "fd_" + _key(str(getattr(net, "name", preference)))


def _key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


# -- whole-set evaluation ---------------------------------------------------------------------------------------------
def _batches(data: Any, batch_size: int, limit: int | None):
    n = len(data) if limit is None else min(limit, len(data))
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        if isinstance(data, Tensor):
            yield data[start:stop]
        else:
            yield torch.stack([data[i] for i in range(start, stop)])


@torch.no_grad()
def evaluate_tokenizer(
    tokenizer: nn.Module,
    data: Tensor | Any,
    *,
    batch_size: int = 64,
    group_size: int = 256,
    max_items: int | None = None,
    feature_network: nn.Module | None = None,
    feature_key: str = "fd",
    keep: int = 0,
) -> dict[str, Any]:
    """Reconstruction and codebook metrics of a tokenizer over a set of images (or clips).

    Args:
        tokenizer: an `ImageTokenizer` / `VideoTokenizer`.
        data: float tensor (N, 3, H, W) / (N, T, 3, H, W) in [0, 1], or a dataset whose items are such tensors.
        batch_size: items per forward pass.
        group_size: images per codebook-usage group (256, the paper's).
        max_items: evaluate only the first items.
        feature_network: optional frozen network with `embed(images) -> (B, F)` for a Frechet distance between
            originals and reconstructions (video: per frame).
        feature_key: the metric's key (see `resolve_fid_network`).
        keep: also return the first `keep` originals and reconstructions (for grids) under "_originals"/"_recons".

    Returns:
        Scalars: mse, psnr, ssim, usage, usage_groups, perplexity, quantization_error_sum, quantization_error_mean,
        num_items (and `feature_key` when a network is given); plus "_code_counts" (K,) for histograms.
    """
    cfg = tokenizer.config
    device = next(tokenizer.parameters()).device
    sums = {"mse": 0.0, "psnr": 0.0, "ssim": 0.0}
    n_frames = 0
    qerr, n_vectors = 0.0, 0
    indices: list[Tensor] = []
    feats_a: list[Tensor] = []
    feats_b: list[Tensor] = []
    kept_x: list[Tensor] = []
    kept_y: list[Tensor] = []
    with tokenizer._inference():
        for x in _batches(data, batch_size, max_items):
            x = x.to(device).float()
            z = tokenizer.encode_latents(x)
            vq = tokenizer.quantizer(z)
            y = tokenizer.decode_latents(vq.quantized).clamp(0.0, 1.0)
            fx, fy = (x.flatten(0, 1), y.flatten(0, 1)) if x.ndim == 5 else (x, y)
            sums["mse"] += float(mse(fx, fy).sum())
            sums["psnr"] += float(psnr(fx, fy).clamp(max=100.0).sum())
            sums["ssim"] += float(ssim(fx, fy).sum())
            n_frames += fx.shape[0]
            nvec = vq.indices.numel()
            qerr += float(vq.metrics["quantization_error"]) * nvec
            n_vectors += nvec
            indices.append(vq.indices.cpu())
            if feature_network is not None:
                feats_a.append(feature_network.embed(fx).float().cpu())
                feats_b.append(feature_network.embed(fy).float().cpu())
            if keep and sum(len(k) for k in kept_x) < keep:
                kept_x.append(x.cpu())
                kept_y.append(y.cpu())
    if n_frames == 0:
        raise ValueError("evaluate_tokenizer got no data")
    idx = torch.cat(indices)
    usage, groups = codebook_usage_groups(idx, cfg.codebook_size, group_size)
    counts = torch.bincount(idx.reshape(-1), minlength=cfg.codebook_size)
    out: dict[str, Any] = {
        "mse": sums["mse"] / n_frames,
        "psnr": sums["psnr"] / n_frames,
        "ssim": sums["ssim"] / n_frames,
        "usage": usage,
        "usage_groups": groups,
        "perplexity": _perplexity(counts),
        "quantization_error_sum": qerr / n_vectors,
        "quantization_error_mean": qerr / n_vectors / cfg.code_dim,
        "num_items": int(idx.shape[0]),
        "_code_counts": counts,
    }
    if feature_network is not None:
        out[feature_key] = frechet_distance(torch.cat(feats_a), torch.cat(feats_b))
    if keep:
        out["_originals"] = torch.cat(kept_x)[:keep]
        out["_recons"] = torch.cat(kept_y)[:keep]
    return out


# -- grids ------------------------------------------------------------------------------------------------------------
def image_grid(rows: list[Tensor], pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile rows of images (each (N, 3, H, W) in [0, 1]) into one uint8 (H', W', 3) array with white padding."""
    if not rows:
        raise ValueError("image_grid needs at least one row")
    h, w = rows[0].shape[-2:]
    ncol = max(r.shape[0] for r in rows)
    grid = np.full((len(rows) * (h * scale + pad) + pad, ncol * (w * scale + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        arr = (row.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
        if scale > 1:
            arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
        for j, img in enumerate(arr):
            y0, x0 = pad + i * (h * scale + pad), pad + j * (w * scale + pad)
            grid[y0 : y0 + h * scale, x0 : x0 + w * scale] = img
    return grid


def save_reconstruction_grid(
    originals: Tensor, reconstructions: Tensor, path: str | os.PathLike[str], *, ncol: int = 8, scale: int = 2
) -> Path:
    """Save originals and reconstructions as a PNG: alternating rows (originals, then their reconstructions).

    Images are (N, 3, H, W); clips (N, T, 3, H, W) give one row of frames per clip. Written atomically.
    """
    from PIL import Image

    rows: list[Tensor] = []
    if originals.ndim == 5:
        for a, b in zip(originals, reconstructions, strict=True):
            rows += [a, b]
    else:
        for start in range(0, len(originals), ncol):
            rows += [originals[start : start + ncol], reconstructions[start : start + ncol]]
    grid = image_grid(rows, scale=scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(grid).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def summarize(values: list[float]) -> tuple[float, float]:
    """(mean, sample std) of a list of numbers (std 0 for one value); NaN-free inputs expected."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0

