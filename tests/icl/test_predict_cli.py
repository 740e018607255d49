"""`tessera icl predict` on small folder trees: outputs, odd-but-valid images, and clear errors for bad inputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.cli import main
from tessera.icl import CAML, CAMLConfig


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small random CAML over the random `tessera-resnet-debug` extractor (32-d): wiring, not accuracy."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "caml"
    CAML(CAMLConfig.from_name("caml-debug")).save_pretrained(folder, extractor="tessera-resnet-debug")
    return folder


def _tree(root, classes=("cat", "dog"), n=2, size=(20, 16)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / c / f"{c}{i}.png")
    return root


def _odd_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "one_pixel.png")
    Image.fromarray(np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)).save(folder / "gray16.png")
    pal = Image.new("P", (24, 24), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(folder / "palette_transparent.png", transparency=0)
    Image.new("CMYK", (30, 20), (0, 128, 128, 0)).save(folder / "cmyk.jpg")
    Image.new("LA", (10, 10), (128, 100)).save(folder / "gray_alpha.png")
    return folder


def test_predict_prints_and_saves_json_and_csv(tmp_path, checkpoint, capsys):
    support = _tree(tmp_path / "support")
    query = _odd_images(tmp_path / "query")
    out = tmp_path / "pred.json"
    assert main(["icl", "predict", "--support", str(support), "--query", str(query), "--checkpoint", str(checkpoint), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["classes"] == ["cat", "dog"] and len(doc["predictions"]) == 5
    for row in doc["predictions"]:
        assert row["label"] in ("cat", "dog") and row["file"] in printed
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    out_csv = tmp_path / "pred.csv"
    files = [str(p) for p in sorted(query.iterdir())[:2]]
    assert main(["icl", "predict", "--support", str(support), "--query", *files, "--checkpoint", str(checkpoint), "--format", "csv", "--output", str(out_csv)]) == 0
    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ["file", "label", "p(cat)", "p(dog)"] and len(rows) == 3


def test_labelled_query_folders_report_accuracy(tmp_path, checkpoint, capsys):
    support = _tree(tmp_path / "support")
    query = _tree(tmp_path / "query", n=1)
    assert main(["icl", "predict", "--support", str(support), "--query", str(query), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "p.json")]) == 0
    assert "accuracy on labelled queries" in capsys.readouterr().out
    assert json.loads((tmp_path / "p.json").read_text())["accuracy"] is not None


def _run_err(args, capsys):
    assert main(args) == 1
    return capsys.readouterr().err


def test_empty_class_is_named(tmp_path, checkpoint, capsys):
    support = _tree(tmp_path / "support")
    (support / "bird").mkdir()
    (support / "bird" / "notes.txt").write_text("no images here")
    err = _run_err(["icl", "predict", "--support", str(support), "--query", str(support / "cat"), "--checkpoint", str(checkpoint)], capsys)
    assert "bird" in err and "no images" in err


def test_too_many_classes(tmp_path, checkpoint, capsys):
    support = _tree(tmp_path / "support", classes=[f"c{i}" for i in range(6)], n=1)
    err = _run_err(["icl", "predict", "--support", str(support), "--query", str(support / "c0"), "--checkpoint", str(checkpoint)], capsys)
    assert "6 classes" in err and "at most 5" in err


@pytest.mark.parametrize("kind", ["not_an_image", "truncated", "bomb"])
def test_bad_image_files_are_named(tmp_path, checkpoint, capsys, kind):
    support = _tree(tmp_path / "support")
    bad = tmp_path / "q" / ("broken.png" if kind != "bomb" else "huge.png")
    bad.parent.mkdir()
    if kind == "not_an_image":
        bad.write_text("hello")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:300])
    else:
        Image.new("1", (9000, 9000)).save(bad)  # 81 Mpx, a few kB on disk
    err = _run_err(["icl", "predict", "--support", str(support), "--query", str(bad), "--checkpoint", str(checkpoint)], capsys)
    assert bad.name in err
    if kind == "bomb":
        assert "pixels" in err


def test_mismatched_checkpoint(tmp_path, capsys):
    folder = tmp_path / "wrong"
    CAML(CAMLConfig.from_name("caml-debug", feature_dim=48)).save_pretrained(folder, extractor="tessera-resnet-debug")
    support = _tree(tmp_path / "support")
    err = _run_err(["icl", "predict", "--support", str(support), "--query", str(support / "cat"), "--checkpoint", str(folder)], capsys)
    assert "config.json" in err and "48" in err
    err = _run_err(["icl", "predict", "--support", str(support), "--query", str(support / "cat"), "--checkpoint", str(tmp_path / "nowhere")], capsys)
    assert "nowhere" in err


def test_missing_support_folder(tmp_path, checkpoint, capsys):
    err = _run_err(["icl", "predict", "--support", str(tmp_path / "none"), "--query", str(tmp_path), "--checkpoint", str(checkpoint)], capsys)
    assert "none" in err
