"""Video encoder and decoder: a TimeSformer-style patch transformer (divided space-time attention), as the
rotation-trick paper's video rows (Table 5, TimeSformer-VQGAN on BAIR and UCF101), sized down for CPU.

Axis legend: B batch, T frames, C channels, H W frame side, p patch size, h w patch grid, N = h*w, D embed_dim.

Each frame is cut into p x p patches and embedded; a learned spatial position embedding (shared by all frames) and a
learned temporal one (shared by all positions) are added. Each block is, with `temporal_mixing="attention"`:
    x + TimeAttn(LN(x))   attention over the T frames at each patch position
    x + SpaceAttn(LN(x))  attention over the N patches of each frame
    x + MLP(LN(x))
With `temporal_mixing="none"` the time attention is skipped and the model is a per-frame ViT tokenizer. Every frame
keeps its own h x w token grid, so clips (B, T, C, H, W) become tokens (B, T, h, w).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tessera.tokenizer.config import TokenizerConfig
from tessera.tokenizer.vit_vqgan import Attention, patchify, unpatchify

__all__ = ["VideoEncoder", "VideoDecoder", "DividedSpaceTimeBlock"]


class DividedSpaceTimeBlock(nn.Module):
    """(B, T, N, D) -> (B, T, N, D): optional time attention, then space attention, then MLP (all pre-LN)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        if temporal:
            self.norm_t = nn.LayerNorm(dim)
            self.attn_t = Attention(dim, num_heads)
        self.norm_s = nn.LayerNorm(dim)
        self.attn_s = Attention(dim, num_heads)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, t, n, d = x.shape
        if self.temporal:
            xt = x.transpose(1, 2).reshape(b * n, t, d)  # (B*N, T, D)
            xt = xt + self.attn_t(self.norm_t(xt))
            x = xt.reshape(b, n, t, d).transpose(1, 2)  # (B, T, N, D)
        xs = x.reshape(b * t, n, d)  # (B*T, N, D)
        xs = xs + self.attn_s(self.norm_s(xs))
        xs = xs + self.mlp(self.norm_m(xs))
        return xs.reshape(b, t, n, d)


def _blocks(cfg: TokenizerConfig) -> nn.ModuleList:
    temporal = cfg.temporal_mixing == "attention"
    return nn.ModuleList(DividedSpaceTimeBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_dim, temporal) for _ in range(cfg.num_layers))


class _SpaceTimePositions(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        h, w = cfg.grid_size
        self.num_frames = cfg.num_frames
        self.space = nn.Parameter(torch.randn(1, 1, h * w, cfg.embed_dim) * 0.02)
        self.time = nn.Parameter(torch.randn(1, cfg.num_frames, 1, cfg.embed_dim) * 0.02)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, N, D)
        t = x.shape[1]
        if t > self.num_frames:
            raise ValueError(f"clip has {t} frames; this tokenizer was built for at most num_frames={self.num_frames}")
        return x + self.space + self.time[:, :t]


class VideoEncoder(nn.Module):
    """Clip (B, T, C, H, W) in [-1, 1] -> token map (B, D, T, h, w)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.grid = cfg.grid_size
        self.embed = nn.Linear(cfg.patch_size**2 * cfg.in_channels, cfg.embed_dim)
        self.pos = _SpaceTimePositions(cfg)
        self.blocks = _blocks(cfg)
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c, hh, ww = x.shape
        h, w = hh // self.patch_size, ww // self.patch_size
        if (h, w) != self.grid:
            raise ValueError(f"video tokenizer expects {self.grid[0] * self.patch_size}px frames, got {hh}x{ww}")
        tokens = self.embed(patchify(x.reshape(b * t, c, hh, ww), self.patch_size)).reshape(b, t, h * w, -1)  # (B, T, N, D)
        tokens = self.pos(tokens)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return tokens.permute(0, 3, 1, 2).reshape(b, -1, t, h, w)  # (B, D, T, h, w)


class VideoDecoder(nn.Module):
    """Token map (B, D, T, h, w) -> clip (B, T, C, h*p, w*p) on the [-1, 1] scale (unbounded)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.channels = cfg.in_channels
        self.pos = _SpaceTimePositions(cfg)
        self.blocks = _blocks(cfg)
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.to_pixels = nn.Linear(cfg.embed_dim, cfg.patch_size**2 * cfg.in_channels)

    def forward(self, z: Tensor) -> Tensor:
        b, d, t, h, w = z.shape
        tokens = self.pos(z.reshape(b, d, t, h * w).permute(0, 2, 3, 1))  # (B, T, N, D)
        for block in self.blocks:
            tokens = block(tokens)
        pixels = self.to_pixels(self.norm(tokens)).reshape(b * t, h * w, -1)  # (B*T, N, p*p*C)
        frames = unpatchify(pixels, self.patch_size, h, w, self.channels)  # (B*T, C, H, W)
        return frames.reshape(b, t, *frames.shape[1:])

    @property
    def last_layer(self) -> Tensor:
        return self.to_pixels.weight
