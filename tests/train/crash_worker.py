"""A training process for the kill -9 tests: the toy task of test_loop.py, slowed down so a kill lands mid-run.

Usage: python -m tests.train.crash_worker RUN_DIR [--resume]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from safetensors.torch import save_file

from tessera.train import OptimConfig, TrainConfig, fit
from tests.train.test_loop import make_task

CFG = TrainConfig(steps=30, log_every=5, checkpoint_every=3, keep_checkpoints=2, progress=False, device="cpu", tensorboard=False)
OPT = OptimConfig(lr=3e-3, warmup_steps=5)
STEP_DELAY_S = 0.03


def main() -> None:
    run_dir = Path(sys.argv[1])
    task = make_task()
    inner = task.batches

    def slow_batches(step, micro, rank, world):
        if step == 0 and micro == 0:
            (run_dir / "STARTED").touch()
        time.sleep(STEP_DELAY_S)
        return inner(step, micro, rank, world)

    task.batches = slow_batches
    run_dir.mkdir(parents=True, exist_ok=True)
    fit(task, CFG, OPT, run_dir, resume="--resume" in sys.argv)
    save_file({k: v.contiguous() for k, v in task.module.state_dict().items()}, str(run_dir / "final.safetensors"))


if __name__ == "__main__":
    main()
