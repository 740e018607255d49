"""Shared test defaults: a fixed seed, the default dtype restored, no process group left behind."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.distributed as dist


@pytest.fixture(autouse=True)
def _seed_and_restore():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
