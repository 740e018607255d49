"""Convolutional encoder and decoder of the VQ-VAE and VQGAN tokenizers (taming-transformers layout, sized down).

Axis legend: B batch, C channels, H W image height and width, D latent channels, h w latent grid.

Encoder: conv_in -> per level [num_res_blocks x ResBlock, then a stride-2 conv except at the last level] -> mid
ResBlock (+ self-attention at the lowest resolution when `attention`) -> GroupNorm, SiLU, conv_out to D channels.
The decoder mirrors it with nearest-neighbour x2 upsampling + conv. Images enter in [-1, 1]; the decoder returns
unbounded values on that scale (the tokenizer maps them back to [0, 1]).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from tessera.tokenizer.config import TokenizerConfig

__all__ = ["ConvEncoder", "ConvDecoder", "ResBlock", "AttnBlock"]


def _norm(channels: int) -> nn.GroupNorm:
    # 32 groups as taming does, fewer when the (small CPU) width is not a multiple of 32.
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a 1x1 skip projection when the width changes."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions of a feature map (taming's AttnBlock)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # 3 x (B, hw, C)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)  # (B, hw, C)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class ConvEncoder(nn.Module):
    """Image (B, C, H, W) in [-1, 1] -> latent map (B, D, H/f, W/f)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, width))
                ch = width
            if level < len(widths) - 1:
                blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.down = nn.Sequential(*blocks)
        self.mid = nn.Sequential(ResBlock(ch, ch), AttnBlock(ch) if cfg.attention else nn.Identity())
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.latent_dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ConvDecoder(nn.Module):
    """Latent map (B, D, h, w) -> image (B, C, h*f, w*f) on the [-1, 1] scale (unbounded)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_dim, ch, 3, padding=1)
        self.mid = nn.Sequential(ResBlock(ch, ch), AttnBlock(ch) if cfg.attention else nn.Identity())
        blocks: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, widths[level]))
                ch = widths[level]
            if level > 0:
                blocks.append(_Upsample(ch))
        self.up = nn.Sequential(*blocks)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))

    @property
    def last_layer(self) -> Tensor:
        """Weight of the output conv (VQGAN's adaptive adversarial weight balances gradient norms here)."""
        return self.conv_out.weight
