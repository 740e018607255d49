"""Run a function on N CPU processes joined by a gloo process group (file rendezvous, no ports)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn: Callable[..., None], world_size: int, init_file: str, args: tuple[Any, ...]) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_gloo(fn: Callable[..., None], world_size: int, workdir: Path, *args: Any, timeout: float = 120.0) -> None:
    """Call `fn(rank, world_size, *args)` on `world_size` processes; fail (never hang) after `timeout` seconds."""
    init_file = str(workdir / f"rendezvous-{time.time_ns()}")
    ctx = mp.spawn(_entry, args=(fn, world_size, init_file, args), nprocs=world_size, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"distributed run did not finish within {timeout} s (a collective is probably hanging)")
