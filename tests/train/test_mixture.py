"""Staged data mixtures: weights by step (jumps and blends), domain draws that follow them, pure batch functions."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.config import from_dict
from tessera.train.mixture import MixtureBatches, MixtureStage, StagedMixture

STAGES = [MixtureStage(0.0, {"web": 0.9, "domain": 0.1}), MixtureStage(0.8, {"web": 0.3, "domain": 0.7})]


def test_weights_change_by_step_and_domain_data_goes_up_at_the_end():
    mix = StagedMixture(STAGES, total_steps=100)
    assert mix.weights(0) == pytest.approx({"web": 0.9, "domain": 0.1})
    assert mix.weights(79) == pytest.approx({"web": 0.9, "domain": 0.1})
    assert mix.weights(80) == pytest.approx({"web": 0.3, "domain": 0.7})
    blend = StagedMixture(STAGES, total_steps=100, blend="linear")
    assert blend.weights(40) == pytest.approx({"web": 0.6, "domain": 0.4})
    assert blend.weights(99)["domain"] == pytest.approx(0.7)


def test_draws_follow_the_weights_and_batches_are_pure_functions_of_the_step():
    mix = StagedMixture(STAGES, total_steps=1000)
    sources = {d: (lambda step, micro, rank, world, d=d: (d, step, micro)) for d in ("web", "domain")}
    batches = MixtureBatches(sources, mix, seed=3)
    early = [batches(s)[0] for s in range(0, 800)]
    late = [batches(s)[0] for s in range(800, 1000)]
    assert abs(early.count("domain") / len(early) - 0.1) < 0.04
    assert abs(late.count("domain") / len(late) - 0.7) < 0.08
    assert [batches(s, 1) for s in range(50)] == [batches(s, 1) for s in range(50)]
    rng = np.random.default_rng(0)
    assert mix.sample(rng, 999) in ("web", "domain")


def test_bad_mixtures_are_clear_errors():
    with pytest.raises(ValueError, match="first stage"):
        StagedMixture([MixtureStage(0.5, {"a": 1.0})])
    with pytest.raises(ValueError, match="strictly increasing"):
        StagedMixture([MixtureStage(0.0, {"a": 1.0}), MixtureStage(0.0, {"a": 2.0})])
    with pytest.raises(ValueError, match="non-negative"):
        MixtureStage(0.0, {"a": -1.0})
    with pytest.raises(ValueError, match="without a batch source"):
        MixtureBatches({"web": lambda *a: None}, StagedMixture(STAGES))
    # Loads from YAML-like dicts through tessera.config
    mix = from_dict(StagedMixture, {"stages": [{"start": 0.0, "weights": {"a": 1.0}}], "total_steps": 10})
    assert mix.weights(5) == {"a": 1.0}
