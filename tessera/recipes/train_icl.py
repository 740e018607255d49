"""Episodic pretraining of CAML (or a sequence/MetaQDA baseline) on cached frozen embeddings of the base datasets.

    tessera icl train --config configs/icl/caml_s.yaml            # the shipped default CAML
    tessera icl train --config configs/icl/caml_debug.yaml        # < 1 min smoke run

Recipe, top to bottom:
1. load the frozen extractor and embed every base dataset once (cached on disk, memory-mapped; papers-digest B6);
   training draws from their `train` classes, validation from their `val` classes, held-out datasets are untouched;
2. each step draws `episodes_per_step` episodes from one base dataset (datasets mixed uniformly over steps), with
   way, shot and queries sampled per step (a fixed way with probability `p_fixed_way`, else uniform up to the
   model's maximum; shot uniform), support in random order, labels by first appearance;
3. cross-entropy on every query's logits; AdamW, linear warmup + cosine, gradient clipping, checkpoints and exact
   resume through the shared trainer;
4. validation: 5-way 1- and 5-shot accuracy on fixed episodes of the base `val` classes;
5. save `config.json` + `model.safetensors` (the extractor's name recorded) to `<run>/final` and `export_to`.

Batches are a pure function of the step (seeded episode generator), so runs are reproducible and resumable.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tessera.icl.embeddings import EmbeddedSet, embed_dataset
from tessera.icl.episodes import class_index, episode_rng, fixed_episodes, sample_episode
from tessera.icl.model import FeatureNorm
from tessera.icl.suite import BASE_DATASETS, SuiteConfig, load_suite_dataset
from tessera.icl.zoo import MODEL_KINDS, build_model, save_model
from tessera.train import OptimConfig, StepOutput, Task, TrainConfig, fit

__all__ = ["TrainICLConfig", "run", "main", "load_embedded_suite", "episode_batch"]

_log = logging.getLogger(__name__)


@dataclass
class ModelSection:
    kind: Literal["caml", "snail", "gpicl", "metaqda"] = "caml"
    preset: str = "caml-s"  # CAML preset (kind "caml"); other kinds use their config defaults
    label_encoder: Literal["elmes", "learned"] = "elmes"
    attention: Literal["exact", "amortized"] = "exact"
    max_way: int | None = None  # override the preset's maximum way
    num_layers: int | None = None
    label_dim: int | None = None
    num_heads: int | None = None  # e.g. when feature_dim + label_dim is not divisible by the preset's heads


@dataclass
class DataSection:
    extractor: str = "tessera-resnet-s"  # any `tessera.features.load_extractor` name
    datasets: list[str] = field(default_factory=lambda: list(BASE_DATASETS))
    resolution: int = 32
    system: bool = True  # full suite (False: pip-only reduced suite)
    suite_overrides: dict[str, int] = field(default_factory=dict)  # other SuiteConfig fields (e.g. a small test suite)
    max_classes_per_dataset: int = 0  # 0: all train classes


@dataclass
class EpisodeSection:
    fixed_way: int = 5  # the benchmark's way, drawn with probability p_fixed_way
    p_fixed_way: float = 0.5
    min_way: int = 2  # otherwise way ~ U{min_way .. model max way}
    min_shot: int = 1
    max_shot: int = 5
    queries_per_class: int = 5
    episodes_per_step: int = 8  # episodes of one step share way/shot/queries and one dataset
    val_episodes: int = 200  # per base dataset and shot


@dataclass
class TrainICLConfig:
    """CAML / baseline pretraining run (defaults run)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    episodes: EpisodeSection = field(default_factory=EpisodeSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000, log_every=25, eval_every=500, checkpoint_every=250))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, weight_decay=0.01, warmup_steps=200, min_lr_ratio=0.02, betas=(0.9, 0.999)))
    run_name: str = "caml-s"
    export_to: str | None = None

    def __post_init__(self) -> None:
        bad = [d for d in self.data.datasets if d not in BASE_DATASETS]
        if bad:
            raise ValueError(f"data.datasets: {bad} are not base datasets (held-out data must never be trained on)")


