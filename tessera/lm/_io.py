"""Atomic file writes for model folders (temporary file + fsync + rename), so a killed save never leaves half a file.

Models must not import `tessera.train`, so this small helper lives here (the loop's checkpoint module has its own).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write_bytes", "atomic_write_json", "save_safetensors", "load_safetensors"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


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
