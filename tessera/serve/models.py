"""Model folders found under the runs folder, and a small cache of loaded models.

A folder is recognised by its `config.json`: `"format": "tessera-tokenizer"` (an image tokenizer), `"kind": "caml"`
(a CAML few-shot classifier) or `"format": "tessera.lm.Decoder"` next to `processor.json` (a multimodal decoder).
Requests name a model by its id, the folder's path relative to the runs folder; only ids found by the scan are
accepted, so a request can never make the app read an arbitrary path.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessera.serve.errors import ServeError

__all__ = ["ModelEntry", "ModelRegistry", "KINDS"]

KINDS = ("tokenizer", "caml", "lm")
_SKIP_DIRS = {"checkpoints", "__pycache__", "tensorboard", "serve"}


@dataclass(frozen=True)
class ModelEntry:
    """One model folder: kind, id (path relative to the runs folder), absolute path and modification time."""

    kind: str
    id: str
    path: Path
    mtime: float

    def to_json(self) -> dict:
        return {"kind": self.kind, "id": self.id, "modified": self.mtime}


def _kind_of(folder: Path) -> str | None:
    cfg = folder / "config.json"
    if not (cfg.is_file() and (folder / "model.safetensors").is_file()):
        return None
    try:
        doc = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    if doc.get("format") == "tessera-tokenizer" and doc.get("class") == "ImageTokenizer":
        return "tokenizer"
    if doc.get("kind") == "caml":
        return "caml"
    if doc.get("format") == "tessera.lm.Decoder" and (folder / "processor.json").is_file():
        return "lm"
    return None


class ModelRegistry:
    """Scans `root` for model folders and loads them on demand (at most `cache_size` kept, least recently used out).

    Args:
        root: the runs folder.
        depth: folder levels searched below `root`.
        cache_size: loaded models kept in memory.
    """

    def __init__(self, root: Path, depth: int = 5, cache_size: int = 4) -> None:
        self.root = root
        self.depth = depth
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str, float], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str, float], threading.Lock] = {}

    def scan(self) -> dict[str, list[ModelEntry]]:
        """Model folders by kind, newest first."""
        found: dict[str, list[ModelEntry]] = {k: [] for k in KINDS}
        if not self.root.is_dir():
            return found
        base_depth = len(self.root.parts)
        for dirpath, dirnames, _ in os.walk(self.root, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
            if len(here.parts) - base_depth >= self.depth:
                dirnames[:] = []
            kind = _kind_of(here)
            if kind is not None:
                rel = here.relative_to(self.root).as_posix()
                found[kind].append(ModelEntry(kind, rel or ".", here, (here / "model.safetensors").stat().st_mtime))
        for entries in found.values():
            entries.sort(key=lambda e: (-e.mtime, e.id))
        return found

    def resolve(self, kind: str, model_id: str | None) -> ModelEntry:
        """The entry for `model_id` (default: the newest of `kind`); 404 with the available ids otherwise."""
        entries = self.scan()[kind]
        if not entries:
            raise ServeError(404, f"no {kind} model folder under {self.root}; train one (e.g. `tessera demo`) or start "
                             f"`tessera serve --runs DIR` on a folder that has one", "checkpoint")
        if not model_id:
            return entries[0]
        for e in entries:
            if e.id == model_id:
                return e
        raise ServeError(404, f"checkpoint {model_id!r} is not a {kind} model under the runs folder; available: "
                         f"{', '.join(e.id for e in entries)}", "checkpoint")

    def load(self, entry: ModelEntry, loader: Callable[[Path], Any]) -> Any:
        """`loader(entry.path)`, cached by (kind, id, mtime); concurrent first loads of one model load it once."""
        key = (entry.kind, entry.id, entry.mtime)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            try:
                value = loader(entry.path)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise ServeError(500, f"could not load {entry.kind} model {entry.id!r}: {exc}", "checkpoint") from exc
            with self._lock:
                self._cache[key] = value
                self._loading.pop(key, None)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return value
