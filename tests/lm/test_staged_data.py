"""A staged mixture of document kinds in LM training: the kinds drawn follow the stage of the step."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.config import ConfigError, load_config
from tessera.lm.corpus import CorpusConfig
from tessera.lm.data import PackedBatches
from tessera.recipes.train_lm import LMRunConfig, data_schedule, prepare

from .conftest import PaletteTokenizer


def test_staged_schedule_switches_document_kinds(tmp_path, monkeypatch):
    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path / "cache"))
    cfg = load_config(LMRunConfig, None, [
        "data_schedule=[{start: 0.0, weights: {caption: 1.0}}, {start: 0.5, weights: {vqa: 1.0}}]", "train.steps=100",
    ])
    cfg.data = CorpusConfig(train_scenes=100, test_scenes=20, max_objects=1, glyph_train_renders=1, glyph_test_renders=1)
    tok = PaletteTokenizer(grid_size=4)
    proc, corpus = prepare(cfg, tok)
    batches = PackedBatches(corpus, proc.vocab, 128, 2, schedule=data_schedule(cfg))

    def kinds(step: int) -> set[str]:
        docs = batches.row(np.random.default_rng(step), step=step)
        texts = [proc.vocab.decode_text([t for t in d[0] if t < 2048]) for d in docs]
        return {"caption" if "caption:" in t else "vqa" if "question:" in t else "other" for t in texts}

    assert kinds(10) == {"caption"} and kinds(49) == {"caption"}
    assert kinds(50) == {"vqa"} and kinds(99) == {"vqa"}
    with pytest.raises(ConfigError, match="unknown document kinds"):
        data_schedule(load_config(LMRunConfig, None, ["data_schedule=[{start: 0.0, weights: {poems: 1.0}}]"]))
    assert data_schedule(LMRunConfig()) is None
