"""The REAL trainers under `torchrun --nproc_per_node 2` (gloo, CPU) against one process at the same global batch.

For the tokenizer, CAML and LM recipes (their debug configs, shrunk so each run takes seconds): the loss curve matches
within 1e-4 relative, the final weights within atol 2e-4 (float sums are re-associated by the gradient all-reduce,
so not bitwise), both replicas (VQ codebook buffers included) are bitwise identical, the checkpoints are written once
by rank 0, and a 2-rank checkpoint resumes in one process. The LM is also run under FSDP2.

Tolerances: Adam divides by sqrt(v) + eps; a parameter whose exact gradient is zero (a conv bias in front of a
GroupNorm) gets rounding noise of ~1e-10 as its gradient, which eps=1e-8 turns into steps of +-lr that differ between
the runs. The tests use eps=1e-6, which keeps such steps at ~1e-3 lr without changing anything else.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tessera.train.log import read_metrics_csv
from tests.train.trainer_worker import ROOT, run_worker


def assert_close_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str, atol: float = 2e-4) -> None:
    assert a.keys() == b.keys(), f"{what}: different keys {sorted(set(a) ^ set(b))[:5]}"
    for k in a:
        if a[k].is_floating_point():
            diff = float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0
            assert diff <= atol, f"{what}: {k} differs by {diff:.3g}"
        else:
            assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


def assert_same_curve(a: Path, b: Path) -> int:
    rows_a = [r for r in read_metrics_csv(a / "metrics.csv") if r.get("loss") is not None]
    rows_b = [r for r in read_metrics_csv(b / "metrics.csv") if r.get("loss") is not None]
    assert len(rows_a) == len(rows_b) > 0
    for x, y in zip(rows_a, rows_b, strict=True):
        assert x["step"] == y["step"]
        assert abs(x["loss"] - y["loss"]) <= 1e-4 * max(1.0, abs(y["loss"])), (x, y)
    return len(rows_a)


@pytest.fixture(scope="module")
def singles(tmp_path_factory, trainer_env) -> dict[str, Path]:
    """One-process reference runs, made once per trainer (first: they also fill the caches the ranks then share)."""
    made: dict[str, Path] = {}

    class _Lazy(dict):
        def __missing__(self, part: str) -> Path:
            run = tmp_path_factory.mktemp(f"single-{part}")
            run_worker(part, run, 1, trainer_env)
            self[part] = run
            return run

    return _Lazy(made)


def check_ddp_against_single(part: str, tmp_path: Path, env: dict[str, str], single: Path) -> Path:
    ddp = tmp_path / "ddp"
    run_worker(part, ddp, 2, env)
    r0, r1 = load_file(str(ddp / "rank0.safetensors")), load_file(str(ddp / "rank1.safetensors"))
    for k in r0:  # replicas, codebooks and their EMA statistics included, agree bit for bit
        assert torch.equal(r0[k], r1[k]), f"{part}: {k} differs between ranks"
    assert_close_states(r0, load_file(str(single / "rank0.safetensors")), f"{part} ddp vs single")
    assert_same_curve(ddp, single)
    entries = sorted(p.name for p in (ddp / "checkpoints").iterdir())
    assert not [c for c in entries if c.startswith(".")], f"leftover temporary folders {entries}"
    assert (ddp / "final").is_dir()
    return ddp


def resume_in_one_process(part: str, ddp: Path, single: Path, env: dict[str, str], *extra: str) -> None:
    """Drop the 2-rank run's newest checkpoint and finish it in ONE process: a different world size."""
    newest = sorted((ddp / "checkpoints").glob("step_*"))[-1]
    shutil.rmtree(newest)
    shutil.rmtree(ddp / "final")
    for f in ddp.glob("rank*.safetensors"):
        f.unlink()
    run_worker(part, ddp, 1, env, *extra, "--resume")
    assert_close_states(load_file(str(ddp / "rank0.safetensors")), load_file(str(single / "rank0.safetensors")),
                        f"{part}: 2-rank checkpoint resumed in 1 process vs single")


@pytest.mark.slow
def test_tokenizer_trainer_under_torchrun_matches_one_process(tmp_path, trainer_env, singles):
    ddp = check_ddp_against_single("tokenizer", tmp_path, trainer_env, singles["tokenizer"])
    codebook = [k for k in load_file(str(ddp / "rank0.safetensors")) if "codebook" in k]
    assert codebook, "expected VQ codebook tensors in the state"
    resume_in_one_process("tokenizer", ddp, singles["tokenizer"], trainer_env)


@pytest.mark.slow
def test_caml_trainer_under_torchrun_matches_one_process(tmp_path, trainer_env, singles):
    check_ddp_against_single("icl", tmp_path, trainer_env, singles["icl"])


@pytest.mark.slow
def test_lm_trainer_under_torchrun_ddp_matches_one_process(tmp_path, trainer_env, singles):
    check_ddp_against_single("lm", tmp_path, trainer_env, singles["lm"])


@pytest.mark.slow
def test_lm_trainer_under_torchrun_fsdp_matches_one_process_and_resumes_in_one(tmp_path, trainer_env, singles):
    single, fsdp = singles["lm"], tmp_path / "fsdp"
    run_worker("lm", fsdp, 2, trainer_env, "train.strategy=fsdp")
    assert_same_curve(fsdp, single)
    final = load_file(str(fsdp / "final" / "model.safetensors"))
    reference = load_file(str(single / "final" / "model.safetensors"))
    assert_close_states(final, reference, "lm fsdp vs single")
    resume_in_one_process("lm", fsdp, single, trainer_env, "train.strategy=fsdp")


@pytest.mark.slow
def test_cli_under_torchrun_reports_once(tmp_path, trainer_env):
    """`torchrun -m tessera tokenizer train`: the CLI itself runs under torchrun, and only rank 0 reports."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tessera",
           "tokenizer", "train", "--config", str(ROOT / "configs" / "tokenizer" / "vqvae_f4_32px_debug.yaml"),
           "--run-dir", str(tmp_path / "run"), "train.steps=2", "train.eval_every=0", "train.checkpoint_every=0",
           "train.tensorboard=false", "data.num_train=32", "data.num_val=8", "eval.grid_images=0"]
    proc = subprocess.run(cmd, cwd=ROOT, env=trainer_env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("saved tokenizer to") == 1, proc.stdout
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")] == ["step_0000002"]