def load_embedded_suite(extractor, names: list[str], suite_cfg: SuiteConfig, progress: bool = True) -> dict[str, EmbeddedSet]:
    """Embeddings (all splits) of suite datasets `names` under `extractor`, cached."""
    return {name: embed_dataset(extractor, load_suite_dataset(name, "all", cfg=suite_cfg), progress=progress) for name in names}


def model_config(cfg: TrainICLConfig, feature_dim: int) -> Any:
    m = cfg.model
    if m.kind == "caml":
        from tessera.icl.model import CAMLConfig

        over: dict[str, Any] = {"feature_dim": feature_dim, "label_encoder": m.label_encoder, "attention": m.attention}
        for k in ("max_way", "num_layers", "label_dim", "num_heads"):
            if getattr(m, k) is not None:
                over[k] = getattr(m, k)
        return CAMLConfig.from_name(m.preset, **over)
    kw: dict[str, Any] = {"feature_dim": feature_dim}
    if m.kind in ("snail", "gpicl") and m.max_way is not None:
        kw["max_way"] = m.max_way
    if m.kind == "snail":
        kw["max_shot"] = cfg.episodes.max_shot
    if m.kind == "gpicl":
        kw["max_len"] = (m.max_way or 10) * cfg.episodes.max_shot + 1
    return MODEL_KINDS[m.kind](**kw)


def episode_batch(
    sets: list[tuple[EmbeddedSet, list[np.ndarray]]], ep: EpisodeSection, max_way: int, seed: int, step: int, micro: int,
    rank: int = 0, world_size: int = 1,
):
    """This rank's episodes of (step, micro): support (B, N, D), labels (B, N), query (B, Q, D), query labels (B, Q).

    All `episodes_per_step` episodes of the step are drawn from one seeded stream and rank r keeps the r-th of
    `world_size` contiguous slices, so any world size trains on exactly the episodes of one process.
    """
    if ep.episodes_per_step % world_size:
        raise ValueError(f"episodes.episodes_per_step={ep.episodes_per_step} is not divisible by the world size {world_size}")
    rng = episode_rng(seed, step * 1000 + micro)
    es, classes = sets[int(rng.integers(len(sets)))]
    way = ep.fixed_way if rng.random() < ep.p_fixed_way else int(rng.integers(ep.min_way, max_way + 1))
    way = min(way, max_way)
    shot = int(rng.integers(ep.min_shot, ep.max_shot + 1))
    eps = [sample_episode(classes, way, shot, ep.queries_per_class, rng, min_query=ep.queries_per_class) for _ in range(ep.episodes_per_step)]
    per_rank = ep.episodes_per_step // world_size
    eps = eps[rank * per_rank : (rank + 1) * per_rank]
    feats = es.features
    sup = torch.from_numpy(np.stack([np.asarray(feats[e.support], dtype=np.float32) for e in eps]))
    qry = torch.from_numpy(np.stack([np.asarray(feats[e.query], dtype=np.float32) for e in eps]))
    sl = torch.from_numpy(np.stack([e.support_labels for e in eps]))
    ql = torch.from_numpy(np.stack([e.query_labels for e in eps]))
    return sup, sl, qry, ql


