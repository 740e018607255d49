"""Discrete image and video tokenizers on the rotation-trick vector quantizer (`tessera.quantize`).

Families: VQ-VAE and VQGAN (convolutional, `vqvae.py`), ViT-VQGAN (`vit_vqgan.py`), video (`video.py`). The public
API is `ImageTokenizer` / `VideoTokenizer` (`from_pretrained`, `save_pretrained`, `encode`, `decode`, `reconstruct`)
with a `TokenizerConfig` (presets in `PRESETS`); training objectives are in `losses.py`, metrics in `metrics.py`.
"""

from tessera.tokenizer.config import PRESETS, TokenizerConfig, list_presets
from tessera.tokenizer.tokenizer import (
    ImageTokenizer,
    TokenizerOutput,
    VideoTokenizer,
    images_to_tensor,
    load_tokenizer,
)

__all__ = [
    "ImageTokenizer",
    "VideoTokenizer",
    "TokenizerConfig",
    "TokenizerOutput",
    "PRESETS",
    "list_presets",
    "load_tokenizer",
    "images_to_tensor",
]
