"""Metric definitions: SSIM against scikit-image, PSNR, usage over groups of 256, Frechet distance, grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from tessera.tokenizer import ImageTokenizer
from tessera.tokenizer.metrics import (
    codebook_usage_groups,
    evaluate_tokenizer,
    frechet_distance,
    psnr,
    save_reconstruction_grid,
    ssim,
)
from tessera.tokenizer.perceptual import RandomConvFeatures


def test_ssim_matches_scikit_image_away_from_the_border():
    rng = np.random.default_rng(0)
    base = rng.random((3, 48, 48)).astype(np.float32)
    smooth = torch.nn.functional.avg_pool2d(torch.from_numpy(base)[None], 3, 1, 1)[0]
    noisy = (smooth + 0.05 * torch.randn(smooth.shape)).clamp(0, 1)
    ours = float(ssim(smooth[None], noisy[None]))
    ref = structural_similarity(
        smooth.numpy(), noisy.numpy(), channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert abs(ours - ref) < 0.02, (ours, ref)
    assert float(ssim(smooth[None], smooth[None])) == pytest.approx(1.0, abs=1e-5)


def test_psnr_of_a_known_error():
    x = torch.zeros(1, 3, 8, 8)
    assert float(psnr(x, x + 0.1)) == pytest.approx(20.0, abs=1e-3)


def test_codebook_usage_pools_groups_of_256_and_drops_the_remainder():
    idx = torch.zeros(600, 2, 2, dtype=torch.long)
    idx[:256, 0, 0] = torch.arange(256) % 8  # group 1 uses codes 0..7
    idx[256:512, 0, 0] = torch.arange(256) % 4  # group 2 uses codes 0..3
    idx[512:, 0, 0] = torch.arange(88) + 100  # remainder: dropped
    usage, groups = codebook_usage_groups(idx, 16)
    assert groups == 2 and usage == pytest.approx((8 / 16 + 4 / 16) / 2)
    small, g = codebook_usage_groups(idx[:10], 16)
    assert g == 0 and small == pytest.approx(8 / 16)


def test_frechet_distance_of_shifted_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = frechet_distance(a, a + 2.0)  # same covariance, mean moved by 2 in each of 4 dims -> 16
    assert shifted == pytest.approx(16.0, rel=1e-6)


def test_evaluate_tokenizer_reports_everything_and_grids_are_pngs(tmp_path):
    tok = ImageTokenizer.from_name("vqvae-debug")
    data = torch.rand(20, 3, 16, 16)
    res = evaluate_tokenizer(tok, data, batch_size=8, feature_network=RandomConvFeatures(), feature_key="fd_random_conv", keep=6)
    for k in ("mse", "psnr", "ssim", "usage", "perplexity", "quantization_error_sum", "quantization_error_mean", "fd_random_conv"):
        assert np.isfinite(res[k]), k
    assert res["quantization_error_sum"] == pytest.approx(res["quantization_error_mean"] * tok.config.code_dim)
    assert int(res["_code_counts"].sum()) == 20 * 8 * 8 and res["num_items"] == 20
    path = save_reconstruction_grid(res["_originals"], res["_recons"], tmp_path / "grid.png", ncol=3)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 3 * 16 and img.size[1] > 4 * 16
