"""Tessera's own feature network: a small ResNet-12-style CNN pretrained offline, so the default needs no download.

Axis legend: B batch, C channels, H W height and width, D embedding size (= the last stage's width).

No pretrained image backbone ships in any wheel or Debian package (docs: offline-data.md section 6), so Tessera
trains its own on the embedded base datasets (`tessera/recipes/pretrain_features.py`). The architecture is the
ResNet-12 used throughout few-shot learning (MetaOptNet, FEAT, "Rethinking few-shot": four stages, each one residual
block of three 3x3 convolutions with BatchNorm and LeakyReLU(0.1), a 1x1 projection shortcut and a 2x2 max-pool),
narrowed to run on a CPU: widths (32, 64, 128, 256) instead of (64, 160, 320, 640), trained at 32 x 32.

`TesseraResNet` is the bare network; `TesseraResNetExtractor` wraps it in the `FeatureExtractor` interface and is
what `load_extractor("tessera-resnet-s")` returns. Weights are stored as `config.json` + `model.safetensors`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tessera.features.base import FeatureExtractor, freeze_

__all__ = ["ResNetConfig", "TesseraResNet", "TesseraResNetExtractor", "RESNET_PRESETS"]


@dataclass
class ResNetConfig:
    """Architecture of a Tessera ResNet feature network."""

    name: str = "tessera-resnet-s"  # the name it is registered and loaded by
    widths: tuple[int, ...] = (32, 64, 128, 256)  # channels of each stage; the embedding size is the last one
    convs_per_block: int = 3  # 3x3 convolutions in each residual block (ResNet-12: 3)
    stem_width: int = 0  # optional 3x3 stem before the stages (0: none, as in ResNet-12)
    input_size: int = 32  # `embed` resizes (shorter side) and center-crops images to this square
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # normalisation, set by the pretraining recipe from its data
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    negative_slope: float = 0.1  # LeakyReLU slope (ResNet-12)

    def __post_init__(self) -> None:
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"resnet.widths must be positive, got {self.widths}")
        if self.convs_per_block < 1 or self.input_size < 4:
            raise ValueError("resnet: convs_per_block must be >= 1 and input_size >= 4")

    @property
    def embed_dim(self) -> int:
        return self.widths[-1]


RESNET_PRESETS: dict[str, ResNetConfig] = {
    "tessera-resnet-s": ResNetConfig(),
    "tessera-resnet-debug": ResNetConfig(name="tessera-resnet-debug", widths=(8, 16, 16, 32), convs_per_block=2),
}


class _Block(nn.Module):
    """conv-BN-act x (n-1), conv-BN, + 1x1 projection shortcut, act, 2x2 max-pool (ResNet-12 block)."""

    def __init__(self, c_in: int, c_out: int, n: int, slope: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)]
            if i < n - 1:
                layers.append(nn.LeakyReLU(slope))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.act = nn.LeakyReLU(slope)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)  # ceil: a 1x1 map stays 1x1 instead of vanishing

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


class TesseraResNet(nn.Module):
    """The bare network: (B, 3, H, W) normalised -> stage maps; `pool` gives (B, D)."""

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = 3
        self.stem: nn.Module = nn.Identity()
        if cfg.stem_width:
            self.stem = nn.Sequential(
                nn.Conv2d(3, cfg.stem_width, 3, padding=1, bias=False), nn.BatchNorm2d(cfg.stem_width), nn.LeakyReLU(cfg.negative_slope)
            )
            c = cfg.stem_width
        stages = []
        for w in cfg.widths:
            stages.append(_Block(c, w, cfg.convs_per_block, cfg.negative_slope))
            c = w
        self.stages = nn.ModuleList(stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=cfg.negative_slope)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_maps(self, x: Tensor) -> list[Tensor]:
        """Output of every stage: [(B, widths[i], H / 2^(i+1), W / 2^(i+1))]."""
        maps = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        """Global average pool of the last stage: (B, D)."""
        return self.stage_maps(x)[-1].mean(dim=(2, 3))


class TesseraResNetExtractor(FeatureExtractor):
    """`FeatureExtractor` around a (pretrained) `TesseraResNet`; frozen."""

    def __init__(self, cfg: ResNetConfig, net: TesseraResNet | None = None) -> None:
        super().__init__(mean=cfg.mean, std=cfg.std)
        self.cfg = cfg
        self.name = cfg.name
        self.embed_dim = cfg.embed_dim
        self.input_size = cfg.input_size
        self.crop_pct = 1.0
        self.interpolation = "bilinear"
        self.feature_channels = tuple(cfg.widths)
        self.net = net if net is not None else TesseraResNet(cfg)
        freeze_(self.net)

    def _embed(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _forward_features(self, x: Tensor) -> list[Tensor]:
        return self.net.stage_maps(x)

    # -- (de)serialisation: config.json + model.safetensors -----------------------------------------------------------
    def save_pretrained(self, folder: str | Path, metadata: dict | None = None) -> Path:
        """Write `config.json` (architecture + `metadata`, e.g. the recipe and its data) and fp16 `model.safetensors`.

        Weights are stored in float16 to keep the committed asset small; they are loaded back as float32.
        """
        from tessera.io import atomic_write_bytes

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in self.net.state_dict().items()}
        tmp = folder / ".model.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt", "tessera": "features"})
        atomic_write_bytes(folder / "model.safetensors", tmp.read_bytes())
        tmp.unlink()
        cfg = {"kind": "tessera-resnet", "config": dataclasses.asdict(self.cfg), "metadata": metadata or {}}
        atomic_write_bytes(folder / "config.json", (json.dumps(cfg, indent=2) + "\n").encode())
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> TesseraResNetExtractor:
        """Load a folder written by `save_pretrained`; mismatched weights raise an error naming the file."""
        folder = Path(folder)
        cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing (a Tessera feature network folder has config.json and model.safetensors)")
        try:
            raw = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from exc
        if raw.get("kind") != "tessera-resnet":
            raise ValueError(f"{cfg_path}: not a Tessera ResNet config (kind={raw.get('kind')!r})")
        c = dict(raw["config"])
        for key in ("widths", "mean", "std"):
            c[key] = tuple(c[key])
        try:
            cfg = ResNetConfig(**c)
        except TypeError as exc:
            raise ValueError(f"{cfg_path}: bad config ({exc})") from exc
        net = TesseraResNet(cfg)
        try:
            state = load_file(str(w_path))
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
            raise ValueError(f"{w_path}: unreadable safetensors file ({exc})") from exc
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch
            raise ValueError(f"{w_path}: weights do not match the config in {cfg_path} ({str(exc).splitlines()[-1].strip()})") from exc
        if missing or unexpected:
            raise ValueError(
                f"{w_path}: weights do not match the config in {cfg_path} (missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})"
            )
        ext = cls(cfg, net)
        ext.metadata = raw.get("metadata", {})
        return ext
