"""`TokenizerConfig`: one typed config for every tokenizer family, and the named presets.

Families and the fields they read:
    vqvae, vqgan   convolutional encoder/decoder: base_channels, channel_mult, num_res_blocks, attention, latent_dim.
                   A VQGAN has the same generator as a VQ-VAE; it differs in its training objective (patch
                   discriminator and perceptual loss, see `tessera.tokenizer.losses`), so the family is recorded
                   for provenance and for the recipe's defaults.
    vit_vqgan      patch transformer encoder/decoder: patch_size, embed_dim, num_layers, num_heads, mlp_dim; codes
                   are factorised (codebook_dim << embed_dim) and l2-normalised (distance="cosine"), as in
                   ViT-VQGAN (Yu et al., 2022) and the rotation-trick paper's Table 4.
    video          TimeSformer-style patch transformer over clips (divided space/time attention; `temporal_mixing`
                   "none" makes it a per-frame tokenizer), as the paper's video rows (Table 5).

Every family reads the quantizer fields (codebook_size, codebook_dim, distance, estimator, ema_decay, ...), which
are passed to `tessera.quantize.VectorQuantizer`. Defaults follow the rotation-trick paper's VQ-VAE settings (App.
A.10, Table 8): EMA decay 0.8, commitment weight (beta) 1.0, no k-means init, no dead-code restarts.

`estimator` also accepts the paper's two "exact gradient" baselines (Sec. 3, App. A.3), which are training-time
gradient paths implemented in `tessera.tokenizer.losses`; the quantizer itself then runs with the straight-through
estimator, whose output those paths detach or correct.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from tessera.config import from_dict, to_dict

__all__ = ["TokenizerConfig", "PRESETS", "list_presets"]

Family = Literal["vqvae", "vqgan", "vit_vqgan", "video"]
Estimator = Literal["rotation", "ste", "hessian", "double_forward"]


@dataclass
class TokenizerConfig:
    """Architecture and quantizer settings of a tokenizer. Defaults build a small 32px VQ-VAE (f=4, 512 codes)."""

    family: Family = "vqvae"
    image_size: int = 32  # square input side in pixels (conv families also accept other sizes divisible by f)
    in_channels: int = 3
    # -- convolutional backbone (vqvae, vqgan) ------------------------------------------------------------------
    base_channels: int = 64  # channels at full resolution
    channel_mult: tuple[int, ...] = (1, 2, 2)  # per level; downsample_factor = 2 ** (len - 1)
    num_res_blocks: int = 1  # residual blocks per level
    attention: bool = False  # self-attention block at the lowest resolution
    latent_dim: int = 64  # encoder output channels D (the quantizer's input dimension)
    # -- transformer backbone (vit_vqgan, video) ----------------------------------------------------------------
    patch_size: int = 4  # downsample_factor of the transformer families
    embed_dim: int = 128
    num_layers: int = 2  # transformer blocks in the encoder and again in the decoder
    num_heads: int = 4
    mlp_dim: int = 256
    # -- video --------------------------------------------------------------------------------------------------
    num_frames: int = 8  # longest clip (temporal position embeddings)
    temporal_mixing: Literal["none", "attention"] = "attention"  # "none": frames are tokenized independently
    # -- quantizer ----------------------------------------------------------------------------------------------
    codebook_size: int = 512  # K
    codebook_dim: int | None = None  # factorised code dimension (None: the quantizer's input dimension)
    distance: Literal["euclidean", "cosine"] = "euclidean"
    estimator: Estimator = "rotation"
    codebook_update: Literal["ema", "learned"] = "ema"
    ema_decay: float = 0.8
    commitment_weight: float = 1.0
    kmeans_init: bool = False
    dead_code_threshold: float = 0.0

    def __post_init__(self) -> None:
        ints = {
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "base_channels": self.base_channels,
            "num_res_blocks": self.num_res_blocks,
            "latent_dim": self.latent_dim,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "num_frames": self.num_frames,
            "codebook_size": self.codebook_size,
        }
        for name, value in ints.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.num_res_blocks < 1 or not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of positive ints, got {list(self.channel_mult)}")
        if self.codebook_dim is not None and self.codebook_dim < 1:
            raise ValueError(f"codebook_dim must be >= 1 or null, got {self.codebook_dim}")
        if self.image_size % self.downsample_factor:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by the downsample factor {self.downsample_factor} "
                f"of family {self.family!r}"
            )
        if self.is_transformer and self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    # -- derived ------------------------------------------------------------------------------------------------
    @property
    def is_transformer(self) -> bool:
        return self.family in ("vit_vqgan", "video")

    @property
    def downsample_factor(self) -> int:
        """f: image side / token grid side."""
        return self.patch_size if self.is_transformer else 2 ** (len(self.channel_mult) - 1)

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the token grid of an `image_size` image."""
        side = self.image_size // self.downsample_factor
        return (side, side)

    @property
    def tokens_per_image(self) -> int:
        h, w = self.grid_size
        return h * w

    @property
    def quantizer_dim(self) -> int:
        """Dimension of the vectors the quantizer receives (before its optional factorising projection)."""
        return self.embed_dim if self.is_transformer else self.latent_dim

    @property
    def code_dim(self) -> int:
        """Dimension of the code vectors (where the quantization error is measured)."""
        return self.codebook_dim if self.codebook_dim is not None else self.quantizer_dim

    # -- presets ------------------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> TokenizerConfig:
        """A named preset (see `PRESETS`), with fields overridden by keyword (strictly checked).

        Raises:
            ValueError: unknown preset name (the message lists the known ones).
            tessera.config.ConfigError: unknown or ill-typed override.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown tokenizer preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return from_dict(cls, {**PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> TokenizerConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# Preset names follow `family-size[-detail]`: f = downsample factor, k = codebook size, then the image side.
# The CPU presets are sized for the 2-core machines the study and CI run on; `*-debug` ones finish a few steps in
# about a second.
PRESETS: dict[str, dict[str, Any]] = {
    # VQ-VAE ---------------------------------------------------------------------------------------------------------
    "vqvae-debug": dict(family="vqvae", image_size=16, base_channels=8, channel_mult=(1, 2), latent_dim=8, codebook_size=32),
    # The multimodal LM's default image tokenizer: 32x32 images -> 8x8 codes, 512 codes, trains in minutes on CPU.
    "vqvae-f4-k512-32px": dict(family="vqvae", image_size=32, base_channels=32, channel_mult=(1, 2, 2), latent_dim=32, codebook_size=512),
    "vqvae-f4-k1024-32px": dict(family="vqvae", image_size=32, base_channels=64, channel_mult=(1, 2, 2), latent_dim=64, codebook_size=1024),
    "vqvae-f8-k1024-64px": dict(
        family="vqvae", image_size=64, base_channels=64, channel_mult=(1, 1, 2, 2), attention=True, latent_dim=64,
        codebook_size=1024, codebook_dim=32,
    ),
    # The paper's two VQ-VAE latent shapes at ImageNet scale (its code's ch_mult [1,1,2,2,4] gives 16x16x32 codes,
    # 1024 of them, via a 256->32 projection; ch_mult [1,2,4] gives 64x64x3 with 8192 codes). GPU-sized.
    "vqvae-f16-k1024-256px": dict(
        family="vqvae", image_size=256, base_channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
        attention=True, latent_dim=256, codebook_size=1024, codebook_dim=32,
    ),
    "vqvae-f4-k8192-256px": dict(
        family="vqvae", image_size=256, base_channels=128, channel_mult=(1, 2, 4), num_res_blocks=2, latent_dim=3,
        codebook_size=8192,
    ),
    # VQGAN (taming-style generator; objective in tessera.tokenizer.losses) -------------------------------------
    "vqgan-debug": dict(family="vqgan", image_size=16, base_channels=8, channel_mult=(1, 2), latent_dim=8, codebook_size=32),
    "vqgan-f4-k1024-32px": dict(
        family="vqgan", image_size=32, base_channels=32, channel_mult=(1, 2, 2), attention=True, latent_dim=32,
        codebook_size=1024,
    ),
    "vqgan-f16-k1024-256px": dict(  # taming's ImageNet VQGAN (16x16x256, 1024 codes); beta 0.25 as VectorQuantizer2
        family="vqgan", image_size=256, base_channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
        attention=True, latent_dim=256, codebook_size=1024, commitment_weight=0.25,
    ),
    # ViT-VQGAN (factorised, l2-normalised codes) -------------------------------------------------------------------
    "vit-vqgan-debug": dict(
        family="vit_vqgan", image_size=16, patch_size=4, embed_dim=32, num_layers=1, num_heads=2, mlp_dim=64,
        codebook_size=32, codebook_dim=8, distance="cosine",
    ),
    "vit-vqgan-p4-k1024-32px": dict(
        family="vit_vqgan", image_size=32, patch_size=4, embed_dim=128, num_layers=2, num_heads=4, mlp_dim=256,
        codebook_size=1024, codebook_dim=32, distance="cosine",
    ),
    "vit-vqgan-small-256px": dict(  # the paper's Table 10 (patch 8, width 512, depth 8, heads 8, MLP 1024, 8192 x 32)
        family="vit_vqgan", image_size=256, patch_size=8, embed_dim=512, num_layers=8, num_heads=8, mlp_dim=1024,
        codebook_size=8192, codebook_dim=32, distance="cosine",
    ),
    # Video (TimeSformer-style) -----------------------------------------------------------------------------------
    "video-debug": dict(
        family="video", image_size=16, num_frames=4, patch_size=4, embed_dim=32, num_layers=1, num_heads=2,
        mlp_dim=64, codebook_size=32, codebook_dim=8,
    ),
    "video-p4-k1024-32px": dict(
        family="video", image_size=32, num_frames=8, patch_size=4, embed_dim=128, num_layers=2, num_heads=4,
        mlp_dim=256, codebook_size=1024, codebook_dim=32,
    ),
    "video-bair-64px": dict(  # the paper's Table 11 BAIR row (16x64x64, patch 2, width 256, depth 8, 1024 x 32)
        family="video", image_size=64, num_frames=16, patch_size=2, embed_dim=256, num_layers=8, num_heads=4,
        mlp_dim=768, codebook_size=1024, codebook_dim=32,
    ),
}


def list_presets(family: str | None = None) -> list[str]:
    """Names of the presets, optionally of one family."""
    return sorted(n for n, p in PRESETS.items() if family is None or p["family"] == family)
