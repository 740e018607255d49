"""`fit` on two gloo ranks gives the loss curve and final weights of one process at the same global batch."""

from __future__ import annotations

import dataclasses

import torch
from safetensors.torch import load_file, save_file

from tessera.train import OptimConfig, TrainConfig, fit
from tessera.train.log import read_metrics_csv
from tests._dist import run_gloo
from tests.train.test_loop import make_task

CFG = TrainConfig(steps=12, log_every=3, checkpoint_every=6, progress=False, device="cpu", tensorboard=False)
# Large eps: see test_grad_accumulation_matches_big_batch_with_sum_normalisation.
OPT = OptimConfig(lr=3e-3, warmup_steps=2, eps=1.0)


def _worker(rank: int, world: int, outdir: str) -> None:
    task = make_task(global_batch=32)
    task.module.drop.p = 0.0  # dropout masks differ per rank by design
    fit(task, CFG, OPT, f"{outdir}/ddp")
    save_file({k: v.contiguous() for k, v in task.module.state_dict().items()}, f"{outdir}/rank{rank}.safetensors")


def test_two_process_ddp_matches_single_process(tmp_path):
    run_gloo(_worker, 2, tmp_path, str(tmp_path), timeout=240)
    single = make_task(global_batch=32)
    single.module.drop.p = 0.0
    fit(single, CFG, OPT, tmp_path / "single")
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    for k, v in single.module.state_dict().items():
        assert torch.equal(r0[k], r1[k]), f"{k} differs between ranks by {(r0[k].double() - r1[k].double()).abs().max()}"
        if v.is_floating_point():
            torch.testing.assert_close(r0[k], v, rtol=1e-4, atol=1e-5, msg=k)
    ddp_rows = [r for r in read_metrics_csv(tmp_path / "ddp" / "metrics.csv") if "loss" in r]
    one_rows = [r for r in read_metrics_csv(tmp_path / "single" / "metrics.csv") if "loss" in r]
    assert len(ddp_rows) == len(one_rows) == CFG.steps // CFG.log_every
    for a, b in zip(ddp_rows, one_rows):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(b["loss"])), (a, b)
