"""Speed of Tessera's decoder vs transformers' GemmaForCausalLM at identical shapes, dtype (fp32) and weights, on CPU.

    python benchmarks/lm_speed.py            # nano, pro and ultra shapes (~10-15 min on 2 cores)
    python benchmarks/lm_speed.py --quick    # nano shape, fewer repeats (~1-2 min)

Writes docs/results/lm_speed.md and docs/results/lm_speed.json.

What is measured, for each shape (the nano/pro/ultra widths, depths and heads, all-global Gemma-1 layout so that
GemmaForCausalLM computes exactly the same function; weights copied with `tessera.lm.from_hf`):
- generation tokens/s, greedy, prompt 64 tokens, 128 new tokens, batch 1 and 8: Tessera (KV cache), Tessera
  (recompute every step), transformers `generate` (its default DynamicCache, sdpa attention); both sides produce
  the same tokens, which is checked;
- training tokens/s: forward + backward + AdamW step on 8 x 512 tokens, next-token cross-entropy, Tessera vs
  transformers (sdpa attention).
Times are medians over repeats after a warm-up. The machine load average is recorded: other processes on a shared
machine slow both sides, small-batch decoding most.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tessera.lm.generate import generate  # noqa: E402
from tessera.lm.hf import from_hf  # noqa: E402
from tessera.lm.model import PRESETS  # noqa: E402

SHAPES = ("nano", "pro", "ultra")
VOCAB = 2560  # the Tessera vocabulary: 2048 text pieces + 512 image codes


def _hf_model(name: str):
    import transformers

    p = PRESETS[name]
    cfg = transformers.GemmaConfig(
        vocab_size=VOCAB, hidden_size=p.embed_dim, intermediate_size=p.mlp_dim, num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads, num_key_value_heads=p.num_kv_heads, head_dim=p.head_dim,
        max_position_embeddings=1024, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return transformers.GemmaForCausalLM(cfg).eval()


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_generation(name: str, hf, ours, batch: int, prompt_len: int, new: int, repeats: int) -> dict:
    x = torch.randint(3, VOCAB, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    out: dict = {"shape": name, "batch": batch, "prompt": prompt_len, "new_tokens": new}
    with torch.inference_mode():
        ref = hf.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)[:, prompt_len:]
    got = generate(ours, x, max_new_tokens=new, stop_tokens=()).tokens
    out["same_tokens"] = bool(torch.equal(ref, got))

    def run_hf():
        with torch.inference_mode():
            hf.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)

    out["transformers_tok_s"] = batch * new / _median_time(run_hf, repeats)
    out["tessera_cache_tok_s"] = batch * new / _median_time(lambda: generate(ours, x, max_new_tokens=new, stop_tokens=()), repeats)
    out["tessera_recompute_tok_s"] = batch * new / _median_time(
        lambda: generate(ours, x, max_new_tokens=new, stop_tokens=(), use_cache=False), max(1, repeats // 2))
    out["speedup_vs_transformers"] = out["tessera_cache_tok_s"] / out["transformers_tok_s"]
    out["cache_vs_recompute"] = out["tessera_cache_tok_s"] / out["tessera_recompute_tok_s"]
    return out


def bench_training(name: str, hf, ours, batch: int, seq: int, repeats: int) -> dict:
    x = torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(2))
    hf.train()
    ours.train()
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)

    def step_hf():
        loss = hf(input_ids=x, labels=x).loss
        loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    targets = F.pad(x[:, 1:], (0, 1), value=-100)  # shifted labels, as transformers does: no copy of the logits

    def step_ours():
        logits = ours(x).logits
        loss = F.cross_entropy(logits.reshape(-1, VOCAB).float(), targets.reshape(-1), ignore_index=-100)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    res = {"shape": name, "batch": batch, "seq_len": seq}
    res["transformers_tok_s"] = batch * seq / _median_time(step_hf, repeats)
    res["tessera_tok_s"] = batch * seq / _median_time(step_ours, repeats)
    res["speedup_vs_transformers"] = res["tessera_tok_s"] / res["transformers_tok_s"]
    hf.eval()
    ours.eval()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="nano shape only, fewer repeats")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"), help="output folder")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = ("nano",) if args.quick else SHAPES
    repeats = 3 if args.quick else 5
    load_before = os.getloadavg()
    start = time.time()
    gen_rows, train_rows, params = [], [], {}
    for name in shapes:
        hf = _hf_model(name)
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d, safe_serialization=True)
            ours = from_hf(d)
        params[name] = ours.num_parameters()
        for batch in (1, 8):
            row = bench_generation(name, hf, ours, batch, 64, 128 if not args.quick else 64, repeats)
            gen_rows.append(row)
            print(json.dumps(row), flush=True)
        row = bench_training(name, hf, ours, 8, 512, repeats)
        train_rows.append(row)
        print(json.dumps(row), flush=True)
    wall = time.time() - start
    meta = {
        "command": "python benchmarks/lm_speed.py" + (" --quick" if args.quick else "") + (f" --threads {args.threads}" if args.threads else ""),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__},
        "dtype": "float32", "device": "cpu", "seed": 0, "wall_s": wall, "parameters": params,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lm_speed.json").write_text(json.dumps({**meta, "generation": gen_rows, "training": train_rows}, indent=2) + "\n")
    lines = [
        "# Decoder speed: Tessera vs transformers GemmaForCausalLM (CPU, fp32)",
        "",
        f"Command: `{meta['command']}`. Wall time {wall:.0f} s. torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads. "
        f"Load average before/after: {load_before[0]:.1f} / {meta['machine']['load_average_after'][0]:.1f}"
        + (" (a shared machine: other jobs were running, numbers are noisy)" if max(load_before[0], meta['machine']['load_average_after'][0]) > 1.5 else "") + ".",
        "",
        "Same shapes, same weights (copied with `tessera.lm.from_hf`), all-global Gemma-1 layout, greedy decoding;",
        "`same tokens` checks that both produce identical sequences. Medians over repeats after a warm-up.",
        "",
        "## Generation (prompt 64 tokens)",
        "",
        "| shape | params | batch | new tokens | transformers tok/s | Tessera KV cache tok/s | Tessera recompute tok/s | speed-up vs transformers | cache vs recompute | same tokens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in gen_rows:
        lines.append(
            f"| {r['shape']} | {params[r['shape']] / 1e6:.2f}M | {r['batch']} | {r['new_tokens']} | {r['transformers_tok_s']:.0f} | "
            f"{r['tessera_cache_tok_s']:.0f} | {r['tessera_recompute_tok_s']:.0f} | {r['speedup_vs_transformers']:.2f}x | "
            f"{r['cache_vs_recompute']:.2f}x | {'yes' if r['same_tokens'] else 'NO'} |"
        )
    lines += [
        "",
        "## Training step (8 x 512 tokens, forward + backward + AdamW)",
        "",
        "| shape | transformers tok/s | Tessera tok/s | speed-up |",
        "|---|---|---|---|",
    ]
    for r in train_rows:
        lines.append(f"| {r['shape']} | {r['transformers_tok_s']:.0f} | {r['tessera_tok_s']:.0f} | {r['speedup_vs_transformers']:.2f}x |")
    lines.append("")
    (out / "lm_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
