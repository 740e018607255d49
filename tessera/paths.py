"""Where Tessera keeps generated data, cached features and runs.

Generated data and caches live under `cache_dir()`: `$TESSERA_CACHE` if set, else `~/.cache/tessera`. Runs (logs,
checkpoints, reports) go under `runs_dir()`: `$TESSERA_RUNS` if set, else `./runs`. Both are rebuilt by commands and
never committed.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "runs_dir", "package_asset"]


def cache_dir(*parts: str) -> Path:
    """`$TESSERA_CACHE/<parts>` (default `~/.cache/tessera/<parts>`), created on demand."""
    root = Path(os.environ.get("TESSERA_CACHE") or Path.home() / ".cache" / "tessera")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir(*parts: str) -> Path:
    """`$TESSERA_RUNS/<parts>` (default `./runs/<parts>`), created on demand."""
    root = Path(os.environ.get("TESSERA_RUNS") or Path.cwd() / "runs")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_asset(*parts: str) -> Path:
    """Path of a file shipped inside the package (`tessera/assets/<parts>`)."""
    return Path(__file__).resolve().parent.joinpath("assets", *parts)
