"""Crash-safe checkpoints: safetensors + JSON, written atomically, verified by checksum, with fallback.

Layout of a checkpoint folder `<root>/step_0000100/`:
    <name>.safetensors   one file per tensor group (model, optimizer, rng, ...)
    state.json           JSON-serialisable training state (step, optimiser hyper-parameters, data position, ...)
    manifest.json        sha256 and size of every file above; written last, so its presence marks completion

Writing: everything goes into a hidden temporary folder, every file is fsync'ed, the folder is renamed into place
(atomic on POSIX) and the parent folder fsync'ed; only then are checkpoints older than the newest `keep` removed, so
the previous good checkpoint survives until the new one is complete. A process killed at any instant leaves either
the old set or the old set plus the new complete checkpoint (and maybe a temporary folder, ignored and cleaned up).

Reading: `load_latest` walks checkpoints from newest to oldest, verifies sizes and checksums, and returns the first
intact one; each truncated or corrupt one it skips is reported with a warning naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tessera.io import atomic_write_bytes, atomic_write_json, fsync_dir
from tessera.validate import state_dict_mismatch

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_latest",
    "list_checkpoints",
    "check_model_fits",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_json",
]

_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or does not match what is being loaded."""


@dataclass
class Checkpoint:
    """A verified checkpoint loaded from disk."""

    path: Path
    step: int
    tensors: dict[str, dict[str, torch.Tensor]]
    state: dict[str, Any]


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fsync_dir(path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses non-contiguous and memory-sharing tensors; copies are cheap next to the disk write.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every completed-looking checkpoint under `root`, oldest first (not verified)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    return sorted(found)


def save_checkpoint(
    root: str | Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write a checkpoint atomically and prune older ones, keeping the newest `keep` (at least 1).

    Args:
        root: folder holding the run's checkpoints.
        step: training step the checkpoint follows (names the folder).
        tensors: tensor groups, each saved as `<group>.safetensors`.
        state: JSON-serialisable state saved as `state.json`.
        keep: number of checkpoints to keep, the new one included.

    Returns:
        The checkpoint's folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    manifest: dict[str, Any] = {"step": step, "files": {}}
    for group, group_tensors in tensors.items():
        path = tmp / f"{group}.safetensors"
        save_file(_contiguous(group_tensors), str(path))
        _fsync_file(path)
    state_path = tmp / "state.json"
    state_path.write_text(json.dumps({"step": step, **state}, indent=2, sort_keys=True))
    _fsync_file(state_path)
    for path in sorted(tmp.iterdir()):
        manifest["files"][path.name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    manifest_path = tmp / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    _fsync_file(manifest_path)
    _fsync_dir(tmp)
    if final.exists():  # a stale or corrupt checkpoint of the same step: move it aside before the swap
        trash = root / f".old-step_{step:07d}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_bytes(root / "LATEST", final.name.encode())
    for _, old in list_checkpoints(root)[: -max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step_*"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _verify_and_load(path: Path) -> Checkpoint:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path} is missing (the checkpoint was never completed)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{manifest_path} is unreadable: {exc}") from exc
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing")
        size = file.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(f"{file} is truncated or altered ({size} bytes, expected {meta['bytes']})")
        if _sha256(file) != meta["sha256"]:
            raise CheckpointError(f"{file} is corrupt (checksum mismatch)")
    tensors = {}
    for name in files:
        if name.endswith(".safetensors"):
            tensors[name[: -len(".safetensors")]] = load_file(str(path / name))
    state = json.loads((path / "state.json").read_text())
    return Checkpoint(path=path, step=int(state["step"]), tensors=tensors, state=state)


def load_latest(root: str | Path) -> Checkpoint | None:
    """The newest intact checkpoint under `root`, or None if there is none.

    Corrupt or truncated checkpoints are skipped with a warning that names the bad file.
    """
    skipped: list[Path] = []
    for _, path in reversed(list_checkpoints(root)):
        try:
            ckpt = _verify_and_load(path)
        except (CheckpointError, OSError, ValueError) as exc:
            warnings.warn(f"skipping checkpoint {path}: {exc}; falling back to the previous one", stacklevel=2)
            skipped.append(path)
            continue
        if skipped:
            warnings.warn(f"using the last good checkpoint {path} (step {ckpt.step}) instead of {skipped[0].name}", stacklevel=2)
        return ckpt
    if skipped:
        warnings.warn(f"no intact checkpoint under {root}: starting from scratch", stacklevel=2)
    return None


def check_model_fits(ckpt: Checkpoint, module: torch.nn.Module) -> None:
    """Raise CheckpointError naming the checkpoint's model file when its tensors do not fit `module` (keys, shapes).

    Resuming with a changed architecture otherwise fails deep inside `load_state_dict`, without saying which run
    folder or file is at fault.
    """
    problems = state_dict_mismatch(module.state_dict(), ckpt.tensors.get("model", {}))
    if problems:
        raise CheckpointError(
            f"{ckpt.path / 'model.safetensors'} (step {ckpt.step}) does not fit the model being trained: "
            f"{'; '.join(problems)} (resume with the run's original settings, or start a new run folder)"
        )
