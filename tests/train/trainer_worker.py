"""Run one of the REAL trainers (tokenizer, CAML, LM) on a shrunk debug config, alone or as one rank of torchrun.

Usage (from the repository root, PYTHONPATH=.):
    python -m tests.train.trainer_worker {tokenizer,icl,lm} RUN_DIR [--resume] [--step-delay S] [a.b=c ...]
    torchrun --standalone --nproc_per_node 2 -m tests.train.trainer_worker tokenizer RUN_DIR ...

It calls the recipe's own entry point (`train_tokenizer.train`, `train_icl.run`, `train_lm.train_lm`) with the debug
config of `configs/<part>/` plus the overrides, and adds two test-only observations through a thin wrapper around the
recipe's `fit`: every rank writes its final module state to `RUN_DIR/rank<r>.safetensors` (so the tests can check
that replicas and VQ codebooks agree), and with `--step-delay` each step sleeps a little and `RUN_DIR/STARTED`
appears at the first step (so a kill -9 lands mid-run). The LM reads a tiny image tokenizer from
`$TESSERA_TEST_TOKENIZER` (a folder made by the test) instead of training one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    "tokenizer": ROOT / "configs" / "tokenizer" / "vqvae_f4_32px_debug.yaml",
    "icl": ROOT / "configs" / "icl" / "caml_debug.yaml",
    "lm": ROOT / "configs" / "lm" / "nano_debug.yaml",
}


def _wrap_fit(recipe, run_dir: Path, step_delay: float) -> None:
    real_fit = recipe.fit

    def fit(task, cfg, optim_cfg, rdir, **kw):
        inner = task.batches

        def batches(step, micro, rank, world):
            if step_delay > 0:
                if step == 0 and micro == 0:
                    (run_dir / "STARTED").touch()
                time.sleep(step_delay)
            return inner(step, micro, rank, world)

        task.batches = batches
        result = real_fit(task, cfg, optim_cfg, rdir, **kw)
        sharded = cfg.strategy == "fsdp" and dist.is_initialized()  # FSDP ranks hold shards: the test reads final/
        if result.step == cfg.steps and not sharded:
            rank = dist.get_rank() if dist.is_initialized() else 0
            state = {k: v.detach().contiguous() for k, v in task.module.state_dict().items()}
            save_file(state, str(run_dir / f"rank{rank}.safetensors"))
        return result

    recipe.fit = fit


def main(argv: list[str]) -> None:
    part, run_dir = argv[0], Path(argv[1])
    rest = argv[2:]
    resume = "--resume" in rest
    step_delay = 0.0
    if "--step-delay" in rest:
        i = rest.index("--step-delay")
        step_delay = float(rest[i + 1])
        del rest[i : i + 2]
    overrides = [a for a in rest if a != "--resume"]
    run_dir.mkdir(parents=True, exist_ok=True)
    if part == "tokenizer":
        from tessera.recipes import train_tokenizer as recipe

        _wrap_fit(recipe, run_dir, step_delay)
        recipe.train(recipe.load_train_config(CONFIGS[part], overrides), run_dir, resume=resume)
    elif part == "icl":
        from tessera.config import load_config
        from tessera.recipes import train_icl as recipe

        _wrap_fit(recipe, run_dir, step_delay)
        recipe.run(load_config(recipe.TrainICLConfig, CONFIGS[part], overrides), run_dir=run_dir, resume=resume, progress=False)
    elif part == "lm":
        import os

        from tessera.config import load_config
        from tessera.recipes import train_lm as recipe

        _wrap_fit(recipe, run_dir, step_delay)
        overrides = [f"tokenizer.path={os.environ['TESSERA_TEST_TOKENIZER']}", *overrides]
        recipe.train_lm(load_config(recipe.LMRunConfig, CONFIGS[part], overrides), run_dir, resume=resume)
    else:
        raise SystemExit(f"unknown trainer {part!r}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
