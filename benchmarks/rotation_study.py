"""The rotation-trick study at CPU scale: straight-through (STE) vs rotation trick across the paper's 11 paradigms.

Run:    python benchmarks/rotation_study.py --profile quick   (under 40 minutes on 2 cores; what docs/results show)
        python benchmarks/rotation_study.py --profile full    (longer runs, more seeds; see the doc for its runtime)
        python benchmarks/rotation_study.py --profile smoke   (a few steps per run: checks the wiring in ~2 minutes)
Writes: docs/results/rotation_study.md, rotation_study.json and rotation_study_<metric>.png (the smoke profile writes
        to runs/rotation_study/smoke/ only). Finished runs are kept under runs/rotation_study/<profile>/ and skipped
        when the script is started again, so an interrupted study resumes where it stopped.

What it tests. Fifty et al. (ICLR 2025, arXiv 2410.06424) train 11 tokenizer paradigms with STE and with the
rotation trick and report higher codebook usage, lower quantization error and better reconstructions for the trick
(Tables 1-5). We rebuild the 11 paradigms at CPU scale (32px images / 16px clips, tiny models, hundreds of steps):
    4 VQ-VAE   (paper Table 1): {Euclidean, cosine} x {shape A: 8x8 latents, 32-d codes projected from 64-d, K=512;
                                shape B: 16x16 latents of dimension 3, K=1024}
    2 VQGAN    (Table 2, taming 16x16x256): 8x8x64, K=256, beta 0.25, on the photo set and on a narrow domain
    2 VQGAN    (Table 3, LDM 64x64x3 / 32x32x4): 16x16x3, K=1024 and 8x8x4, K=2048
    1 ViT-VQGAN (Table 4): patch-4 transformer, factorised 8-d l2-normalised codes, K=1024
    2 video    (Table 5, TimeSformer-VQGAN on BAIR / UCF101): sprite clips, patch 2 with K=512 and patch 4 with K=1024
Every (paradigm, estimator, seed) run has identical data order, initialisation and budget; only the estimator differs.
The paper's "exact gradient" baselines (Hessian-vector approximation and double forward pass) run on the VQ-VAE
Euclidean shape-B row, as in the paper's Table 1. Metrics are computed on held-out images (codebook usage over groups
of 256 validation images); each is reported as mean +- std over seeds, with the paper's direction of effect beside ours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# -- the paradigms ------------------------------------------------------------------------------------------------------
# Paper numbers (digest A6): STE -> rotation for usage, quantization error, validation loss and r-FID (r-FVD for video).
PAPER: dict[str, dict[str, tuple[float, float]]] = {
    "vqvae-euclid-A": {"usage": (1.00, 0.97), "qe": (5.9e-3, 5.1e-4), "val": (0.115, 0.122), "fid": (106.1, 85.7)},
    "vqvae-cosine-A": {"usage": (0.75, 0.91), "qe": (2.9e-3, 2.7e-3), "val": (0.114, 0.111), "fid": (84.3, 82.9)},
    "vqvae-euclid-B": {"usage": (1.00, 0.99), "qe": (1.0e-3, 1.4e-4), "val": (0.030, 0.030), "fid": (19.0, 16.5)},
    "vqvae-cosine-B": {"usage": (0.31, 0.38), "qe": (1.2e-4, 9.6e-5), "val": (0.038, 0.035), "fid": (26.0, 24.2)},
    "vqgan-taming-photos": {"usage": (0.95, 0.98), "qe": (0.134, 0.002), "val": (0.594, 0.422), "fid": (7.3, 4.6)},
    "vqgan-taming-narrow": {"usage": (0.27, 0.99), "qe": (0.233, 0.002), "val": (0.565, 0.313), "fid": (4.7, 3.7)},
    "vqgan-ldm-16x16x3": {"usage": (0.15, 0.86), "qe": (2.5e-3, 1.7e-4), "val": (0.183, 0.142), "fid": (0.53, 0.27)},
    "vqgan-ldm-8x8x4": {"usage": (0.02, 0.27), "qe": (1.2e-2, 2.4e-4), "val": (0.385, 0.269), "fid": (5.0, 1.1)},
    "vit-vqgan": {"usage": (0.003, 0.022), "qe": (6.7e-3, 8.3e-3), "val": (0.127, 0.113), "fid": (29.2, 11.2)},
    "video-p2": {"usage": (0.004, 0.43), "qe": (0.03, 3.0e-3), "val": (0.28, 0.074), "fid": (1661.1, 21.4)},
    "video-p4": {"usage": (0.001, 0.30), "qe": (0.006, 0.020), "val": (0.169, 0.109), "fid": (2878.1, 229.1)},
}
# Paper's exact-gradient rows (Table 1, Euclidean 64x64x3): usage, QE, val loss, r-FID.
PAPER_EXACT = {
    "ste": {"usage": 1.00, "qe": 1.0e-3, "val": 0.030, "fid": 19.0},
    "hessian": {"usage": 0.39, "qe": 6.9e-5, "val": 0.112, "fid": 35.6},
    "double_forward": {"usage": 0.84, "qe": 2.0e-3, "val": 0.053, "fid": 25.4},
    "rotation": {"usage": 0.99, "qe": 1.4e-4, "val": 0.030, "fid": 16.5},
}


@dataclass
class Row:
    key: str
    title: str
    paper_ref: str
    data: str  # "photos" | "narrow" | "clips"
    model: dict[str, Any]
    loss: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    batch_scale: float = 1.0  # fraction of the profile's batch size (video clips are 8 frames each)
    exact_baselines: bool = False


_CONV = dict(base_channels=16, num_res_blocks=1, attention=False)
_VQGAN_LOSS = dict(reconstruction="l1", adversarial_weight=0.1, disc_layers=2, disc_channels=16)
ROWS = [
    Row("vqvae-euclid-A", "VQ-VAE, Euclidean, 8x8x32 (64->32 proj.), K=512", "T1 row 1", "photos",
        dict(family="vqvae", image_size=32, channel_mult=(1, 2, 2), latent_dim=64, codebook_dim=32, codebook_size=512, **_CONV)),
    Row("vqvae-cosine-A", "VQ-VAE, cosine, 8x8x32 (64->32 proj.), K=512", "T1 row 2", "photos",
        dict(family="vqvae", image_size=32, channel_mult=(1, 2, 2), latent_dim=64, codebook_dim=32, codebook_size=512, distance="cosine", **_CONV)),
    Row("vqvae-euclid-B", "VQ-VAE, Euclidean, 16x16x3, K=1024", "T1 row 3", "photos",
        dict(family="vqvae", image_size=32, channel_mult=(1, 2), latent_dim=3, codebook_size=1024, **_CONV), exact_baselines=True),
    Row("vqvae-cosine-B", "VQ-VAE, cosine, 16x16x3, K=1024", "T1 row 4", "photos",
        dict(family="vqvae", image_size=32, channel_mult=(1, 2), latent_dim=3, codebook_size=1024, distance="cosine", **_CONV)),
    Row("vqgan-taming-photos", "VQGAN (taming-style), 8x8x64, K=256, photos", "T2 ImageNet", "photos",
        dict(family="vqgan", image_size=32, channel_mult=(1, 2, 2), latent_dim=64, codebook_size=256, commitment_weight=0.25, **_CONV),
        loss=_VQGAN_LOSS),
    Row("vqgan-taming-narrow", "VQGAN (taming-style), 8x8x64, K=256, narrow domain", "T2 FFHQ+CelebA-HQ", "narrow",
        dict(family="vqgan", image_size=32, channel_mult=(1, 2, 2), latent_dim=64, codebook_size=256, commitment_weight=0.25, **_CONV),
        loss=_VQGAN_LOSS),
    Row("vqgan-ldm-16x16x3", "VQGAN (LDM-style), 16x16x3, K=1024", "T3 64x64x3", "photos",
        dict(family="vqgan", image_size=32, channel_mult=(1, 2), latent_dim=3, codebook_size=1024, commitment_weight=0.25, **_CONV),
        loss=_VQGAN_LOSS),
    Row("vqgan-ldm-8x8x4", "VQGAN (LDM-style), 8x8x4, K=2048", "T3 32x32x4", "photos",
        dict(family="vqgan", image_size=32, channel_mult=(1, 2, 2), latent_dim=4, codebook_size=2048, commitment_weight=0.25, **_CONV),
        loss=_VQGAN_LOSS),
    Row("vit-vqgan", "ViT-VQGAN, patch 4, 8x8 tokens, 8-d l2-normalised codes, K=1024", "T4", "photos",
        dict(family="vit_vqgan", image_size=32, patch_size=4, embed_dim=64, num_layers=2, num_heads=4, mlp_dim=128,
             codebook_size=1024, codebook_dim=8, distance="cosine")),
    Row("video-p2", "Video (TimeSformer-style), 8x16x16 clips, patch 2, K=512", "T5 BAIR", "clips",
        dict(family="video", image_size=16, num_frames=8, patch_size=2, embed_dim=64, num_layers=2, num_heads=4, mlp_dim=128,
             codebook_size=512, codebook_dim=16), batch_scale=0.25),
    Row("video-p4", "Video (TimeSformer-style), 8x16x16 clips, patch 4, K=1024", "T5 UCF101", "clips",
        dict(family="video", image_size=16, num_frames=8, patch_size=4, embed_dim=64, num_layers=2, num_heads=4, mlp_dim=128,
             codebook_size=1024, codebook_dim=16), batch_scale=0.25),
]
ROWS_BY_KEY = {r.key: r for r in ROWS}

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(steps=6, batch=16, seeds=1, num_train=512, num_val=64, lr=1e-3, exact=True),
    "quick": dict(steps=200, batch=32, seeds=3, num_train=8192, num_val=512, lr=2e-3, exact=True),
    "full": dict(steps=1000, batch=32, seeds=5, num_train=0, num_val=1024, lr=2e-3, exact=True),
}


# -- data -------------------------------------------------------------------------------------------------------------
_DATA_CACHE: dict[tuple, Any] = {}


def _narrow_crops(n: int, size: int, split: str, seed: int):
    """A narrow domain (the paper's faces row): crops of one retinal fundus photograph (scikit-image), the top 70%
    of the picture for training, the bottom 30% for validation."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    img = data.retina()
    h = img.shape[0]
    part = img[: int(0.7 * h)] if split == "train" else img[int(0.7 * h) :]
    pil = Image.fromarray(np.ascontiguousarray(part))
    rng = np.random.default_rng([seed, 7, 0 if split == "train" else 1])
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    w, hh = pil.size
    for i in range(n):
        side = int(np.exp(rng.uniform(np.log(size), np.log(min(w, hh, 6 * size)))))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, hh - side + 1))
        out[i] = np.asarray(pil.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BICUBIC))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def image_source() -> str:
    """"embedded" when tessera.data provides the embedded photo set, else "skimage" (named in the results)."""
    try:
        import tessera.data as tdata  # noqa: F401

        if hasattr(tdata, "load_image_dataset") or __import__("importlib").util.find_spec("tessera.data.images"):
            return "embedded"
    except ImportError:
        pass
    return "skimage"