class EpisodeObjective(nn.Module):
    """Cross-entropy over all queries of a batch of episodes, for any model of `MODEL_KINDS`."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model = model
        self.kind = kind

    def logits(self, sup: torch.Tensor, sl: torch.Tensor, qry: torch.Tensor) -> torch.Tensor:
        """(B, Q, way) logits."""
        way = int(sl.max()) + 1
        if self.kind == "caml":
            return self.model(sup, sl, qry).logits[..., :way]
        return torch.stack([self.model(sup[b], sl[b], qry[b], way) for b in range(sup.shape[0])])

    def forward(self, batch, step: int) -> StepOutput:  # noqa: ARG002
        sup, sl, qry, ql = batch
        logits = self.logits(sup, sl, qry)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ql.flatten())
        acc = (logits.argmax(-1) == ql).float().mean()
        return StepOutput(loss, {"acc": acc.detach()})


def run(cfg: TrainICLConfig, run_dir: str | Path | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Train; returns the final validation metrics and the saved model folder."""
    from tessera.features import load_extractor
    from tessera.paths import runs_dir

    run_dir = Path(run_dir) if run_dir is not None else runs_dir(cfg.run_name)
    torch.manual_seed(cfg.train.seed)
    suite_cfg = SuiteConfig(resolution=cfg.data.resolution, system=cfg.data.system, **cfg.data.suite_overrides)
    ext = load_extractor(cfg.data.extractor)
    embedded = load_embedded_suite(ext, cfg.data.datasets, suite_cfg, progress=progress)
    train_sets, val_sets = [], []
    for name, es in embedded.items():
        tr = es.split("train")
        if cfg.data.max_classes_per_dataset:
            tr = tr.classes(list(range(min(cfg.data.max_classes_per_dataset, tr.num_classes))))
        train_sets.append((tr, class_index(tr.labels)))
        val_sets.append((name, es.split("val")))
    mcfg = model_config(cfg, ext.embed_dim)
    model = build_model(cfg.model.kind, mcfg)
    # CL2N feature preprocessing: centre on the mean base-training feature (stored in the checkpoint).
    center = torch.from_numpy(np.concatenate([np.asarray(tr.features) for tr, _ in train_sets]).mean(0)).float()
    for m in model.modules():
        if isinstance(m, FeatureNorm):
            m.set_center(center)
    max_way = getattr(mcfg, "max_way", cfg.episodes.fixed_way)
    module = EpisodeObjective(model, cfg.model.kind)
    _log.info("training %s (%s) on %s with %s embeddings", cfg.model.kind, getattr(mcfg, "name", ""), cfg.data.datasets, ext.name)

    def batches(step: int, micro: int, rank: int, world: int):
        return episode_batch(train_sets, cfg.episodes, max_way, cfg.train.seed, step, micro, rank, world)

    val_eps = {
        (name, shot): fixed_episodes(es.labels, 5, shot, 15, cfg.episodes.val_episodes, seed=4321)
        for name, es in val_sets
        for shot in (1, 5)
    }

    def evaluate(mod: nn.Module, step: int) -> dict[str, float]:  # noqa: ARG001
        out = {}
        for name, es in val_sets:
            for shot in (1, 5):
                accs = []
                for ep in val_eps[(name, shot)]:
                    s = torch.from_numpy(np.asarray(es.features[ep.support], dtype=np.float32)).unsqueeze(0)
                    q = torch.from_numpy(np.asarray(es.features[ep.query], dtype=np.float32)).unsqueeze(0)
                    lg = mod.logits(s, torch.from_numpy(ep.support_labels).unsqueeze(0), q)[0]
                    accs.append(float((lg.argmax(-1).numpy() == ep.query_labels).mean()))
                out[f"{name}/5w{shot}s"] = 100 * float(np.mean(accs))
        for shot in (1, 5):
            out[f"mean_5w{shot}s"] = float(np.mean([v for k, v in out.items() if k.endswith(f"/5w{shot}s")]))
        return out

    def save_artifact(mod: nn.Module, folder: Path) -> None:
        meta = {"recipe": "tessera/recipes/train_icl.py", "config": _plain(dataclasses.asdict(cfg)), "suite": suite_cfg.key()}
        save_model(mod.model, cfg.model.kind, mcfg, folder, extractor=ext.name, metadata=meta)
        if cfg.export_to:
            save_model(mod.model, cfg.model.kind, mcfg, cfg.export_to, extractor=ext.name, metadata=meta)

    task = Task(module=module, batches=batches, evaluate=evaluate, save_artifact=save_artifact, progress_keys=("loss", "acc"))
    result = fit(task, cfg.train, cfg.optim, run_dir, resume=resume, config=cfg)
    return {"run_dir": str(run_dir), "final": str(run_dir / "final"), "eval": result.eval_metrics}


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def main(config_path: str | None, overrides: list[str], resume: bool = False, run_dir: str | None = None) -> dict:
    from tessera.config import load_config

    cfg = load_config(TrainICLConfig, config_path, overrides)
    return run(cfg, run_dir=run_dir, resume=resume, progress=cfg.train.progress)
