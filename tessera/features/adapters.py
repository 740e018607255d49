"""Adapters that put third-party backbones (timm, open_clip, Hugging Face) and Tessera's tokenizer encoder behind
the `FeatureExtractor` interface.

Axis legend: B batch, C channels, H W height and width, T tokens, D embedding size.

Each adapter reads the backbone's own preprocessing (input size, crop fraction, interpolation, mean/std) from the
library, so `embed(images in [0, 1])` reproduces the library's evaluation transform on tensors. The libraries are
optional extras (`pip install tessera[vision]` for timm/open_clip, `tessera[hf]` for transformers) and imported only
when an adapter is built. Tessera itself never downloads: weights come from the library's usual loading (its cache,
or the hub when the user's machine allows it), or from a local file/folder the user names.

CAML's encoders (papers-digest B1) map to: `timm:vit_base_patch16_clip_224.openai` (768-d pre-projection CLIP
features), `timm:vit_huge_patch14_clip_224.laion2b` (1280-d) and `timm:resnet34` (512-d).
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tessera.features.base import FeatureExtractor, freeze_

__all__ = ["TimmExtractor", "OpenClipExtractor", "HFExtractor", "TokenizerExtractor"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _require(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"this extractor needs `{module}`: install it with `pip install tessera[{extra}]`") from exc


def _size(value: Any) -> int:
    if isinstance(value, (tuple, list)):
        if len(value) == 3:  # (C, H, W)
            value = value[1:]
        if value[0] != value[-1]:
            warnings.warn(f"non-square input size {tuple(value)}: using {value[0]}", stacklevel=3)
        return int(value[0])
    return int(value)


# -- timm ---------------------------------------------------------------------------------------------------------------
class TimmExtractor(FeatureExtractor):
    """A timm model with its classifier removed (`num_classes=0`): `embed` is timm's pooled pre-logits output."""

    def __init__(self, model: nn.Module, name: str = "timm") -> None:
        timm_data = _require("timm.data", "vision")
        cfg = timm_data.resolve_model_data_config(model)
        super().__init__(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
        self.model = freeze_(model)
        self.name = name
        self.input_size = _size(cfg["input_size"])
        self.crop_pct = float(cfg.get("crop_pct") or 1.0)
        self.interpolation = str(cfg.get("interpolation", "bicubic"))
        self.embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self.feature_channels = tuple(int(i["num_chs"]) for i in getattr(model, "feature_info", []) or [])

    @classmethod
    def from_name(cls, model_name: str, pretrained: bool = True, checkpoint: str | Path | None = None, **model_kwargs: Any) -> TimmExtractor:
        """`timm.create_model(model_name, num_classes=0, ...)`.

        Args:
            model_name: any timm name, with an optional pretrained tag (`vit_base_patch16_clip_224.openai`).
            pretrained: load timm's pretrained weights (from its cache or the hub, as timm does).
            checkpoint: a local weights file (.safetensors/.pth/.bin) to load instead; implies pretrained.
            **model_kwargs: passed to `create_model` (e.g. `img_size=`, `depth=` for small test models).
        """
        timm = _require("timm", "vision")
        kwargs: dict[str, Any] = dict(model_kwargs)
        if checkpoint is not None:
            path = Path(checkpoint)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: checkpoint file not found")
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
            pretrained = True
        try:
            model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
        except RuntimeError as exc:
            raise ValueError(f"timm:{model_name}: weights do not match the model ({exc})") from exc
        return cls(model, name=f"timm:{model_name}")

    def _embed(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _forward_features(self, x: Tensor) -> list[Tensor]:
        if not hasattr(self.model, "forward_intermediates"):
            raise NotImplementedError(f"{self.name}: this timm model has no forward_intermediates")
        return list(self.model.forward_intermediates(x, intermediates_only=True))


# -- open_clip ----------------------------------------------------------------------------------------------------------
class OpenClipExtractor(FeatureExtractor):
    """The image tower of an open_clip model; `embed` = `encode_image` (projected), or the pre-projection features."""

    def __init__(self, model: nn.Module, name: str = "open_clip", pre_projection: bool = False) -> None:
        visual = model.visual
        pcfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
        super().__init__(mean=tuple(pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073))), std=tuple(pcfg.get("std", (0.26862954, 0.26130258, 0.27577711))))
        self.name = name
        self.model = freeze_(model)
        self.input_size = _size(pcfg.get("size", getattr(visual, "image_size", 224)))
        self.crop_pct = 1.0  # open_clip's eval transform: resize the shorter side to the input size, center crop
        self.interpolation = str(pcfg.get("interpolation", "bicubic"))
        self.pre_projection = pre_projection
        if pre_projection:
            if getattr(visual, "proj", None) is None or not hasattr(visual, "transformer"):
                raise ValueError(f"{name}: pre_projection needs a ViT image tower with a projection")
            visual.proj = None  # the pooled, layer-normed CLS token before the image-text projection
            self.embed_dim = int(visual.transformer.width)
        else:
            self.embed_dim = int(visual.output_dim)

    @classmethod
    def from_name(cls, model_name: str, pretrained: str | None = None, pre_projection: bool = False, **model_kwargs: Any) -> OpenClipExtractor:
        """`open_clip.create_model(model_name, pretrained=...)`; `pretrained` is a tag (`openai`) or a local file."""
        open_clip = _require("open_clip", "vision")
        if pretrained and ("/" in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors"))) and not Path(pretrained).is_file():
            raise FileNotFoundError(f"{pretrained}: checkpoint file not found")
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, **model_kwargs)
        except RuntimeError as exc:
            raise ValueError(f"open_clip:{model_name}: weights do not match the model ({exc})") from exc
        return cls(model, name=f"open_clip:{model_name}" + (f"/{pretrained}" if pretrained else ""), pre_projection=pre_projection)

    def _embed(self, x: Tensor) -> Tensor:
        return self.model.encode_image(x)

    def _forward_features(self, x: Tensor) -> list[Tensor]:
        visual = self.model.visual
        if not hasattr(visual, "forward_intermediates"):
            raise NotImplementedError(f"{self.name}: this open_clip version has no forward_intermediates")
        out = visual.forward_intermediates(x, intermediates_only=True)
        return list(out["image_intermediates"] if isinstance(out, dict) else out)


