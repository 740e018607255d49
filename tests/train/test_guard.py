"""Training guards: rollback to the in-memory snapshot after an injected NaN, the replay check catching an injected
corruption (and passing on clean steps), and goodput in the logs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tessera.train import OptimConfig, StepOutput, Task, TrainConfig, fit
from tessera.train.guard import GoodputMeter, ReplayMismatchError, Snapshot, checksums_match, grad_checksum
from tessera.train.log import read_metrics_csv

_GEN = torch.Generator().manual_seed(0)
X = torch.randn(256, 8, generator=_GEN)
Y = X @ torch.randn(8, 4, generator=_GEN)


class Regression(nn.Module):
    """Linear regression with dropout (so RNG handling matters); `nan_steps` inject a NaN loss."""

    def __init__(self, nan_steps=()) -> None:
        super().__init__()
        self.lin = nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.1), nn.Linear(32, 4))
        self.nan_steps = set(nan_steps)

    def forward(self, batch, step):
        x, y = batch
        loss = ((self.lin(x) - y) ** 2).mean()
        if step in self.nan_steps:
            loss = loss * float("nan")
        return StepOutput(loss, {})


def make_task(nan_steps=()) -> Task:
    torch.manual_seed(0)

    def batches(step, micro, rank, world):
        idx = torch.randint(len(X), (32,), generator=torch.Generator().manual_seed(step * 10 + micro))
        return X[idx], Y[idx]

    return Task(module=Regression(nan_steps), batches=batches)


def cfg(**kw) -> TrainConfig:
    base = dict(steps=20, log_every=5, progress=False, device="cpu", tensorboard=False, grad_accum=2)
    return TrainConfig(**{**base, **kw})


OPT = OptimConfig(lr=1e-2, warmup_steps=2)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_rollback_restores_the_snapshot_after_an_injected_nan(tmp_path):
    # Reference: the same run stopped right after the snapshot step (5).
    ref = make_task()
    fit(ref, cfg(), OPT, tmp_path / "ref", stop_after=5)
    # Snapshot every 5 steps; step 7 (the 8th) produces NaN: weights must return to those of step 5.
    task = make_task(nan_steps={7})
    res = fit(task, cfg(on_nonfinite="rollback", snapshot_every=5), OPT, tmp_path / "run", stop_after=8)
    assert res.rollbacks == 1
    after, expected = _state(task.module), _state(ref.module)
    assert after.keys() == expected.keys()
    for k in after:
        assert torch.equal(after[k], expected[k]), k
    # ...and steps 5-6 had moved the weights away from the snapshot, so the equality above is the rollback's doing.
    moved = make_task()
    fit(moved, cfg(), OPT, tmp_path / "moved", stop_after=7)
    assert not torch.equal(_state(moved.module)["lin.0.weight"], expected["lin.0.weight"])


def test_rollback_run_finishes_with_finite_weights_and_a_bounded_number_of_rollbacks(tmp_path):
    task = make_task(nan_steps={7, 13})
    res = fit(task, cfg(on_nonfinite="rollback", snapshot_every=5), OPT, tmp_path / "run")
    assert res.step == 20 and res.rollbacks == 2
    assert all(bool(torch.isfinite(p).all()) for p in task.module.parameters())
    with pytest.raises(FloatingPointError, match="max_rollbacks"):
        fit(make_task(nan_steps=set(range(3, 20))), cfg(on_nonfinite="rollback", max_rollbacks=2), OPT, tmp_path / "bad")


class _CorruptOnce:
    """A gradient hook that perturbs one value by one part in a million on the N-th backward (a flaky ALU)."""

    def __init__(self, at_call: int) -> None:
        self.calls, self.at_call = 0, at_call

    def __call__(self, grad):
        self.calls += 1
        if self.calls == self.at_call:
            grad = grad.clone()
            grad.view(-1)[3] *= 1 + 1e-6
        return grad


def test_replay_check_passes_on_clean_steps(tmp_path):
    res = fit(make_task(), cfg(replay_every=4), OPT, tmp_path / "run")
    assert res.replays == 5 and res.step == 20


def test_replay_check_detects_an_injected_corruption(tmp_path):
    task = make_task()
    # grad_accum=2: backward calls 1-2 are step 0, ... step 3 runs calls 7-8 and its replay 9-10. Corrupt call 10:
    # the loss is unchanged (the corruption is in the gradient only), the checksum is not.
    task.module.lin[0].weight.register_hook(_CorruptOnce(at_call=10))
    with pytest.raises(ReplayMismatchError, match="step 3"):
        fit(task, cfg(replay_every=4), OPT, tmp_path / "run")
    warned = make_task()
    warned.module.lin[0].weight.register_hook(_CorruptOnce(at_call=10))
    res = fit(warned, cfg(replay_every=4, on_replay_mismatch="warn"), OPT, tmp_path / "warn")
    assert res.replays == 4 and res.step == 20  # one of the five replays failed and was only reported


def test_replay_leaves_training_bitwise_unchanged(tmp_path):
    plain = make_task()  # make_task seeds the global RNG that dropout draws from
    fit(plain, cfg(), OPT, tmp_path / "a")
    checked = make_task()
    fit(checked, cfg(replay_every=3), OPT, tmp_path / "b")
    for (k, a), b in zip(plain.module.state_dict().items(), checked.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_goodput_is_logged(tmp_path):
    res = fit(make_task(), cfg(), OPT, tmp_path / "run")
    rows = [r for r in read_metrics_csv(tmp_path / "run" / "metrics.csv") if "loss" in r]
    assert rows and all(0.0 < r["goodput"] <= 1.0 for r in rows)
    assert 0.0 < res.goodput <= 1.0


def test_guard_pieces():
    meter = GoodputMeter()
    meter.begin()
    meter.end(useful=False)
    assert meter.useful_s == 0.0 and meter.goodput() == 0.0
    m = nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    snap = Snapshot.take(0, m, opt)
    m(torch.ones(1, 3)).sum().backward()
    c1 = grad_checksum(m)
    assert checksums_match(c1, c1.clone()) and not checksums_match(c1, c1 * (1 + 1e-12))
    assert not checksums_match(c1, torch.full_like(c1, float("nan")))
    opt.step()
    snap.restore(m, opt)
    assert torch.equal(m.weight, snap.model["weight"]) and not opt.state
    with pytest.raises(ValueError, match="snapshot_every"):
        TrainConfig(snapshot_every=0)
