"""CPU time per training step of each `tessera demo` stage's model, and the training CPU time each profile implies.

    OMP_NUM_THREADS=1 python benchmarks/demo_step_costs.py

Times a few optimiser steps (after one warm-up step) of the tokenizer (VQ-VAE, rotation trick), CAML and the nano
decoder at each profile's batch shapes on random inputs, single-threaded, as CPU time (which other jobs' load inflates
far less than wall time). The projection multiplies by each profile's step counts; it covers training steps only
(not data builds, evaluation or the report) and is a projection, not a run: `benchmarks/demo_time.py` times real runs.
Writes docs/results/demo_step_costs.md and .json.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cpu_per_step(step, n: int = 4) -> float:
    step()  # warm-up
    c0 = time.process_time()
    for _ in range(n):
        step()
    return (time.process_time() - c0) / n


def main() -> int:
    from tessera.icl.model import CAML, CAMLConfig
    from tessera.io import atomic_write_text
    from tessera.lm import Decoder, Vocabulary, config_from_name
    from tessera.recipes.demo import demo_profile
    from tessera.recipes.train_tokenizer import build_task, load_train_config

    torch.manual_seed(0)
    load_before = os.getloadavg()
    costs: dict[str, dict[str, float]] = {}
    for name in ("quick", "full"):
        cfg = demo_profile(name)
        tcfg = load_train_config(None, ["preset=vqvae-f4-k512-32px", "model.estimator=rotation", f"data.batch_size={cfg.tokenizer.batch_size}"])
        items = (torch.rand(256, 3, 32, 32) * 255).to(torch.uint8)
        task = build_task(tcfg, items, items[:64])
        opt = torch.optim.AdamW(task.module.parameters())
        it = iter(range(10**6))

        def tok_step(task=task, opt=opt, it=it):
            out = task.module(task.batches(next(it), 0, 0, 1), 0)
            out.loss.backward()
            opt.step()
            opt.zero_grad()

        caml = CAML(CAMLConfig.from_name(cfg.icl.preset, feature_dim=256))
        copt = torch.optim.AdamW(caml.parameters())
        way, shot, q = 5, 3, cfg.icl.queries_per_class * 5  # the recipe's mean episode shape at the fixed way

        def caml_step(caml=caml, copt=copt, e=cfg.icl.episodes_per_step, way=way, shot=shot, q=q):
            s = torch.randn(e, way * shot, 256)
            sl = torch.arange(way).repeat(shot)[None].expand(e, -1)
            caml(s, sl, torch.randn(e, q, 256)).logits.sum().backward()
            copt.step()
            copt.zero_grad()

        vocab = Vocabulary.default(512)
        lm = Decoder(config_from_name(cfg.lm.preset, vocab_size=vocab.size))
        lopt = torch.optim.AdamW(lm.parameters())

        def lm_step(lm=lm, lopt=lopt, b=cfg.lm.batch_size, t=cfg.lm.seq_len, vocab=vocab):
            ids = torch.randint(0, vocab.size, (b, t))
            logits = lm(ids).logits
            torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten()).backward()
            lopt.step()
            lopt.zero_grad()

        per = {"tokenizer": _cpu_per_step(tok_step), "caml": _cpu_per_step(caml_step), "lm": _cpu_per_step(lm_step)}
        steps = {"tokenizer": 2 * cfg.tokenizer.steps, "caml": cfg.icl.steps, "lm": cfg.lm.steps}
        costs[name] = {**{f"{k}_cpu_s_per_step": v for k, v in per.items()}, **{f"{k}_steps": steps[k] for k in steps},
                       "training_cpu_s": sum(per[k] * steps[k] for k in per)}
    load_after = os.getloadavg()
    result = {"profiles": costs, "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
              "load_average_before": load_before, "load_average_after": load_after, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    md = ["# `tessera demo`: CPU time per training step and per profile", "",
          f"Produced by `OMP_NUM_THREADS=1 python benchmarks/demo_step_costs.py` on {result['machine']}, {result['date']}, torch "
          f"threads {result['threads']}. The machine was shared (1-minute load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after), which inflates CPU time a little (cache contention) and wall time a lot.", "",
          "Training steps only, on random inputs at each profile's shapes; the tokenizer is trained twice (both estimators). "
          "Data builds, evaluation and the report are not included: `benchmarks/demo_time.py` times whole runs.", "",
          "| profile | tokenizer CPU-s/step x steps | CAML CPU-s/step x steps | decoder CPU-s/step x steps | training CPU time |",
          "|---|---:|---:|---:|---:|"]
    for name, c in costs.items():
        md.append(f"| {name} | {c['tokenizer_cpu_s_per_step']:.2f} x {c['tokenizer_steps']} | {c['caml_cpu_s_per_step']:.3f} x {c['caml_steps']} "
                  f"| {c['lm_cpu_s_per_step']:.2f} x {c['lm_steps']} | {c['training_cpu_s'] / 60:.1f} min |")
    atomic_write_text(ROOT / "docs" / "results" / "demo_step_costs.md", "\n".join(md) + "\n")
    atomic_write_text(ROOT / "docs" / "results" / "demo_step_costs.json", json.dumps(result, indent=2) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
