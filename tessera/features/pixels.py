"""Raw pixels as "features": the no-learning reference of the feature-extractor ablation.

Axis legend: B batch, H W height and width, D = 3 * size * size.

`PixelExtractor(size)` resizes (antialiased) to size x size and flattens the standardised RGB values. It has no
weights and no intermediate maps; it tells how much of a method's accuracy comes from learned features at all.
"""

from __future__ import annotations

from torch import Tensor

from tessera.features.base import FeatureExtractor

__all__ = ["PixelExtractor"]


class PixelExtractor(FeatureExtractor):
    """Flattened size x size RGB pixels, standardised with mean 0.5 and std 0.25."""

    def __init__(self, size: int = 8) -> None:
        super().__init__(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        self.name = f"pixels-{size}"
        self.input_size = size
        self.crop_pct = 1.0
        self.interpolation = "bilinear"
        self.embed_dim = 3 * size * size

    def _embed(self, x: Tensor) -> Tensor:
        return x.flatten(1)
