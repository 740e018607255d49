"""Pretrain Tessera's feature network on the base datasets of the embedded few-shot suite (supervised).

    tessera features pretrain --config configs/features/tessera_resnet_s.yaml          # the shipped default
    tessera features pretrain --config configs/features/tessera_resnet_s_debug.yaml    # < 1 min smoke run

Recipe, top to bottom:
1. build/load the suite's base datasets (`glyphs`, `shapes`, `photos`; `train` classes only: never a held-out
   dataset, never a test class) and pool their classes into one label space;
2. estimate the per-channel mean/std of the training images (stored in the extractor's config);
3. train `TesseraResNet` + a linear classifier with cross-entropy (label smoothing) on augmented batches (random
   affine: scale, shift, small rotation; mirror only where it keeps the class, i.e. photo crops; brightness and
   contrast jitter) with the shared trainer (AdamW, warmup + cosine, checkpoints, exact resume);
4. evaluate few-shot quality on the base datasets' `val` classes (nearest-prototype 5-way accuracy on the frozen
   embeddings, fixed episodes) during training;
5. save the extractor (`config.json` + fp16 `model.safetensors`, classifier dropped) to `<run>/final` and, when
   `export_to` is set, to the package assets (`tessera/assets/features/tessera-resnet-s`).

Supervised pretraining followed by a frozen embedding is the strong, simple recipe of "Rethinking few-shot image
classification: a good embedding is all you need?" (Tian et al. 2020). Training is deterministic on a given machine
(seeded batches and augmentation; CPU kernels); other machines reproduce it up to floating-point differences.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tessera.features.resnet import RESNET_PRESETS, TesseraResNet, TesseraResNetExtractor
from tessera.icl.episodes import fixed_episodes
from tessera.icl.suite import BASE_DATASETS, SuiteConfig, load_suite_dataset
from tessera.train import EpochSampler, OptimConfig, StepOutput, Task, TrainConfig, fit

__all__ = ["PretrainFeaturesConfig", "run", "main"]

_log = logging.getLogger(__name__)


@dataclass
class FeatureModelSection:
    preset: str = "tessera-resnet-s"  # a key of RESNET_PRESETS
    widths: list[int] | None = None  # override the preset's stage widths
    convs_per_block: int | None = None


@dataclass
class FeatureDataSection:
    datasets: list[str] = field(default_factory=lambda: list(BASE_DATASETS))  # suite datasets (base ones only)
    resolution: int = 32
    system: bool = True  # use Debian fonts/pictures (False: the reduced pip-only suite)
    suite_overrides: dict[str, int] = field(default_factory=dict)  # other SuiteConfig fields (e.g. a small test suite)
    max_classes_per_dataset: int = 0  # 0: all train classes (the debug run uses a few)
    val_episodes: int = 200  # 5-way episodes per base dataset for the few-shot validation metric


@dataclass
class AugmentSection:
    scale: tuple[float, float] = (0.8, 1.15)  # zoom range of the random affine map
    translate: float = 0.12  # max shift, as a fraction of the image side
    rotate_deg: float = 10.0
    flip_datasets: list[str] = field(default_factory=lambda: ["photos"])  # mirroring keeps the class only here
    brightness: float = 0.15
    contrast: float = 0.15


@dataclass
class PretrainFeaturesConfig:
    """Pretraining run settings (every field has a working default)."""

    model: FeatureModelSection = field(default_factory=FeatureModelSection)
    data: FeatureDataSection = field(default_factory=FeatureDataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1200, log_every=25, eval_every=400, checkpoint_every=100))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, weight_decay=0.05, warmup_steps=100, min_lr_ratio=0.01, betas=(0.9, 0.999)))
    batch_size: int = 128
    label_smoothing: float = 0.1
    channels_last: bool = True  # 2-3x faster convolutions on CPU
    run_name: str = "features-tessera-resnet-s"
    export_to: str | None = None  # also save the extractor here (the package asset folder for the shipped default)

    def __post_init__(self) -> None:
        unknown = [d for d in self.data.datasets if d not in BASE_DATASETS]
        if unknown:
            raise ValueError(f"data.datasets: {unknown} are not base datasets (held-out data must never be pretrained on)")


class _Pretrainer(nn.Module):
    """Backbone + linear classifier over the pooled label space; forward returns the CE loss."""

    def __init__(self, net: TesseraResNet, num_classes: int, label_smoothing: float) -> None:
        super().__init__()
        self.net = net
        self.head = nn.Linear(net.cfg.embed_dim, num_classes)
        self.label_smoothing = label_smoothing

    def forward(self, batch, step: int) -> StepOutput:  # noqa: ARG002 - the loop's signature
        x, y = batch
        logits = self.head(self.net(x))
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(-1) == y).float().mean()
        return StepOutput(loss, {"acc": acc.detach()})


def _augment(x: torch.Tensor, flip: torch.Tensor, cfg: AugmentSection, gen: torch.Generator) -> torch.Tensor:
    """Random affine (zoom, shift, rotation, mirror where allowed) + brightness/contrast, per sample; x in [0, 1]."""
    b = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=gen)  # noqa: E731
    s = u(*cfg.scale)
    a = u(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180
    sign = torch.where(flip & (torch.rand(b, generator=gen) < 0.5), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.cos(a) / s * sign
    theta[:, 0, 1] = -torch.sin(a) / s
    theta[:, 1, 0] = torch.sin(a) / s * sign
    theta[:, 1, 1] = torch.cos(a) / s
    theta[:, :, 2] = (torch.rand(b, 2, generator=gen) * 2 - 1) * cfg.translate * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Border padding: glyph and icon backgrounds are flat, photo crops continue plausibly at their edges.
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(1 - cfg.contrast, 1 + cfg.contrast).view(b, 1, 1, 1) + mean
    x = x + u(-cfg.brightness, cfg.brightness).view(b, 1, 1, 1)
    return x.clamp_(0, 1)


def _pooled_training_set(cfg: PretrainFeaturesConfig):
    """Concatenate the train classes of the base datasets: (list of (dataset, local index)), labels, flip flags."""
    suite_cfg = SuiteConfig(resolution=cfg.data.resolution, system=cfg.data.system, **cfg.data.suite_overrides)
    parts, offset = [], 0
    for name in cfg.data.datasets:
        ds = load_suite_dataset(name, "train", cfg=suite_cfg)
        if cfg.data.max_classes_per_dataset:
            ds = ds.subset_classes(list(range(min(cfg.data.max_classes_per_dataset, ds.num_classes))))
        parts.append((name, ds, offset))
        offset += ds.num_classes
    return parts, offset, suite_cfg


def _channel_stats(parts, max_images: int = 20000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    rng = np.random.default_rng(0)
    sums, sq, n = np.zeros(3), np.zeros(3), 0
    for _, ds, _ in parts:
        idx = np.sort(rng.choice(len(ds), size=min(len(ds), max_images // len(parts)), replace=False))
        x = np.asarray(ds.images[idx], dtype=np.float64) / 255.0
        sums += x.sum(axis=(0, 1, 2))
        sq += (x**2).sum(axis=(0, 1, 2))
        n += x.shape[0] * x.shape[1] * x.shape[2]
    mean = sums / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 1e-6))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _seed_of(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


def run(cfg: PretrainFeaturesConfig, run_dir: str | Path | None = None, resume: bool = False) -> dict:
    """Run the recipe; returns the final few-shot validation metrics and where the extractor was saved."""
    from tessera.paths import runs_dir

    run_dir = Path(run_dir) if run_dir is not None else runs_dir(cfg.run_name)
    torch.manual_seed(cfg.train.seed)
    parts, num_classes, suite_cfg = _pooled_training_set(cfg)
    mean, std = _channel_stats(parts)
    base = RESNET_PRESETS[cfg.model.preset] if cfg.model.preset in RESNET_PRESETS else None
    if base is None:
        raise ValueError(f"model.preset: unknown {cfg.model.preset!r} (known: {', '.join(RESNET_PRESETS)})")
    rcfg = dataclasses.replace(
        base,
        widths=tuple(cfg.model.widths) if cfg.model.widths else base.widths,
        convs_per_block=cfg.model.convs_per_block or base.convs_per_block,
        input_size=cfg.data.resolution,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
    )
    net = TesseraResNet(rcfg)
    module = _Pretrainer(net, num_classes, cfg.label_smoothing)
    if cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)

    # One flat index over all pooled images: (part, local index), pooled label.
    owners = np.concatenate([np.full(len(ds), i) for i, (_, ds, _) in enumerate(parts)])
    local = np.concatenate([np.arange(len(ds)) for _, ds, _ in parts])
    labels = np.concatenate([ds.labels + off for _, ds, off in parts])
    flips = np.array([name in cfg.augment.flip_datasets for name, _, _ in parts])
    sampler = EpochSampler(len(labels), cfg.batch_size, cfg.train.grad_accum, seed=cfg.train.seed)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    _log.info("pretraining on %d images of %d classes from %s", len(labels), num_classes, [n for n, _, _ in parts])

    def batches(step: int, micro: int, rank: int, world: int):
        idx = sampler.indices(step, micro, rank, world)
        x = torch.empty(len(idx), 3, cfg.data.resolution, cfg.data.resolution)
        for p, (_, ds, _) in enumerate(parts):
            sel = np.flatnonzero(owners[idx] == p)
            if len(sel):
                x[torch.from_numpy(sel)] = ds.to_tensor(local[idx[sel]])
        gen = torch.Generator().manual_seed(_seed_of(cfg.train.seed, step, micro, rank))
        x = _augment(x, torch.from_numpy(flips[owners[idx]]), cfg.augment, gen)
        x = (x - mean_t) / std_t
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, torch.from_numpy(labels[idx])

    # Few-shot validation on the base datasets' val classes: fixed episodes, nearest prototype on embeddings.
    val_sets = [(name, load_suite_dataset(name, "val", cfg=suite_cfg)) for name, _, _ in parts]

    def evaluate(mod: nn.Module, step: int) -> dict[str, float]:  # noqa: ARG001
        mod.eval()  # the loop already did; BatchNorm must use running statistics here
        out = {}
        for name, ds in val_sets:
            feats = _embed_all(lambda x: mod.net((x - mean_t) / std_t), ds)
            for shot in (1, 5):
                eps = fixed_episodes(ds.labels, 5, shot, 15, cfg.data.val_episodes, seed=1234, min_query=1)
                out[f"{name}/5w{shot}s"] = _proto_accuracy(feats, eps)
        out["mean_5w5s"] = float(np.mean([v for k, v in out.items() if k.endswith("5w5s")]))
        out["mean_5w1s"] = float(np.mean([v for k, v in out.items() if k.endswith("5w1s")]))
        return out

    def save_artifact(mod: nn.Module, folder: Path) -> None:
        ext = TesseraResNetExtractor(rcfg, mod.net.to(memory_format=torch.contiguous_format))
        meta = {
            "recipe": "tessera/recipes/pretrain_features.py",
            "config": _plain(dataclasses.asdict(cfg)),
            "suite": suite_cfg.key(),
            "datasets": [n for n, _, _ in parts],
            "num_classes": num_classes,
            "num_images": int(len(labels)),
        }
        ext.save_pretrained(folder, metadata=meta)
        if cfg.export_to:
            ext.save_pretrained(cfg.export_to, metadata=meta)

    task = Task(module=module, batches=batches, evaluate=evaluate, save_artifact=save_artifact, progress_keys=("loss", "acc"))
    result = fit(task, cfg.train, cfg.optim, run_dir, resume=resume, config=cfg)
    for folder in [run_dir / "final"] + ([Path(cfg.export_to)] if cfg.export_to else []):
        record_metadata(folder, {"val_metrics": result.eval_metrics})
    return {"run_dir": str(run_dir), "final": str(run_dir / "final"), "eval": result.eval_metrics}


def record_metadata(folder: Path, extra: dict) -> None:
    """Merge `extra` into the metadata of a saved extractor's config.json (e.g. the final validation metrics)."""
    import json

    from tessera.io import atomic_write_bytes

    path = Path(folder) / "config.json"
    if not path.is_file():
        return
    doc = json.loads(path.read_text())
    doc.setdefault("metadata", {}).update(extra)
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


