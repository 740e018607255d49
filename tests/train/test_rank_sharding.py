"""The real trainers' batches split across ranks without overlap: concatenating every rank's share of a step gives
exactly the one-process batch (CAML episodes, tokenizer images with their random flips)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tessera.icl.episodes import class_index
from tessera.recipes.train_icl import EpisodeSection, episode_batch
from tessera.recipes.train_tokenizer import build_task, load_train_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("world", [2, 4])
def test_caml_episodes_split_across_ranks(world):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 12)
    es = SimpleNamespace(features=rng.standard_normal((len(labels), 8)).astype(np.float32))
    sets = [(es, class_index(labels))]
    ep = EpisodeSection(episodes_per_step=8)
    for step in range(5):
        whole = episode_batch(sets, ep, 5, seed=3, step=step, micro=0)
        parts = [episode_batch(sets, ep, 5, seed=3, step=step, micro=0, rank=r, world_size=world) for r in range(world)]
        for i in range(4):
            assert torch.equal(torch.cat([p[i] for p in parts]), whole[i])
    with pytest.raises(ValueError, match="episodes_per_step=8 is not divisible by the world size 3"):
        episode_batch(sets, ep, 5, seed=3, step=0, micro=0, rank=0, world_size=3)


def test_tokenizer_batches_and_flips_split_across_ranks():
    cfg = load_train_config(ROOT / "configs" / "tokenizer" / "vqvae_f4_32px_debug.yaml", ["data.hflip=true", "data.batch_size=8"])
    items = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    task = build_task(cfg, items, items[:8])
    flipped = 0
    for step in range(4):
        whole = task.batches(step, 0, 0, 1)
        parts = torch.cat([task.batches(step, 0, r, 2) for r in range(2)])
        assert torch.equal(parts, whole)
        flipped += sum(not any(torch.equal(x, items[j].float() / 255) for j in range(len(items))) for x in whole)
    assert flipped > 0  # the flips are really drawn
