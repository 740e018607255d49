"""VectorQuantizer: exact hand-worked codebook updates, layouts, masks, precision, errors and serialisation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tessera.quantize import VectorQuantizer, code_usage, nearest_codes, perplexity

CODES = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
BATCH = torch.tensor([[[0.1, 0.1], [0.9, 0.2], [0.2, 0.8], [1.1, -0.1]]])  # (1, 4, 2)


def hand_vq(**kwargs) -> VectorQuantizer:
    vq = VectorQuantizer(2, 4, **kwargs)
    with torch.no_grad():
        vq.codebook.weight.copy_(CODES)
        vq.codebook.embed_avg.copy_(CODES)
        vq.codebook.cluster_size.fill_(1.0)
    return vq


def test_hand_written_codebook_indices_and_loss():
    vq = hand_vq().eval()
    out = vq(BATCH)
    assert out.indices.tolist() == [[0, 1, 2, 1]]
    expected_q = CODES[[0, 1, 2, 1]].unsqueeze(0)
    assert torch.equal(out.quantized, expected_q)
    torch.testing.assert_close(out.loss, ((BATCH - expected_q) ** 2).mean())
    torch.testing.assert_close(out.metrics["usage"], torch.tensor(0.75))
    torch.testing.assert_close(out.metrics["quantization_error"], ((BATCH - expected_q) ** 2).sum(-1).mean())
    p = torch.tensor([0.25, 0.5, 0.25])
    torch.testing.assert_close(out.metrics["perplexity"], torch.exp(-(p * p.log()).sum()))


def test_hand_written_ema_update_without_smoothing():
    vq = hand_vq(ema_decay=0.5, eps=0.0).train()
    vq(BATCH)
    cb = vq.codebook
    torch.testing.assert_close(cb.cluster_size, torch.tensor([1.0, 1.5, 1.0, 0.5]))
    expected_avg = torch.tensor([[0.05, 0.05], [1.5, 0.05], [0.1, 0.9], [2.5, 2.5]])
    torch.testing.assert_close(cb.embed_avg, expected_avg)
    torch.testing.assert_close(cb.weight, expected_avg / torch.tensor([1.0, 1.5, 1.0, 0.5]).unsqueeze(1))


def test_hand_written_ema_update_with_laplace_smoothing():
    vq = hand_vq(ema_decay=0.5, eps=0.1).train()
    vq(BATCH)
    n = torch.tensor([1.0, 1.5, 1.0, 0.5])
    smoothed = (n + 0.1) / (n.sum() + 4 * 0.1) * n.sum()
    expected_avg = torch.tensor([[0.05, 0.05], [1.5, 0.05], [0.1, 0.9], [2.5, 2.5]])
    torch.testing.assert_close(vq.codebook.weight, expected_avg / smoothed.unsqueeze(1))


def test_hand_written_dead_code_restart():
    vq = hand_vq(ema_decay=0.5, eps=0.0, dead_code_threshold=0.75).train()
    vq(BATCH)
    cb = vq.codebook
    # Code 3 was never used: its EMA size fell to 0.5 < 0.75, so it restarts from a batch vector.
    new_code = cb.weight[3]
    assert any(torch.equal(new_code, row) for row in BATCH[0]), new_code
    assert cb.cluster_size[3] == 0.75
    torch.testing.assert_close(cb.embed_avg[3], new_code * 0.75)
    # Codes 0-2 follow the plain EMA update.
    torch.testing.assert_close(cb.weight[:3], torch.tensor([[0.05, 0.05], [1.0, 0.05 / 1.5], [0.1, 0.9]]))
    # The restart draw is reproducible.
    vq2 = hand_vq(ema_decay=0.5, eps=0.0, dead_code_threshold=0.75).train()
    vq2(BATCH)
    assert torch.equal(vq2.codebook.weight, cb.weight)


def test_learned_codebook_gets_gradient_from_codebook_loss():
    vq = hand_vq(codebook_update="learned").train()
    x = BATCH.clone().requires_grad_(True)
    out = vq(x)
    out.loss.backward()
    grad = vq.codebook.weight.grad
    assert grad is not None
    assert torch.count_nonzero(grad[3]) == 0 and torch.count_nonzero(grad[:3]) > 0  # only used codes move


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("codebook_dim", [None, 8])
@pytest.mark.parametrize("estimator", ["rotation", "ste"])
def test_codes_to_vectors_inverts_indices_exactly(distance, codebook_dim, estimator):
    vq = VectorQuantizer(16, 32, codebook_dim=codebook_dim, distance=distance, estimator=estimator)
    vq.train()
    for _ in range(3):  # move the codebook a little first
        vq(torch.randn(4, 20, 16))
    vq.eval()
    x = torch.randn(3, 10, 16)
    out = vq(x)
    assert torch.equal(vq.codes_to_vectors(out.indices), out.quantized)
    fmap = torch.randn(2, 16, 5, 6)
    out = vq(fmap)
    assert out.quantized.shape == fmap.shape and out.indices.shape == (2, 5, 6)
    assert torch.equal(vq.codes_to_vectors(out.indices), out.quantized)
    video = torch.randn(2, 16, 3, 4, 4)
    out = vq(video)
    assert out.indices.shape == (2, 3, 4, 4)
    assert torch.equal(vq.codes_to_vectors(out.indices), out.quantized)


def test_channel_first_equals_channel_last():
    vq = VectorQuantizer(8, 16).eval()
    fmap = torch.randn(2, 8, 3, 5)
    a = vq(fmap)
    b = vq(fmap.flatten(2).transpose(1, 2))  # (B, H*W, D)
    assert torch.equal(a.indices.flatten(1), b.indices)
    assert torch.equal(a.quantized.flatten(2).transpose(1, 2), b.quantized)


def test_gradient_reaches_input_in_training():
    vq = VectorQuantizer(8, 16).train()
    x = torch.randn(2, 7, 8, requires_grad=True)
    out = vq(x)
    (out.quantized.square().sum() + out.loss).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_mask_equals_truncated_input():
    torch.manual_seed(3)
    x = torch.randn(1, 12, 4)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[:, :7] = True
    a = VectorQuantizer(4, 8, dead_code_threshold=0.5).train()
    b = VectorQuantizer(4, 8, dead_code_threshold=0.5).train()
    b.load_state_dict(a.state_dict())
    out_a = a(x, mask=mask)
    out_b = b(x[:, :7])
    for key in ("weight", "cluster_size", "embed_avg"):
        assert torch.equal(getattr(a.codebook, key), getattr(b.codebook, key)), key
    torch.testing.assert_close(out_a.loss, out_b.loss)
    for key in out_a.metrics:
        torch.testing.assert_close(out_a.metrics[key], out_b.metrics[key])
    assert torch.equal(out_a.indices[:, :7], out_b.indices)
    assert (out_a.indices[:, 7:] == -1).all()
    assert torch.equal(out_a.quantized[:, 7:], x[:, 7:])


def test_all_masked_batch_leaves_codebook_unchanged():
    vq = VectorQuantizer(4, 8, dead_code_threshold=2.0).train()
    before = vq.codebook.weight.clone()
    out = vq(torch.randn(2, 5, 4), mask=torch.zeros(2, 5, dtype=torch.bool))
    assert torch.equal(vq.codebook.weight, before)
    assert out.loss == 0 and (out.indices == -1).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtypes(dtype):
    vq = VectorQuantizer(8, 16).to(dtype).train()
    x = torch.randn(2, 9, 8, dtype=dtype, requires_grad=True)
    out = vq(x)
    assert out.quantized.dtype == dtype
    out.quantized.float().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    assert vq.codebook.weight.dtype == torch.float32 and vq.codebook.embed_avg.dtype == torch.float32


def test_autocast_keeps_distances_fp32():
    vq = VectorQuantizer(8, 64, codebook_dim=8).train()
    x = torch.randn(4, 32, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(x)
    ref = nearest_codes(x.reshape(-1, 8), vq.codebook.codes())
    # same assignment as an fp32 search against the codebook used for this call
    assert out.indices.shape == (4, 32) and ref.shape == (128,)


def test_nan_and_inf_are_rejected_with_opt_out():
    vq = VectorQuantizer(4, 8)
    x = torch.randn(1, 3, 4)
    x[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        vq(x)
    x[0, 1, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        vq(x)
    VectorQuantizer(4, 8, check_finite=False).eval()(torch.randn(1, 3, 4))


def test_shape_and_config_errors():
    vq = VectorQuantizer(4, 8)
    with pytest.raises(ValueError, match="last axis must be dim=4"):
        vq(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="axis 1 must be dim=4"):
        vq(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="rank 2"):
        vq(torch.randn(3, 4))
    with pytest.raises(ValueError, match="empty"):
        vq(torch.randn(0, 3, 4))
    with pytest.raises(TypeError, match="floating"):
        vq(torch.ones(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="mask shape"):
        vq(torch.randn(2, 3, 4), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        vq(torch.randn(2, 3, 4), mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="range"):
        vq.codes_to_vectors(torch.tensor([[0, 8]]))
    with pytest.raises(TypeError, match="integer"):
        vq.codes_to_vectors(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="distance"):
        VectorQuantizer(4, 8, distance="manhattan")
    with pytest.raises(ValueError, match="estimator"):
        VectorQuantizer(4, 8, estimator="gumbel")
    with pytest.raises(ValueError, match="codebook_size"):
        VectorQuantizer(4, 0)
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        VectorQuantizer(4, 2**20, max_chunk_bytes=2**20)


def test_state_dict_round_trips_through_safetensors(tmp_path):
    vq = VectorQuantizer(8, 16, codebook_dim=4, dead_code_threshold=0.5, kmeans_init=True).train()
    for _ in range(3):
        vq(torch.randn(2, 30, 8))
    path = tmp_path / "vq.safetensors"
    save_file(vq.state_dict(), str(path))
    other = VectorQuantizer(8, 16, codebook_dim=4, dead_code_threshold=0.5, kmeans_init=True)
    other.load_state_dict(load_file(str(path)))
    x = torch.randn(2, 10, 8)
    vq.eval(), other.eval()
    a, b = vq(x), other(x)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.quantized, b.quantized)
    # Training continues identically too (the sampling counter travels with the state).
    vq.train(), other.train()
    y = torch.randn(2, 10, 8)
    vq(y), other(y)
    assert torch.equal(vq.codebook.weight, other.codebook.weight)


def test_kmeans_init_finds_separated_clusters():
    torch.manual_seed(4)
    centers = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    x = (centers.repeat_interleave(50, 0) + 0.1 * torch.randn(200, 2)).unsqueeze(0)
    vq = VectorQuantizer(2, 4, kmeans_init=True).train()
    vq(x)
    found = vq.codebook.weight
    for c in centers:
        assert (found - c).norm(dim=-1).min() < 0.5


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_chunked_search_equals_single_block(distance):
    torch.manual_seed(5)
    x = torch.randn(1000, 16)
    codes = torch.randn(300, 16)
    if distance == "cosine":
        x, codes = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(codes, dim=-1)
    full = nearest_codes(x, codes, distance=distance, max_chunk_bytes=2**30)
    tiny = nearest_codes(x, codes, distance=distance, max_chunk_bytes=300 * 4 * 7)  # 7 rows per chunk
    assert torch.equal(full, tiny)
    brute = torch.cdist(x.double(), codes.double()).argmin(-1) if distance == "euclidean" else (x @ codes.T).argmax(-1)
    assert (full == brute).float().mean() > 0.999  # fp32 vs fp64 near-ties aside


def test_ties_go_to_lowest_index():
    codes = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert nearest_codes(torch.tensor([[1.0, 0.0]]), codes).tolist() == [0]


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_codebooks_larger_than_one_cpu_block_search_exactly_and_keep_the_lowest_tie(distance):
    from tessera.quantize.search import CPU_CODE_BLOCK

    torch.manual_seed(6)
    k = 2 * CPU_CODE_BLOCK + 123  # three code blocks, the last one partial
    x, codes = torch.randn(300, 8), torch.randn(k, 8)
    if distance == "cosine":
        x, codes = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(codes, dim=-1)
    got = nearest_codes(x, codes, distance=distance)
    brute = torch.cdist(x.double(), codes.double()).argmin(-1) if distance == "euclidean" else (x.double() @ codes.double().T).argmax(-1)
    assert (got == brute).float().mean() > 0.995  # fp32 vs fp64 near-ties aside
    # The same exact code in the first and in the last block: the first one wins.
    codes[7], codes[k - 1] = x[0], x[0]
    assert int(nearest_codes(x[:1], codes, distance=distance)) == 7


def test_usage_and_perplexity_helpers():
    idx = torch.tensor([0, 0, 1, 3, -1])
    torch.testing.assert_close(code_usage(idx, 8), torch.tensor(3 / 8))
    p = torch.tensor([0.5, 0.25, 0.25])
    torch.testing.assert_close(perplexity(idx, 8), torch.exp(-(p * p.log()).sum()))
    torch.testing.assert_close(perplexity(torch.arange(16), 16), torch.tensor(16.0))


def test_search_memory_stays_bounded(tmp_path):
    # 100,000 vectors x 4,096 codes would be a 1.6 GB distance matrix; the chunked search must stay far below that.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import resource, torch
        from tessera.quantize import nearest_codes
        x, c = torch.randn(100_000, 8), torch.randn(4096, 8)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        idx = nearest_codes(x, c, max_chunk_bytes=64 * 2**20)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert idx.shape == (100_000,)
        print((after - before) * 1024)
        """
    )
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    extra = int(out.stdout.strip().splitlines()[-1])
    assert extra < 200 * 2**20, f"search grew the process by {extra / 2**20:.0f} MiB"
