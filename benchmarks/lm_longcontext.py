"""Long context at nano size on CPU: a nano with local/global layers trained briefly on key-value retrieval, swept
over prompt length (up to 8k tokens) and depth of the pair block, against the same model untrained (chance).

    python benchmarks/lm_longcontext.py --quick   # 500 steps on 96/192-token prompts, 4 x 3 cells of 8 trials
    python benchmarks/lm_longcontext.py           # 2000 steps on 128-512-token prompts, 6 x 5 cells of 32 trials

Writes docs/results/lm_longcontext[_quick].md + .json + a heatmap PNG. The run stays in runs/lm_longcontext/<profile>
(resumed / reused when its config matches).

What it shows: whether retrieval learned on short prompts carries to 8k-token prompts. The model never trains on
prompts longer than max(train_lengths); local layers (window 128, RoPE base 10k) only ever see relative positions
they were trained on, global layers use RoPE base 1M. It also reports the KV cache held after 8k tokens (local
layers keep a ring of `sliding_window` slots) against an all-global nano, and the time of an 8k-token prefill.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tessera.config import to_dict  # noqa: E402
from tessera.lm.longcontext import RetrievalSpec, kv_cache_bytes, retrieval_accuracy, retrieval_batch  # noqa: E402
from tessera.recipes.train_longcontext import LongContextRunConfig, build_long_model, train_longcontext  # noqa: E402
from tessera.train import OptimConfig, TrainConfig  # noqa: E402

PROFILES = {
    "quick": dict(steps=500, train_lengths=(96, 192), batch_size=8, num_pairs=4, num_queries=6, trials=8,
                  lengths=(192, 1024, 4096, 8192), depths=(0.0, 0.5, 1.0)),
    "full": dict(steps=2000, train_lengths=(128, 256, 512), batch_size=16, num_pairs=6, num_queries=4, trials=32,
                 lengths=(256, 512, 1024, 2048, 4096, 8192), depths=(0.0, 0.25, 0.5, 0.75, 1.0)),
}


def run_config(profile: str) -> LongContextRunConfig:
    p = PROFILES[profile]
    return LongContextRunConfig(
        train=TrainConfig(steps=p["steps"], log_every=25, eval_every=0, checkpoint_every=50, progress=False, device="cpu",
                          tensorboard=False),
        train_lengths=p["train_lengths"], batch_size=p["batch_size"], num_pairs=p["num_pairs"], num_queries=p["num_queries"],
        use_sep=p.get("use_sep", True), optim=OptimConfig(lr=p.get("lr", 3e-3), weight_decay=0.0, warmup_steps=20),
    )


def _heatmap(res: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    acc = np.array([[np.nan if a is None else a for a in row] for row in res["accuracy"]], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    im = ax.imshow(acc.T, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(res["lengths"])), [str(n) for n in res["lengths"]])
    ax.set_yticks(range(len(res["depths"])), [f"{d:.2f}" for d in res["depths"]])
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("depth of the pair block")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            if not np.isnan(acc[i, j]):
                ax.text(i, j, f"{acc[i, j]:.2f}", ha="center", va="center", color="w" if acc[i, j] < 0.6 else "k", fontsize=8)
    ax.set_title(f"{title} (chance {res['chance']:.3f})")
    fig.colorbar(im, ax=ax, label="retrieval accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", default=None, choices=sorted(PROFILES), help="a named profile (overrides --quick)")
    args = ap.parse_args()
    profile = args.profile or ("quick" if args.quick else "full")
    p = PROFILES[profile]
    cfg = run_config(profile)
    run_dir = ROOT / "runs" / "lm_longcontext" / profile
    t0 = time.time()
    model, fit_res = train_longcontext(cfg, run_dir, resume=True)
    train_s = time.time() - t0
    spec = RetrievalSpec.for_vocab_size(cfg.vocab_size, num_pairs=cfg.num_pairs, use_sep=cfg.use_sep)

    t1 = time.time()
    trained = retrieval_accuracy(model, lengths=p["lengths"], depths=p["depths"], trials=p["trials"], spec=spec, seed=7)
    sweep_s = time.time() - t1
    torch.manual_seed(cfg.train.seed)
    untrained = retrieval_accuracy(build_long_model(cfg), lengths=(p["lengths"][0], p["lengths"][-1]), depths=(0.0, 1.0),
                                   trials=p["trials"], spec=spec, seed=7)

    # KV cache after 8k tokens and the time of one 8k-token prefill (chunks of 1024 through the cache).
    mc = model.cfg
    long_n = p["lengths"][-1]
    kv = kv_cache_bytes(mc, long_n)
    kv_all_global = kv_cache_bytes(replace(mc, layer_types=("global",)), long_n)
    ids = retrieval_batch(spec, np.random.default_rng(0), 1, long_n, 0.0)["input_ids"]
    with torch.no_grad():
        t2 = time.time()
        cache = model.new_cache(1, long_n)
        for s in range(0, long_n, 1024):
            model(ids[:, s : s + 1024], cache=cache, last_only=True)
        prefill_s = time.time() - t2

    result = {
        "profile": profile,
        "command": "python benchmarks/lm_longcontext.py" + (f" --profile {args.profile}" if args.profile else " --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}",
        "load_average": os.getloadavg(),
        "config": to_dict(cfg),
        "model": to_dict(mc),
        "parameters": model.num_parameters(),
        "train_s": train_s,
        "train_tokens": cfg.train.steps * cfg.batch_size * sum(cfg.train_lengths) / len(cfg.train_lengths),
        "final_train_metrics": fit_res.train_metrics,
        "sweep_s": sweep_s,
        "trained": trained,
        "untrained": untrained,
        "kv_cache_bytes": kv,
        "kv_cache_bytes_all_global": kv_all_global,
        "prefill_s": prefill_s,
        "prefill_tokens": long_n,
    }
    name = "lm_longcontext" if profile == "full" else f"lm_longcontext_{profile}"
    out_dir = ROOT / "docs" / "results"
    from tessera.io import atomic_write_json, atomic_write_text

    _heatmap(trained, "trained nano, key-value retrieval", out_dir / f"{name}.png")
    atomic_write_json(out_dir / f"{name}.json", result)
    atomic_write_text(out_dir / f"{name}.md", _markdown(result, name))
    print(json.dumps({"trained_mean": trained["mean"], "untrained_mean": untrained["mean"], "chance": trained["chance"]}))
    print(f"wrote {out_dir / name}.md")
    return 0


def _markdown(r: dict, name: str) -> str:
    c, m = r["config"], r["model"]
    t = r["trained"]
    lines = [
        f"# Long context at nano size: key-value retrieval up to {r['prefill_tokens']:,} tokens ({r['profile']} profile)",
        "",
        f"Produced by `{r['command']}` on {r['date']} ({r['machine']}; a shared machine, load average "
        f"{', '.join(f'{x:.1f}' for x in r['load_average'])} at the end, so times are indicative).",
        "",
        f"Model: nano shape ({r['parameters']:,} parameters), {m['num_layers']} layers `{'/'.join(m['layer_types'])}` "
        f"repeated, sliding window {m['sliding_window']}, RoPE base {m['rope_theta']:g} (global) / "
        f"{m['rope_local_theta']:g} (local), rope_scaling {m['rope_scaling']:g}, max_seq_len {m['max_seq_len']:,}. "
        f"Trained from scratch for {c['train']['steps']} steps x {c['batch_size']} prompts of "
        f"{' or '.join(str(n) for n in c['train_lengths'])} tokens ({r['train_tokens']:,.0f} tokens, "
        f"{r['train_s'] / 60:.0f} min), {c['num_pairs']} pairs per prompt laid out as "
        f"{'`key sep value`' if c.get('use_sep', True) else '`key value`'}, learning rate {c['optim']['lr']:g}, {c['num_queries']} queries per training "
        f"prompt (answers are the only targets).",
        "",
        f"Test: {t['trials']} prompts per cell, {c['num_pairs']} pairs, one query at the end; accuracy = argmax over "
        f"the whole vocabulary is the value; chance = {t['chance']:.4f} (16 value tokens; picking one of the "
        f"{c['num_pairs']} values in the prompt at random would score {1 / c['num_pairs']:.3f}). Lengths beyond "
        f"{max(c['train_lengths'])} tokens were never seen in training. Sweep time {r['sweep_s'] / 60:.1f} min.",
        "",
        f"![heatmap]({name}.png)",
        "",
        "| length \\ depth | " + " | ".join(f"{d:.2f}" for d in t["depths"]) + " | mean |",
        "|---|" + "---:|" * (len(t["depths"]) + 1),
    ]
    for length, row in zip(t["lengths"], t["accuracy"], strict=True):
        vals = [a for a in row if a is not None]
        lines.append(f"| {length} | " + " | ".join("-" if a is None else f"{a:.2f}" for a in row)
                     + f" | {sum(vals) / max(1, len(vals)):.2f} |")
    u = r["untrained"]
    kv, kg = r["kv_cache_bytes"], r["kv_cache_bytes_all_global"]
    lines += [
        "",
        f"Untrained twin (same shape and seed): mean accuracy {u['mean']:.3f} over lengths {u['lengths']} and depths "
        f"{u['depths']} (chance {u['chance']:.4f}). Trained: mean {t['mean']:.3f}.",
        "",
        f"KV cache after {r['prefill_tokens']:,} tokens (fp32, batch 1): {kv['total'] / 1e6:.2f} MB "
        f"(global layers {kv['global'] / 1e6:.2f} MB, local layers {kv['local'] / 1e6:.3f} MB: a ring of "
        f"{m['sliding_window']} slots each) vs {kg['total'] / 1e6:.2f} MB for the same nano with all-global layers. "
        f"An {r['prefill_tokens']:,}-token prefill in chunks of 1024 took {r['prefill_s']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
