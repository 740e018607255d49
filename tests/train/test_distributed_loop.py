"""`fit` on two gloo ranks (DDP or FSDP2) gives the loss curve and final weights of one process at the same global
batch, and a checkpoint written by two ranks resumes in one process."""

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


def _task():
    task = make_task(global_batch=32)
    task.module.drop.p = 0.0  # dropout masks differ per rank by design
    task.save_artifact = lambda module, folder: (folder.mkdir(parents=True, exist_ok=True), save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors")))
    return task


def _worker(rank: int, world: int, outdir: str, strategy: str, stop_after: int | None) -> None:
    task = _task()
    fit(task, dataclasses.replace(CFG, strategy=strategy), OPT, f"{outdir}/{strategy}", stop_after=stop_after)
    if strategy == "ddp":
        save_file({k: v.contiguous() for k, v in task.module.state_dict().items()}, f"{outdir}/rank{rank}.safetensors")


def _single(tmp_path):
    single = _task()
    fit(single, CFG, OPT, tmp_path / "single")
    return single.module.state_dict()


def _assert_close_states(a: dict, b: dict) -> None:
    for k, v in b.items():
        if v.is_floating_point():
            torch.testing.assert_close(a[k], v, rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(a[k], v), k


def test_two_process_ddp_matches_single_process(tmp_path):
    run_gloo(_worker, 2, tmp_path, str(tmp_path), "ddp", None, timeout=240)
    single = _single(tmp_path)
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    for k in single:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between ranks by {(r0[k].double() - r1[k].double()).abs().max()}"
    _assert_close_states(r0, single)
    ddp_rows = [r for r in read_metrics_csv(tmp_path / "ddp" / "metrics.csv") if "loss" in r]
    one_rows = [r for r in read_metrics_csv(tmp_path / "single" / "metrics.csv") if "loss" in r]
    assert len(ddp_rows) == len(one_rows) == CFG.steps // CFG.log_every
    for a, b in zip(ddp_rows, one_rows, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(b["loss"])), (a, b)


def test_fsdp_matches_single_process_and_its_checkpoint_resumes_in_one_process(tmp_path):
    run_gloo(_worker, 2, tmp_path, str(tmp_path), "fsdp", None, timeout=240)
    single = _single(tmp_path)
    _assert_close_states(load_file(str(tmp_path / "fsdp" / "final" / "model.safetensors")), single)
    ckpts = sorted((tmp_path / "fsdp" / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_0000006", "step_0000012"]
    _assert_close_states(load_file(str(ckpts[-1] / "model.safetensors")), single)  # full, unsharded state
    # A different world size: drop the final checkpoint and finish the 2-rank run from step 6 in one process.
    import shutil

    shutil.rmtree(ckpts[-1])
    resumed = _task()
    res = fit(resumed, CFG, OPT, tmp_path / "fsdp", resume=True)
    assert res.resumed_from == 6
    _assert_close_states(resumed.module.state_dict(), single)
