"""User-data loaders on temp folder trees: image folders (any depth), CIFAR pickles built in-test, ImageNet, frames.

Axis legend: N images, T frames, C channels, H W height and width.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.data import CIFARDataset, ImageFolderDataset, ImageLoadError, VideoFramesDataset, imagenet_dataset
from tessera.data.folders import find_images, natural_key


def _img(path: Path, value: int, size=(20, 10), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path, format=fmt)
    return path


def test_natural_key_orders_numbers_by_value():
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame2b.png", "a.png"]
    assert sorted(names, key=natural_key) == ["a.png", "Frame1.png", "frame2.png", "frame2b.png", "frame10.png"]


def test_image_folder_any_depth_classes_from_first_level(tmp_path):
    _img(tmp_path / "cat" / "a.png", 10)
    _img(tmp_path / "cat" / "sub" / "deeper" / "b.jpg", 20)
    _img(tmp_path / "dog" / "c10.PNG", 30)
    _img(tmp_path / "dog" / "c2.bmp", 40)
    _img(tmp_path / "top.png", 50)
    _img(tmp_path / ".hidden" / "x.png", 60)
    (tmp_path / "cat" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork: skipped
    (tmp_path / "dog" / "notes.txt").write_text("not an image")

    ds = ImageFolderDataset(tmp_path, resolution=8)
    rel = [p.relative_to(tmp_path).as_posix() for p, _ in ds.samples]
    assert rel == ["cat/a.png", "cat/sub/deeper/b.jpg", "dog/c2.bmp", "dog/c10.PNG", "top.png"]
    assert ds.classes == ["cat", "dog"]
    assert ds.targets == [0, 0, 1, 1, -1]
    x, label = ds[2]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and label == 1
    assert torch.allclose(x, torch.full_like(x, 40 / 255), atol=1 / 255)
    assert ImageFolderDataset(tmp_path, 8, return_labels=False)[4].shape == (3, 8, 8)


def test_image_folder_bad_file_error_names_it(tmp_path):
    _img(tmp_path / "ok.png", 10)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = ImageFolderDataset(tmp_path, resolution=8)
    with pytest.raises(ImageLoadError, match="broken.png"):
        ds[0]
    bad = ds.check()
    assert [p.name for p, _ in bad] == ["broken.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        find_images(tmp_path / "missing")


def _cifar_batch(n: int, first_label: int, key_labels: str, rng) -> dict:
    # The official files are Python 2 pickles with byte-string keys; mimic that.
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    data[0, :1024] = 10  # image 0: red plane 10, green 20, blue 30
    data[0, 1024:2048] = 20
    data[0, 2048:] = 30
    data[0, 1 * 32 + 2] = 255  # image 0: red channel at row 1, column 2
    return {b"data": data, key_labels.encode(): [first_label + i for i in range(n)], b"batch_label": b"x"}


def _write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar10_layout_built_in_test(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        _write_pickle(folder / f"data_batch_{i}", _cifar_batch(3, i - 1, "labels", rng))
    _write_pickle(folder / "test_batch", _cifar_batch(2, 7, "labels", rng))
    _write_pickle(folder / "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})

    train = CIFARDataset(tmp_path, "cifar10", "train")
    assert len(train) == 15 and train.classes[3] == "class3"
    assert train.targets[:6] == [0, 1, 2, 1, 2, 3]
    x, label = train[0]
    assert x.shape == (3, 32, 32) and label == 0
    assert x[0, 1, 2] == 1.0  # (N, 3072) was reshaped channel-first, then moved to (H, W, C) correctly
    assert torch.allclose(x[:, 5, 5], torch.tensor([10, 20, 30]) / 255)
    test = CIFARDataset(folder, "cifar10", "test", resolution=64)  # the batches folder itself also works
    assert len(test) == 2 and test[1][0].shape == (3, 64, 64) and test[1][1] == 8


def test_cifar100_fine_and_coarse_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    batch = _cifar_batch(4, 50, "fine_labels", rng)
    batch[b"coarse_labels"] = [1, 2, 3, 4]
    _write_pickle(folder / "train", batch)
    _write_pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                    b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    fine = CIFARDataset(tmp_path, "cifar100", "train")
    coarse = CIFARDataset(tmp_path, "cifar100", "train", label_type="coarse")
    assert fine.targets == [50, 51, 52, 53] and fine.classes[50] == "f50"
    assert coarse.targets == [1, 2, 3, 4] and coarse.classes[4] == "c4"
    with pytest.raises(FileNotFoundError, match="test"):
        CIFARDataset(tmp_path, "cifar100", "test")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_cifar_reader_refuses_code_in_pickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    _write_pickle(folder / "test_batch", {b"data": _Evil(), b"labels": [0]})
    with pytest.raises(ValueError, match="test_batch.*refusing to load"):
        CIFARDataset(tmp_path, "cifar10", "test")
    assert not (tmp_path / "pwned").exists()


def test_imagenet_layout_and_class_names(tmp_path):
    for split in ("train", "val"):
        _img(tmp_path / split / "n01440764" / "a.JPEG", 10, fmt="JPEG")
        _img(tmp_path / split / "n01443537" / "b.JPEG", 90, fmt="JPEG")
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius\n")
    ds = imagenet_dataset(tmp_path, "val", resolution=16)
    assert ds.classes == ["n01440764", "n01443537"] and ds.class_names == ["tench", "goldfish"]
    assert ds[1][1] == 1 and ds[1][0].shape == (3, 16, 16)
    flat = tmp_path / "flatroot"
    _img(flat / "val" / "ILSVRC2012_val_00000001.JPEG", 10, fmt="JPEG")
    with pytest.raises(ValueError, match="no class folders"):
        imagenet_dataset(flat, "val")
    with pytest.raises(FileNotFoundError, match="train"):
        imagenet_dataset(flat, "train")


def _clip(folder: Path, n: int) -> None:
    for k in range(1, n + 1):  # frame k has gray value 10 * k; names are not zero-padded on purpose
        _img(folder / f"frame{k}.png", 10 * k, size=(12, 12))


def test_video_frames_natural_order_uniform_sampling_and_short_clips(tmp_path):
    _clip(tmp_path / "jump" / "clip1", 12)
    _clip(tmp_path / "jump" / "clip2", 3)
    _clip(tmp_path / "walk" / "deep" / "clip3", 4)

    ds = VideoFramesDataset(tmp_path, num_frames=4, resolution=8)  # clip2 is too short: skipped
    assert [c[0].name for c in ds.clips] == ["clip1", "clip3"]
    assert ds.classes == ["jump", "walk"] and [c[2] for c in ds.clips] == [0, 1]
    x, label = ds[0]
    assert x.shape == (4, 3, 8, 8) and label == 0
    values = (x[:, 0, 4, 4] * 255).round().tolist()
    assert values == [10, 50, 80, 120]  # frames 1, 5, 8, 12 of 12: evenly spaced over the natural order

    first = VideoFramesDataset(tmp_path, num_frames=4, resolution=8, sampling="first")
    assert (first[0][0][:, 0, 4, 4] * 255).round().tolist() == [10, 20, 30, 40]

    padded = VideoFramesDataset(tmp_path, num_frames=4, resolution=8, short_clips="repeat")
    assert len(padded) == 3
    assert (padded[1][0][:, 0, 4, 4] * 255).round().tolist() == [10, 20, 20, 30]

    with pytest.raises(ValueError, match="clip2"):
        VideoFramesDataset(tmp_path, num_frames=4, resolution=8, short_clips="error")
