"""Stage caching for `tessera demo`: each stage keeps its outputs in `runs/demo/<stage>/` with a `stage.json` marker.

A stage reruns only when its settings (the key) changed or its marker is missing; a rerun of the demo with the same
settings reuses every checkpoint and result. A folder without a marker (a run that was interrupted) is cleared and
the stage starts over, so a half-written stage is never reused.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["cached_stage", "STAGE_VERSION"]

STAGE_VERSION = 1  # bump when a stage's outputs change meaning


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def cached_stage(folder: Path, key: dict[str, Any], run: Callable[[Path], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """`run(folder)` (a JSON-able result) unless `folder/stage.json` holds the same key; returns (result, reused).

    The result gets "seconds" (wall time of `run`) and "cpu_seconds" (CPU time of this process, all threads: on a
    loaded machine it shows the work done, which wall time hides), both kept from the first run when reused.
    """
    from tessera import __version__
    from tessera.io import atomic_write_json

    key = _canonical({**key, "stage_version": STAGE_VERSION, "tessera": __version__})
    marker = folder / "stage.json"
    if marker.is_file():
        try:
            doc = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            doc = {}
        if doc.get("key") == key:
            return doc["result"], True
    if folder.exists():
        shutil.rmtree(folder)  # settings changed, or an interrupted run: start this stage over
    folder.mkdir(parents=True)
    t0, c0 = time.perf_counter(), time.process_time()
    result = run(folder)
    result = _canonical({**result, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0})
    atomic_write_json(marker, {"key": key, "result": result})
    return result, False
