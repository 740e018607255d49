"""Device, precision and process-group setup shared by every recipe.

Under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) `init_runtime` joins the process group with NCCL
when CUDA is available and gloo otherwise, and pins each rank to its local GPU. Without torchrun it is a single
process on the chosen device. Recipes own device, dtype and autocast; models never read the environment.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Runtime", "init_runtime", "seed_everything", "autocast", "all_reduce_mean", "print0", "resolve_device", "is_main_process", "shutdown"]


@dataclass
class Runtime:
    """Where this process runs and who it is in the job."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "nccl", "gloo" or None (single process)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple MPS, then CPU; anything else is passed to torch.device (validated)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def init_runtime(device: str = "auto", timeout_s: float = 1800.0) -> Runtime:
    """Set up this process: single-process, or one rank of a torchrun job (process group initialised here)."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        rank = int(os.environ["RANK"])
        world = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        dev = resolve_device(device)
        if dev.type == "cuda":
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        return Runtime(device=dev, rank=rank, world_size=world, local_rank=local, backend=backend)
    if dist.is_available() and dist.is_initialized():  # a caller (e.g. a test) already set up the group
        rank, world = dist.get_rank(), dist.get_world_size()
        dev = resolve_device(device)
        return Runtime(device=dev, rank=rank, world_size=world, local_rank=rank, backend=dist.get_backend())
    return Runtime(device=resolve_device(device))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str):
    """Autocast context for "fp32" (none), "bf16" or "fp16"; "auto" means bf16 on CUDA with bf16 support, else fp32.

    CPU autocast is available but off under "auto": on the CPUs we measured it was slower than fp32 for small models.
    """
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def all_reduce_mean(values: dict[str, float], runtime: Runtime) -> dict[str, float]:
    """Average scalar metrics over ranks (every rank must call this with the same keys)."""
    if not runtime.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device(runtime))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= runtime.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


def _collective_device(runtime: Runtime) -> torch.device:
    return runtime.device if runtime.backend == "nccl" else torch.device("cpu")


def is_main_process() -> bool:
    """True on rank 0 of an initialised process group, and in a single process (for recipes' rank-0-only work)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def shutdown() -> None:
    """Leave the process group (if one was joined): the end of a torchrun job's command."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def print0(*args, runtime: Runtime | None = None, **kwargs) -> None:
    """print() on rank 0 only."""
    if runtime is None or runtime.is_main:
        print(*args, **kwargs)
