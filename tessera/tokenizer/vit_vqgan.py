"""ViT-VQGAN encoder and decoder (Yu et al., ICLR 2022), small: patch transformers around factorised, l2-normalised codes.

Axis legend: B batch, C channels, H W image side, p patch size, h w patch grid (H/p, W/p), N = h*w tokens,
D embed_dim, T frames (the video module reuses these blocks).

Encoder: p x p patches -> linear embedding + learned position embedding -> pre-LN transformer blocks -> LayerNorm.
The factorisation (a linear map to a low-dimensional code space, l2-normalised lookup, a linear map back) is the
quantizer's `codebook_dim` projection with `distance="cosine"` (tessera.quantize.VectorQuantizer). Decoder: position
embedding -> blocks -> LayerNorm -> linear to p*p*C pixels per token -> un-patchify. The paper's Table 10 small model is
width 512, depth 8, 8 heads, MLP 1024, patch 8, 8192 x 32 codes; the CPU presets shrink width and depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.tokenizer.config import TokenizerConfig

__all__ = ["TransformerBlock", "Attention", "ViTEncoder", "ViTDecoder", "patchify", "unpatchify"]


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, D) with fused scaled-dot-product attention."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d/heads)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, d/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) non-overlapping patches in raster order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Tensor, p: int, h: int, w: int, c: int) -> Tensor:
    """(B, N, p*p*C) with N = h*w -> (B, C, h*p, w*p); the inverse of `patchify`."""
    b = tokens.shape[0]
    x = tokens.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(b, c, h * p, w * p)


def _pos_embed(n: int, dim: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(1, n, dim) * 0.02)


class ViTEncoder(nn.Module):
    """Image (B, C, H, W) in [-1, 1] -> token map (B, D, h, w)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        h, w = cfg.grid_size
        self.embed = nn.Linear(cfg.patch_size**2 * cfg.in_channels, cfg.embed_dim)
        self.pos = _pos_embed(h * w, cfg.embed_dim)
        self.blocks = nn.Sequential(*(TransformerBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_dim) for _ in range(cfg.num_layers)))
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.grid = (h, w)

    def forward(self, x: Tensor) -> Tensor:
        b, _, hh, ww = x.shape
        h, w = hh // self.patch_size, ww // self.patch_size
        if (h, w) != self.grid:
            raise ValueError(f"ViT tokenizer expects {self.grid[0] * self.patch_size}px images, got {hh}x{ww}")
        t = self.norm(self.blocks(self.embed(patchify(x, self.patch_size)) + self.pos))  # (B, N, D)
        return t.transpose(1, 2).reshape(b, -1, h, w)


class ViTDecoder(nn.Module):
    """Token map (B, D, h, w) -> image (B, C, h*p, w*p) on the [-1, 1] scale (unbounded)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.channels = cfg.in_channels
        h, w = cfg.grid_size
        self.pos = _pos_embed(h * w, cfg.embed_dim)
        self.blocks = nn.Sequential(*(TransformerBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_dim) for _ in range(cfg.num_layers)))
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.to_pixels = nn.Linear(cfg.embed_dim, cfg.patch_size**2 * cfg.in_channels)

    def forward(self, z: Tensor) -> Tensor:
        b, d, h, w = z.shape
        t = z.reshape(b, d, h * w).transpose(1, 2)  # (B, N, D)
        t = self.to_pixels(self.norm(self.blocks(t + self.pos)))
        return unpatchify(t, self.patch_size, h, w, self.channels)

    @property
    def last_layer(self) -> Tensor:
        return self.to_pixels.weight
