"""Checkpoints are atomic, verified and fall back to the last good one when the newest is damaged."""

from __future__ import annotations

import os

import pytest
import torch

from tessera.train.checkpoint import list_checkpoints, load_latest, save_checkpoint


def _save(root, step, value):
    return save_checkpoint(root, step, {"model": {"w": torch.full((4, 4), float(value))}}, {"note": value}, keep=2)


def test_round_trip_and_pruning(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step, step)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    ckpt = load_latest(tmp_path)
    assert ckpt.step == 3 and ckpt.state["note"] == 3 and torch.equal(ckpt.tensors["model"]["w"], torch.full((4, 4), 3.0))
    assert (tmp_path / "LATEST").read_text() == "step_0000003"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_manifest", "delete_file"])
def test_damaged_newest_falls_back_with_warning_naming_file(tmp_path, damage):
    _save(tmp_path, 1, 1)
    newest = _save(tmp_path, 2, 2)
    target = newest / "model.safetensors"
    if damage == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete_manifest":
        (newest / "manifest.json").unlink()
    else:
        target.unlink()
    with pytest.warns(UserWarning, match="step_0000002"):
        ckpt = load_latest(tmp_path)
    assert ckpt.step == 1


def test_interrupted_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1, 1)
    import tessera.train.checkpoint as mod

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mod, "_sha256", boom)  # dies after tensors are written, before the manifest
    with pytest.raises(OSError):
        _save(tmp_path, 2, 2)
    monkeypatch.undo()
    assert load_latest(tmp_path).step == 1
    _save(tmp_path, 3, 3)  # the stale temporary folder is cleaned up by the next save
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_no_checkpoint_returns_none(tmp_path):
    assert load_latest(tmp_path / "nothing") is None
    os.makedirs(tmp_path / "step_0000005")
    with pytest.warns(UserWarning, match="manifest.json"):
        assert load_latest(tmp_path) is None