def video_source() -> str:
    try:
        import tessera.data as tdata

        if hasattr(tdata, "load_video_dataset"):
            return "embedded"
    except ImportError:
        pass
    return "sprites"


def load_data(kind: str, size: int, frames: int, prof: dict[str, Any]):
    from tessera.recipes.tokenizer_data import DataConfig, load_split

    key = (kind, size, frames, prof["num_train"], prof["num_val"])
    if key not in _DATA_CACHE:
        n_train = prof["num_train"]
        if kind == "narrow":
            pair = (_narrow_crops(n_train or 8192, size, "train", 0), _narrow_crops(prof["num_val"], size, "val", 0))
        else:
            video = kind == "clips"
            source = video_source() if video else image_source()
            if video:  # clips cost 8 frames each: 2048 training clips are plenty for the CPU budgets
                n = min(n_train, 2048) if n_train else (0 if source == "embedded" else 2048)
            else:
                n = n_train if n_train else (0 if source == "embedded" else 8192)
            cfg = DataConfig(source=source, num_train=n, num_val=prof["num_val"])
            pair = (load_split(cfg, "train", size, video=video, frames=frames), load_split(cfg, "val", size, video=video, frames=frames))
        _DATA_CACHE[key] = pair
    return _DATA_CACHE[key]


