"""Cache folders for the embedded data sets: naming by config, atomic publication, manifests.

Axis legend: N items (crops or clips); arrays are stored as written by their builder.

A data set is built into a private `.partial-*` folder next to its final place and renamed into place once its
manifest is written, so a reader never sees half a data set: either the folder with `manifest.json` exists and is
complete, or it does not exist. Two processes building at once (for example DDP ranks on first use) each build
privately; the first to publish wins and the other discards its copy (both copies are byte-identical anyway).

Folders are versioned (`images-v1`) and a non-default config gets its own folder (`images-v1-<hash>`), so a debug build
never overwrites the default set and a changed default is never mistaken for the cached one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tessera.config import to_dict
from tessera.paths import cache_dir

__all__ = ["DatasetBuild", "config_hash", "dataset_dir", "data_root", "array_sha256", "save_array", "write_json",
           "read_manifest", "publish", "new_partial_dir", "MANIFEST"]

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DatasetBuild:
    """Where a built data set lives and what its manifest says.

    Attributes:
        path: the data set's folder (holds `manifest.json` and the `.npy` / `.json` files it lists).
        manifest: the parsed manifest.
        built: True if this call built it, False if it came from the cache.
    """

    path: Path
    manifest: dict[str, Any]
    built: bool

    def file(self, name: str) -> Path:
        """Absolute path of a file of the data set, by its name in the manifest."""
        return self.path / name


def data_root(root: str | os.PathLike[str] | None) -> Path:
    """`root` if given, else `cache_dir("data")` (`$TESSERA_CACHE/data`)."""
    if root is None:
        return cache_dir("data")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_hash(*configs: Any) -> str:
    """Short stable hash of config dataclasses (their YAML-ready dicts, keys sorted)."""
    blob = json.dumps([to_dict(c) for c in configs], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def dataset_dir(root: Path, base: str, *configs: Any) -> Path:
    """`root/base` when every config is its class's default, `root/base-<hash of all>` otherwise."""
    if all(dataclasses.asdict(c) == dataclasses.asdict(type(c)()) for c in configs):
        return root / base
    return root / f"{base}-{config_hash(*configs)}"


def array_sha256(arr: np.ndarray) -> str:
    """Hex SHA-256 of an array's bytes (C order): the content hash of a stored array."""
    return hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest()


def save_array(folder: Path, name: str, arr: np.ndarray) -> dict[str, Any]:
    """Save `arr` as `folder/name` (.npy, memory-mappable, never pickled) and describe it for the manifest."""
    np.save(folder / name, np.ascontiguousarray(arr), allow_pickle=False)
    return {"file": name, "shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": array_sha256(arr)}


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when the folder is absent or incomplete."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def new_partial_dir(final: Path) -> Path:
    """A private folder next to `final` to build into."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))


def publish(partial: Path, final: Path, *, force: bool) -> bool:
    """Move a finished `partial` folder to `final`.

    Returns:
        True if `partial` was published; False if `final` already existed and `force` is False (another process
        finished first), in which case `partial` is deleted.
    """
    if final.exists() and read_manifest(final) is not None and not force:
        shutil.rmtree(partial, ignore_errors=True)
        return False
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    partial.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # readers holding memmaps keep their inodes until they close them
    return True
