"""Run logs: a CSV of every logged step (always) and TensorBoard event files (when `tensorboard` is installed).

On resume, CSV rows after the resumed step are dropped first, so a resumed run's log reads like the uninterrupted one.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

__all__ = ["RunLogger", "read_metrics_csv"]

_log = logging.getLogger(__name__)


class RunLogger:
    """Append scalar metrics per step to `<run_dir>/metrics.csv` and TensorBoard (`<run_dir>/tb`)."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.csv"
        self._rows: list[dict[str, float]] = []
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            rows = read_metrics_csv(self.path)
            self._rows = [r for r in rows if resume_step is not None and r["step"] <= resume_step]
            self._rewrite()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)
            except ImportError:  # tensorboard is optional; the CSV always exists
                _log.debug("tensorboard not installed; writing CSV logs only")

    def _rewrite(self) -> None:
        keys = _keys(self._rows)
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            for row in self._rows:
                writer.writerow({k: row.get(k, "") for k in keys})
        tmp.replace(self.path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` at `step` (rank 0 only: other ranks construct the logger disabled)."""
        if not self.enabled:
            return
        row = {"step": float(step), **{k: float(v) for k, v in metrics.items()}}
        new_keys = set(row) - set(_keys(self._rows))
        self._rows.append(row)
        if new_keys or not self.path.exists():
            self._rewrite()
        else:
            keys = _keys(self._rows)
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=keys).writerow({k: row.get(k, "") for k in keys})
        if self._tb is not None:
            for k, v in metrics.items():
                if math.isfinite(float(v)):
                    self._tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _keys(rows: list[dict[str, float]]) -> list[str]:
    keys: list[str] = ["step"]
    for row in rows:
        for k in row:
            if k not in keys:
                keys.append(k)
    return keys


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as dicts of floats (empty cells omitted)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
