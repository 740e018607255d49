"""Run one of the REAL trainers (tokenizer, CAML, LM) on a shrunk debug config, alone or as one rank of torchrun.

Usage (from the repository root, PYTHONPATH=.):
    python -m tests.train.trainer_worker {tokenizer,icl,lm} RUN_DIR [--resume] [--kill-at STEP:DELAY] [a.b=c ...]
    torchrun --standalone --nproc_per_node 2 -m tests.train.trainer_worker tokenizer RUN_DIR ...

It calls the recipe's own entry point (`train_tokenizer.train`, `train_icl.run`, `train_lm.train_lm`) with the debug
config of `configs/<part>/` plus the overrides, and adds two test-only observations through a thin wrapper around the
recipe's `fit`: every rank writes its final module state to `RUN_DIR/rank<r>.safetensors` (so the tests can check
that replicas and VQ codebooks agree), and with `--kill-at STEP:DELAY` the process sends itself SIGKILL (kill -9:
no handler, no cleanup) DELAY seconds after step STEP starts, which lands anywhere in that step, in the middle of a
checkpoint write included (or at the start of the next step, if that one came first). The LM reads a tiny image tokenizer from
`$TESSERA_TEST_TOKENIZER` (a folder made by the test) instead of training one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    "tokenizer": ROOT / "configs" / "tokenizer" / "vqvae_f4_32px_debug.yaml",
    "icl": ROOT / "configs" / "icl" / "caml_debug.yaml",
    "lm": ROOT / "configs" / "lm" / "nano_debug.yaml",
}


# -- what the tests share: the shrunk debug configs and how to launch the worker ---------------------------------------
TINY_SUITE = ("data.suite_overrides={glyph_max_per_script: 8, glyph_instances: 12, shape_classes: 60, shape_instances: 12,"
              " crop_instances: 12}")
COMMON = ["train.tensorboard=false", "train.progress=false", "train.device=cpu", "train.eval_every=0", "optim.eps=1.0e-6"]
OVERRIDES = {
    "tokenizer": [*COMMON, "train.steps=6", "train.log_every=2", "train.checkpoint_every=3", "data.num_train=96",
                  "data.num_val=16", "eval.grid_images=0"],
    "icl": [*COMMON, "train.steps=6", "train.log_every=2", "train.checkpoint_every=3", TINY_SUITE, "episodes.val_episodes=4"],
    # single-object scenes and 4 glyph renders: the held-out pools then hold enough images of a class for episodes
    "lm": [*COMMON, "preset=debug", "seq_len=128", "batch_size=4", "train.steps=5", "train.log_every=1",
           "train.checkpoint_every=3", "data.glyph_test_renders=4", "data.max_objects=1"],
}
STEPS = {part: int(next(o for o in ov if o.startswith("train.steps=")).split("=")[1]) for part, ov in OVERRIDES.items()}


def worker_cmd(part: str, run_dir: Path, nproc: int, *extra: str) -> list[str]:
    """The command line of a run: one process, or `torchrun --standalone --nproc_per_node nproc`."""
    head = [sys.executable, "-m", "tests.train.trainer_worker"]
    if nproc > 1:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                "tests.train.trainer_worker"]
    return [*head, part, str(run_dir), *OVERRIDES[part], *extra]


def run_worker(part: str, run_dir: Path, nproc: int, env: dict[str, str], *extra: str, timeout: float = 240) -> None:
    proc = subprocess.run(worker_cmd(part, run_dir, nproc, *extra), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{part} x{nproc} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


# -- the worker ---------------------------------------------------------------------------------------------------------
def _wrap_fit(recipe, run_dir: Path, kill_at: tuple[int, float] | None) -> None:
    real_fit = recipe.fit

    def fit(task, cfg, optim_cfg, rdir, **kw):
        inner = task.batches
        armed: list[threading.Timer] = []

        def kill_now_if_pending() -> None:
            # a fast machine can finish the step (and the run) before DELAY: then the kill lands right here, at the
            # start of the next step or before the final weights are written, never after a completed run
            if armed:
                armed[0].cancel()
                os.kill(os.getpid(), signal.SIGKILL)

        def batches(step, micro, rank, world):
            if kill_at is not None and step == kill_at[0] and micro == 0:
                armed.append(threading.Timer(kill_at[1], os.kill, (os.getpid(), signal.SIGKILL)))
                armed[0].start()
            elif kill_at is not None and step > kill_at[0]:
                kill_now_if_pending()
            return inner(step, micro, rank, world)

        task.batches = batches
        result = real_fit(task, cfg, optim_cfg, rdir, **kw)
        kill_now_if_pending()
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
    kill_at = None
    if "--kill-at" in rest:
        i = rest.index("--kill-at")
        step, delay = rest[i + 1].split(":")
        kill_at = (int(step), float(delay))
        del rest[i : i + 2]
    overrides = [a for a in rest if a != "--resume"]
    run_dir.mkdir(parents=True, exist_ok=True)
    if part == "tokenizer":
        from tessera.recipes import train_tokenizer as recipe

        _wrap_fit(recipe, run_dir, kill_at)
        recipe.train(recipe.load_train_config(CONFIGS[part], overrides), run_dir, resume=resume)
    elif part == "icl":
        from tessera.config import load_config
        from tessera.recipes import train_icl as recipe

        _wrap_fit(recipe, run_dir, kill_at)
        recipe.run(load_config(recipe.TrainICLConfig, CONFIGS[part], overrides), run_dir=run_dir, resume=resume, progress=False)
    elif part == "lm":
        from tessera.config import load_config
        from tessera.recipes import train_lm as recipe

        _wrap_fit(recipe, run_dir, kill_at)
        overrides = [f"tokenizer.path={os.environ['TESSERA_TEST_TOKENIZER']}", *overrides]
        recipe.train_lm(load_config(recipe.LMRunConfig, CONFIGS[part], overrides), run_dir, resume=resume)
    else:
        raise SystemExit(f"unknown trainer {part!r}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
