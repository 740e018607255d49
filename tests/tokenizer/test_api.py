"""The public tokenizer API: shapes and dtypes, PIL input, save/load round trip, clear errors, presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.config import ConfigError
from tessera.tokenizer import PRESETS, ImageTokenizer, TokenizerConfig, VideoTokenizer, load_tokenizer

IMAGE_DEBUG = ["vqvae-debug", "vqgan-debug", "vit-vqgan-debug"]


@pytest.mark.parametrize("name", IMAGE_DEBUG)
def test_encode_decode_shapes_and_dtypes(name):
    tok = ImageTokenizer.from_name(name)
    cfg = tok.config
    x = torch.rand(3, 3, cfg.image_size, cfg.image_size)
    tokens = tok.encode(x)
    assert tokens.dtype == torch.int64 and tuple(tokens.shape) == (3, *cfg.grid_size)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < cfg.codebook_size
    images = tok.decode(tokens)
    assert images.dtype == torch.float32 and tuple(images.shape) == (3, 3, cfg.image_size, cfg.image_size)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    torch.testing.assert_close(tok.reconstruct(x), images)
    assert tuple(tok.encode(x[0]).shape) == (1, *cfg.grid_size)  # an unbatched image is a batch of one
    assert cfg.grid_size == (cfg.image_size // cfg.downsample_factor,) * 2


def test_lm_preset_is_32px_to_8x8():
    cfg = TokenizerConfig.from_name("vqvae-f4-k512-32px")
    assert (cfg.image_size, cfg.grid_size, cfg.downsample_factor, cfg.codebook_size) == (32, (8, 8), 4, 512)


def test_video_encode_decode_shapes():
    tok = VideoTokenizer.from_name("video-debug")
    cfg = tok.config
    clips = torch.rand(2, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    tokens = tok.encode(clips)
    assert tokens.dtype == torch.int64 and tuple(tokens.shape) == (2, cfg.num_frames, *cfg.grid_size)
    out = tok.decode(tokens)
    assert tuple(out.shape) == tuple(clips.shape) and 0.0 <= float(out.min()) <= float(out.max()) <= 1.0
    per_frame = VideoTokenizer.from_name("video-debug", temporal_mixing="none")
    assert tuple(per_frame.encode(clips).shape) == tuple(tokens.shape)


def test_encode_does_not_move_the_codebook_in_train_mode():
    tok = ImageTokenizer.from_name("vqvae-debug").train()
    before = tok.quantizer.codebook.weight.clone()
    tok.encode(torch.rand(4, 3, 16, 16))
    assert torch.equal(before, tok.quantizer.codebook.weight) and tok.training


def test_pil_images_are_accepted_and_resized():
    tok = ImageTokenizer.from_name("vqvae-debug")
    arr = (np.random.default_rng(0).random((40, 30, 3)) * 255).astype(np.uint8)
    pil = Image.fromarray(arr)
    assert tuple(tok.encode(pil).shape) == (1, 8, 8)
    assert tuple(tok.encode([pil, pil.convert("L")]).shape) == (2, 8, 8)


@pytest.mark.parametrize("name", ["vqvae-debug", "vit-vqgan-debug", "video-debug"])
def test_save_and_load_give_identical_tokens(tmp_path, name):
    cls = VideoTokenizer if name.startswith("video") else ImageTokenizer
    tok = cls.from_name(name)
    # Move the EMA codebook off its initialisation so the buffers matter.
    cfg = tok.config
    shape = (4, cfg.num_frames, 3, cfg.image_size, cfg.image_size) if cls is VideoTokenizer else (4, 3, cfg.image_size, cfg.image_size)
    tok.train()(torch.rand(shape))
    folder = tok.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["config"]["codebook_size"] == cfg.codebook_size and meta["grid_size"] == list(cfg.grid_size)
    loaded = cls.from_pretrained(folder)
    x = torch.rand(shape)
    assert torch.equal(tok.encode(x), loaded.encode(x))
    assert torch.equal(tok.decode(tok.encode(x)), loaded.decode(tok.encode(x)))
    assert type(load_tokenizer(folder)) is cls


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ImageTokenizer.from_pretrained(tmp_path)
    folder = ImageTokenizer.from_name("vqvae-debug").save_pretrained(tmp_path / "t")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors"):
        ImageTokenizer.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        ImageTokenizer.from_pretrained(folder)
    video = VideoTokenizer.from_name("video-debug").save_pretrained(tmp_path / "v")
    with pytest.raises(ValueError, match="VideoTokenizer"):
        ImageTokenizer.from_pretrained(video)


def test_bad_inputs_are_rejected_clearly():
    tok = ImageTokenizer.from_name("vqvae-debug")
    with pytest.raises(TypeError, match="255"):
        tok.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tok.encode(torch.full((1, 3, 16, 16), 2.0))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        tok.encode(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="token ids"):
        tok.decode(torch.full((1, 8, 8), 32))
    with pytest.raises(TypeError, match="integer"):
        tok.decode(torch.zeros(1, 8, 8))
    vit = ImageTokenizer.from_name("vit-vqgan-debug")
    with pytest.raises(ValueError, match="16x16"):
        vit.encode(torch.rand(1, 3, 32, 32))


def test_wrong_config_keys_and_values_are_rejected():
    with pytest.raises(ConfigError, match="codebook_sise"):
        TokenizerConfig.from_name("vqvae-debug", codebook_sise=64)
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        TokenizerConfig.from_name("vqvae-nope")
    with pytest.raises(ValueError, match="divisible"):
        TokenizerConfig(image_size=30, channel_mult=(1, 2, 2))


def test_every_preset_builds_its_config():
    for name in PRESETS:
        cfg = TokenizerConfig.from_name(name)
        assert cfg.image_size % cfg.downsample_factor == 0, name
