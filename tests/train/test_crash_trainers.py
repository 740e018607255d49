"""kill -9 a REAL trainer at a random step (several seeds), resume, and get the uninterrupted run's weights bit for bit.

The trainers checkpoint after every step here, and the kill lands at a random delay inside a random step, so some
kills hit a checkpoint write. With `truncate`, the newest checkpoint's model file is cut to a third after the kill:
the resumed run must say which file is damaged and which checkpoint it used instead, and still end bitwise equal
(on CPU every operation of these trainers is deterministic, so no tolerance is needed).
"""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.trainer_worker import ROOT, STEPS, worker_cmd

EVERY_STEP = ["train.checkpoint_every=1", "train.keep_checkpoints=2"]


def _run(part: str, run_dir: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(worker_cmd(part, run_dir, 1, *EVERY_STEP, *extra), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.fixture(scope="module")
def references(tmp_path_factory, trainer_env) -> dict[str, dict[str, torch.Tensor]]:
    class _Lazy(dict):
        def __missing__(self, part: str) -> dict[str, torch.Tensor]:
            run = tmp_path_factory.mktemp(f"uninterrupted-{part}")
            proc = _run(part, run, trainer_env)
            assert proc.returncode == 0, proc.stderr[-4000:]
            self[part] = load_file(str(run / "rank0.safetensors"))
            return self[part]

    return _Lazy()


CASES = [("tokenizer", 0, False), ("tokenizer", 1, True), ("tokenizer", 2, False), ("icl", 3, True), ("lm", 4, True)]


@pytest.mark.slow
@pytest.mark.parametrize(("part", "seed", "truncate"), CASES, ids=[f"{p}-seed{s}{'-truncate' if t else ''}" for p, s, t in CASES])
def test_kill9_real_trainer_then_resume_is_bitwise_identical(tmp_path, trainer_env, references, part, seed, truncate):
    rng = random.Random(seed)
    kill_step = rng.randint(3, STEPS[part] - 2)  # >= 3: two complete checkpoints exist when one is truncated
    delay = rng.uniform(0.0, 0.15)
    run_dir = tmp_path / "run"
    killed = _run(part, run_dir, trainer_env, "--kill-at", f"{kill_step}:{delay:.3f}")
    assert killed.returncode == -signal.SIGKILL, f"not killed (rc {killed.returncode}): {killed.stderr[-3000:]}"
    assert not (run_dir / "rank0.safetensors").exists()
    damaged = None
    if truncate:
        damaged = sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "model.safetensors"
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])
    resumed = _run(part, run_dir, trainer_env, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    if damaged is not None:
        assert f"skipping checkpoint {damaged.parent}" in resumed.stderr and str(damaged) in resumed.stderr, resumed.stderr[-3000:]
        assert "using the last good checkpoint" in resumed.stderr
    final = load_file(str(run_dir / "rank0.safetensors"))
    reference = references[part]
    assert final.keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(final[k], v), f"{part}: {k} differs after kill -9 at step {kill_step} (+{delay:.3f} s) and resume"
