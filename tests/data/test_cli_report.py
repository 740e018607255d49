"""`tessera data build|info|report` end to end on a tiny config, and the generated docs/data.md.

Axis legend: none.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tessera.cli import main
from tessera.data import build_image_dataset, build_video_dataset, render_report
from tessera.data.sources import IMAGE_SOURCES

pytestmark = pytest.mark.integration

TINY = ["images.train_crops=200", "images.val_crops=40", "images.max_short_side=128", "video.train_clips=12",
        "video.val_clips=4"]


def test_cli_build_info_report(tmp_path, fake_sources, capsys):
    root = tmp_path / "data"
    args = ["--root", str(root), "--sources", str(fake_sources), "--debug", *TINY]
    with pytest.warns(UserWarning, match="not installed"):  # the fake folder lacks most registry sources
        assert main(["data", "build", *args]) == 0
    out = capsys.readouterr().out
    assert "images (built)" in out and "train_32.npy" in out and "video 32px x 8 frames (built)" in out

    (images_dir,) = root.glob("images-v1-*")
    manifest = json.loads((images_dir / "manifest.json").read_text())
    assert np.load(images_dir / "train_32.npy", mmap_mode="r").shape == (200, 32, 32, 3)
    assert {s["id"] for s in manifest["sources"]} == {
        "skimage/astronaut", "skimage/coffee", "skimage/chelsea", "matplotlib/grace_hopper", "mate/Aqua",
        "plasma/Path"}
    (clips,) = root.glob("video-v1-*/r32_t8/train.npy")
    assert np.load(clips, mmap_mode="r").shape == (12, 8, 32, 32, 3)

    # A second build finds everything cached; --only limits what is touched.
    assert main(["data", "build", "--only", "images", *args]) == 0
    out = capsys.readouterr().out
    assert "images (cached)" in out and "video" not in out

    assert main(["data", "info", *args]) == 0
    out = capsys.readouterr().out
    assert f"sources installed: 6 of {len(IMAGE_SOURCES)}" in out and "200 x 32x32" in out and "12 clips" in out

    report = tmp_path / "docs" / "data.md"
    assert main(["data", "report", "--out", str(report), *args]) == 0
    text = report.read_text()
    assert "| train | 32x32 | 200 |" in text
    assert manifest["files"]["train_32"]["sha256"][:16] in text


def test_cli_reports_bad_overrides_clearly(tmp_path, capsys):
    assert main(["data", "build", "--root", str(tmp_path), "--debug", "images.nope=1"]) == 1
    assert "images.nope" in capsys.readouterr().err


def test_report_lists_every_source_with_licence_and_counts(tmp_path, fake_sources, tiny_images, tiny_video):
    images = build_image_dataset(tiny_images, root=tmp_path, source_dirs=[fake_sources], progress=False)
    videos = build_video_dataset(tiny_video, image_config=tiny_images, root=tmp_path, source_dirs=[fake_sources],
                                 progress=False)
    text = render_report(images, videos)
    for src in IMAGE_SOURCES:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{src.id}` |"))
        assert src.licence in row and src.package in row
        if src.id in {s["id"] for s in images.manifest["sources"]}:
            rec = next(s for s in images.manifest["sources"] if s["id"] == src.id)
            assert f"16: {rec['crops']['16']['accepted']} / {rec['crops']['16']['rejected_flat']}" in row
        else:
            assert "not installed" in row
    assert "| val | 16x16 | 60 | 2 |" in text
    assert "| `video-v1-" in text and "| train | 32x32 | 8 | 24 |" in text