@torch.inference_mode()
def _embed_all(embed, ds, batch: int = 512) -> torch.Tensor:
    return torch.cat([embed(ds.to_tensor(np.arange(i, min(i + batch, len(ds))))).float() for i in range(0, len(ds), batch)])


def _proto_accuracy(feats: torch.Tensor, episodes) -> float:
    """Mean accuracy (%) of nearest-prototype (Euclidean) classification over `episodes`."""
    accs = []
    for ep in episodes:
        s = feats[torch.as_tensor(ep.support)]
        q = feats[torch.as_tensor(ep.query)]
        protos = torch.zeros(ep.way, s.shape[1]).index_add_(0, torch.as_tensor(ep.support_labels), s)
        protos /= torch.bincount(torch.as_tensor(ep.support_labels), minlength=ep.way).unsqueeze(1)
        pred = torch.cdist(q, protos).argmin(-1).numpy()
        accs.append(float((pred == ep.query_labels).mean()))
    return 100.0 * float(np.mean(accs))


def main(config_path: str | None, overrides: list[str], resume: bool = False, run_dir: str | None = None) -> dict:
    from tessera.config import load_config

    cfg = load_config(PretrainFeaturesConfig, config_path, overrides)
    return run(cfg, run_dir=run_dir, resume=resume)
