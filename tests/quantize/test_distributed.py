"""Two gloo processes keep identical codebooks, equal to one process that sees the whole global batch."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tessera.quantize import VectorQuantizer
from tests._dist import run_gloo

STEPS = 6
PER_RANK = 40


def _make_vq() -> VectorQuantizer:
    torch.manual_seed(0)
    return VectorQuantizer(6, 16, codebook_dim=4, kmeans_init=True, dead_code_threshold=1.5, seed=7).train()


def _batches(mask_rank1_empty: bool):
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        x = torch.randn(2 * PER_RANK, 6, generator=gen) * 3
        mask = torch.rand(2 * PER_RANK, generator=gen) > 0.2
        if mask_rank1_empty and step % 2 == 1:
            mask[PER_RANK:] = False  # rank 1 sees only padding on odd steps
        yield x, mask


def _worker(rank: int, world_size: int, outdir: str, mask_rank1_empty: bool) -> None:
    vq = _make_vq()
    for x, mask in _batches(mask_rank1_empty):
        sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        vq(x[sl].unsqueeze(0), mask=mask[sl].unsqueeze(0))
    save_file({k: v.contiguous() for k, v in vq.state_dict().items()}, f"{outdir}/rank{rank}.safetensors")


def _single(mask_rank1_empty: bool) -> dict[str, torch.Tensor]:
    vq = _make_vq()
    for x, mask in _batches(mask_rank1_empty):
        vq(x.unsqueeze(0), mask=mask.unsqueeze(0))
    return vq.state_dict()


def _check(tmp_path: Path, mask_rank1_empty: bool) -> None:
    run_gloo(_worker, 2, tmp_path, str(tmp_path), mask_rank1_empty)
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    single = _single(mask_rank1_empty)
    for key in ("codebook.weight", "codebook.cluster_size", "codebook.embed_avg"):
        assert torch.equal(r0[key], r1[key]), f"{key} differs between ranks"
        torch.testing.assert_close(r0[key], single[key], rtol=1e-5, atol=1e-5, msg=f"{key} differs from one process")


def test_two_ranks_match_each_other_and_one_process(tmp_path):
    _check(tmp_path, mask_rank1_empty=False)


def test_rank_with_empty_mask_does_not_hang(tmp_path):
    _check(tmp_path, mask_rank1_empty=True)
