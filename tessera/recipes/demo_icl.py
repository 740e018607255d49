"""The CAML part of `tessera demo`: pretrain CAML on the embedded suite's base classes, then classify held-out
few-shot episodes against the nearest-centroid baselines, with 95% confidence intervals.

Axis legend: N support items, Q queries, W way, D feature size.

Episodes ask each class for `shot + queries` images, so the number of queries per class is chosen from the data
(at most `max_queries`, at most the smallest class size minus the shot): the reduced suite has classes of 12 images,
where a 1-shot episode with 15 queries per class cannot be drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ICLDemoConfig", "run_icl_stage", "icl_section", "episode_accuracy"]


@dataclass
class ICLDemoConfig:
    """Settings of the CAML stage (the quick/full profiles live in `tessera.recipes.demo`)."""

    suite: dict[str, int] = field(default_factory=lambda: {"shape_classes": 300, "shape_instances": 12, "glyph_instances": 12,
                                                            "crop_instances": 12})
    system: bool = False  # pip-only reduced suite: builds the same everywhere, no Debian packages needed
    extractor: str = "tessera-resnet-s"
    datasets: list[str] = field(default_factory=lambda: ["glyphs", "shapes", "photos"])
    heldout: list[str] = field(default_factory=lambda: ["glyphs-eval", "icons", "art"])  # those this build has
    preset: str = "caml-xs"
    steps: int = 300
    episodes_per_step: int = 4
    queries_per_class: int = 2
    lr: float = 1e-3
    way: int = 5
    shots: list[int] = field(default_factory=lambda: [1, 5])
    max_queries: int = 10
    eval_episodes: int = 200


def episode_accuracy(accs: list[float]) -> dict[str, float]:
    """Mean accuracy (%) and the half-width of its 95% confidence interval over episodes (normal approximation)."""
    a = np.asarray(accs, dtype=np.float64) * 100
    half = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return {"mean": float(a.mean()), "ci95": float(half), "episodes": len(a)}


def _suite_cfg(cfg: ICLDemoConfig):
    from tessera.icl.suite import SuiteConfig

    return SuiteConfig(system=cfg.system, **cfg.suite)


def run_icl_stage(cfg: ICLDemoConfig, folder: Path, seed: int, progress: bool = True) -> dict[str, Any]:
    """Train CAML (through `tessera.recipes.train_icl`) and evaluate it and the baselines on held-out episodes."""
    from tqdm.auto import tqdm

    from tessera.config import load_config
    from tessera.features import load_extractor
    from tessera.icl.baselines import knn, protonet, simpleshot
    from tessera.icl.embeddings import embed_dataset
    from tessera.icl.episodes import fixed_episodes, gather
    from tessera.icl.suite import load_suite_dataset
    from tessera.icl.zoo import load_model
    from tessera.recipes.train_icl import TrainICLConfig, load_embedded_suite, run

    suite_cfg = _suite_cfg(cfg)
    overrides = dict(cfg.suite)  # SuiteConfig fields that differ from the defaults (the recipe takes int fields)
    train_cfg = load_config(TrainICLConfig, None, [
        f"model.preset={cfg.preset}", f"data.extractor={cfg.extractor}", f"data.datasets=[{','.join(cfg.datasets)}]",
        f"data.system={str(cfg.system).lower()}", "data.suite_overrides={" + ", ".join(f"{k}: {v}" for k, v in overrides.items()) + "}",
        f"episodes.episodes_per_step={cfg.episodes_per_step}", f"episodes.queries_per_class={cfg.queries_per_class}",
        "episodes.val_episodes=50", f"train.steps={cfg.steps}", f"train.log_every={max(1, cfg.steps // 40)}", "train.eval_every=0",
        "train.checkpoint_every=0", f"train.progress={str(progress).lower()}", "train.tensorboard=false", "train.device=cpu",
        f"train.seed={seed}", f"optim.lr={cfg.lr}", f"optim.warmup_steps={max(1, cfg.steps // 10)}", "run_name=demo-caml",
    ])
    print(f"caml: pretraining {cfg.preset} for {cfg.steps} steps on {', '.join(cfg.datasets)} ({cfg.extractor} features)")
    out = run(train_cfg, run_dir=folder / "caml", progress=progress)
    model, _ = load_model(out["final"])
    ext = load_extractor(cfg.extractor)
    base = load_embedded_suite(ext, cfg.datasets, suite_cfg, progress=progress)
    center = torch.from_numpy(np.concatenate([np.asarray(es.split("train").features) for es in base.values()]).mean(0)).float()

    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in cfg.heldout:
        try:
            test = load_suite_dataset(name, "test", cfg=suite_cfg)  # a split view: embedded (and cached) on its own
        except (ValueError, FileNotFoundError) as exc:
            # Icons and art come from Debian packages: absent from the pip-only build, or where the packages are missing.
            skipped[name] = "not in the pip-only build" if not cfg.system else f"unavailable: {str(exc)[:160]}"
            continue
        es = embed_dataset(ext, test, progress=progress)
        smallest = int(np.bincount(es.labels).min())
        per_shot: dict[str, Any] = {}
        for shot in cfg.shots:
            queries = min(cfg.max_queries, smallest - shot)
            if queries < 1 or es.num_classes < cfg.way:
                per_shot[str(shot)] = {"skipped": f"classes have {smallest} images; {cfg.way}-way {shot}-shot needs >= {shot + 1}"}
                continue
            eps = fixed_episodes(es.labels, cfg.way, shot, queries, cfg.eval_episodes, seed=20_000 + shot, min_query=queries)
            accs: dict[str, list[float]] = {"CAML": [], "ProtoNet": [], "SimpleShot (CL2N)": [], "1-NN": []}
            with torch.inference_mode():
                for ep in tqdm(eps, desc=f"{name} {cfg.way}-way {shot}-shot", disable=not progress, leave=False):
                    s, q = gather(es.features, ep.support), gather(es.features, ep.query)
                    sl, ql = torch.from_numpy(ep.support_labels), ep.query_labels
                    scores = {
                        "CAML": model(s[None], sl[None], q[None]).logits[0, :, : cfg.way],
                        "ProtoNet": protonet(s, sl, q, cfg.way),
                        "SimpleShot (CL2N)": simpleshot(s, sl, q, cfg.way, center=center),
                        "1-NN": knn(s, sl, q, cfg.way, k=1),
                    }
                    for method, sc in scores.items():
                        accs[method].append(float((sc.argmax(-1).numpy() == ql).mean()))
            per_shot[str(shot)] = {"queries_per_class": queries, **{m: episode_accuracy(a) for m, a in accs.items()}}
        results[name] = {"classes": es.num_classes, "images": len(test), "smallest_class": smallest, "shots": per_shot}
    return {"run_dir": str(folder / "caml"), "final": out["final"], "val": out["eval"], "heldout": results, "skipped": skipped,
            "suite": suite_cfg.key()}


def icl_section(report: Any, ctx: dict[str, Any]) -> None:
    """Report section: CAML's training curve and held-out few-shot accuracy with 95% CIs against the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tessera.train.log import read_metrics_csv

    stage = ctx.get("icl")
    sec = report.section("Few-shot classification: CAML vs baselines")
    if stage is None:
        sec.paragraph("This stage was not run (see the settings section).")
        return
    cfg: ICLDemoConfig = stage["config"]
    res = stage["result"]
    sec.paragraph(
        f"CAML ({cfg.preset}) was pretrained for {cfg.steps} episodic steps ({cfg.episodes_per_step} episodes per step) on frozen "
        f"{cfg.extractor} features of the train classes of the embedded suite's base datasets ({', '.join(cfg.datasets)}; the "
        f"{'full' if cfg.system else 'pip-only reduced'} build, suite {res['suite']}). It then classifies {cfg.way}-way episodes of "
        "held-out datasets' test classes, never seen in pretraining, from the labelled support alone (no fine-tuning). "
        "Baselines on the same features and episodes: ProtoNet (nearest class mean, squared Euclidean), SimpleShot "
        "(CL2N: centred on the mean base-training feature, L2-normalised, cosine to class means) and 1-nearest-neighbour. "
        "Accuracy is the mean over episodes, ± the half-width of a 95% confidence interval (1.96 standard errors)."
    )
    rows = []
    for name, r in res["heldout"].items():
        for shot, d in r["shots"].items():
            if "skipped" in d:
                rows.append([name, f"{cfg.way}-way {shot}-shot", "-", "-", "-", "-", "-", d["skipped"]])
                continue
            cells = [f"{d[m]['mean']:.1f} ± {d[m]['ci95']:.1f}" for m in ("CAML", "ProtoNet", "SimpleShot (CL2N)", "1-NN")]
            rows.append([name, f"{cfg.way}-way {shot}-shot", *cells, d["queries_per_class"], d["CAML"]["episodes"]])
    sec.table(["held-out dataset", "task", "CAML", "ProtoNet", "SimpleShot (CL2N)", "1-NN", "queries/class", "episodes"], rows,
              caption=f"Few-shot accuracy (%), chance {100 / cfg.way:.0f}%.")
    if res["skipped"]:
        sec.paragraph("Held-out datasets not in this build: " + "; ".join(f"{k} ({v})" for k, v in res["skipped"].items()))
    csv = Path(res["run_dir"]) / "metrics.csv"
    if csv.is_file():
        rows_csv = [r for r in read_metrics_csv(csv) if "loss" in r]
        if rows_csv:
            fig, axes = plt.subplots(1, 2, figsize=(9, 3))
            steps = [r["step"] for r in rows_csv]
            axes[0].plot(steps, [r["loss"] for r in rows_csv], color="#1f77b4")
            axes[0].set_title("CAML episodic training loss (cross-entropy)", fontsize=9)
            if "acc" in rows_csv[0]:
                axes[1].plot(steps, [r["acc"] for r in rows_csv], color="#1f77b4")
                axes[1].set_title("query accuracy on training episodes", fontsize=9)
            for ax in axes:
                ax.set_xlabel("step", fontsize=8)
            fig.tight_layout()
            sec.figure(fig, caption="CAML training curves.")
    sec.paragraph("Reproduce at full scale: tessera icl train --config configs/icl/caml_s.yaml; the universal benchmark is "
                  "benchmarks/icl_universal.py.")
