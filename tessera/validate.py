"""Small input checks shared by every public entry point, each raising an error that names the problem.

A leaf module (imports nothing from tessera), like `tessera.io`, so models, data, the trainer and recipes can all
use it. Every helper takes the `name` the caller's user knows the argument by (e.g. "input_ids", "support") and
puts it, with the offending shape/dtype/range/file, in the message.

Errors: TypeError for a wrong kind (not a tensor, float where ids are expected), ValueError for a wrong value
(rank, emptiness, NaN/Inf, range, mismatched checkpoint); FileNotFoundError for missing files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_tensor",
    "check_finite",
    "check_ids",
    "check_same_shape",
    "read_json",
    "state_dict_mismatch",
    "check_state_dict",
]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_tensor(
    x: Any,
    name: str,
    *,
    kind: str | None = None,
    ndim: int | tuple[int, ...] | None = None,
    nonempty: bool = False,
    layout: str = "",
) -> Tensor:
    """Check that `x` is a tensor of the right kind and rank; return it unchanged.

    Args:
        x: the value to check.
        name: the argument's name in messages.
        kind: "float" (floating point), "int" (integer, not bool) or None (any).
        ndim: the allowed number(s) of axes.
        nonempty: also refuse tensors with no elements (an empty batch).
        layout: the expected layout for messages, e.g. "(B, T)".
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{' ' + layout if layout else ''}, got {type(x).__name__}")
    if kind == "float" and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if kind == "int" and x.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor (token ids / labels), got {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} axes{' ' + layout if layout else ''}, got shape {tuple(x.shape)}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): an empty batch has nothing to process")
    return x


def check_finite(x: Tensor, name: str) -> Tensor:
    """Refuse NaN/Inf in a floating-point tensor (one pass over it); return it unchanged."""
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s) (shape {tuple(x.shape)})")
    return x


def check_ids(ids: Tensor, high: int, name: str, *, low: int = 0) -> Tensor:
    """Integer ids in [low, high): a clear error instead of an embedding's 'index out of range'."""
    check_tensor(ids, name, kind="int")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < low or hi >= high:
            raise ValueError(f"{name} must lie in [{low}, {high}), got values in [{lo}, {hi}]")
    return ids


def check_same_shape(x: Tensor | None, shape: tuple[int, ...], name: str, of: str) -> None:
    """`x` (when given) must have exactly `shape`, the shape of `of`."""
    if x is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have the shape of {of} {tuple(shape)}, got {tuple(x.shape)}")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file; errors name the file (missing, unreadable, or not JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text {what} ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON in the {what} (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc


def state_dict_mismatch(expected: Mapping[str, Any], loaded: Mapping[str, Any], limit: int = 5) -> list[str]:
    """Human-readable differences between the tensors a module expects and those a file holds (empty: they fit)."""
    problems = []
    missing = [k for k in expected if k not in loaded]
    unexpected = [k for k in loaded if k not in expected]
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:limit])}{' ...' if len(missing) > limit else ''}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:limit])}{' ...' if len(unexpected) > limit else ''}")
    shapes = [
        f"{k} {tuple(loaded[k].shape)} vs expected {tuple(expected[k].shape)}"
        for k in expected
        if k in loaded and hasattr(loaded[k], "shape") and tuple(loaded[k].shape) != tuple(expected[k].shape)
    ]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:limit])}{' ...' if len(shapes) > limit else ''}")
    return problems


def check_state_dict(expected: Mapping[str, Any], loaded: Mapping[str, Any], source: str, hint: str = "") -> None:
    """Raise ValueError naming `source` when `loaded` does not fit `expected` (keys and shapes)."""
    problems = state_dict_mismatch(expected, loaded)
    if problems:
        raise ValueError(f"{source} does not match the model: {'; '.join(problems)}{'. ' + hint if hint else ''}")
