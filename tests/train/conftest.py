"""Fixtures of the real-trainer tests: one environment (and cache) shared by the distributed and kill -9 tests."""

from __future__ import annotations

import os

import pytest
import torch

from tests.train.trainer_worker import ROOT


@pytest.fixture(scope="session")
def trainer_env(tmp_path_factory) -> dict[str, str]:
    """Subprocess environment: this checkout, one thread per rank, a private cache and a tiny LM image tokenizer."""
    from tessera.tokenizer import ImageTokenizer, TokenizerConfig

    root = tmp_path_factory.mktemp("trainers")
    torch.manual_seed(0)
    tok_dir = root / "image_tokenizer"
    ImageTokenizer(TokenizerConfig.from_name("vqvae-debug")).save_pretrained(tok_dir)  # untrained: the LM only needs ids
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TESSERA_CACHE": str(root / "cache"),
            "TESSERA_TEST_TOKENIZER": str(tok_dir)}
