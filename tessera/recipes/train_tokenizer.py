"""Train a tokenizer (VQ-VAE, VQGAN, ViT-VQGAN or video) on the shared trainer; read top to bottom.

    tessera tokenizer train --config configs/tokenizer/vqvae_f4_32px.yaml [a.b=c ...] [--resume] [--run-dir DIR]

1. Config: `TokenizerTrainConfig` (sections preset/model/loss/data/train/optim/eval). A YAML run file may name a
   `preset` (see `tessera tokenizer presets`); its model fields are the starting point that the file's `model:`
   section and the command-line overrides then change. Unknown keys and wrong types are errors.
2. Data: uint8 tensors in memory (`tokenizer_data.load_split`); the batch of a step is a pure function of the step
   (`EpochSampler`), so `--resume` reproduces the uninterrupted run.
3. Model: `ImageTokenizer` / `VideoTokenizer` from the model config, wrapped in `TokenizerObjective` (losses.py).
4. `tessera.train.fit`: AdamW + warmup/cosine, accumulation, clipping, logs, periodic evaluation, checkpoints.
5. At the end: the tokenizer is saved to `<run>/final` (config.json + model.safetensors), the held-out metrics to
   `<run>/eval.json` and a reconstruction grid to `<run>/reconstructions.png`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tessera.config import ConfigError, _yaml_load, from_dict, parse_overrides, to_dict
from tessera.io import atomic_write_json
from tessera.recipes.tokenizer_data import DataConfig, load_split
from tessera.tokenizer import ImageTokenizer, TokenizerConfig, VideoTokenizer
from tessera.tokenizer.config import PRESETS
from tessera.tokenizer.losses import LossConfig, TokenizerObjective
from tessera.tokenizer.metrics import evaluate_tokenizer, resolve_fid_network, save_reconstruction_grid
from tessera.train import EpochSampler, FitResult, OptimConfig, Task, TrainConfig, fit, seed_everything
from tessera.train.optim import default_param_groups
from tessera.train.runtime import is_main_process

__all__ = ["EvalConfig", "TokenizerTrainConfig", "load_train_config", "build_task", "train", "evaluate_run"]

_log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Held-out evaluation during and after training."""

    batch_size: int = 128
    group_size: int = 256  # images per codebook-usage group (the paper's 256)
    frechet: str = "none"  # "none", "auto" (Inception if cached, else a Tessera network), or a feature-network spec
    grid_images: int = 16  # originals/reconstructions in the final grid (0: no grid)


@dataclass
class TokenizerTrainConfig:
    """Everything a tokenizer training run needs. The defaults train the 32px VQ-VAE preset on the embedded images."""

    preset: str = ""  # starting point for `model` (a key of tessera.tokenizer.PRESETS); "" uses the model defaults
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000, log_every=25, eval_every=500, checkpoint_every=500))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=1e-4, warmup_steps=100))
    eval: EvalConfig = field(default_factory=EvalConfig)


