"""Staged data mixtures: domain weights that change with the training step.

Pretraining recipes shift the mixture late in training towards data closest to the target use (Gemini 1.0,
arXiv 2312.11805: training is staged and the weight of domain-relevant data increases towards the end; later
reports call the same idea annealing or mid-training). A `StagedMixture` is a list of stages, each starting at a fraction of
the run, with either a step change or a linear blend into the next stage's weights.

`MixtureBatches` turns per-domain batch functions into the trainer's `batches(step, micro, rank, world)`: each
micro-batch comes from one domain drawn with the current weights from a generator seeded by (seed, step, micro), so
it is a pure function of its arguments (exact resume) and every rank agrees on the domain. Recipes that draw
documents one by one can call `StagedMixture.sample(rng, step)` per document instead (row-level mixing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MixtureStage", "StagedMixture", "MixtureBatches"]


@dataclass
class MixtureStage:
    """Weights from `start` (a fraction of the run in [0, 1)) until the next stage starts."""

    start: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.start < 1.0:
            raise ValueError(f"mixture stage start must be a fraction in [0, 1), got {self.start}")
        if not self.weights or min(self.weights.values()) < 0 or sum(self.weights.values()) <= 0:
            raise ValueError(f"mixture stage weights must be non-negative with a positive sum, got {self.weights}")


@dataclass
class StagedMixture:
    """Domain weights by step.

    Attributes:
        stages: sorted by `start`; the first must start at 0. Domains missing from a stage have weight 0 there.
        total_steps: the run's length, which stage starts are fractions of.
        blend: "step" (weights jump at each stage start) or "linear" (weights move linearly from one stage's start
            to the next stage's start).
    """

    stages: list[MixtureStage] = field(default_factory=lambda: [MixtureStage(0.0, {"main": 1.0})])
    total_steps: int = 1
    blend: str = "step"

    def __post_init__(self) -> None:
        self.stages = [s if isinstance(s, MixtureStage) else MixtureStage(**s) for s in self.stages]
        if not self.stages or self.stages[0].start != 0.0:
            raise ValueError("mixture: the first stage must start at 0")
        starts = [s.start for s in self.stages]
        if starts != sorted(starts) or len(set(starts)) != len(starts):
            raise ValueError(f"mixture: stage starts must be strictly increasing, got {starts}")
        if self.total_steps < 1:
            raise ValueError(f"mixture: total_steps must be >= 1, got {self.total_steps}")
        if self.blend not in ("step", "linear"):
            raise ValueError(f"mixture: blend must be 'step' or 'linear', got {self.blend!r}")

    @property
    def domains(self) -> list[str]:
        """Every domain named in any stage, in first-seen order."""
        seen: dict[str, None] = {}
        for s in self.stages:
            seen.update(dict.fromkeys(s.weights))
        return list(seen)

    def weights(self, step: int) -> dict[str, float]:
        """Normalised weights (summing to 1) over all domains at `step`."""
        frac = step / self.total_steps
        i = max(k for k, s in enumerate(self.stages) if s.start <= frac)
        w = self._normalised(self.stages[i])
        if self.blend == "linear" and i + 1 < len(self.stages):
            nxt = self.stages[i + 1]
            t = (frac - self.stages[i].start) / (nxt.start - self.stages[i].start)
            w2 = self._normalised(nxt)
            w = {d: (1 - t) * w[d] + t * w2[d] for d in w}
        return w

    def _normalised(self, stage: MixtureStage) -> dict[str, float]:
        total = sum(stage.weights.values())
        return {d: stage.weights.get(d, 0.0) / total for d in self.domains}

    def sample(self, rng: np.random.Generator, step: int) -> str:
        """One domain drawn with the weights at `step`."""
        w = self.weights(step)
        names = list(w)
        return names[int(rng.choice(len(names), p=np.array([w[n] for n in names])))]


class MixtureBatches:
    """The trainer's `batches` function over several domains, one domain per micro-batch.

    Args:
        sources: domain name -> `(step, micro, rank, world_size) -> batch` (each a pure function, as `fit` needs).
        mixture: the staged weights; every domain it names needs a source.
        seed: seeds the domain draw.
    """

    def __init__(self, sources: Mapping[str, Callable[[int, int, int, int], Any]], mixture: StagedMixture, seed: int = 0) -> None:
        missing = sorted(set(mixture.domains) - set(sources))
        if missing:
            raise ValueError(f"mixture names domains without a batch source: {missing}; sources: {sorted(sources)}")
        self.sources = dict(sources)
        self.mixture = mixture
        self.seed = seed

    def domain(self, step: int, micro: int = 0) -> str:
        """The domain of a micro-batch (the same on every rank)."""
        return self.mixture.sample(np.random.default_rng([self.seed, step, micro]), step)

    def __call__(self, step: int, micro: int = 0, rank: int = 0, world_size: int = 1) -> Any:
        return self.sources[self.domain(step, micro)](step, micro, rank, world_size)