# -- one run ------------------------------------------------------------------------------------------------------------
def _config(row: Row, estimator: str, seed: int, prof: dict[str, Any]):
    from tessera.config import from_dict
    from tessera.recipes.train_tokenizer import TokenizerTrainConfig

    batch = max(2, int(round(prof["batch"] * row.batch_scale)))
    steps = prof["steps"]
    loss = dict(row.loss)
    if loss.get("adversarial_weight", 0) > 0:
        loss["disc_start"] = steps // 2  # taming starts the discriminator after the autoencoder has warmed up
        if _perceptual_network() is not None:
            loss.update(perceptual_weight=0.1, perceptual_network=_perceptual_network())
    data = {
        "train": dict(steps=steps, log_every=max(1, min(25, steps)), eval_every=0, checkpoint_every=0, seed=seed,
                      progress=False, tensorboard=False, device="cpu"),
        "optim": dict(lr=prof["lr"], weight_decay=1e-4, betas=[0.9, 0.99], warmup_steps=max(1, steps // 20), min_lr_ratio=0.1,
                      grad_clip=1.0, **row.optim),
        "model": {**row.model, "estimator": estimator},
        "loss": loss,
        "data": dict(batch_size=batch, num_val=prof["num_val"], seed=0),
        "eval": dict(batch_size=64, group_size=256, frechet="none", grid_images=8),
    }
    return from_dict(TokenizerTrainConfig, data)


_PERCEPTUAL: list[str | None] = []


def _perceptual_network() -> str | None:
    """The Tessera feature network for the VQGAN perceptual term when this install ships one, else None."""
    if not _PERCEPTUAL:
        try:
            from tessera.tokenizer.perceptual import load_feature_network

            load_feature_network("tessera-resnet-s")
            _PERCEPTUAL.append("tessera-resnet-s")
        except (ImportError, RuntimeError, ValueError, FileNotFoundError, TypeError):
            _PERCEPTUAL.append(None)
    return _PERCEPTUAL[0]


_FD: list[Any] = []


def _fd_network():
    if not _FD:
        from tessera.tokenizer.metrics import resolve_fid_network

        _FD.append(resolve_fid_network("auto"))
    return _FD[0]


def run_one(job: tuple[str, str, int], profile: str, out_root: str, threads: int) -> dict[str, Any]:
    """Train one (row, estimator, seed) and return its held-out metrics; cached as result.json."""
    import torch

    torch.set_num_threads(threads)
    from tessera.io import atomic_write_json
    from tessera.recipes.train_tokenizer import train
    from tessera.tokenizer.metrics import evaluate_tokenizer

    row_key, estimator, seed = job
    row = ROWS_BY_KEY[row_key]
    prof = PROFILES[profile]
    run_dir = Path(out_root) / row_key / estimator / f"seed{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = _config(row, estimator, seed, prof)
    frames = cfg.model.num_frames
    data = load_data(row.data, cfg.model.image_size, frames, prof)
    t0 = time.perf_counter()
    result, metrics = train(cfg, run_dir, data=data)
    seconds = time.perf_counter() - t0
    net, key = _fd_network()
    out: dict[str, Any] = {
        "row": row_key,
        "estimator": estimator,
        "seed": seed,
        "seconds": seconds,
        "train_rec_loss": float(result.train_metrics.get("rec_loss", float("nan"))),
        **{k: float(v) for k, v in metrics.items() if not k.startswith("_") and isinstance(v, (int, float))},
    }
    if net is not None:
        from tessera.recipes.train_tokenizer import _LazyFloat
        from tessera.tokenizer import load_tokenizer

        tok = load_tokenizer(run_dir / "final")
        res = evaluate_tokenizer(tok, _LazyFloat(data[1][: prof["num_val"]]), batch_size=64, feature_network=net, feature_key=key)
        out[key] = float(res[key])
        out["fd_key"] = key
    out["code_counts"] = json.loads((run_dir / "eval.json").read_text())["code_counts"]
    atomic_write_json(done, out)
    # Keep the run folder small: the checkpoint is not needed once the final tokenizer and metrics are written.
    import shutil

    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return out


def _worker(args: tuple) -> dict[str, Any]:
    return run_one(*args)


# -- aggregation --------------------------------------------------------------------------------------------------------
METRICS = [
    # key, label, better ("low"/"high"), paper key
    ("usage", "codebook usage", "high", "usage"),
    ("quantization_error_sum", "quant. error ‖e−q‖² (sum)", "low", "qe"),
    ("quantization_error_mean", "quant. error (per element)", "low", None),
    ("mse", "val MSE", "low", "val"),
    ("psnr", "val PSNR (dB)", "high", None),
    ("ssim", "val SSIM", "high", None),
    ("train_rec_loss", "train rec. loss", "low", None),
    ("perplexity", "perplexity", "high", None),
]


def _stats(values: list[float]) -> tuple[float, float]:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    table: dict[str, dict[str, Any]] = {}
    for r in results:
        table.setdefault(r["row"], {}).setdefault(r["estimator"], []).append(r)
    out: dict[str, Any] = {}
    for row_key, by_est in table.items():
        row_out: dict[str, Any] = {}
        for est, runs in by_est.items():
            keys = [m[0] for m in METRICS] + [k for k in runs[0] if k.startswith("fd_") and k != "fd_key"]
            row_out[est] = {
                k: dict(zip(("mean", "std"), _stats([float(x[k]) for x in runs if k in x]), strict=True)) for k in keys if all(k in x for x in runs)
            }
            row_out[est]["seeds"] = sorted(x["seed"] for x in runs)
            row_out[est]["seconds"] = float(np.mean([x["seconds"] for x in runs]))
            row_out[est]["code_counts"] = np.sum([x["code_counts"] for x in runs], axis=0).tolist()
        out[row_key] = row_out
    return out


def _direction(ste: float, rot: float, rel_tol: float = 0.02) -> str:
    if abs(rot - ste) <= rel_tol * max(abs(ste), abs(rot), 1e-12):
        return "="
    return "up" if rot > ste else "down"


def _arrow(d: str) -> str:
    return {"up": "↑", "down": "↓", "=": "≈"}[d]


def _significant(a: dict, b: dict, n: int) -> bool:
    """|mean difference| larger than twice its standard error (Welch, equal n); never with a single seed."""
    import math

    if n < 2:
        return False
    se = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / max(1, n))
    return abs(a["mean"] - b["mean"]) > 2 * se


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.1f}"
    if abs(v) >= 0.01:
        return f"{v:.3f}"
    return f"{v:.2e}"


