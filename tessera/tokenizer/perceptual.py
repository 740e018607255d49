"""Pluggable frozen feature networks for the VQGAN perceptual loss and the Frechet-distance metric.

Axis legend: B batch, C channels, H W image side, D embedding size.

A feature network is any frozen module with the `tessera.features.FeatureExtractor` interface: images float
(B, 3, H, W) in [0, 1] -> `forward_features(images)` list of maps [(B, C_i, H_i, W_i)] and `embed(images)` (B, D).
`load_feature_network(spec)` resolves a name:

    any other name    passed to `tessera.features.load_extractor`: a Tessera-trained network shipped with the package
                      (default "tessera-resnet-s"), `timm:<model>`, `hf:<repo>`, or a folder; results that use it are
                      labelled with that name (e.g. "perceptual: tessera-resnet-s").
    "vgg16"           torchvision's ImageNet VGG16, only if its weights are already in the local torch hub cache
                      (Tessera never downloads weights); a clear error otherwise.
    "random-conv"     an UNTRAINED random conv net (fixed seed). Only for tests and debug configs: every result
                      that used it carries this name, and it is not a perceptual metric in any learned sense.

The loss is LPIPS-shaped without LPIPS's learned per-channel weights (which exist only for AlexNet/VGG/SqueezeNet):
mean over layers of the spatially averaged squared distance between channel-normalised features (Zhang et al. 2018,
Eq. 1 with w = 1). That is the "lin=False" LPIPS variant; the name in results says which network was used.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PerceptualLoss", "load_feature_network", "RandomConvFeatures", "straight_through_clamp"]


def straight_through_clamp(x: Tensor) -> Tensor:
    """x clamped to [0, 1] in the forward pass with an identity gradient (feature networks reject values outside
    [0, 1]; a hard clamp would cut the gradient of every out-of-range pixel)."""
    return x + (x.clamp(0.0, 1.0) - x).detach()


class _Frozen(nn.Module):
    def train(self, mode: bool = True):  # stays in eval mode under a parent's .train()
        return super().train(False)


class RandomConvFeatures(_Frozen):
    """An untrained, seeded conv net with the feature-extractor interface (tests and debug runs only)."""

    name = "random-conv"

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        layers, ch = [], 3
        for w in widths:
            conv = nn.Conv2d(ch, w, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / (ch * 9)) ** 0.5)
                conv.bias.zero_()
            layers.append(conv)
            ch = w
        self.layers = nn.ModuleList(layers)
        self.embed_dim = ch
        self.feature_channels = tuple(widths)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward_features(self, images: Tensor) -> list[Tensor]:
        x, out = images * 2.0 - 1.0, []
        for conv in self.layers:
            x = F.leaky_relu(conv(x), 0.2)
            out.append(x)
        return out

    def embed(self, images: Tensor) -> Tensor:
        return self.forward_features(images)[-1].mean(dim=(2, 3))


class _TorchvisionVGG16(_Frozen):
    """torchvision VGG16 features (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) from locally cached weights only."""

    name = "vgg16"
    _FILE = "vgg16-397923af.pth"

    def __init__(self) -> None:
        super().__init__()
        try:
            import torchvision
        except ImportError as exc:
            raise RuntimeError("the 'vgg16' feature network needs torchvision (pip install 'tessera[vision]')") from exc
        hub = Path(torch.hub.get_dir()) / "checkpoints" / self._FILE
        if not hub.is_file():
            raise RuntimeError(
                f"the 'vgg16' feature network needs torchvision's ImageNet weights at {hub}; Tessera never downloads "
                "weights. Copy the file there, or use a Tessera-trained network (perceptual_network='tessera-resnet-s')"
            )
        vgg = torchvision.models.vgg16()
        vgg.load_state_dict(torch.load(hub, map_location="cpu", weights_only=True))
        self.features = vgg.features[:30]
        self.taps = (3, 8, 15, 22, 29)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.embed_dim = 512
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward_features(self, images: Tensor) -> list[Tensor]:
        x, out = (images - self.mean) / self.std, []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def embed(self, images: Tensor) -> Tensor:
        return self.forward_features(images)[-1].mean(dim=(2, 3))


def load_feature_network(spec: str) -> nn.Module:
    """Resolve a feature-network name (see the module docstring) to a frozen module with a `name` attribute.

    Raises:
        ValueError: unknown name (from `tessera.features.load_extractor`).
        RuntimeError: the network exists but its weights or package are not available here.
    """
    if spec == "random-conv":
        return RandomConvFeatures()
    if spec == "vgg16":
        return _TorchvisionVGG16()
    try:
        from tessera.features import load_extractor
    except ImportError as exc:
        raise RuntimeError(f"feature network {spec!r} needs tessera.features, which this install lacks") from exc
    try:
        net = load_extractor(spec)
    except FileNotFoundError as exc:  # a registered network whose weights are not in this installation
        raise RuntimeError(str(exc)) from exc
    net.name = spec
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


class PerceptualLoss(nn.Module):
    """LPIPS-shaped distance on a frozen feature network (no learned channel weights; see the module docstring).

    Args:
        network: a frozen module with `forward_features(images in [0, 1]) -> list[(B, C_i, H_i, W_i)]`.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        for p in self.network.parameters():
            p.requires_grad_(False)

    @property
    def name(self) -> str:
        return str(getattr(self.network, "name", type(self.network).__name__))

    def train(self, mode: bool = True):
        super().train(mode)
        self.network.eval()
        return self

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        """Scalar mean over the batch; gradients flow to `reconstruction` (values clamped straight-through)."""
        feats_x = self.network.forward_features(straight_through_clamp(reconstruction))
        with torch.no_grad():
            feats_y = self.network.forward_features(target.clamp(0.0, 1.0))
        total = reconstruction.new_zeros(())
        for fx, fy in zip(feats_x, feats_y, strict=True):
            fx = fx.float() / (fx.float().norm(dim=1, keepdim=True) + 1e-10)
            fy = fy.float() / (fy.float().norm(dim=1, keepdim=True) + 1e-10)
            total = total + ((fx - fy) ** 2).sum(dim=1).mean()
        return total / max(1, len(feats_x))
