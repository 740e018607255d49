"""Frozen image feature extractors behind one interface, and the registry that loads them by name or path.

    from tessera.features import load_extractor, list_extractors
    ext = load_extractor("tessera-resnet-s")            # shipped with the package, no download
    emb = ext.embed(images)                             # images (B, 3, H, W) in [0, 1] -> (B, ext.embed_dim)
    maps = ext.forward_features(images)                 # [(B, C_i, H_i, W_i)] for perceptual losses

Names `load_extractor` understands:
- a registered name (`list_extractors()`): the Tessera feature networks shipped under `tessera/assets/features/`;
- `timm:<model name>` (extra `vision`), e.g. `timm:vit_base_patch16_clip_224.openai` (CAML's CLIP encoder) or
  `timm:resnet34`; pretrained weights come from timm's usual sources unless `pretrained=False` or a local
  `checkpoint=` file is given;
- `open_clip:<model>[/<pretrained tag or file>]` (extra `vision`), e.g. `open_clip:ViT-B-16/openai`;
- `hf:<repo id or folder>` (extra `hf`): a Hugging Face vision model (CLIP vision tower, ViT, DINOv2, ConvNeXt,
  ResNet, ...) with its image processor's normalisation;
- `tokenizer:<folder>`: the encoder of a trained Tessera `ImageTokenizer` (pooled pre-quantisation latents);
- a folder path: a Tessera feature network folder (`config.json` with kind `tessera-resnet`), a Tessera tokenizer
  folder, or a Hugging Face model folder (`config.json` with `model_type`).

Tessera never downloads anything itself; the timm/open_clip/HF adapters use those libraries' own loading, which only
touches the network when the user asks for weights that are not on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tessera.features.base import FeatureExtractor, check_images, freeze_, resize_center_crop_tensor
from tessera.features.resnet import RESNET_PRESETS, ResNetConfig, TesseraResNet, TesseraResNetExtractor

__all__ = [
    "FeatureExtractor",
    "check_images",
    "freeze_",
    "resize_center_crop_tensor",
    "ResNetConfig",
    "TesseraResNet",
    "TesseraResNetExtractor",
    "RESNET_PRESETS",
    "load_extractor",
    "list_extractors",
    "register_extractor",
    "asset_folder",
    "DEFAULT_EXTRACTOR",
]

DEFAULT_EXTRACTOR = "tessera-resnet-s"
_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str, factory: Callable[..., FeatureExtractor]) -> None:
    """Make `load_extractor(name, **kw)` call `factory(**kw)`."""
    _REGISTRY[name] = factory


def asset_folder(name: str) -> Path:
    """Where the package ships the weights of the Tessera feature network `name`."""
    from tessera.paths import package_asset

    return package_asset("features", name)


def _shipped(name: str) -> Callable[..., FeatureExtractor]:
    def load(**kw) -> FeatureExtractor:
        if kw:
            raise TypeError(f"{name} takes no options, got {sorted(kw)}")
        folder = asset_folder(name)
        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"{folder}/model.safetensors: the pretrained {name} weights are not in this installation; reproduce them "
                f"with `tessera features pretrain --config configs/features/{name.replace('-', '_')}.yaml`"
            )
        return TesseraResNetExtractor.from_pretrained(folder)

    return load


def _random_init(name: str) -> Callable[..., FeatureExtractor]:
    def load(**kw) -> FeatureExtractor:
        if kw:
            raise TypeError(f"{name} takes no options, got {sorted(kw)}")
        return TesseraResNetExtractor(RESNET_PRESETS[name])

    return load


register_extractor("tessera-resnet-s", _shipped("tessera-resnet-s"))
# Random weights, for tests and wiring checks only (the name says so).
register_extractor("tessera-resnet-debug", _random_init("tessera-resnet-debug"))


def _untrained(**kw) -> FeatureExtractor:
    """tessera-resnet-s's architecture at its seeded random initialisation (feature-extractor ablation)."""
    import dataclasses

    import torch

    if kw:
        raise TypeError(f"tessera-resnet-s-untrained takes no options, got {sorted(kw)}")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ext = TesseraResNetExtractor(dataclasses.replace(RESNET_PRESETS["tessera-resnet-s"], name="tessera-resnet-s-untrained"))
    return ext


def _pixels(size: int = 8) -> FeatureExtractor:
    from tessera.features.pixels import PixelExtractor

    return PixelExtractor(size)


register_extractor("tessera-resnet-s-untrained", _untrained)
register_extractor("pixels-8", _pixels)


def list_extractors() -> list[str]:
    """Registered names, plus the prefixes understood by `load_extractor` (`timm:`, `open_clip:`, `hf:`, `tokenizer:`)."""
    return sorted(_REGISTRY) + ["timm:<name>", "open_clip:<name>[/<tag>]", "hf:<repo or folder>", "tokenizer:<folder>"]


def load_extractor(name_or_path: str | Path, **kwargs) -> FeatureExtractor:
    """Load a frozen feature extractor by registered name, `family:name`, or folder path (see the module docstring).

    Raises:
        ValueError: unknown name, or a folder that is not a recognised extractor.
        ImportError: the optional extra needed for the family is not installed (the message names it).
    """
    spec = str(name_or_path)
    if spec in _REGISTRY:
        return _REGISTRY[spec](**kwargs)
    family, sep, rest = spec.partition(":")
    if sep and family in ("timm", "open_clip", "hf", "tokenizer") and rest:
        if family == "timm":
            from tessera.features.adapters import TimmExtractor

            return TimmExtractor.from_name(rest, **kwargs)
        if family == "open_clip":
            from tessera.features.adapters import OpenClipExtractor

            model, _, tag = rest.partition("/")
            return OpenClipExtractor.from_name(model, pretrained=tag or None, **kwargs)
        if family == "hf":
            from tessera.features.adapters import HFExtractor

            return HFExtractor.from_pretrained(rest, **kwargs)
        from tessera.features.adapters import TokenizerExtractor

        return TokenizerExtractor.from_pretrained(rest, **kwargs)
    path = Path(spec)
    if path.is_dir():
        cfg_path = path / "config.json"
        raw = {}
        if cfg_path.is_file():
            try:
                raw = json.loads(cfg_path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from exc
        if raw.get("kind") == "tessera-resnet":
            if kwargs:
                raise TypeError(f"Tessera feature networks take no options, got {sorted(kwargs)}")
            return TesseraResNetExtractor.from_pretrained(path)
        if "model_type" in raw:
            from tessera.features.adapters import HFExtractor

            return HFExtractor.from_pretrained(str(path), **kwargs)
        from tessera.features.adapters import TokenizerExtractor

        if TokenizerExtractor.looks_like(path):
            return TokenizerExtractor.from_pretrained(str(path), **kwargs)
        raise ValueError(f"{path}: not a Tessera feature network, Tessera tokenizer or Hugging Face model folder")
    if sep or path.suffix or "/" in spec:
        raise ValueError(f"unknown extractor {spec!r}: not a registered name, a known `family:` prefix, or an existing folder")
    raise ValueError(f"unknown extractor {spec!r}; registered: {', '.join(sorted(_REGISTRY))}; or use {', '.join(list_extractors()[-4:])}")