def write_report(agg: dict[str, Any], meta: dict[str, Any], out_md: Path, out_json: Path, plot_prefix: Path | None) -> None:
    from tessera.io import atomic_write_bytes, atomic_write_json

    lines: list[str] = []
    prof = meta["profile"]
    lines += [
        "# Rotation trick vs straight-through estimator: the 11 paradigms at CPU scale",
        "",
        "Generated by `benchmarks/rotation_study.py` — do not edit by hand. "
        f"Command: `{meta['command']}`.",
        "",
        f"- Profile **{prof}**: {meta['profile_settings']['steps']} optimiser steps per run, batch "
        f"{meta['profile_settings']['batch']} images (video rows: a quarter as many 8-frame clips), "
        f"{meta['profile_settings']['seeds']} seed(s) per (paradigm, estimator), AdamW betas (0.9, 0.99), "
        f"lr {meta['profile_settings']['lr']} with warmup + cosine, EMA codebook decay 0.8, no k-means init, no dead-code "
        "restarts (the paper's Table 8 settings), identical data order and initialisation for both estimators.",
        f"- Data: images = **{meta['image_source']}** ({meta['image_source_note']}); narrow domain = crops of one retinal "
        "photograph (scikit-image), train from its top 70%, validation from its bottom 30%; "
        f"clips = **{meta['video_source']}**.",
        f"- Held-out metrics on {meta['profile_settings']['num_val']} validation items; codebook usage pooled over groups of "
        "256 validation images (clips) and averaged (paper App. A.4); quantization error |e-q|^2 in code space, summed "
        "over the code dimension (the paper's formula) and per element. Train rec. loss is the training objective's "
        "reconstruction term (MSE, or L1 for VQGAN rows) averaged over the last logged steps.",
        f"- Frechet metric: {meta['fd_note']}.",
        f"- VQGAN rows: patch discriminator (hinge, adaptive weight, starts at half of the steps), L1 reconstruction, "
        f"{meta['perceptual_note']}.",
        f"- Machine: {meta['machine']}; torch {meta['torch']}; wall time {meta['wall_minutes']:.1f} min with "
        f"{meta['workers']} worker process(es) x {meta['threads']} thread(s). {meta['shared_note']}",
        f"- Runs completed: {meta['runs']} of {meta['runs_planned']}"
        + ("." if meta["runs"] == meta["runs_planned"] else " — THIS REPORT IS PARTIAL: rows show the seeds that finished (column `seeds`)."),
        "",
        "Directions: ↑ / ↓ = the rotation trick's value is higher / lower than STE's (≈: within 2%); `*` = the difference is "
        "larger than twice its standard error over seeds. \"agrees\" compares our direction with the paper's.",
        "",
        "## Summary: direction of effect, paper vs ours",
        "",
        "| paradigm (paper table) | usage paper | usage ours | QE paper | QE ours | val loss paper | val MSE ours |",
        "|---|---|---|---|---|---|---|",
    ]
    agree_counts = {"usage": [0, 0], "qe": [0, 0], "val": [0, 0]}
    for row in ROWS:
        if row.key not in agg or "ste" not in agg[row.key] or "rotation" not in agg[row.key]:
            continue
        ste, rot = agg[row.key]["ste"], agg[row.key]["rotation"]
        n = len(ste["seeds"])
        cells = []
        for mkey, pkey in (("usage", "usage"), ("quantization_error_sum", "qe"), ("mse", "val")):
            p_ste, p_rot = PAPER[row.key][pkey]
            pd = _direction(p_ste, p_rot)
            od = _direction(ste[mkey]["mean"], rot[mkey]["mean"])
            sig = "*" if _significant(ste[mkey], rot[mkey], n) else ""
            agree = od == pd
            agree_counts[pkey][0] += int(agree)
            agree_counts[pkey][1] += 1
            cells += [
                f"{_arrow(pd)} {_fmt(p_ste)}→{_fmt(p_rot)}",
                f"{_arrow(od)}{sig} {_fmt(ste[mkey]['mean'])}→{_fmt(rot[mkey]['mean'])} ({'agrees' if agree else 'differs'})",
            ]
        lines.append(f"| {row.title} ({row.paper_ref}) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Agreement with the paper's direction: "
        + ", ".join(f"{name} {a}/{t}" for name, (a, t) in (("usage", agree_counts["usage"]), ("quantization error", agree_counts["qe"]), ("validation loss", agree_counts["val"]))),
        "",
        "## All metrics (mean ± std over seeds, held-out split)",
        "",
    ]
    fd_keys = sorted({k for r in agg.values() for e in r.values() if isinstance(e, dict) for k in e if k.startswith("fd_") or k == "rfid"})
    header = ["paradigm", "estimator", "seeds"] + [m[1] for m in METRICS] + fd_keys + ["s/run"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = ["ste", "rotation", "hessian", "double_forward"]
    for row in ROWS:
        if row.key not in agg:
            continue
        for est in order:
            if est not in agg[row.key]:
                continue
            e = agg[row.key][est]
            vals = [f"{_fmt(e[m[0]]['mean'])} ± {_fmt(e[m[0]]['std'])}" if m[0] in e else "–" for m in METRICS]
            vals += [f"{_fmt(e[k]['mean'])} ± {_fmt(e[k]['std'])}" if k in e else "–" for k in fd_keys]
            lines.append(f"| {row.key} | {est} | {len(e['seeds'])} | " + " | ".join(vals) + f" | {e['seconds']:.0f} |")
    exact_row = next((r for r in ROWS if r.exact_baselines), None)
    if exact_row is not None and exact_row.key in agg and "hessian" in agg[exact_row.key]:
        lines += [
            "",
            f"## Exact-gradient baselines ({exact_row.title}; paper Table 1, Euclidean 64x64x3)",
            "",
            "| method | usage paper | usage ours | QE paper | QE ours (sum) | val loss paper | val MSE ours |",
            "|---|---|---|---|---|---|---|",
        ]
        for est in order:
            if est not in agg[exact_row.key]:
                continue
            e, p = agg[exact_row.key][est], PAPER_EXACT[est]
            lines.append(
                f"| {est} | {_fmt(p['usage'])} | {_fmt(e['usage']['mean'])} ± {_fmt(e['usage']['std'])} | {_fmt(p['qe'])} | "
                f"{_fmt(e['quantization_error_sum']['mean'])} ± {_fmt(e['quantization_error_sum']['std'])} | {_fmt(p['val'])} | "
                f"{_fmt(e['mse']['mean'])} ± {_fmt(e['mse']['std'])} |"
            )
    lines += ["", "## Reading the results", "", *meta.get("discussion", []), ""]
    if plot_prefix is not None:
        lines += ["## Plots", ""]
        for m in ("usage", "mse", "quantization_error_sum"):
            lines.append(f"![{m}]({plot_prefix.name}_{m}.png)")
        lines.append("")
    lines += [
        "## Runtime",
        "",
        *meta.get("runtime_notes", []),
        "",
        "## Caveats",
        "",
        "- CPU scale: 32px images (16px clips), models with 10^4-10^5 parameters, hundreds of steps. The paper trains "
        "ImageNet-scale models for tens of epochs; absolute numbers are not comparable, only directions of effect. The "
        "quick profile's models are far from converged, so it shows early-training behaviour; the full profile runs 5x "
        "longer with 5 seeds.",
        "- Usage is measured on held-out images; with short training and no restarts many codes are never used by either "
        "estimator in the high-dimensional rows (shape A, ViT), which is the regime the paper's claim is about.",
        "- Our validation loss is MSE on the [0, 1] scale; the paper's is MSE on CLIP-normalised pixels (about 13x larger "
        "for the same error). VQGAN rows train with L1 + adversarial (+ perceptual where available) and report MSE.",
        "- r-FID is not computed unless torchvision's Inception-v3 weights are in the local cache (they are not downloaded). "
        "r-FVD (I3D) is not computed for video.",
        "- The rotation trick here is `tessera.quantize.rotation_trick` (gradient λRᵀg, paper App. A.7) in every family; "
        "the official VQGAN integration instead removes the radial gradient component (digest A2) — we do not copy that.",
        "",
    ]
    atomic_write_bytes(out_md, ("\n".join(lines)).encode())
    # Per-code counts stay in the run folders (result.json); the committed JSON keeps the statistics only.
    slim = {r: {e: {k: v for k, v in d.items() if k != "code_counts"} for e, d in ests.items()} for r, ests in agg.items()}
    atomic_write_json(out_json, {"meta": meta, "results": slim, "paper": PAPER, "paper_exact": PAPER_EXACT})


def make_plots(agg: dict[str, Any], prefix: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [r.key for r in ROWS if r.key in agg and "ste" in agg[r.key] and "rotation" in agg[r.key]]
    for metric, label, log in (("usage", "codebook usage (held-out)", False), ("mse", "validation MSE", True), ("quantization_error_sum", "quantization error |e-q|^2", True)):
        fig, ax = plt.subplots(figsize=(8, 3.2), dpi=80)
        x = np.arange(len(keys))
        for i, (est, color) in enumerate((("ste", "#999999"), ("rotation", "#d62728"))):
            means = [agg[k][est][metric]["mean"] for k in keys]
            stds = [agg[k][est][metric]["std"] for k in keys]
            ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=stds, label="STE" if est == "ste" else "rotation trick", color=color, capsize=2)
        ax.set_xticks(x)
        ax.set_xticklabels(keys, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(label, fontsize=8)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(f"{prefix}_{metric}.png")
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, path)


# -- main ---------------------------------------------------------------------------------------------------------------
def jobs_for(profile: str, rows: list[Row]) -> list[tuple[str, str, int]]:
    prof = PROFILES[profile]
    jobs = []
    for seed in range(prof["seeds"]):
        for row in rows:
            ests = ["ste", "rotation"] + (["hessian", "double_forward"] if row.exact_baselines and prof["exact"] else [])
            for est in ests:
                jobs.append((row.key, est, seed))
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--rows", default="", help="comma-separated paradigm keys (default: all 11)")
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", default=None, help="run folder (default runs/rotation_study/<profile>)")
    parser.add_argument("--report-only", action="store_true", help="aggregate finished runs without training")
    parser.add_argument("--shared-note", default="", help="a note on machine load, printed in the doc")
    args = parser.parse_args(argv)

    rows = [ROWS_BY_KEY[k] for k in args.rows.split(",")] if args.rows else ROWS
    out_root = Path(args.out) if args.out else ROOT / "runs" / "rotation_study" / args.profile
    out_root.mkdir(parents=True, exist_ok=True)
    jobs = jobs_for(args.profile, rows)
    t0 = time.time()
    results: list[dict[str, Any]] = []
    wall_from_files = None
    if args.report_only:
        spans = []
        for row_key, est, seed in jobs:
            p = out_root / row_key / est / f"seed{seed}" / "result.json"
            if p.is_file():
                results.append(json.loads(p.read_text()))
                end = p.stat().st_mtime
                spans.append((end - results[-1]["seconds"], end))
        if spans:  # elapsed time of the original study: first run's start to last run's end (file times)
            wall_from_files = (max(e for _, e in spans) - min(b for b, _ in spans)) / 60
    else:
        # Slowest paradigms first so the two workers finish together.
        jobs.sort(key=lambda j: (j[2], -("video" in j[0]) - 0.5 * ("vqgan" in j[0])))
        work = [(job, args.profile, str(out_root), args.threads) for job in jobs]
        print(f"{len(work)} runs ({args.profile} profile), {args.workers} worker(s)", flush=True)
        if args.workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=8) as pool:
                for i, res in enumerate(pool.imap_unordered(_worker, work), 1):
                    results.append(res)
                    print(f"[{i}/{len(work)}] {res['row']} {res['estimator']} seed {res['seed']}: usage {res['usage']:.3f} "
                          f"mse {res['mse']:.4g} ({res['seconds']:.0f} s; {(time.time() - t0) / 60:.1f} min)", flush=True)
        else:
            for i, w in enumerate(work, 1):
                res = _worker(w)
                results.append(res)
                print(f"[{i}/{len(work)}] {res['row']} {res['estimator']} seed {res['seed']}: usage {res['usage']:.3f} "
                      f"mse {res['mse']:.4g} ({res['seconds']:.0f} s)", flush=True)
    wall = wall_from_files if wall_from_files is not None else (time.time() - t0) / 60
    agg = aggregate(results)
    import torch

    net, key = _fd_network()
    img_src = image_source()
    meta = {
        "profile": args.profile,
        "profile_settings": PROFILES[args.profile],
        "command": (
            f"python benchmarks/rotation_study.py --profile {args.profile}"
            + (f" --rows {args.rows}" if args.rows else "")
            + ("`; tables regenerated from its run folder with `--report-only" if args.report_only else "")
        ),
        "image_source": img_src,
        "image_source_note": "the embedded set of real photographs from tessera.data" if img_src == "embedded"
        else "crops of the photographs bundled with scikit-image; tessera.data's embedded set was not available",
        "video_source": video_source(),
        "fd_note": ("r-FID on Inception-v3" if key == "rfid" else f"Frechet distance on the Tessera feature network `{key[3:]}` "
                    "(not Inception: not an FID)") if net is not None else "none (no Inception weights and no Tessera feature network in this install)",
        "perceptual_note": f"perceptual loss 0.1 on `{_perceptual_network()}`" if _perceptual_network() else "no perceptual term (no Tessera feature network in this install)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "torch": torch.__version__,
        "wall_minutes": wall,
        "workers": args.workers,
        "threads": args.threads,
        "shared_note": args.shared_note,
        "runs": len(results),
        "runs_planned": len(jobs),
        "seconds_per_run": {f"{r}/{e}": v["seconds"] for r, ests in agg.items() for e, v in ests.items()},
    }
    meta["runtime_notes"] = runtime_notes(agg, args.profile, args.workers, wall)
    meta["discussion"] = discussion(agg)
    if args.profile == "smoke":
        out_md, out_json, prefix = out_root / "rotation_study.md", out_root / "rotation_study.json", out_root / "rotation_study"
    else:
        docs = ROOT / "docs" / "results"
        docs.mkdir(parents=True, exist_ok=True)
        out_md, out_json, prefix = docs / "rotation_study.md", docs / "rotation_study.json", docs / "rotation_study"
    make_plots(agg, prefix)
    write_report(agg, meta, out_md, out_json, prefix)
    print(f"wrote {out_md} ({wall:.1f} min)")
    return 0


