"""A tiny VQ autoencoder trained with the rotation trick learns (its reconstruction loss falls well below the start)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from torch import nn

from tessera.quantize import VectorQuantizer


def _patches(n: int, size: int = 8) -> torch.Tensor:
    img = data.camera().astype(np.float32) / 255.0  # real photograph shipped in scikit-image
    rng = np.random.default_rng(0)
    ys = rng.integers(0, img.shape[0] - size, n)
    xs = rng.integers(0, img.shape[1] - size, n)
    patches = [img[y : y + size, x : x + size] for y, x in zip(ys, xs, strict=True)]
    return torch.from_numpy(np.stack(patches)).unsqueeze(1)


class TinyVQAE(nn.Module):
    def __init__(self, estimator: str) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 16, 3, 1, 1))
        self.vq = VectorQuantizer(16, 64, estimator=estimator, kmeans_init=True)
        self.dec = nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(), nn.ConvTranspose2d(32, 1, 4, 2, 1))

    def forward(self, x):
        out = self.vq(self.enc(x))
        return self.dec(out.quantized), out.loss


@pytest.mark.parametrize("estimator", ["rotation", "ste"])
def test_tiny_autoencoder_loss_falls(estimator):
    torch.manual_seed(0)
    train, val = _patches(4096), _patches(512)
    model = TinyVQAE(estimator)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def val_mse() -> float:
        model.eval()
        with torch.no_grad():
            mse = ((model(val)[0] - val) ** 2).mean().item()
        model.train()
        return mse

    start = val_mse()
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = train[torch.randint(len(train), (64,), generator=gen)]
        recon, aux = model(batch)
        loss = ((recon - batch) ** 2).mean() + 0.25 * aux
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = val_mse()
    assert end < 0.25 * start, (start, end)
