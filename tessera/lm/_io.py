"""Safetensors reading and writing for model folders, on top of `tessera.io`'s atomic writes."""

from __future__ import annotations

from pathlib import Path

import torch

from tessera.io import atomic_write_bytes, atomic_write_json

__all__ = ["atomic_write_bytes", "atomic_write_json", "save_safetensors", "load_safetensors"]


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors (made contiguous, on CPU) as safetensors, atomically."""
    from safetensors.torch import save

    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata or {"format": "pt"}))


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (never pickle); a clear error when it is missing or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: cannot read safetensors weights ({exc})") from exc
