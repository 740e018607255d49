"""The one interface every frozen image feature extractor in Tessera implements.

Axis legend: B batch, C channels (3, RGB), H W height and width, D embedding size (`embed_dim`).

An extractor takes images as float (B, 3, H, W) in [0, 1], whatever their size, and does its own preprocessing
(resize, crop, normalisation) inside, so callers never need to know a backbone's mean/std or input size:

- `embed(images) -> (B, D)` float32 pooled embeddings (what CAML and the few-shot baselines consume);
- `forward_features(images) -> list[(B, C_i, H_i, W_i)]` intermediate feature maps, for networks that have them
  (LPIPS-style perceptual losses compare these); `feature_channels` lists C_i.

Extractors are frozen: parameters never require gradients and the module stays in eval mode even when a parent
calls `.train()` (BatchNorm statistics and dropout must not change under a frozen backbone). Gradients still flow to
the *images*, so a perceptual loss can train a generator through `forward_features`. Neither method wraps itself in
`no_grad`; callers that only need embeddings should use `torch.inference_mode()` (the embedding cache does).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeatureExtractor", "check_images", "resize_center_crop_tensor", "freeze_"]


def check_images(images: Tensor, name: str = "images") -> None:
    """Raise a clear error unless `images` is float (B, 3, H, W) with finite values in [0, 1] (small slack allowed)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor in [0, 1], got dtype {images.dtype} (divide uint8 by 255)")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: empty batch")
    if images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"{name}: empty image of size {tuple(images.shape[2:])}")
    lo, hi = float(images.detach().amin()), float(images.detach().amax())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name}: contains NaN or Inf")
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{name}: values must lie in [0, 1], got range [{lo:.3g}, {hi:.3g}] (already normalised?)")


def resize_center_crop_tensor(images: Tensor, size: int, crop_pct: float = 1.0, interpolation: str = "bicubic") -> Tensor:
    """Resize the shorter side to `size / crop_pct`, then center-crop `size` x `size` (timm/CLIP eval transform).

    Works on float tensors (B, C, H, W), antialiased when shrinking, and is differentiable.
    """
    _, _, h, w = images.shape
    short = int(math.floor(size / crop_pct))
    if h <= w:
        new_h, new_w = short, max(short, round(w * short / h))
    else:
        new_h, new_w = max(short, round(h * short / w)), short
    if (new_h, new_w) != (h, w):
        mode = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
        shrinking = new_h < h or new_w < w
        images = F.interpolate(images, size=(new_h, new_w), mode=mode, align_corners=False, antialias=shrinking)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return images[:, :, top : top + size, left : left + size]


def freeze_(module: nn.Module) -> nn.Module:
    """Stop gradients to every parameter of `module` and put it in eval mode; returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class FeatureExtractor(nn.Module):
    """Base class of frozen extractors: images in [0, 1] -> embeddings / feature maps.

    Subclasses set `name`, `embed_dim`, `input_size` (side of the square the backbone sees, or None to keep the
    input size), `mean`/`std` (normalisation after resizing) and implement `_embed(x)` on preprocessed input, plus
    `_forward_features(x)` when the network has spatial feature maps.

    Attributes:
        name: the name `load_extractor` knows this extractor by.
        embed_dim: D, the size of `embed`'s output.
        input_size: images are resized (shorter side) and center-cropped to this square by `embed`.
        crop_pct: the shorter side is first resized to `input_size / crop_pct` (timm convention; 1.0 = no margin).
        feature_channels: channels of each map returned by `forward_features` (empty when there are none).
    """

    name: str = "extractor"
    embed_dim: int = 0
    input_size: int | None = None
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    feature_channels: tuple[int, ...] = ()

    def __init__(self, mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.5, 0.5, 0.5)) -> None:
        super().__init__()
        # Buffers, so they follow .to(device); not persistent: they are config, not weights.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    # -- frozen behaviour ---------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> FeatureExtractor:
        """Extractors stay in eval mode: a frozen backbone's BatchNorm/dropout must not change with the parent's mode."""
        return super().train(False)

    # -- preprocessing ------------------------------------------------------------------------------------------------
    def preprocess(self, images: Tensor, resize: bool = True) -> Tensor:
        """Validate, resize/crop to `input_size` (when `resize` and the size is set) and normalise."""
        check_images(images)
        x = images.to(self.mean.dtype)
        if resize and self.input_size is not None:
            x = resize_center_crop_tensor(x, self.input_size, self.crop_pct, self.interpolation)
        return (x - self.mean) / self.std

    # -- public API -----------------------------------------------------------------------------------------------------
    def embed(self, images: Tensor) -> Tensor:
        """Pooled embeddings (B, D) float32 of images (B, 3, H, W) in [0, 1]."""
        out = self._embed(self.preprocess(images))
        if out.ndim != 2 or out.shape[1] != self.embed_dim:
            raise RuntimeError(f"{self.name}: backbone returned {tuple(out.shape)}, expected (B, {self.embed_dim})")
        return out.float()

    def forward(self, images: Tensor) -> Tensor:
        return self.embed(images)

    def forward_features(self, images: Tensor, resize: bool = False) -> list[Tensor]:
        """Intermediate feature maps [(B, C_i, H_i, W_i)], shallow to deep, at the input's own resolution by default.

        Args:
            images: (B, 3, H, W) in [0, 1].
            resize: resize/crop to `input_size` first (False keeps the resolution, as a perceptual loss wants).

        Raises:
            NotImplementedError: the network has no spatial feature maps.
        """
        return self._forward_features(self.preprocess(images, resize=resize))

    # -- to implement -------------------------------------------------------------------------------------------------
    def _embed(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _forward_features(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError(f"{self.name} has no intermediate feature maps")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, input_size={self.input_size}"
