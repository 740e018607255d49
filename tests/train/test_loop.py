"""The generic loop: learns, resumes bitwise, normalises loss under accumulation, rejects bad resumes and NaNs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from tessera.config import ConfigError
from tessera.quantize import VectorQuantizer
from tessera.train import EpochSampler, OptimConfig, StepOutput, Task, TrainConfig, fit, load_latest
from tessera.train.log import read_metrics_csv

_GEN = torch.Generator().manual_seed(0)
_LABELS = torch.randint(16, (512,), generator=_GEN)
DATA_X = 3 * torch.randn(16, 8, generator=_GEN)[_LABELS] + 0.1 * torch.randn(512, 8, generator=_GEN)  # 16 clusters
DATA_Y = torch.randn(16, 8, generator=_GEN)[_LABELS]  # a target per cluster: learnable through a 32-code bottleneck


class ToyObjective(nn.Module):
    """A VQ bottleneck regression with dropout, so the loop's RNG handling matters."""

    def __init__(self, sum_loss: bool = False, use_vq: bool = True) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.1)
        self.vq = VectorQuantizer(16, 32, kmeans_init=True, dead_code_threshold=0.5)
        self.dec = nn.Linear(16, 8)
        self.sum_loss = sum_loss
        self.use_vq = use_vq

    def forward(self, batch, step):
        x, y = batch
        h = self.drop(self.enc(x))
        if not self.use_vq:  # EMA codebook updates per micro-batch are not batch-size invariant
            err = ((self.dec(h) - y) ** 2).sum(-1)
            return StepOutput(err.sum() if self.sum_loss else err.mean(), {})
        out = self.vq(h.unsqueeze(1))
        err = ((self.dec(out.quantized.squeeze(1)) - y) ** 2).sum(-1)
        loss = err.sum() if self.sum_loss else err.mean()
        return StepOutput(loss + 0.1 * out.loss * (len(x) if self.sum_loss else 1), {"usage": out.metrics["usage"]})


def make_task(global_batch: int = 32, accum: int = 1, sum_loss: bool = False, init_seed: int = 0, use_vq: bool = True) -> Task:
    torch.manual_seed(init_seed)
    sampler = EpochSampler(len(DATA_X), global_batch, accum, seed=0)

    def batches(step, micro, rank, world):
        idx = torch.from_numpy(sampler.indices(step, micro, rank, world))
        return DATA_X[idx], DATA_Y[idx]

    def evaluate(module, step):
        return {"mse": float(((module.dec(module.vq(module.enc(DATA_X).unsqueeze(1)).quantized.squeeze(1)) - DATA_Y) ** 2).mean())}

    return Task(
        module=ToyObjective(sum_loss, use_vq),
        batches=batches,
        evaluate=evaluate,
        batch_weight=(lambda b: float(len(b[0]))) if sum_loss else None,
        progress_keys=("loss", "usage"),
    )


CFG = TrainConfig(steps=40, log_every=5, checkpoint_every=10, eval_every=20, progress=False, device="cpu", tensorboard=False)
OPT = OptimConfig(lr=3e-3, warmup_steps=5)


def test_loss_falls_and_logs_are_written(tmp_path):
    task = make_task()
    with torch.no_grad():
        start_mse = task.evaluate(task.module.eval(), 0)["mse"]
    res = fit(task, CFG, OPT, tmp_path / "run")
    rows = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    train_rows = [r for r in rows if "loss" in r]
    assert train_rows[-1]["loss"] < 0.5 * train_rows[0]["loss"]
    assert res.eval_metrics["mse"] < 0.9 * start_mse and res.step == 40
    assert load_latest(tmp_path / "run" / "checkpoints").step == 40


