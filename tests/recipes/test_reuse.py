"""train_or_reuse: a run is trained once, reused while its config is unchanged, retrained when it changes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tessera.config import dump_config
from tessera.recipes.reuse import same_config, train_or_reuse


@dataclass
class Inner:
    lr: float = 0.1


@dataclass
class Cfg:
    steps: int = 3
    inner: Inner = field(default_factory=Inner)


def _fake_train(calls: list):
    def train(cfg: Cfg, run):
        calls.append(cfg.steps)
        (run / "final").mkdir(parents=True, exist_ok=True)
        (run / "final" / "model.safetensors").write_bytes(b"x")
        dump_config(cfg, run / "config.yaml")

    return train


def test_trains_once_then_reuses_and_retrains_on_a_changed_config(tmp_path):
    calls: list = []
    final, secs = train_or_reuse(Cfg(), tmp_path / "run", _fake_train(calls))
    assert calls == [3] and final == tmp_path / "run" / "final" and secs >= 0
    again, secs2 = train_or_reuse(Cfg(), tmp_path / "run", _fake_train(calls))
    assert calls == [3] and again == final and secs2 == secs  # the recorded time of the run that made it
    train_or_reuse(Cfg(inner=Inner(lr=0.2)), tmp_path / "run", _fake_train(calls))
    assert calls == [3, 3]
    (tmp_path / "run" / "train_seconds.json").unlink()
    assert math.isnan(train_or_reuse(Cfg(inner=Inner(lr=0.2)), tmp_path / "run", _fake_train(calls))[1])


def test_fields_the_saved_config_lacks_are_ignored_but_changed_ones_are_not():
    assert same_config({"steps": 3}, {"steps": 3, "inner": {"lr": 0.1}})
    assert not same_config({"steps": 3, "inner": {"lr": 0.2}}, {"steps": 3, "inner": {"lr": 0.1}})
    assert not same_config({"steps": 3, "gone": 1}, {"steps": 3})
