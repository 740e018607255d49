"""A trained multimodal model folder: the decoder, its vocabulary and its image tokenizer, side by side.

Layout: config.json + model.safetensors (the decoder), tokenizer.model + vocab.json (the vocabulary),
processor.json, image_tokenizer/ (the image tokenizer's own save_pretrained folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tessera.lm.model import Decoder
from tessera.lm.processor import Processor

__all__ = ["save_pretrained", "load_pretrained"]


def save_pretrained(model: Decoder, processor: Processor, folder: str | Path) -> Path:
    """Write a model folder that `load_pretrained` (and `tessera lm generate --checkpoint`) reads."""
    folder = Path(folder)
    if model.cfg.vocab_size != processor.vocab.size:
        raise ValueError(f"model vocab_size {model.cfg.vocab_size} != vocabulary size {processor.vocab.size}")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def load_pretrained(folder: str | Path, *, image_tokenizer: Any = None, dtype: torch.dtype | None = None) -> tuple[Decoder, Processor]:
    """Load (decoder, processor) from a model folder (float, or quantized by `tessera lm quantize`).

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        ValueError: the parts do not fit together.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    from tessera.lm.quantize import is_quantized_folder, load_quantized

    if is_quantized_folder(folder):  # written by `tessera lm quantize`: int8/int4 weights, float compute
        model = load_quantized(folder)
        if dtype is not None:
            model = model.to(dtype)
    else:
        model = Decoder.from_pretrained(folder, dtype=dtype)
    processor = Processor.from_pretrained(folder, image_tokenizer=image_tokenizer)
    if model.cfg.vocab_size != processor.vocab.size:
        raise ValueError(f"{folder}: model vocab_size {model.cfg.vocab_size} != vocabulary size {processor.vocab.size}")
    return model, processor
