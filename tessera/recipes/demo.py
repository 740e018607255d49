"""`tessera demo`: straight-through vs rotation trick on real photographs, end to end on a laptop CPU.

Run:    tessera demo            (about 2-3 minutes on 2 CPU cores)
        tessera demo --quick    (well under a minute)
Expect: a table with validation MSE, codebook usage, perplexity, quantization error and seconds for each estimator.

The data are the RGB photographs that ship inside scikit-image (astronaut, cat, coffee, rocket, motorcycle, ...), cut
into 32x32 patches; whole images are held out for validation, so validation patches come from pictures the model
never saw. The model is a small convolutional autoencoder with a VQ bottleneck (8x8 grid of 16-d codes, 256 codes,
EMA codebook as in the rotation-trick paper). Both runs share the seed, data order and initial weights; only the
estimator differs.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tessera.quantize import VectorQuantizer

__all__ = ["register", "run_demo", "skimage_patches"]

_TRAIN_IMAGES = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
_VAL_IMAGES = ("chelsea", "stereo_motorcycle")


def skimage_patches(names: tuple[str, ...], n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """`n` random `size` x `size` RGB patches (float in [0, 1], (n, 3, size, size)) from scikit-image sample photos."""
    from skimage import data

    images = []
    for name in names:
        img = getattr(data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
            img = img[0]
        images.append(np.asarray(img, dtype=np.float32) / 255.0)
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        img = images[i % len(images)]
        y = rng.integers(0, img.shape[0] - size + 1)
        x = rng.integers(0, img.shape[1] - size + 1)
        out[i] = img[y : y + size, x : x + size, :3]
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # (n, H, W, 3) -> (n, 3, H, W)


class ConvVQAutoencoder(nn.Module):
    """32x32x3 -> 8x8x16 codes -> 32x32x3, with residual-free conv stacks (small enough for a CPU demo)."""

    def __init__(self, estimator: str, codebook_size: int = 256, code_dim: int = 16, width: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(width, width, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(width, code_dim, 3, 1, 1),
        )  # (B, 3, 32, 32) -> (B, code_dim, 8, 8)
        self.vq = VectorQuantizer(code_dim, codebook_size, estimator=estimator)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, width, 3, 1, 1), nn.ReLU(),
            nn.ConvTranspose2d(width, width, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 4, 2, 1),
        )  # (B, code_dim, 8, 8) -> (B, 3, 32, 32)

    def forward(self, x: torch.Tensor):
        out = self.vq(self.encoder(x))
        return self.decoder(out.quantized), out


@dataclass
class DemoResult:
    estimator: str
    val_mse: float
    usage: float
    perplexity: float
    quantization_error: float
    seconds: float


def _train_one(estimator: str, train: torch.Tensor, val: torch.Tensor, steps: int, batch: int, seed: int) -> DemoResult:
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model = ConvVQAutoencoder(estimator)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"{estimator:>8}", dynamic_ncols=True)
    for _ in bar:
        x = train[torch.randint(len(train), (batch,), generator=gen)]
        recon, out = model(x)
        loss = ((recon - x) ** 2).mean() + 0.25 * out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", usage=f"{out.metrics['usage'].item():.2f}", refresh=False)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        recon, out = model(val)
        # usage over groups of 256 validation images, as the rotation-trick paper counts it
        groups = [out.indices[i : i + 256] for i in range(0, len(val) - 255, 256)] or [out.indices]
        usage = float(np.mean([torch.unique(g).numel() / model.vq.codebook_size for g in groups]))
        return DemoResult(
            estimator=estimator,
            val_mse=float(((recon.clamp(0, 1) - val) ** 2).mean()),
            usage=usage,
            perplexity=float(out.metrics["perplexity"]),
            quantization_error=float(out.metrics["quantization_error"]),
            seconds=seconds,
        )


def run_demo(quick: bool = False, seed: int = 0) -> list[DemoResult]:
    """Train the demo autoencoder once per estimator and return the results (also printed as a table)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps = 150 if quick else 800
    train = skimage_patches(_TRAIN_IMAGES, 8192, seed=seed)
    val = skimage_patches(_VAL_IMAGES, 1024, seed=seed + 1)
    print(f"data: {len(train)} training patches from {len(_TRAIN_IMAGES)} photos, {len(val)} validation patches "
          f"from {len(_VAL_IMAGES)} held-out photos (scikit-image samples), 32x32 RGB")
    results = [_train_one(est, train, val, steps, 64, seed) for est in ("ste", "rotation")]
    print()
    print(f"{'estimator':<10} {'val MSE':>9} {'usage':>7} {'perplexity':>11} {'quant. err':>11} {'seconds':>8}")
    for r in results:
        print(f"{r.estimator:<10} {r.val_mse:>9.5f} {r.usage:>7.1%} {r.perplexity:>11.1f} {r.quantization_error:>11.5f} {r.seconds:>8.1f}")
    print(f"\n{steps} steps x batch 64 each, seed {seed}; usage = unique codes per 256 validation patches / 256 codes.")
    return results


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train a small VQ autoencoder with STE and with the rotation trick")
    p.add_argument("--quick", action="store_true", help="a shorter run (well under a minute)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=lambda args: run_demo(quick=args.quick, seed=args.seed) and 0)