def test_resume_reproduces_uninterrupted_run_bitwise(tmp_path):
    full = make_task()
    fit(full, CFG, OPT, tmp_path / "full")
    part = make_task()
    fit(part, CFG, OPT, tmp_path / "part", stop_after=23)  # "killed" after step 23 (checkpoint at 20 and 23)
    # Damage the newest checkpoint: resume must fall back to step 20 and still reproduce the run.
    newest = sorted((tmp_path / "part" / "checkpoints").glob("step_*"))[-1]
    (newest / "model.safetensors").write_bytes(b"garbage")
    resumed = make_task(init_seed=123)  # a different init: everything must come from the checkpoint
    with pytest.warns(UserWarning, match="model.safetensors"):
        res = fit(resumed, CFG, OPT, tmp_path / "part", resume=True)
    assert res.resumed_from == 20
    for (k, a), (_, b) in zip(full.module.state_dict().items(), resumed.module.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    full_rows = read_metrics_csv(tmp_path / "full" / "metrics.csv")
    part_rows = read_metrics_csv(tmp_path / "part" / "metrics.csv")
    assert [r.get("loss") for r in full_rows] == [r.get("loss") for r in part_rows]


def test_grad_accumulation_matches_big_batch_with_sum_normalisation(tmp_path):
    cfg = dataclasses.replace(CFG, steps=5, checkpoint_every=0, eval_every=0)
    # Adam's first steps are ~sign(g): rounding noise on near-zero gradient entries would flip whole updates, so a
    # large eps makes the update linear in the gradient and the comparison about the loss normalisation only.
    opt = dataclasses.replace(OPT, eps=1.0)
    big = make_task(global_batch=32, accum=1, sum_loss=True, use_vq=False)
    big.module.drop.p = 0.0
    fit(big, cfg, opt, tmp_path / "big")
    acc = make_task(global_batch=8, accum=4, sum_loss=True, use_vq=False)
    acc.module.drop.p = 0.0
    fit(acc, dataclasses.replace(cfg, grad_accum=4), opt, tmp_path / "acc")
    # Same items per step (stream positions coincide), same loss normalisation -> same weights up to float rounding.
    for (k, a), (_, b) in zip(big.module.state_dict().items(), acc.module.state_dict().items(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


def test_resume_with_changed_config_is_rejected(tmp_path):
    from tessera.train.loop import TrainConfig as TC

    fit(make_task(), dataclasses.replace(CFG, steps=10), OPT, tmp_path / "r", config=TC(steps=10))
    with pytest.raises(ConfigError, match="steps"):
        fit(make_task(), dataclasses.replace(CFG, steps=20), OPT, tmp_path / "r", resume=True, config=TC(steps=20))


def test_nonfinite_loss_raises_or_skips(tmp_path):
    task = make_task()
    original = task.module.forward

    def poisoned(batch, step):
        out = original(batch, step)
        return StepOutput(out.loss * float("nan"), out.metrics) if step == 3 else out

    task.module.forward = poisoned
    with pytest.raises(FloatingPointError, match="step 3"):
        fit(task, dataclasses.replace(CFG, steps=6), OPT, tmp_path / "a")
    task2 = make_task()
    orig2 = task2.module.forward
    task2.module.forward = lambda b, s: StepOutput(orig2(b, s).loss * float("nan"), {}) if s == 3 else orig2(b, s)
    res = fit(task2, dataclasses.replace(CFG, steps=6, on_nonfinite="skip"), OPT, tmp_path / "b")
    assert res.step == 6
    assert all(torch.isfinite(p).all() for p in task2.module.parameters())


def test_sampler_shards_without_overlap():
    s = EpochSampler(100, 8, grad_accum=2, seed=3)
    one = [s.indices(st, m, 0, 1) for st in range(20) for m in range(2)]
    two = [torch.cat([torch.from_numpy(s.indices(st, m, r, 2)) for r in range(2)]).numpy() for st in range(20) for m in range(2)]
    assert all((a == b).all() for a, b in zip(one, two, strict=True))
    first_epoch = torch.from_numpy(__import__("numpy").concatenate(one))[:96]
    assert len(set(first_epoch.tolist())) == 96  # no repeats within an epoch
    with pytest.raises(ValueError, match="divisible"):
        s.indices(0, 0, 0, 3)
