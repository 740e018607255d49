"""Training end to end: a short run learns captioning beyond chance; configs are strict; the CLI trains and generates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.cli import main
from tessera.config import ConfigError, load_config
from tessera.lm.corpus import CorpusConfig
from tessera.lm.evaluate import caption_accuracy
from tessera.lm.pretrained import load_pretrained
from tessera.recipes.train_lm import LMRunConfig, build_model, prepare, train_lm
from tessera.train import OptimConfig, TrainConfig

from .conftest import PaletteTokenizer

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "lm"


@pytest.mark.integration
def test_short_training_run_learns_captioning_well_beyond_chance(tmp_path, monkeypatch):
    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path / "cache"))
    # The stand-in tokenizer with a 4x4 grid (16 codes per image) keeps this run to ~100 small steps.
    tok = PaletteTokenizer(grid_size=4)
    cfg = LMRunConfig(
        preset="debug",
        data=CorpusConfig(train_scenes=2000, test_scenes=200, max_objects=1, glyph_train_renders=1, glyph_test_renders=1,
                          mixture={"caption": 1.0}),
        seq_len=128, batch_size=16, eval_batches=1,
        train=TrainConfig(steps=100, log_every=25, eval_every=0, progress=False, device="cpu", tensorboard=False),
        optim=OptimConfig(lr=1e-2, warmup_steps=10, weight_decay=0.0),
    )
    cfg.loss.image_weight = 0.0  # captioning only needs the text targets
    train_lm(cfg, tmp_path / "run", image_tokenizer=tok)
    proc, corpus = prepare(cfg, tok)
    model, _ = load_pretrained(tmp_path / "run" / "final", image_tokenizer=tok)
    acc = caption_accuracy(model, proc, corpus, n=100)
    assert acc["attribute_accuracy"] > acc["chance"] + 0.15, acc  # observed ~0.57 vs chance ~0.31


def test_every_lm_config_loads_and_has_a_debug_twin():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_config(LMRunConfig, f)
        text = f.read_text()
        assert text.startswith("#") and f"tessera lm train --config configs/lm/{f.name}" in text, f
        if not f.stem.endswith("_debug"):
            assert (CONFIGS / f"{f.stem}_debug.yaml").is_file(), f
        with torch.device("meta"):
            build_model(cfg, _FakeVocab())


class _FakeVocab:
    size = 2560
    patch_id = 12


def test_bad_model_overrides_are_config_errors():
    with pytest.raises(ConfigError, match="model.embed_dim"):
        build_model(load_config(LMRunConfig, None, ["model={embed_dim: '128'}"]), _FakeVocab())
    with pytest.raises(ConfigError, match="unknown decoder preset"):
        build_model(load_config(LMRunConfig, None, ["preset=giant"]), _FakeVocab())
    with pytest.raises(ConfigError, match="seq_len"):
        build_model(load_config(LMRunConfig, None, ["seq_len=4096"]), _FakeVocab())


@pytest.mark.integration
def test_cli_trains_the_debug_config_and_generates(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["lm", "train", "--config", str(CONFIGS / "nano_debug.yaml"), "--run-dir", str(run)]) == 0
    final = run / "final"
    assert (final / "model.safetensors").is_file() and (final / "image_tokenizer").is_dir()
    image = tmp_path / "scene.png"
    Image.fromarray((np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)).save(image)
    capsys.readouterr()
    assert main(["lm", "generate", "--checkpoint", str(final), "--prompt", "<image>caption:", "--image", str(image),
                 "--max-new-tokens", "8", "--no-images"]) == 0
    assert main(["lm", "generate", "--checkpoint", str(final), "--prompt", "draw: a small red circle at the top left.",
                 "--draw", "--out", str(tmp_path / "out"), "--temperature", "1.0", "--top-k", "20"]) == 0
    out = capsys.readouterr().out
    assert "image saved to" in out and (tmp_path / "out" / "image_000.png").is_file()
    assert Image.open(tmp_path / "out" / "image_000.png").size == (16, 16)  # the debug config draws 16px images
    # Clear one-line errors for bad input.
    assert main(["lm", "generate", "--checkpoint", str(final), "--prompt", "hello <foo>"]) == 1
    assert "unknown special token '<foo>'" in capsys.readouterr().err
    assert main(["lm", "generate", "--checkpoint", str(final), "--prompt", "a " * 1100]) == 1
    assert "the model's context is 1024 tokens" in capsys.readouterr().err


def test_training_with_continuous_patch_input(tmp_path, monkeypatch):
    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path / "cache"))
    tok = PaletteTokenizer(grid_size=4)
    cfg = LMRunConfig(
        preset="debug", model={"patch_size": 8}, patch_share=1.0,
        data=CorpusConfig(train_scenes=100, test_scenes=40, glyph_train_renders=1, glyph_test_renders=1,
                          mixture={"caption": 1.0, "generate": 1.0}),
        seq_len=128, batch_size=4, eval_batches=1,
        train=TrainConfig(steps=3, log_every=1, eval_every=0, progress=False, device="cpu", tensorboard=False),
        optim=OptimConfig(lr=1e-2, warmup_steps=0),
    )
    proc, corpus = prepare(cfg, tok)
    from tessera.lm.data import PackedBatches
    from tessera.lm.objective import IGNORE

    batch = PackedBatches(corpus, proc.vocab, 128, 4, patch_size=8, patch_share=1.0)(0)
    placeholders = batch["input_ids"] == proc.vocab.patch_id
    assert int(placeholders.sum()) == batch["patches"].shape[0] > 0 and batch["patches"].shape[1] == 3 * 8 * 8
    assert (batch["targets"][:, :-1][placeholders[:, 1:]] == IGNORE).all()  # a placeholder is never a target
    drawn = batch["targets"] >= proc.vocab.image_offset  # images the model writes stay discrete codes
    assert drawn.any()
    train_lm(cfg, tmp_path / "run", image_tokenizer=tok)
    model, _ = load_pretrained(tmp_path / "run" / "final", image_tokenizer=tok)
    assert model.patch_proj.weight.abs().sum() > 0  # zero-initialised, then trained through the patches
