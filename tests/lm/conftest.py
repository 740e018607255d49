"""Fixtures for tessera.lm tests: the committed vocabulary and a tiny stand-in image tokenizer.

`PaletteTokenizer` has the `tessera.tokenizer.ImageTokenizer` interface (encode/decode/config/save_pretrained) but no
learned weights: each 4x4 patch becomes the index of its mean colour on an 8x8x8 RGB grid (512 codes, 32x32 -> 8x8).
Tests use it where training a real tokenizer would cost minutes; the trained models and benchmarks use the real one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tessera.lm.processor import Processor
from tessera.lm.vocab import Vocabulary


@dataclass
class PaletteConfig:
    codebook_size: int = 512
    image_size: int = 32
    grid_size: int = 8


class PaletteTokenizer(torch.nn.Module):
    def __init__(self, grid_size: int = 8) -> None:
        super().__init__()
        self.config = PaletteConfig(grid_size=grid_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        f = self.config.image_size // self.config.grid_size
        mean = F.avg_pool2d(images.float(), f)  # (B, 3, 8, 8)
        q = (mean * 7.999).floor().clamp(0, 7).long()
        return q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        f = self.config.image_size // self.config.grid_size
        rgb = torch.stack([codes // 64, (codes // 8) % 8, codes % 8], 1).float().add(0.5).div(8)
        return rgb.repeat_interleave(f, 2).repeat_interleave(f, 3)

    def save_pretrained(self, folder) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "palette.json").write_text(json.dumps({"codebook_size": 512}))


@pytest.fixture(scope="session")
def vocab() -> Vocabulary:
    return Vocabulary.default(image_codebook_size=512)


@pytest.fixture(scope="session")
def image_tokenizer() -> PaletteTokenizer:
    return PaletteTokenizer()


@pytest.fixture()
def proc(vocab, image_tokenizer) -> Processor:
    """A Processor over the stand-in tokenizer, with 4x4 patches (for tests that feed images of any size)."""
    return Processor(vocab, image_tokenizer, patch_size=4, max_patches=64)


def palette_image(seed: int) -> torch.Tensor:
    """A 32x32 image of flat 4x4 patches in palette centre colours: exactly what `PaletteTokenizer` decodes them to."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 8, (3, 8, 8), generator=g).float().add(0.5).div(8)
    return q.repeat_interleave(4, 1).repeat_interleave(4, 2)
