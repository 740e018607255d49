"""Evaluate the nano / pro / ultra decoders trained on the same data with the same budget.

    python benchmarks/lm_eval.py --quick      # 30 steps per size, small eval sets: a plumbing check (~10 min on 2 cores)
    python benchmarks/lm_eval.py --profile medium   # 200 steps per size, 600-step image tokenizer, mid-size eval sets
    python benchmarks/lm_eval.py              # configs/lm/{nano,pro,ultra}.yaml as written, full eval sets

Writes docs/results/lm.md and docs/results/lm.json (or lm_quick.*). Trained models stay in runs/lm_eval/<profile>/<size>
and are reused when their saved config matches (delete the folder to retrain).

Pipeline: the image tokenizer (trained on the corpus' train images and cached, see tessera.recipes.train_lm), the
corpus (cached codes), one training run per size (the configs differ only in `preset` and learning rate), the scene
probe (trained on fresh real renders, cached), then on the held-out split (scenes with colour-shape pairs never seen
in training, test label words):
- caption accuracy (attribute slots) and exact match, chance = captions of random training scenes;
- VQA accuracy per question type, chance = 1 / |answers| per type;
- caption-to-image fidelity: the probe's recognition of the requested attributes in generated images, with the
  probe on real renders and on tokenizer reconstructions of the same scenes as ceilings, and on unrelated real
  scenes as chance;
- few-shot in-context classification (2-way, 1/2/3 shots per class; scene colours/shapes and glyph letters).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tessera.config import load_config, to_dict  # noqa: E402
from tessera.lm.evaluate import caption_accuracy, fewshot_accuracy, generation_fidelity, vqa_accuracy  # noqa: E402
from tessera.lm.pretrained import load_pretrained  # noqa: E402
from tessera.lm.probe import ProbeConfig, SceneProbe, train_probe  # noqa: E402
from tessera.paths import cache_dir  # noqa: E402
from tessera.recipes.reuse import train_or_reuse  # noqa: E402
from tessera.recipes.train_lm import LMRunConfig, prepare, train_lm  # noqa: E402

SIZES = ("nano", "pro", "ultra")
PROFILES = {
    "quick": dict(overrides=["train.steps=30", "batch_size=4", "train.eval_every=0", "train.checkpoint_every=0"],
                  caption=30, vqa=42, fidelity=16, episodes=20, probe_steps=500),
    # Half the full budget, for a shared or slow machine (the doc names the profile it was produced with).
    "medium": dict(overrides=["train.steps=200", "train.eval_every=0", "train.checkpoint_every=100", "tokenizer.steps=600"],
                   caption=100, vqa=150, fidelity=48, episodes=60, probe_steps=800),
    "full": dict(overrides=[], caption=200, vqa=300, fidelity=100, episodes=100, probe_steps=800),
}


def _probe(steps: int, progress: bool) -> tuple[SceneProbe, dict]:
    from tessera.lm._io import atomic_write_json, load_safetensors, save_safetensors

    cfg = ProbeConfig(steps=steps)
    key = hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir("lm", "probe", key)
    if (folder / "probe.safetensors").is_file() and (folder / "scores.json").is_file():
        probe = SceneProbe()
        probe.load_state_dict(load_safetensors(folder / "probe.safetensors"))
        return probe.eval(), json.loads((folder / "scores.json").read_text())
    probe, scores = train_probe(cfg, progress=progress)
    save_safetensors(folder / "probe.safetensors", probe.state_dict())
    atomic_write_json(folder / "scores.json", scores)
    return probe, scores


def _train_or_reuse(size: str, overrides: list[str], run_root: Path) -> tuple[LMRunConfig, Path, float]:
    cfg = load_config(LMRunConfig, ROOT / "configs" / "lm" / f"{size}.yaml", overrides)
    final, seconds = train_or_reuse(cfg, run_root / size, lambda c, run: train_lm(c, run, resume=True), size)
    return cfg, final, seconds


def _read_final_metrics(run: Path) -> dict:
    from tessera.train.log import read_metrics_csv

    rows = read_metrics_csv(run / "metrics.csv")
    train = [r for r in rows if "loss" in r and r.get("loss") is not None]
    evals = [r for r in rows if r.get("eval/text_ce") is not None]
    out = {}
    if train:
        out.update(train_loss=train[-1]["loss"], train_text_ce=train[-1].get("text_ce"), train_image_ce=train[-1].get("image_ce"),
                   step_s=train[-1].get("step_s"))
    if evals:
        out.update(heldout_text_ce=evals[-1]["eval/text_ce"], heldout_image_ce=evals[-1]["eval/image_ce"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 training steps per size and small eval sets")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None, help="quick / medium / full (default full)")
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated sizes (default nano,pro,ultra)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--runs", default=None, help="run folder root (default runs/lm_eval/<profile>)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"), help="output folder for the report")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = args.profile or ("quick" if args.quick else "full")
    prof = PROFILES[profile]
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    run_root = Path(args.runs) if args.runs else ROOT / "runs" / "lm_eval" / profile
    start = time.time()
    load_before = os.getloadavg()
    timings: dict[str, float] = {}

    t = time.time()
    probe, probe_scores = _probe(prof["probe_steps"], progress=True)
    timings["probe_s"] = time.time() - t

    results: dict[str, dict] = {}
    setup: dict = {}
    for size in sizes:
        cfg, final, train_s = _train_or_reuse(size, prof["overrides"], run_root)
        timings[f"train_{size}_s"] = train_s
        t = time.time()
        model, proc = load_pretrained(final)
        _, corpus = prepare(cfg, proc.image_tokenizer)
        r: dict = {"parameters": model.num_parameters(), "non_embedding_parameters": model.num_parameters(True),
                   "train_seconds": train_s, **_read_final_metrics(final.parent)}
        r["caption"] = caption_accuracy(model, proc, corpus, n=prof["caption"])
        r["vqa"] = vqa_accuracy(model, proc, corpus, n=prof["vqa"])
        r["fidelity"] = generation_fidelity(model, proc, corpus, probe, n=prof["fidelity"])
        r["fidelity_sampled"] = generation_fidelity(model, proc, corpus, probe, n=prof["fidelity"], temperature=1.0, top_k=64)
        r["fewshot_scenes"] = fewshot_accuracy(model, proc, corpus, episodes=prof["episodes"], source="scenes")
        r["fewshot_glyphs"] = fewshot_accuracy(model, proc, corpus, episodes=prof["episodes"], source="glyphs")
        timings[f"eval_{size}_s"] = time.time() - t
        results[size] = r
        print(f"[{size}] {json.dumps(r)}", flush=True)
        setup = {
            "steps": cfg.train.steps, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len,
            "tokens_per_step": cfg.batch_size * cfg.seq_len, "data": to_dict(cfg.data), "tokenizer": to_dict(cfg.tokenizer),
            "loss": to_dict(cfg.loss), "vocab_size": proc.vocab.size, "image_tokens": proc.image_tokens,
            "lr": {**setup.get("lr", {}), size: cfg.optim.lr}, "seed": cfg.train.seed,
        }
    wall = time.time() - start
    import transformers  # noqa: F401 - only for the version line when installed

    meta = {
        "command": "python benchmarks/lm_eval.py" + (f" --profile {profile}" if profile != "full" else "")
        + (f" --sizes {args.sizes}" if args.sizes != ",".join(SIZES) else "") + (f" --threads {args.threads}" if args.threads else ""),
        "profile": profile, "wall_s": wall, "timings_s": timings,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "probe": {"config": to_dict(ProbeConfig(steps=prof["probe_steps"])), "heldout_real_scores": probe_scores},
        "setup": setup,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "lm_quick" if profile == "quick" else "lm"  # the doc's header names the profile
    results = _merge_earlier_sizes(out / f"{stem}.json", meta, results)
    (out / f"{stem}.json").write_text(json.dumps({**meta, "results": results}, indent=2, default=float) + "\n")
    (out / f"{stem}.md").write_text(render(meta, results))
    print((out / f"{stem}.md").read_text())


def _merge_earlier_sizes(path: Path, meta: dict, results: dict) -> dict:
    """Keep sizes evaluated by an earlier run of the same profile and setup (`--sizes ultra` adds a column).

    Sizes can then be trained one run at a time on a slow machine; a column from a different setup is never mixed in.
    """
    if not path.is_file():
        return results
    old = json.loads(path.read_text())
    if old.get("profile") != meta["profile"] or not _same_setup(old.get("setup", {}), json.loads(json.dumps(meta["setup"], default=float))):
        return results
    merged = {size: old["results"][size] for size in old.get("results", {}) if size not in results}
    if not merged:
        return results
    meta["setup"]["lr"] = {**old["setup"].get("lr", {}), **meta["setup"]["lr"]}
    meta["wall_s"] += old.get("wall_s", 0.0)
    meta["timings_s"] = {**old.get("timings_s", {}), **meta["timings_s"]}
    meta["command"] += f" (sizes {', '.join(merged)} from an earlier run of the same profile and setup)"
    meta["earlier"] = old.get("earlier") or {"sizes": list(merged), "command": old.get("command", "?"),
                                             "machine": old.get("machine", {})}
    merged.update(results)
    return {size: merged[size] for size in SIZES if size in merged}


def _same_setup(old: dict, new: dict) -> bool:
    """Equal apart from the per-size learning rate; data settings added to the code later (e.g. video pools that the
    mixture does not use, zero mixture weights) do not count as a difference."""
    def data(d: dict, keys) -> dict:
        out = {k: d.get(k) for k in keys}
        if isinstance(out.get("mixture"), dict):
            out["mixture"] = {k: v for k, v in out["mixture"].items() if v}
        return out

    if {k: v for k, v in old.items() if k not in ("lr", "data")} != {k: v for k, v in new.items() if k not in ("lr", "data")}:
        return False
    keys = old.get("data", {}).keys()
    return data(old.get("data", {}), keys) == data(new.get("data", {}), keys)


def _earlier_note(meta: dict) -> str:
    earlier = meta.get("earlier")
    if not earlier:
        return ""
    load = earlier.get("machine", {}).get("load_average_before", [float("nan")])[0]
    after = earlier.get("machine", {}).get("load_average_after", [float("nan")])[0]
    return (f" Columns {', '.join(earlier['sizes'])} come from `{earlier['command']}`, load average before/after "
            f"{load:.1f} / {after:.1f}" + (" (shared machine: their train times are inflated)" if load > 1.5 else "") + ".")


def _pct(x: float) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def render(meta: dict, results: dict) -> str:
    s = meta["setup"]
    sizes = list(results)
    any_r = results[sizes[0]]
    lines = [
        "# Multimodal decoders: captioning, VQA, caption-to-image and few-shot learning (nano / pro / ultra)",
        "",
        f"Command: `{meta['command']}` ({meta['profile']} profile). Wall time {meta['wall_s'] / 60:.1f} min"
        + (" (summed over the runs that made the columns)" if "earlier run" in meta["command"] else "") + " on "
        f"{meta['machine']['cpu_count']} CPUs ({meta['machine']['torch_threads']} torch threads), torch {meta['versions']['torch']}. "
        f"Load average before/after {meta['machine']['load_average_before'][0]:.1f} / {meta['machine']['load_average_after'][0]:.1f}"
        + (" (shared machine: other jobs ran concurrently, so times are inflated)" if meta['machine']['load_average_before'][0] > 1.5 else "")
        + "." + _earlier_note(meta),
        "",
        "## Setup",
        "",
        f"- Same data, same budget for every size: {s['steps']} optimiser steps of {s['batch_size']} packed rows x "
        f"{s['seq_len']} tokens ({s['steps'] * s['tokens_per_step'] / 1e6:.2f}M token slots), seed {s['seed']}, AdamW "
        f"(lr {', '.join(f'{k} {v:g}' for k, v in s['lr'].items())}), loss weights text {s['loss']['text_weight']:g} / "
        f"image {s['loss']['image_weight']:g}, z-loss {s['loss']['z_loss']:g}.",
        f"- Vocabulary: {s['vocab_size']} ids (SentencePiece text pieces, specials, 512 image codes); an image is "
        f"`<boi>` + {s['image_tokens']} codes + `<eoi>`. Image tokenizer: `{s['tokenizer']['preset']}` trained for "
        f"{s['tokenizer']['steps']} steps on the corpus' training images only (cached).",
        f"- Corpus: {s['data']['train_scenes']} training scenes (1-{s['data']['max_objects']} shapes; 8 colours x 4 shapes x 2 "
        f"sizes x 4 positions, no overlaps) without the 6 held-out colour-shape pairs; {s['data']['test_scenes']} test scenes "
        "each with at least one held-out pair (novel compositions); 257 glyph letters of 6 scripts in 12 DejaVu faces; "
        f"mixture {s['data']['mixture']}.",
        "- Scene probe (for caption-to-image fidelity): a small CNN trained only on real renders from its own seed "
        "stream (never on LM data, generated images or reconstructions). Held-out real renders: "
        + ", ".join(f"{k} {_pct(v)}%" for k, v in meta["probe"]["heldout_real_scores"].items()) + ".",
        "",
        "## Results (held-out split)",
        "",
        "| model | params | train min | caption attr. acc % | caption exact % | VQA acc % | image fidelity greedy / sampled % | "
        "few-shot scenes 1/2/3-shot % | few-shot glyphs 1/2/3-shot % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        r = results[size]
        fs, fg = r["fewshot_scenes"], r["fewshot_glyphs"]
        lines.append(
            f"| {size} | {r['parameters'] / 1e6:.2f}M | {r['train_seconds'] / 60:.1f} | {_pct(r['caption']['attribute_accuracy'])} | "
            f"{_pct(r['caption']['exact_match'])} | {_pct(r['vqa']['accuracy'])} | {_pct(r['fidelity']['fidelity/all'])} / "
            f"{_pct(r['fidelity_sampled']['fidelity/all'])} | "
            f"{' / '.join(_pct(fs[f'{k}-shot']) for k in (1, 2, 3))} | {' / '.join(_pct(fg[f'{k}-shot']) for k in (1, 2, 3))} |"
        )
    c = any_r
    lines += [
        f"| chance | | | {_pct(c['caption']['chance'])} | 0.0 | {_pct(c['vqa']['chance'])} | {_pct(c['fidelity']['chance/all'])} | "
        f"{_pct(c['fewshot_scenes']['chance'])} | {_pct(c['fewshot_glyphs']['chance'])} |",
        f"| ceiling: probe on tokenizer reconstructions | | | | | | {_pct(c['fidelity']['reconstruction/all'])} | | |",
        f"| ceiling: probe on real renders | | | | | | {_pct(c['fidelity']['real/all'])} | | |",
        "",
        f"Items: {c['caption']['n']} captions, {c['vqa']['n']} questions, {c['fidelity']['n']} drawn images, "
        f"{c['fewshot_scenes']['episodes']} episodes per shot count and source (2-way; label words drawn from the test word set, "
        "answered by ranking the classes' label continuations by log-likelihood).",
        "",
        "Caption accuracy counts attribute slots: for each true object, whether the caption has an object at its position and "
        "its size, colour and shape there, plus the object count. Chance captions are captions of random training scenes.",
        "Image fidelity counts, over the requested objects, colour / shape / size recognised at the requested cell, plus empty "
        "cells left empty; chance is the probe on real renders of *other* test scenes. Images are decoded greedily, and "
        "sampled (temperature 1, top-64 codes).",
        "",
        "### Details",
        "",
        "| model | VQA by type (count / shape_at / color_at / size_at / exists / where) % | fidelity greedy, colour / shape / size / empty % | fidelity sampled, colour / shape / size / empty % | held-out CE text / image | final train loss |",
        "|---|---|---|---|---|---|",
    ]
    for size in sizes:
        r = results[size]
        v, f = r["vqa"], r["fidelity"]
        types = " / ".join(_pct(v.get(f"accuracy/{t}", float("nan"))) for t in ("count", "shape_at", "color_at", "size_at", "exists", "where"))
        fid = " / ".join(_pct(f[f"fidelity/{k}"]) for k in ("color", "shape", "size", "empty"))
        fid_s = " / ".join(_pct(r["fidelity_sampled"][f"fidelity/{k}"]) for k in ("color", "shape", "size", "empty"))
        ce = f"{r.get('heldout_text_ce', float('nan')):.3f} / {r.get('heldout_image_ce', float('nan')):.3f}"
        lines.append(f"| {size} | {types} | {fid} | {fid_s} | {ce} | {r.get('train_loss', float('nan')):.3f} |")
    lines += ["", "Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in meta["timings_s"].items()) + ".", ""]
    notes = Path(__file__).with_name("lm_eval_notes.md")
    if meta["profile"] == "full" and notes.is_file():  # the maintainers' reading of these numbers, kept across reruns
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