# -- Hugging Face transformers ------------------------------------------------------------------------------------------
# Models whose `pooler_output` is a dense+tanh head trained for another objective: take the CLS token instead.
_CLS_NOT_POOLER = {"vit", "deit", "beit", "data2vec-vision"}
# Full two-tower checkpoints: load only the vision tower.
_VISION_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}


class HFExtractor(FeatureExtractor):
    """A Hugging Face vision backbone with its image processor's normalisation.

    `embed`: the CLIP/SigLIP pooled output (post-LayerNorm CLS, pre-projection, as CAML uses), the CLS token for ViT-like
    models, or the pooled feature map for convolutional ones. `forward_features`: every hidden state as a map.
    """

    def __init__(self, model: nn.Module, processor: Any = None, name: str = "hf", pool: str = "auto") -> None:
        mean, std, size, crop_pct = _IMAGENET_MEAN, _IMAGENET_STD, None, 1.0
        if processor is not None:
            mean = tuple(getattr(processor, "image_mean", None) or mean)
            std = tuple(getattr(processor, "image_std", None) or std)
            crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
            resize = getattr(processor, "size", None) or {}
            if crop:
                size = int(crop.get("height", crop.get("shortest_edge", 0)))
                if resize.get("shortest_edge"):
                    crop_pct = size / int(resize["shortest_edge"])
            elif resize:
                size = int(resize.get("height", resize.get("shortest_edge", 0))) or None
        config = model.config
        if size is None:
            size = int(getattr(config, "image_size", 224))
            if processor is None:
                warnings.warn(f"{name}: no image processor found; using ImageNet mean/std at {size}px", stacklevel=2)
        super().__init__(mean=mean, std=std)
        self.model = freeze_(model)
        self.name = name
        self.input_size = size
        self.crop_pct = crop_pct
        self.interpolation = "bicubic"
        self.model_type = str(getattr(config, "model_type", ""))
        if pool not in ("auto", "pooler", "cls", "mean"):
            raise ValueError(f"pool must be 'auto', 'pooler', 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.patch_size = getattr(config, "patch_size", None)
        with torch.no_grad():  # one small forward fixes D and the map channels, whatever the architecture
            probe = self._outputs(torch.zeros(1, 3, size, size))
            self.embed_dim = int(self._pool(probe).shape[-1])
            self.feature_channels = tuple(int(m.shape[1]) for m in self._maps(probe, size, size))

    @classmethod
    def from_pretrained(cls, name_or_path: str, pool: str = "auto", **model_kwargs: Any) -> HFExtractor:
        """Load model and image processor with `from_pretrained` (a hub id or a local folder)."""
        transformers = _require("transformers", "hf")
        config = transformers.AutoConfig.from_pretrained(name_or_path)
        tower = _VISION_TOWERS.get(config.model_type)
        model_cls = getattr(transformers, tower) if tower else transformers.AutoModel
        try:
            model = model_cls.from_pretrained(name_or_path, **model_kwargs)
        except (RuntimeError, OSError) as exc:
            raise ValueError(f"hf:{name_or_path}: cannot load the model ({exc})") from exc
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(name_or_path)
        except (OSError, ValueError, KeyError):
            processor = None
        return cls(model, processor, name=f"hf:{name_or_path}", pool=pool)

    def _outputs(self, x: Tensor):
        return self.model(pixel_values=x, output_hidden_states=True, return_dict=True)

    def _pool(self, out) -> Tensor:
        pool = self.pool
        last = out.last_hidden_state
        pooled = getattr(out, "pooler_output", None)
        if pool == "auto":
            if last.ndim == 4:
                pool = "pooler" if pooled is not None else "mean"
            else:
                pool = "cls" if self.model_type in _CLS_NOT_POOLER or pooled is None else "pooler"
        if pool == "pooler":
            if pooled is None:
                raise ValueError(f"{self.name}: the model has no pooler output (use pool='cls' or 'mean')")
            return pooled.flatten(1)
        if pool == "cls":
            if last.ndim != 3:
                raise ValueError(f"{self.name}: pool='cls' needs a token sequence")
            return last[:, 0]
        return last.mean(dim=(2, 3)) if last.ndim == 4 else last.mean(dim=1)

    def _maps(self, out, h: int, w: int) -> list[Tensor]:
        maps = []
        for hs in out.hidden_states or ():
            if hs.ndim == 4:
                maps.append(hs)
            elif hs.ndim == 3 and self.patch_size:
                gh, gw = h // int(self.patch_size), w // int(self.patch_size)
                prefix = hs.shape[1] - gh * gw  # CLS and register tokens
                if prefix < 0:
                    raise NotImplementedError(f"{self.name}: cannot lay out {hs.shape[1]} tokens on a {gh}x{gw} grid")
                maps.append(hs[:, prefix:].transpose(1, 2).reshape(hs.shape[0], hs.shape[2], gh, gw))  # (B, D, gh, gw)
        return maps

    def _embed(self, x: Tensor) -> Tensor:
        return self._pool(self._outputs(x))

    def _forward_features(self, x: Tensor) -> list[Tensor]:
        maps = self._maps(self._outputs(x), x.shape[2], x.shape[3])
        if not maps:
            raise NotImplementedError(f"{self.name}: no spatial hidden states")
        return maps


# -- Tessera tokenizer encoder ------------------------------------------------------------------------------------------
class TokenizerExtractor(FeatureExtractor):
    """The encoder of a trained Tessera `ImageTokenizer`: `embed` is the spatial mean of the pre-quantisation latents.

    `forward_features` returns the latent map itself. The tokenizer sees images at its own `image_size`.
    """

    def __init__(self, tokenizer: nn.Module, name: str = "tokenizer") -> None:
        super().__init__(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # encode_latents takes [0, 1] and rescales itself
        self.tokenizer = freeze_(tokenizer)
        self.name = name
        cfg = tokenizer.config
        self.input_size = int(cfg.image_size)
        self.crop_pct = 1.0
        self.interpolation = "bilinear"
        with torch.no_grad():
            z = self._latents(torch.zeros(1, 3, self.input_size, self.input_size))
        self.embed_dim = int(z.shape[1])
        self.feature_channels = (self.embed_dim,)

    @staticmethod
    def looks_like(folder: Path) -> bool:
        """A folder that `tessera.tokenizer` can load (has its config and weights)."""
        try:
            from tessera.tokenizer.tokenizer import read_config
        except ImportError:
            return False
        try:
            read_config(folder)
            return True
        except Exception:  # not a tokenizer folder
            return False

    @classmethod
    def from_pretrained(cls, path: str | Path) -> TokenizerExtractor:
        try:
            from tessera.tokenizer import ImageTokenizer
        except ImportError as exc:
            raise ImportError("the tokenizer extractor needs `tessera.tokenizer`, which this installation lacks") from exc
        tok = ImageTokenizer.from_pretrained(path)
        return cls(tok, name=f"tokenizer:{path}")

    def _latents(self, x: Tensor) -> Tensor:
        z = self.tokenizer.encode_latents(x)
        if z.ndim == 3:  # (B, T, D) token latents -> (B, D, T, 1)
            z = z.transpose(1, 2).unsqueeze(-1)
        return z  # (B, D, h, w)

    def _embed(self, x: Tensor) -> Tensor:
        return self._latents(x).mean(dim=(2, 3))

    def _forward_features(self, x: Tensor) -> list[Tensor]:
        return [self._latents(x)]
