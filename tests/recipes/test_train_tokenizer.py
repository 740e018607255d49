"""The tokenizer recipe and CLI: training lowers held-out MSE, a killed run resumes to the same weights bit for bit,
configs are strict, and the encode/decode verbs handle real and broken files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tessera.cli import main
from tessera.config import ConfigError
from tessera.recipes.tokenizer_data import skimage_crops
from tessera.recipes.train_tokenizer import _load_data, build_task, load_train_config, train
from tessera.tokenizer import ImageTokenizer, TokenizerConfig
from tessera.tokenizer.metrics import evaluate_tokenizer

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "tokenizer"
DEBUG = CONFIGS / "vqvae_f4_32px_debug.yaml"


def test_every_tokenizer_config_loads_and_has_a_debug_twin():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_train_config(f)
        assert isinstance(cfg.model, TokenizerConfig)
        assert f.read_text().startswith("#") and "tessera tokenizer train --config" in f.read_text(), f
        if not f.stem.endswith("_debug"):
            assert (CONFIGS / f"{f.stem}_debug.yaml").is_file(), f


def test_wrong_config_key_is_rejected(tmp_path, capsys):
    with pytest.raises(ConfigError, match="model.codebook_sise"):
        load_train_config(DEBUG, ["model.codebook_sise=64"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: vqvae-debug\ntrain:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="train.stepz"):
        load_train_config(bad)
    assert main(["tokenizer", "train", "--config", str(bad), "--run-dir", str(tmp_path / "r")]) == 1
    assert "train.stepz" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="preset"):
        load_train_config(DEBUG, ["preset=vqvae-nope"])


@pytest.mark.integration
def test_short_training_run_lowers_validation_mse(tmp_path):
    cfg = load_train_config(DEBUG, ["train.checkpoint_every=0", "eval.grid_images=4"])
    data = _load_data(cfg)
    before = evaluate_tokenizer(build_task(cfg, *data).module.tokenizer, data[1].float() / 255)["mse"]
    result, metrics = train(cfg, tmp_path / "run", data=data)
    assert result.step == cfg.train.steps
    assert metrics["mse"] < 0.6 * before, (before, metrics["mse"])
    assert (tmp_path / "run" / "reconstructions.png").is_file() and (tmp_path / "run" / "eval.json").is_file()
    loaded = ImageTokenizer.from_pretrained(tmp_path / "run")  # a run folder resolves to its final/ tokenizer
    assert tuple(loaded.encode(data[1][:2].float() / 255).shape) == (2, *cfg.model.grid_size)


@pytest.mark.integration
def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    overrides = ["train.steps=24", "train.checkpoint_every=5", "train.eval_every=0", "eval.grid_images=0"]
    cfg = load_train_config(DEBUG, overrides)
    train(cfg, tmp_path / "full")

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TESSERA_RUNS": str(tmp_path)}
    cmd = [sys.executable, "-m", "tessera", "tokenizer", "train", "--config", str(DEBUG), "--run-dir", str(run), *overrides]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while not (run / "checkpoints" / "step_0000010").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final").exists(), "the run finished before it could be killed"

    assert main(["tokenizer", "train", "--config", str(DEBUG), "--run-dir", str(run), "--resume", *overrides]) == 0
    full = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    resumed = load_file(str(run / "final" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def _write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    crops = skimage_crops(n, 16, "val")
    paths = []
    for i, c in enumerate(crops):
        p = folder / f"img{i}.png"
        Image.fromarray(c.permute(1, 2, 0).numpy()).save(p)
        paths.append(p)
    return paths


def test_encode_decode_cli_and_broken_files(tmp_path, capsys):
    model = ImageTokenizer.from_name("vqvae-debug").save_pretrained(tmp_path / "tok")
    images = _write_images(tmp_path / "imgs", 3)
    out = tmp_path / "tokens.npy"
    assert main(["tokenizer", "encode", "--model", str(model), str(tmp_path / "imgs"), "--out", str(out)]) == 0
    tokens = np.load(out)
    assert tokens.shape == (3, 8, 8) and tokens.dtype == np.int64
    assert main(["tokenizer", "decode", "--model", str(model), str(out), "--out", str(tmp_path / "dec")]) == 0
    assert len(list((tmp_path / "dec").glob("*.png"))) == 3

    truncated = tmp_path / "broken" / "truncated.png"
    truncated.parent.mkdir()
    truncated.write_bytes(images[0].read_bytes()[:60])
    notimage = tmp_path / "broken" / "notes.jpg"
    notimage.write_text("this is not a picture")
    for bad in (truncated, notimage, tmp_path / "missing.png"):
        capsys.readouterr()
        assert main(["tokenizer", "encode", "--model", str(model), str(bad), "--out", str(out)]) == 1
        assert bad.name in capsys.readouterr().err
    bad_tokens = tmp_path / "bad.npy"
    bad_tokens.write_bytes(b"garbage")
    assert main(["tokenizer", "decode", "--model", str(model), str(bad_tokens), "--out", str(tmp_path / "d2")]) == 1
    assert "bad.npy" in capsys.readouterr().err
    np.save(tmp_path / "range.npy", np.full((1, 8, 8), 999))
    assert main(["tokenizer", "decode", "--model", str(model), str(tmp_path / "range.npy"), "--out", str(tmp_path / "d3")]) == 1
    assert "range.npy" in capsys.readouterr().err
    assert main(["tokenizer", "eval", "--model", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err
