"""Build, save and load every trainable few-shot model of `tessera.icl` (CAML and the meta-trained baselines).

A checkpoint folder holds `config.json` ({"kind", "config", "extractor", "metadata"}) and `model.safetensors`.
CAML's own `save_pretrained`/`from_pretrained` write the same layout; this module adds the baselines.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tessera.icl.baselines import GPICL, SNAIL, GPICLConfig, MetaQDA, SNAILConfig
from tessera.icl.model import CAML, CAMLConfig, CheckpointMismatchError

__all__ = ["MetaQDAConfig", "MODEL_KINDS", "build_model", "save_model", "load_model"]


@dataclass
class MetaQDAConfig:
    feature_dim: int = 256
    reg: float = 0.5  # weight of the identity in the regularised precision (official: 0.5)


MODEL_KINDS: dict[str, type] = {"caml": CAMLConfig, "snail": SNAILConfig, "gpicl": GPICLConfig, "metaqda": MetaQDAConfig}


def build_model(kind: str, cfg: Any) -> nn.Module:
    """A fresh model of `kind` ("caml", "snail", "gpicl", "metaqda") from its config dataclass."""
    if kind == "caml":
        return CAML(cfg)
    if kind == "snail":
        return SNAIL(cfg)
    if kind == "gpicl":
        return GPICL(cfg)
    if kind == "metaqda":
        return MetaQDA(cfg.feature_dim, cfg.reg)
    raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(MODEL_KINDS)})")


def save_model(module: nn.Module, kind: str, cfg: Any, folder: str | Path, extractor: str | None = None, metadata: dict | None = None) -> Path:
    """Save any model of `MODEL_KINDS` (CAML through its own `save_pretrained`)."""
    if kind == "caml":
        return module.save_pretrained(folder, extractor=extractor, metadata=metadata)
    from tessera.io import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".model.safetensors.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp), metadata={"format": "pt"})
    atomic_write_bytes(folder / "model.safetensors", tmp.read_bytes())
    tmp.unlink()
    doc = {"kind": kind, "config": dataclasses.asdict(cfg), "extractor": extractor, "metadata": metadata or {}}
    atomic_write_bytes(folder / "config.json", (json.dumps(doc, indent=2) + "\n").encode())
    return folder


def load_model(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a folder written by `save_model`; returns (model in eval mode, config document)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: missing (not a Tessera few-shot model folder)")
    try:
        doc = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointMismatchError(f"{cfg_path}: not valid JSON ({exc})") from exc
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind == "caml":
        return CAML.from_pretrained(folder)
    if kind not in MODEL_KINDS:
        raise CheckpointMismatchError(f"{cfg_path}: unknown model kind {kind!r}")
    raw = dict(doc["config"])
    if kind == "snail" and "attention_sizes" in raw:  # JSON lists back to the tuple field
        raw["attention_sizes"] = tuple(tuple(x) for x in raw["attention_sizes"])
    cfg = MODEL_KINDS[kind](**raw)
    model = build_model(kind, cfg)
    w_path = folder / "model.safetensors"
    if not w_path.is_file():
        raise FileNotFoundError(f"{w_path}: missing")
    try:
        state = load_file(str(w_path))
        model.load_state_dict(state)
    except Exception as exc:
        raise CheckpointMismatchError(f"{w_path}: weights do not fit the config in {cfg_path} ({exc})") from exc
    return model.eval(), doc


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def to_float(module: nn.Module) -> nn.Module:
    return module.to(torch.float32)
