"""Paper-benchmark loaders on small fabricated directory trees in each standard layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tessera.icl.benchmarks import PAPER_BENCHMARKS, load_benchmark


def _img(path, color=(10, 20, 30), size=(12, 9)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.mark.parametrize("name", sorted(PAPER_BENCHMARKS))
def test_caml_archive_layout(tmp_path, name):
    rel = PAPER_BENCHMARKS[name][0].format(split="test")
    for c in ("b_class", "a_class"):
        for i in range(3):
            _img(tmp_path / rel / c / f"{i}.jpg", color=(i * 40, 0, 0))
    ds = load_benchmark(name, tmp_path)
    assert ds.class_names == ["a_class", "b_class"] and len(ds) == 6
    x = ds.loader(8)(np.arange(3))
    assert x.shape == (3, 3, 8, 8) and float(x.max()) <= 1.0


def test_mini_imagenet_ravi_csv_layout(tmp_path):
    root = tmp_path / "mini-ImageNet"
    rows = ["filename,label"] + [f"n01_{i}.jpg,n01" for i in range(2)] + [f"n02_{i}.jpg,n02" for i in range(2)]
    (root / "images").mkdir(parents=True)
    (root / "test.csv").write_text("\n".join(rows) + "\n")
    for r in rows[1:]:
        _img(root / "images" / r.split(",")[0])
    ds = load_benchmark("mini_imagenet", tmp_path)
    assert ds.class_names == ["n01", "n02"] and ds.labels.tolist() == [0, 0, 1, 1]


def test_cub_raw_layout_uses_the_closer_look_split(tmp_path):
    for i in range(8):
        _img(tmp_path / "CUB_200_2011" / "images" / f"{i + 1:03d}.Bird" / "x.jpg")
    test = load_benchmark("cub", tmp_path, "test")
    assert test.class_names == ["004.Bird", "008.Bird"]  # classes 3 and 7 (i % 4 == 3)
    train = load_benchmark("cub", tmp_path, "train")
    assert len(train.class_names) == 4 and not set(train.class_names) & set(test.class_names)


def test_chestx_bscd_layout(tmp_path):
    base = tmp_path / "ChestX"
    rows = ["Image Index,Finding Labels", "a.png,Mass", "b.png,Mass|Nodule", "c.png,Nodule", "d.png,No Finding"]
    base.mkdir()
    (base / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    for f in "abcd":
        _img(base / "images" / f"{f}.png")
    ds = load_benchmark("chestx", tmp_path)
    assert ds.class_names == ["Mass", "Nodule"] and len(ds) == 2  # multi-label and "No Finding" rows dropped


def test_missing_benchmark_lists_paths_tried(tmp_path):
    with pytest.raises(FileNotFoundError, match="Aircraft_fewshot/test"):
        load_benchmark("aircraft", tmp_path)
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("omniglot", tmp_path)
