"""kill -9 a training process at a random moment (several seeds), resume, and get the uninterrupted run's weights
bitwise; the same after truncating the newest checkpoint on purpose."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def _run(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.train.crash_worker", str(run_dir), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    proc = _run(run_dir)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return load_file(str(run_dir / "final.safetensors"))


def _kill_and_resume(run_dir: Path, seed: int, truncate: bool) -> dict[str, torch.Tensor]:
    rng = random.Random(seed)
    proc = _run(run_dir)
    deadline = time.monotonic() + 120
    while not (run_dir / "STARTED").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(rng.uniform(0.05, 0.8))  # the run lasts ~1 s after STARTED: land anywhere, mid-write included
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if truncate:
        ckpts = sorted((run_dir / "checkpoints").glob("step_*"))
        if ckpts:
            f = ckpts[-1] / "model.safetensors"
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    resumed = _run(run_dir, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    return load_file(str(run_dir / "final.safetensors"))


@pytest.mark.integration
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("truncate", [False, True], ids=["kill", "kill+truncate"])
def test_kill9_then_resume_is_bitwise_identical(tmp_path, reference, seed, truncate):
    final = _kill_and_resume(tmp_path / "run", seed, truncate)
    for k, v in reference.items():
        assert torch.equal(final[k], v), f"{k} differs after kill -9 (seed {seed}) and resume"
