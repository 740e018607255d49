"""Train a run once and reuse it while its config is unchanged (benchmarks that evaluate trained models).

A run folder is reused when it holds `final/model.safetensors` and a saved `config.yaml` whose every field equals the
current config's; fields the saved file lacks (added to the code later, with defaults that keep the old behaviour)
are ignored. Otherwise training runs (resuming from the folder's last checkpoint, so an interrupted benchmark picks
up where it stopped) and its wall time is recorded in `train_seconds.json` beside the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tessera.config import to_dict

__all__ = ["same_config", "train_or_reuse"]


def same_config(saved: Any, current: Any) -> bool:
    """Whether a saved config (plain data) matches the current one, ignoring fields the saved one lacks."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return all(k in current and same_config(v, current[k]) for k, v in saved.items())
    return saved == current


def train_or_reuse(cfg: Any, run: Path, train: Callable[[Any, Path], Any], label: str = "") -> tuple[Path, float]:
    """`run/final` trained with `cfg`: reused if already there with the same config, else trained by `train(cfg, run)`.

    Returns:
        (the final model folder, training seconds; NaN for a reused run whose time was not recorded).
    """
    import yaml

    run = Path(run)
    final, saved, timing = run / "final", run / "config.yaml", run / "train_seconds.json"
    if (final / "model.safetensors").is_file() and saved.is_file():
        if same_config(yaml.safe_load(saved.read_text()), to_dict(cfg)):
            print(f"[{label or run.name}] reusing {final}", flush=True)
            return final, json.loads(timing.read_text())["seconds"] if timing.is_file() else float("nan")
    start = time.time()
    train(cfg, run)
    seconds = time.time() - start
    timing.write_text(json.dumps({"seconds": seconds}))
    return final, seconds