def _merge(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TokenizerTrainConfig:
    """Defaults, then the preset's model fields, then the YAML file, then `a.b=c` overrides (strictly checked).

    Raises:
        FileNotFoundError: the config file does not exist.
        ConfigError: unknown key, wrong type, unknown preset or malformed YAML/override.
    """
    loaded: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = _yaml_load(path.read_text()) or {}
        except Exception as exc:  # yaml.YAMLError and friends
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
    parsed = parse_overrides(overrides or [])
    preset = str(dict(parsed).get("preset", loaded.get("preset", "")) or "")
    data = to_dict(TokenizerTrainConfig())
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"preset: unknown tokenizer preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        data["model"] = to_dict(TokenizerConfig.from_name(preset))
    _merge(data, loaded)
    for key, value in parsed:
        _set(data, key, value)
    return from_dict(TokenizerTrainConfig, data)


def _tokenizer_cls(cfg: TokenizerConfig):
    return VideoTokenizer if cfg.family == "video" else ImageTokenizer


def _load_data(cfg: TokenizerTrainConfig) -> tuple[Tensor, Tensor]:
    video = cfg.model.family == "video"
    kw = dict(video=video, frames=cfg.model.num_frames)
    train_items = load_split(cfg.data, "train", cfg.model.image_size, **kw)
    val_items = load_split(cfg.data, "val", cfg.model.image_size, **kw)
    return train_items, val_items


def _as_float(x: Tensor) -> Tensor:
    return x.float().div_(255.0)


def build_task(cfg: TokenizerTrainConfig, train_items: Tensor, val_items: Tensor, perceptual: nn.Module | None = None) -> Task:
    """The shared trainer's `Task` for a tokenizer run (model initialised from `cfg.train.seed`)."""
    seed_everything(cfg.train.seed)
    tokenizer = _tokenizer_cls(cfg.model)(cfg.model)
    if cfg.loss.perceptual_weight > 0 and perceptual is None:
        from tessera.tokenizer.perceptual import load_feature_network

        perceptual = load_feature_network(cfg.loss.perceptual_network)
    objective = TokenizerObjective(tokenizer, cfg.loss, perceptual)
    sampler = EpochSampler(len(train_items), cfg.data.batch_size, cfg.train.grad_accum, seed=cfg.data.seed)
    hflip = cfg.data.hflip

    def batches(step: int, micro: int, rank: int, world: int) -> Tensor:
        idx = torch.from_numpy(sampler.indices(step, micro, rank, world))
        x = _as_float(train_items[idx])
        if hflip:  # seeded by the position in the stream and drawn for the global batch: the same flips after a
            # resume and at any world size (rank r keeps its slice of the global draw)
            gen = torch.Generator().manual_seed(cfg.data.seed * 1_000_003 + step * 131 + micro * 7)
            flip = (torch.rand(cfg.data.batch_size, generator=gen) < 0.5)[rank * len(x) : (rank + 1) * len(x)]
            x[flip] = x[flip].flip(-1)
        return x

    val = val_items[: cfg.data.num_val]

    def evaluate(module: nn.Module, step: int) -> dict[str, float]:
        res = evaluate_tokenizer(module.tokenizer, _LazyFloat(val), batch_size=cfg.eval.batch_size, group_size=cfg.eval.group_size)
        return {k: float(v) for k, v in res.items() if not k.startswith("_")}

    def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
        groups = default_param_groups(module.tokenizer, weight_decay)
        disc = module.discriminator_group()
        return groups + ([disc] if disc is not None else [])

    return Task(
        module=objective,
        batches=batches,
        evaluate=evaluate,
        param_groups=param_groups,
        save_artifact=lambda module, folder: module.tokenizer.save_pretrained(folder),
        progress_keys=("loss", "rec_loss", "usage"),
        find_unused_parameters=objective.discriminator is not None,
    )


class _LazyFloat:
    """A uint8 item tensor seen as float [0, 1] items, converted batch by batch (keeps memory at uint8 size)."""

    def __init__(self, items: Tensor) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tensor:
        return _as_float(self.items[i])


def evaluate_run(
    tokenizer: nn.Module, val_items: Tensor, cfg: TokenizerTrainConfig, run_dir: Path | None = None
) -> dict[str, Any]:
    """Held-out metrics (plus the optional Frechet distance), and the grid/JSON files when `run_dir` is given."""
    net, key = resolve_fid_network(cfg.eval.frechet)
    res = evaluate_tokenizer(
        tokenizer,
        _LazyFloat(val_items[: cfg.data.num_val]),
        batch_size=cfg.eval.batch_size,
        group_size=cfg.eval.group_size,
        feature_network=net,
        feature_key=key or "fd",
        keep=cfg.eval.grid_images,
    )
    metrics = {k: v for k, v in res.items() if not k.startswith("_")}
    if run_dir is not None:
        if cfg.eval.grid_images:
            save_reconstruction_grid(res["_originals"], res["_recons"], run_dir / "reconstructions.png")
        atomic_write_json(
            run_dir / "eval.json",
            {"metrics": metrics, "code_counts": res["_code_counts"].tolist(), "frechet_network": key or None},
        )
    metrics["_code_counts"] = res["_code_counts"]
    if "_originals" in res:
        metrics["_originals"], metrics["_recons"] = res["_originals"], res["_recons"]
    return metrics


def train(
    cfg: TokenizerTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    data: tuple[Tensor, Tensor] | None = None,
    perceptual: nn.Module | None = None,
) -> tuple[FitResult, dict[str, Any]]:
    """Train, save the tokenizer to `<run_dir>/final`, evaluate on the held-out split.

    Args:
        cfg: the resolved config.
        run_dir: the run's folder.
        resume: continue from the newest intact checkpoint in the run folder.
        stop_after: stop at this step (no final artefacts); for splitting runs and tests.
        data: (train, val) uint8 items, to skip loading (the study reuses them across runs).
        perceptual: a feature network for the perceptual term, overriding `loss.perceptual_network`.

    Returns:
        (the trainer's FitResult, the final held-out metrics; {} when stopped early and on ranks other than 0).
    """
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    train_items, val_items = data if data is not None else _load_data(cfg)
    task = build_task(cfg, train_items, val_items, perceptual)
    result = fit(task, cfg.train, cfg.optim, run_dir, resume=resume, config=cfg, stop_after=stop_after)
    if result.step < cfg.train.steps or not is_main_process():  # under torchrun rank 0 evaluates and writes alone
        return result, {}
    metrics = evaluate_run(task.module.tokenizer, val_items, cfg, run_dir)
    metrics["train_seconds"] = time.perf_counter() - t0
    return result, metrics


def tokenizer_from_run(run_dir: str | Path) -> ImageTokenizer | VideoTokenizer:
    """The final tokenizer of a finished run."""
    from tessera.tokenizer import load_tokenizer

    return load_tokenizer(Path(run_dir) / "final")


def describe(cfg: TokenizerTrainConfig) -> str:
    """One line about the model a config builds (for logs)."""
    m = cfg.model
    return (
        f"{m.family} {m.image_size}px -> {m.grid_size[0]}x{m.grid_size[1]} codes (f={m.downsample_factor}), "
        f"K={m.codebook_size}, {m.distance}, estimator={m.estimator}"
    )


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (float, int, np.floating)) else v) for k, v in metrics.items() if not k.startswith("_")}


def dump_metrics(metrics: dict[str, Any]) -> str:
    return json.dumps(_jsonable(metrics), indent=2, sort_keys=True)


def replace(cfg: TokenizerTrainConfig, **sections: Any) -> TokenizerTrainConfig:
    """Copy of `cfg` with sections replaced by `{field: value}` dicts, e.g. replace(cfg, model={"estimator": "ste"})."""
    out = cfg
    for name, changes in sections.items():
        out = dataclasses.replace(out, **{name: dataclasses.replace(getattr(out, name), **changes)})
    return out
