"""`tessera demo`: straight-through vs rotation trick on real photographs, end to end on a laptop CPU, with a report.

Run:    tessera demo            (about 8 minutes on 2 CPU cores, plus a one-time build of the embedded images)
        tessera demo --quick    (about 2 minutes)
Expect: the embedded image set is built if it is not in the cache yet; a 32px VQ-VAE tokenizer (the
        `vqvae-f4-k512-32px` preset: 8x8 codes from 512) is trained twice through the tokenizer recipe, once with each
        gradient estimator, from the same seed, data order and initial weights; a table of held-out MSE, codebook
        usage, perplexity, quantization error and seconds is printed; and a self-contained HTML report
        (reconstruction grids, codebook-usage histograms, training curves, the metrics table) is written to
        runs/demo/report.html, whose path is printed last.

The report is a list of sections (`tessera.recipes.html_report`); each part of Tessera contributes one through
`DEMO_SECTIONS` (name, function(report, context) -> None), so later parts (CAML, the multimodal LM) add theirs there.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["register", "run_demo", "skimage_patches", "DemoResult", "DEMO_SECTIONS", "demo_data"]

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


def _train_estimators(
    quick: bool, seed: int, out: Path, steps: int | None, num_val: int, num_train: int | None, source: str
) -> dict[str, Any]:
    from tessera.recipes.train_tokenizer import load_train_config, train

    default_steps, batch = (150, 32) if quick else (900, 32)
    steps = steps or default_steps
    train_items, val_items, data_note = demo_data(num_train if num_train is not None else (4096 if quick else 0), num_val, source)
    runs: dict[str, Any] = {}
    for est in ("ste", "rotation"):
        cfg = load_train_config(
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
                "train.device=cpu",
                f"data.batch_size={batch}",
                f"data.num_val={len(val_items)}",
                "optim.lr=2e-3",
                f"optim.warmup_steps={max(1, steps // 20)}",
                "eval.grid_images=16",
            ],
        )
        print(f"training the 32px VQ-VAE tokenizer with estimator={est} ({steps} steps x batch {batch})")
        t0 = time.perf_counter()
        _, metrics = train(cfg, out / est, data=(train_items, val_items))
        runs[est] = {"metrics": metrics, "seconds": time.perf_counter() - t0, "run_dir": out / est, "config": cfg}
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


# Each entry adds one section to the report: (name, function(report, context)). Later parts append theirs.
DEMO_SECTIONS: list[tuple[str, Callable[[Any, dict[str, Any]], None]]] = [("tokenizer", _tokenizer_section)]


def run_demo(
    quick: bool = False,
    seed: int = 0,
    out_dir: str | Path | None = None,
    *,
    steps: int | None = None,
    num_val: int = 512,
    num_train: int | None = None,
    source: str = "auto",
) -> list[DemoResult]:
    """Train the demo tokenizer with both estimators, print the table, write the HTML report and print its path.

    Args:
        quick: the ~2-minute version (fewer steps, a 4096-image training subset).
        seed: seed of the initial weights and data order (shared by both estimators).
        out_dir: output folder (default runs/demo).
        steps: override the number of training steps (tests use a handful).
        num_val: held-out images (512: two groups of 256 for the usage metric).
        num_train: training images (default: 4096 with `quick`, else the whole set).
        source: "auto" (the embedded set, built if missing; scikit-image photos if it cannot be) or "skimage".
    """
    from tessera.paths import runs_dir
    from tessera.recipes.html_report import HtmlReport

    out = Path(out_dir) if out_dir is not None else runs_dir("demo")
    t0 = time.perf_counter()
    tok = _train_estimators(quick, seed, out, steps, num_val, num_train, source)
    results = _results_table(tok["runs"])
    _print_table(results)
    print(f"\n{tok['steps']} steps x batch {tok['batch']} each, seed {seed}; usage = unique codes per 256 held-out images / "
          f"{tok['runs']['rotation']['config'].model.codebook_size} codes.")
    report = HtmlReport("Tessera demo", subtitle=f"{'Quick' if quick else 'Full'} demo, seed {seed}.")
    ctx = {"tokenizer": tok, "results": results, "quick": quick, "seed": seed, "out_dir": out}
    for _, add in DEMO_SECTIONS:
        add(report, ctx)
    path = report.write(out / "report.html")
    print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min")
    print(f"report: {path.resolve()}")
    return results


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train a small tokenizer with STE and with the rotation trick; write an HTML report")
    p.add_argument("--quick", action="store_true", help="a shorter run (about 2 minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/demo)")
    p.set_defaults(handler=lambda args: run_demo(quick=args.quick, seed=args.seed, out_dir=args.out) and 0)