def runtime_notes(agg: dict[str, Any], profile: str, workers: int, wall: float) -> list[str]:
    total = sum(v["seconds"] * len(v["seeds"]) for ests in agg.values() for v in ests.values())
    notes = [f"- This profile ({profile}): {wall:.1f} min wall, {total / 60:.1f} min of summed run time over {workers} worker(s)."]
    if workers == 1:
        notes.append(f"- With `--workers 2` on 2 cores the same runs take about {total / 2 / 60:.1f} min (summed run time / 2; "
                     "an estimate: this run used one worker so that a second job could use the other core).")
    if profile != "full":
        q, f = PROFILES[profile], PROFILES["full"]
        scale = (f["steps"] * f["batch"]) / (q["steps"] * q["batch"]) * (f["seeds"] / q["seeds"])
        notes.append(
            f"- Full profile ({f['steps']} steps, batch {f['batch']}, {f['seeds']} seeds): estimated from these per-run timings "
            f"at {scale:.1f}x the compute, about {total * scale / 60 / max(1, workers) / 60:.1f} h on the same 2 cores under the "
            "same load (an estimate from this run's per-run timings, not a measurement: the full profile was not run for "
            "this document)."
        )
    return notes


def discussion(agg: dict[str, Any]) -> list[str]:
    """Plain statements computed from the numbers (no hand-written claims)."""
    out = []
    wins = {"usage": 0, "mse": 0, "quantization_error_sum": 0}
    rows = [k for k in agg if "ste" in agg[k] and "rotation" in agg[k]]
    for k in rows:
        s, r = agg[k]["ste"], agg[k]["rotation"]
        wins["usage"] += r["usage"]["mean"] > s["usage"]["mean"]
        wins["mse"] += r["mse"]["mean"] < s["mse"]["mean"]
        wins["quantization_error_sum"] += r["quantization_error_sum"]["mean"] < s["quantization_error_sum"]["mean"]
    n = len(rows)
    out.append(
        f"- Over {n} paradigms the rotation trick had higher held-out codebook usage in {wins['usage']}, lower validation MSE "
        f"in {wins['mse']} and lower quantization error in {wins['quantization_error_sum']} (means over seeds; see the `*` "
        "marks above for which differences exceed the seed noise)."
    )
    losers = [k for k in rows if _direction(agg[k]["ste"]["mse"]["mean"], agg[k]["rotation"]["mse"]["mean"]) == "up"]
    if losers:
        out.append(
            f"- Rows where STE's mean validation MSE is lower by more than 2%: {', '.join(losers)}; in the other rows the "
            "two estimators reconstruct within 2% of each other or the rotation trick is better."
        )
    lower_usage = [k for k in rows if _direction(agg[k]["ste"]["usage"]["mean"], agg[k]["rotation"]["usage"]["mean"]) == "down"]
    if lower_usage:
        out.append(f"- Rows where the rotation trick used fewer codes than STE (by more than 2%): {', '.join(lower_usage)}.")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
