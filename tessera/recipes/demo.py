"""`tessera demo`: Tessera end to end on a laptop CPU, on embedded data, with one self-contained HTML report.

Run:    tessera demo            (the full profile, sized for about 10 minutes on 2 idle CPU cores, plus one-time data builds)
        tessera demo --quick    (about 2 minutes: the same stages, smaller)
Stages (each cached under runs/demo/<profile>/<stage>/, so a rerun with the same settings reuses its checkpoints):
  1. tokenizer: a 32px VQ-VAE (`vqvae-f4-k512-32px`, 8x8 codes from 512) trained twice through the tokenizer
     recipe, with the straight-through estimator and with the rotation trick, same seed, data order and weights;
  2. icl: CAML pretrained on frozen features of the embedded few-shot suite's base classes, then held-out few-shot
     episodes classified by CAML and by nearest-centroid baselines, with 95% confidence intervals;
  3. lm: the nano multimodal decoder trained on the embedded corpus through the rotation-trick tokenizer of stage 1,
     then captioning held-out scenes, drawing scenes from captions and classifying in context.
Expect: progress bars per stage, the tokenizer table printed, stage times, and runs/demo/report.html (path printed
last) with reconstruction grids, codebook usage histograms, training curves, few-shot accuracy with confidence
intervals against baselines, generated images and captions, and the exact versions and settings used.

The report is a list of sections (`tessera.recipes.html_report`); each part contributes one through `DEMO_SECTIONS`
(name, function(report, context) -> None).
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tessera.recipes.demo_icl import ICLDemoConfig, icl_section, run_icl_stage
from tessera.recipes.demo_lm import LMDemoConfig, lm_section, run_lm_stage
from tessera.recipes.demo_stages import cached_stage

__all__ = [
    "register",
    "run_demo",
    "skimage_patches",
    "DemoResult",
    "DEMO_SECTIONS",
    "DEMO_PARTS",
    "demo_data",
    "DemoConfig",
    "TokenizerDemoConfig",
    "demo_profile",
]

DEMO_PARTS = ("tokenizer", "icl", "lm")

_TRAIN_IMAGES = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
_VAL_IMAGES = ("chelsea", "stereo_motorcycle")


def skimage_patches(names: tuple[str, ...], n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """`n` random `size` x `size` RGB patches (float in [0, 1], (n, 3, size, size)) from scikit-image sample photos."""
    from skimage import data

    images = []
    for name in names:
        img = getattr(data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
            img = img[0]
        images.append(np.asarray(img, dtype=np.float32) / 255.0)
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        img = images[i % len(images)]
        y = rng.integers(0, img.shape[0] - size + 1)
        x = rng.integers(0, img.shape[1] - size + 1)
        out[i] = img[y : y + size, x : x + size, :3]
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # (n, H, W, 3) -> (n, 3, H, W)


@dataclass
class DemoResult:
    estimator: str
    val_mse: float
    usage: float
    perplexity: float
    quantization_error: float
    seconds: float
    psnr: float = float("nan")
    ssim: float = float("nan")


def demo_data(num_train: int, num_val: int, source: str = "auto") -> tuple[torch.Tensor, torch.Tensor, str]:
    """uint8 (N, 3, 32, 32) train and val images and a description; builds the embedded set if it is missing.

    With source="auto", falls back to crops of scikit-image's photographs (and says so) when `tessera.data` is not
    installed or cannot build its set on this machine; source="skimage" uses those crops directly.
    """
    from tessera.recipes.tokenizer_data import DataConfig, load_split

    try:
        if source == "skimage":
            raise RuntimeError("scikit-image photographs requested")
        import tessera.data  # noqa: F401

        print("data: loading the embedded image set (built from the shipped photographs on first use; this can take a minute)")
        cfg = DataConfig(source="embedded", num_train=num_train, num_val=num_val)
        train, val = load_split(cfg, "train", 32), load_split(cfg, "val", 32)
        return train, val, f"the embedded image set ({len(train)} training and {len(val)} held-out 32x32 crops of real photographs)"
    except (ImportError, RuntimeError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"data: embedded image set unavailable ({type(exc).__name__}: {exc}); using scikit-image's photographs")
        cfg = DataConfig(source="skimage", num_train=num_train, num_val=num_val)
        train, val = load_split(cfg, "train", 32), load_split(cfg, "val", 32)
        return train, val, (
            f"crops of scikit-image's bundled photographs ({len(train)} training crops; {len(val)} held-out crops from other photos)"
        )


@dataclass
class TokenizerDemoConfig:
    """Settings of the tokenizer stage."""

    steps: int = 250
    batch_size: int = 32
    num_train: int = 0  # training images (0: the whole embedded set)
    num_val: int = 512  # held-out images (512: two groups of 256 for the usage metric)
    lr: float = 2e-3


@dataclass
class DemoConfig:
    """One demo profile: the settings of every stage."""

    profile: str = "full"
    tokenizer: TokenizerDemoConfig = field(default_factory=TokenizerDemoConfig)
    icl: ICLDemoConfig = field(default_factory=ICLDemoConfig)
    lm: LMDemoConfig = field(default_factory=LMDemoConfig)


def demo_profile(name: str) -> DemoConfig:
    """The "full" profile (sized for about 10 min on 2 idle cores), "quick" (about 2 min) or "debug" (plumbing only).

    Sizes were set from CPU time per step measured on a shared 2-core machine (docs/results/demo_step_costs.md).
    """
    if name == "full":
        return DemoConfig("full")
    if name == "quick":
        return DemoConfig(
            "quick",
            TokenizerDemoConfig(steps=60, num_train=2048, num_val=256),
            ICLDemoConfig(steps=100, eval_episodes=100),
            LMDemoConfig(steps=60, batch_size=4, train_scenes=1500, test_scenes=300, glyph_train_renders=2, caption_eval=30,
                         fewshot_episodes=30),
        )
    if name == "debug":
        return DemoConfig(
            "debug",
            TokenizerDemoConfig(steps=3, num_train=128, num_val=64),
            ICLDemoConfig(suite={"shape_classes": 60, "shape_instances": 8, "glyph_instances": 8, "crop_instances": 8,
                                 "glyph_max_per_script": 8}, datasets=["glyphs", "shapes"], heldout=["glyphs-eval"],
                          preset="caml-debug", extractor="tessera-resnet-debug", steps=3, eval_episodes=5),
            LMDemoConfig(steps=2, batch_size=2, train_scenes=200, test_scenes=200, glyph_train_renders=1, gallery=2, caption_eval=4,
                         fewshot_episodes=4),
        )
    raise ValueError(f"unknown demo profile {name!r} (known: full, quick, debug)")


def _train_estimators(cfg: TokenizerDemoConfig, seed: int, out: Path, source: str, progress: bool) -> dict[str, Any]:
    from tessera.recipes.train_tokenizer import evaluate_run, load_train_config, train
    from tessera.tokenizer import ImageTokenizer

    steps, batch = cfg.steps, cfg.batch_size
    train_items, val_items, data_note = demo_data(cfg.num_train, cfg.num_val, source)
    runs: dict[str, Any] = {}
    for est in ("ste", "rotation"):
        tcfg = load_train_config(
            None,
            [
                "preset=vqvae-f4-k512-32px",
                f"model.estimator={est}",
                f"train.steps={steps}",
                f"train.seed={seed}",
                f"train.log_every={max(1, steps // 30)}",
                "train.eval_every=0",
                "train.checkpoint_every=0",
                "train.tensorboard=false",
                f"train.progress={str(progress).lower()}",
                "train.device=cpu",
                f"data.batch_size={batch}",
                f"data.num_val={len(val_items)}",
                f"optim.lr={cfg.lr}",
                f"optim.warmup_steps={max(1, steps // 20)}",
                "eval.grid_images=16",
            ],
        )
        key = {"estimator": est, "settings": dataclasses.asdict(cfg), "seed": seed, "data": data_note, "n_train": len(train_items)}

        def run(folder: Path, tcfg=tcfg, est=est) -> dict[str, Any]:
            print(f"tokenizer: training the 32px VQ-VAE with estimator={est} ({steps} steps x batch {batch})")
            _, metrics = train(tcfg, folder, data=(train_items, val_items))
            return {"final": str(folder / "final")}

        result, reused = cached_stage(out / est, key, run)
        if reused:
            print(f"tokenizer: reusing the {est} tokenizer in {out / est} (same settings)")
        # Held-out metrics (and the grid/histogram arrays) from the saved tokenizer: the same numbers either way.
        metrics = evaluate_run(ImageTokenizer.from_pretrained(out / est / "final").eval(), val_items, tcfg)
        runs[est] = {"metrics": metrics, "seconds": result["seconds"], "run_dir": out / est, "config": tcfg, "reused": reused}
    return {"runs": runs, "steps": steps, "batch": batch, "data_note": data_note, "val": val_items}


def _results_table(runs: dict[str, Any]) -> list[DemoResult]:
    out = []
    for est, r in runs.items():
        m = r["metrics"]
        out.append(
            DemoResult(est, m["mse"], m["usage"], m["perplexity"], m["quantization_error_sum"], r["seconds"], m["psnr"], m["ssim"])
        )
    return out


def _print_table(results: list[DemoResult]) -> None:
    print()
    print(f"{'estimator':<10} {'val MSE':>9} {'usage':>7} {'perplexity':>11} {'quant. err':>11} {'seconds':>8}")
    for r in results:
        print(f"{r.estimator:<10} {r.val_mse:>9.5f} {r.usage:>7.1%} {r.perplexity:>11.1f} {r.quantization_error:>11.5f} {r.seconds:>8.1f}")


def _tokenizer_section(report, ctx: dict[str, Any]) -> None:
    """Report section: the two estimators' metrics, reconstructions, code histograms and training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tessera.tokenizer.metrics import image_grid
    from tessera.train.log import read_metrics_csv

    tok = ctx["tokenizer"]
    runs = tok["runs"]
    sec = report.section("Tokenizer: straight-through vs rotation trick")
    cfg = runs["rotation"]["config"]
    m = cfg.model
    sec.paragraph(
        f"A VQ-VAE tokenizer ({m.image_size}x{m.image_size} images -> {m.grid_size[0]}x{m.grid_size[1]} codes from a codebook of "
        f"{m.codebook_size}, EMA decay {m.ema_decay}, commitment weight {m.commitment_weight}) trained for {tok['steps']} steps "
        f"at batch {tok['batch']} on {tok['data_note']}, once with the straight-through estimator and once with the rotation "
        "trick (Fifty et al., ICLR 2025), from the same seed, initial weights and data order. Metrics are on held-out "
        "images; codebook usage is the share of codes used per group of 256 validation images."
    )
    rows = []
    for r in ctx["results"]:
        rows.append([r.estimator, f"{r.val_mse:.5f}", f"{r.psnr:.2f}", f"{r.ssim:.3f}", f"{r.usage:.1%}", f"{r.perplexity:.1f}",
                     f"{r.quantization_error:.4g}", f"{r.seconds:.0f}"])
    sec.table(["estimator", "val MSE", "PSNR (dB)", "SSIM", "codebook usage", "perplexity", "quant. error |e-q|²", "seconds"], rows)

    originals = runs["ste"]["metrics"]["_originals"]
    grid = image_grid([originals, runs["ste"]["metrics"]["_recons"], runs["rotation"]["metrics"]["_recons"]], scale=3)
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 90, grid.shape[0] / 90))
    ax.imshow(grid, interpolation="nearest")
    ax.axis("off")
    sec.figure(fig, caption="Held-out images (top), straight-through reconstructions (middle), rotation-trick reconstructions (bottom).")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=True)
    for ax, est in zip(axes, ("ste", "rotation"), strict=True):
        counts = np.sort(runs[est]["metrics"]["_code_counts"].numpy())[::-1]
        used = int((counts > 0).sum())
        ax.bar(np.arange(len(counts)), counts, width=1.0, color="#999999" if est == "ste" else "#d62728")
        ax.set_yscale("log")
        ax.set_title(f"{'straight-through' if est == 'ste' else 'rotation trick'}: {used}/{len(counts)} codes used", fontsize=9)
        ax.set_xlabel("codes, most used first", fontsize=8)
    axes[0].set_ylabel("uses on held-out images", fontsize=8)
    fig.tight_layout()
    sec.figure(fig, caption="Codebook usage histograms: how often each code is used on the held-out images (log scale).")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for est, color in (("ste", "#777777"), ("rotation", "#d62728")):
        rows_csv = [r for r in read_metrics_csv(runs[est]["run_dir"] / "metrics.csv") if "rec_loss" in r]
        steps = [r["step"] for r in rows_csv]
        label = "straight-through" if est == "ste" else "rotation trick"
        axes[0].plot(steps, [r["rec_loss"] for r in rows_csv], color=color, label=label)
        axes[1].plot(steps, [r["usage"] for r in rows_csv], color=color, label=label)
    axes[0].set_yscale("log")
    axes[0].set_title("training reconstruction loss (MSE)", fontsize=9)
    axes[1].set_title("codebook usage per training batch", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    sec.figure(fig, caption="Training curves.")
    sec.paragraph(
        "Reproduce: tessera tokenizer train --config configs/tokenizer/vqvae_f4_32px.yaml model.estimator=ste (or rotation). "
        "The 11-paradigm comparison is benchmarks/rotation_study.py (docs/results/rotation_study.md)."
    )


def _warn_if_loaded() -> None:
    """Torch's default threads oversubscribe a machine that is already busy, which slows training several-fold."""
    import os

    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return
    cores = os.cpu_count() or 1
    if load > cores and torch.get_num_threads() > 1:
        print(f"demo: this machine is busy (load average {load:.1f} on {cores} cores); if the demo is slow, run it with "
              "OMP_NUM_THREADS=1")


def _versions() -> list[list[str]]:
    import importlib.metadata as md
    import os
    import subprocess

    from tessera import __version__

    rows = [["tessera", __version__], ["python", platform.python_version()], ["platform", platform.platform()],
            ["CPU cores", str(os.cpu_count())], ["torch threads", str(torch.get_num_threads())],
            ["OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "(unset)")]]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                                text=True, timeout=5)
        if commit.returncode == 0:
            rows.append(["git commit", commit.stdout.strip()])
    except (OSError, subprocess.SubprocessError):
        pass
    for pkg in ("torch", "numpy", "pillow", "safetensors", "scikit-image", "matplotlib", "sentencepiece", "tqdm", "pyyaml"):
        try:
            rows.append([pkg, md.version(pkg)])
        except md.PackageNotFoundError:
            rows.append([pkg, "(not installed)"])
    return rows


def _settings_section(report, ctx: dict[str, Any]) -> None:
    """Report section: exact versions, the command, every stage's settings and its time (or reuse)."""
    sec = report.section("Versions and settings")
    sec.paragraph(f"Command: {ctx['command']}. Profile {ctx['config'].profile!r}, seed {ctx['seed']}, output {ctx['out_dir']}.")
    sec.table(["component", "version"], _versions(), caption="Exact versions on the machine that made this report.")
    rows = []
    for name, info in ctx["stages"].items():
        took = f"{info['seconds']:.0f} s" + (" (reused from an earlier run; time of that run)" if info["reused"] else "")
        rows.append([name, took])
    rows.append(["whole demo (this invocation)", f"{ctx['total_seconds']:.0f} s"])
    sec.table(["stage", "wall time"], rows, caption="Stage times measured by this run.")
    settings = dataclasses.asdict(ctx["config"])
    settings["parts"] = list(ctx["parts"])
    sec.html("<pre>" + html.escape(json.dumps(settings, indent=2)) + "</pre>")


# Each entry adds one section to the report: (name, function(report, context)). Later parts append theirs.
DEMO_SECTIONS: list[tuple[str, Callable[[Any, dict[str, Any]], None]]] = [
    ("tokenizer", _tokenizer_section),
    ("icl", icl_section),
    ("lm", lm_section),
    ("settings", _settings_section),
]


def run_demo(
    quick: bool = False,
    seed: int = 0,
    out_dir: str | Path | None = None,
    *,
    steps: int | None = None,
    num_val: int | None = None,
    num_train: int | None = None,
    source: str = "auto",
    parts: tuple[str, ...] | list[str] = DEMO_PARTS,
    config: DemoConfig | None = None,
    progress: bool = True,
) -> list[DemoResult]:
    """Run the demo's stages (cached), print the tokenizer table and stage times, write the HTML report.

    Args:
        quick: the ~2-minute profile (ignored when `config` is given).
        seed: seed of weights, data order and sampled episodes (shared by both estimators).
        out_dir: output folder (default runs/demo); stages are cached in `<out_dir>/<profile>/`.
        steps / num_val / num_train: override the tokenizer stage's steps and image counts (tests).
        source: tokenizer images: "auto" (the embedded set, built if missing; scikit-image photos if it cannot be)
            or "skimage".
        parts: which stages to run ("tokenizer", "icl", "lm"); "lm" needs the tokenizer stage and runs it.
        config: a full `DemoConfig` (see `demo_profile`).
        progress: progress bars.

    Returns:
        The tokenizer stage's results, one per estimator.
    """
    from tessera.paths import runs_dir
    from tessera.recipes.html_report import HtmlReport

    unknown = sorted(set(parts) - set(DEMO_PARTS))
    if unknown:
        raise ValueError(f"unknown demo parts {unknown} (known: {', '.join(DEMO_PARTS)})")
    cfg = config or demo_profile("quick" if quick else "full")
    tok_cfg = dataclasses.replace(cfg.tokenizer, **{k: v for k, v in (("steps", steps), ("num_val", num_val), ("num_train", num_train))
                                                     if v is not None})
    cfg = dataclasses.replace(cfg, tokenizer=tok_cfg)
    out = Path(out_dir) if out_dir is not None else runs_dir("demo")
    stage_root = out / cfg.profile
    t0 = time.perf_counter()
    ctx: dict[str, Any] = {"quick": cfg.profile == "quick", "seed": seed, "out_dir": out, "config": cfg, "parts": tuple(parts),
                           "stages": {}, "command": " ".join(["tessera", *sys.argv[1:]]) if Path(sys.argv[0]).name == "tessera"
                           else f"run_demo(profile={cfg.profile!r}, parts={list(parts)})"}

    print(f"demo: profile {cfg.profile!r}, stages {', '.join(parts)}; checkpoints cached in {stage_root}")
    _warn_if_loaded()
    tok = _train_estimators(cfg.tokenizer, seed, stage_root / "tokenizer", source, progress)
    for est, r in tok["runs"].items():
        ctx["stages"][f"tokenizer ({est})"] = {"seconds": r["seconds"], "reused": r["reused"]}
    results = _results_table(tok["runs"])
    _print_table(results)
    print(f"\n{tok['steps']} steps x batch {tok['batch']} each, seed {seed}; usage = unique codes per 256 held-out images / "
          f"{tok['runs']['rotation']['config'].model.codebook_size} codes.")
    ctx.update(tokenizer=tok, results=results)

    if "icl" in parts:
        folder = stage_root / "icl"
        res, reused = cached_stage(folder, {"settings": dataclasses.asdict(cfg.icl), "seed": seed},
                                   lambda f: run_icl_stage(cfg.icl, f, seed, progress))
        print(f"icl: {'reused' if reused else 'finished'} ({res['seconds']:.0f} s)")
        for name, r in res["heldout"].items():
            for shot, d in r["shots"].items():
                if "CAML" in d:
                    print(f"  {name} {cfg.icl.way}-way {shot}-shot: " + ", ".join(f"{m} {d[m]['mean']:.1f}±{d[m]['ci95']:.1f}"
                                                                              for m in ("CAML", "ProtoNet", "SimpleShot (CL2N)", "1-NN")))
        ctx["icl"] = {"config": cfg.icl, "result": res, "folder": folder}
        ctx["stages"]["icl (CAML)"] = {"seconds": res["seconds"], "reused": reused}
    if "lm" in parts:
        folder = stage_root / "lm"
        tok_folder = stage_root / "tokenizer" / "rotation" / "final"
        key = {"settings": dataclasses.asdict(cfg.lm), "seed": seed, "tokenizer": json.loads((stage_root / "tokenizer" / "rotation" / "stage.json").read_text())["key"]}
        res, reused = cached_stage(folder, key, lambda f: run_lm_stage(cfg.lm, f, tok_folder, seed, progress))
        print(f"lm: {'reused' if reused else 'finished'} ({res['seconds']:.0f} s); caption attribute accuracy "
              f"{100 * res['caption']['attribute_accuracy']:.1f}% (chance {100 * res['caption']['chance']:.1f}%), in-context "
              + ", ".join(f"{s}-shot {100 * res['fewshot'][f'{s}-shot']:.0f}%" for s in cfg.lm.shots) + f" (chance {100 * res['fewshot']['chance']:.0f}%)")
        ctx["lm"] = {"config": cfg.lm, "result": res, "folder": folder}
        ctx["stages"]["lm (nano decoder)"] = {"seconds": res["seconds"], "reused": reused}

    ctx["total_seconds"] = time.perf_counter() - t0
    report = HtmlReport("Tessera demo", subtitle=f"Profile {cfg.profile!r}, seed {seed}.")
    for _, add in DEMO_SECTIONS:
        add(report, ctx)
    path = report.write(out / "report.html")
    for name, info in ctx["stages"].items():
        print(f"  stage {name}: {info['seconds']:.0f} s" + (" (reused)" if info["reused"] else ""))
    print(f"demo finished in {ctx['total_seconds'] / 60:.1f} min")
    print(f"report: {path.resolve()}")
    return results


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="tokenizer (STE vs rotation), CAML few-shot and a nano multimodal model; an HTML report")
    p.add_argument("--quick", action="store_true", help="a shorter run (about 2 minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/demo)")
    p.add_argument("--parts", default=",".join(DEMO_PARTS), help="comma-separated stages to run (default: all)")
    p.add_argument("--profile", default=None, choices=["full", "quick", "debug"], help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    config = demo_profile(args.profile) if args.profile else None
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    run_demo(quick=args.quick, seed=args.seed, out_dir=args.out, parts=parts, config=config, progress=not args.no_progress)
    return 0
