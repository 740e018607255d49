"""The public tokenizer API: `ImageTokenizer` and `VideoTokenizer` (encode, decode, reconstruct, save, load).

Axis legend: B batch, T frames, C channels (3), H W image side, h w token grid, D latent channels, K codes.

    tok = ImageTokenizer.from_pretrained("runs/tokenizer/vqvae_f4_32px/final")
    tokens = tok.encode(images)          # float (B, 3, H, W) in [0, 1], a PIL image or a list of them -> int64 (B, h, w)
    images = tok.decode(tokens)          # -> float (B, 3, H, W) in [0, 1]
    tok.save_pretrained("my_tokenizer")  # config.json + model.safetensors, each written atomically

A tokenizer is an `nn.Module`: `forward(images)` is the training-time pass (reconstruction with the estimator's
gradient, indices, the quantizer's auxiliary loss and codebook metrics). `encode`, `decode` and `reconstruct` run
without gradients and in eval mode (the EMA codebook never moves during inference, whatever mode the module is in).
Internally images are mapped to [-1, 1] before the encoder and the decoder's output is mapped back to [0, 1].
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from tessera.config import ConfigError, from_dict, to_dict
from tessera.io import atomic_write_bytes
from tessera.quantize import VectorQuantizer
from tessera.tokenizer.config import TokenizerConfig

__all__ = ["ImageTokenizer", "VideoTokenizer", "TokenizerOutput", "load_tokenizer", "images_to_tensor"]

FORMAT = "tessera-tokenizer"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class TokenizerOutput(NamedTuple):
    """What a tokenizer's forward returns.

    Attributes:
        reconstruction: (B, C, H, W) or (B, T, C, H, W) on the [0, 1] scale, not clamped (the training target).
        indices: int64 (B, h, w) or (B, T, h, w) code indices.
        loss: the quantizer's weighted auxiliary loss (commitment, plus codebook loss for a learned codebook).
        metrics: the quantizer's detached metrics (usage, perplexity, quantization_error).
        latents: the encoder output before quantization, channel-first (B, D, h, w) or (B, D, T, h, w).
        quantized: the quantizer output (same layout as latents), carrying the estimator's gradient.
    """

    reconstruction: Tensor
    indices: Tensor
    loss: Tensor
    metrics: dict[str, Tensor]
    latents: Tensor
    quantized: Tensor


def _quantizer(cfg: TokenizerConfig) -> VectorQuantizer:
    # The "exact gradient" baselines are gradient paths of the training objective built on the straight-through
    # output (tessera.tokenizer.losses); the quantizer itself only knows rotation and STE.
    return VectorQuantizer(
        cfg.quantizer_dim,
        cfg.codebook_size,
        codebook_dim=cfg.codebook_dim,
        distance=cfg.distance,
        estimator=cfg.estimator if cfg.estimator in ("rotation", "ste") else "ste",
        codebook_update=cfg.codebook_update,
        ema_decay=cfg.ema_decay,
        commitment_weight=cfg.commitment_weight,
        kmeans_init=cfg.kmeans_init,
        dead_code_threshold=cfg.dead_code_threshold,
    )


class _Tokenizer(nn.Module):
    """Shared machinery: backbone construction, the forward pass, eval-mode inference, save/load."""

    _families: tuple[str, ...] = ()

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        if not isinstance(config, TokenizerConfig):
            raise TypeError(f"expected a TokenizerConfig, got {type(config).__name__}")
        if config.family not in self._families:
            raise ValueError(
                f"{type(self).__name__} cannot hold a {config.family!r} tokenizer "
                f"(use {'VideoTokenizer' if config.family == 'video' else 'ImageTokenizer'})"
            )
        self.config = config
        if config.family in ("vqvae", "vqgan"):
            from tessera.tokenizer.vqvae import ConvDecoder, ConvEncoder

            self.encoder: nn.Module = ConvEncoder(config)
            self.decoder: nn.Module = ConvDecoder(config)
        elif config.family == "vit_vqgan":
            from tessera.tokenizer.vit_vqgan import ViTDecoder, ViTEncoder

            self.encoder, self.decoder = ViTEncoder(config), ViTDecoder(config)
        else:
            from tessera.tokenizer.video import VideoDecoder, VideoEncoder

            self.encoder, self.decoder = VideoEncoder(config), VideoDecoder(config)
        self.quantizer = _quantizer(config)

    @classmethod
    def from_name(cls, name: str, **overrides: Any):
        """A freshly initialised tokenizer from a preset name (see `tessera.tokenizer.PRESETS`)."""
        return cls(TokenizerConfig.from_name(name, **overrides))

    # -- building blocks used by forward and by training objectives ---------------------------------------------
    def encode_latents(self, images: Tensor) -> Tensor:
        """Encoder output (before quantization) of images on the [0, 1] scale."""
        return self.encoder(images * 2.0 - 1.0)

    def decode_latents(self, quantized: Tensor) -> Tensor:
        """Decoder output on the [0, 1] scale (not clamped) for a quantized latent map."""
        return (self.decoder(quantized) + 1.0) * 0.5

    @property
    def last_layer(self) -> Tensor:
        """The decoder's output weight (VQGAN's adaptive weight compares gradient norms there)."""
        return self.decoder.last_layer

    def forward(self, images: Tensor) -> TokenizerOutput:
        """Training-time pass on a float batch in [0, 1] (no input conversion; see `encode` for that)."""
        z = self.encode_latents(images)
        q = self.quantizer(z)
        return TokenizerOutput(self.decode_latents(q.quantized), q.indices, q.loss, q.metrics, z, q.quantized)

    # -- inference ---------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for m, mode in modes:
                m.training = mode

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.encoder.parameters())
        return p.device, p.dtype

    def _check_tokens(self, tokens: Tensor, rank: int) -> Tensor:
        if not isinstance(tokens, Tensor):
            raise TypeError(f"tokens must be an integer torch.Tensor, got {type(tokens).__name__}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer tensor, got {tokens.dtype}")
        if tokens.ndim == rank - 1:
            tokens = tokens.unsqueeze(0)
        if tokens.ndim != rank:
            raise ValueError(f"tokens must have {rank} axes (batch first), got shape {tuple(tokens.shape)}")
        if tokens.numel() == 0:
            raise ValueError(f"tokens is empty (shape {tuple(tokens.shape)}): an empty batch has nothing to decode")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.codebook_size):
            raise ValueError(
                f"token ids must lie in [0, {self.config.codebook_size}), got range [{int(tokens.min())}, {int(tokens.max())}]"
            )
        return tokens.long()

    # -- persistence -------------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write `config.json` and `model.safetensors` into folder `path` (created; each file written atomically).

        Returns:
            The folder.
        """
        from safetensors.torch import save

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()}
        # Weights first, config last: a folder with a config.json always has the weights that belong to it.
        atomic_write_bytes(folder / WEIGHTS_NAME, save(state, metadata={"format": "pt", "tessera": FORMAT}))
        from tessera import __version__

        cfg = self.config
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "tessera_version": __version__,
            "config": to_dict(cfg),
            # Derived, for readers that do not import Tessera; ignored (and checked) on load.
            "grid_size": list(cfg.grid_size),
            "downsample_factor": cfg.downsample_factor,
            "tokens_per_image": cfg.tokens_per_image,
        }
        atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(meta, indent=2) + "\n").encode())
        return folder

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu"):
        """Load a tokenizer saved by `save_pretrained` (or a run folder whose `final/` holds one), in eval mode.

        Raises:
            FileNotFoundError: no config.json / model.safetensors at `path`.
            ValueError: the files are corrupt, of another format, or do not match each other.
        """
        folder = _resolve_folder(Path(path))
        config = read_config(folder)
        if cls is not _Tokenizer and config.family not in cls._families:
            other = "VideoTokenizer" if config.family == "video" else "ImageTokenizer"
            raise ValueError(f"{folder} holds a {config.family!r} tokenizer; load it with {other}.from_pretrained")
        target = cls if cls is not _Tokenizer else (VideoTokenizer if config.family == "video" else ImageTokenizer)
        model = target(config)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found (a tokenizer folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{weights}: cannot read the weights (truncated or corrupt safetensors file: {exc})") from exc
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{weights} does not match {folder / CONFIG_NAME}: {exc}") from exc
        return model.to(device).eval()


def _resolve_folder(path: Path) -> Path:
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / "final" / CONFIG_NAME).is_file():  # a training run folder
        return path / "final"
    if path.is_file():
        raise ValueError(f"{path} is a file; pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    raise FileNotFoundError(f"no tokenizer at {path}: {path / CONFIG_NAME} not found")


def read_config(folder: str | os.PathLike[str]) -> TokenizerConfig:
    """The `TokenizerConfig` stored in a tokenizer folder's config.json (strictly checked)."""
    path = _resolve_folder(Path(folder)) / CONFIG_NAME
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a Tessera tokenizer config (missing \"format\": \"{FORMAT}\")")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta['format_version']} is newer than this Tessera supports ({FORMAT_VERSION})")
    try:
        config = from_dict(TokenizerConfig, meta.get("config", {}), prefix="config")
    except ConfigError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if "grid_size" in meta and list(meta["grid_size"]) != list(config.grid_size):
        raise ValueError(f"{path}: grid_size {meta['grid_size']} does not match the config ({list(config.grid_size)})")
    return config


# -- input conversion -------------------------------------------------------------------------------------------------
def _pil_to_tensor(img: Any, size: int) -> Tensor:
    """RGB float (3, size, size) in [0, 1]; other sizes are resized (shorter side) and centre-cropped."""
    import numpy as np
    from PIL import Image

    img = img.convert("RGB")
    if img.size != (size, size):
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC, reducing_gap=3.0)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a core dependency
        return False
    return isinstance(x, Image.Image)


def images_to_tensor(images: Any, image_size: int) -> Tensor:
    """Convert images to a float batch (B, 3, H, W) in [0, 1].

    Accepts a float tensor (B, 3, H, W) or (3, H, W) in [0, 1], a PIL image, or a list of PIL images / (3, H, W)
    tensors. PIL images of another size are resized and centre-cropped to `image_size`; tensors are used as given.

    Raises:
        TypeError: integer tensors (divide uint8 images by 255 first) or unsupported objects.
        ValueError: wrong shape, values outside [0, 1], NaN/Inf, or an empty list.
    """
    if _is_pil(images):
        return _pil_to_tensor(images, image_size).unsqueeze(0)
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if len(images) == 0:
            raise ValueError("got an empty list of images")
        parts = [_pil_to_tensor(im, image_size) if _is_pil(im) else im for im in images]
        for i, p in enumerate(parts):
            if not isinstance(p, Tensor) or p.ndim != 3:
                raise TypeError(f"image {i}: expected a PIL image or a (3, H, W) tensor, got {type(p).__name__}")
        if len({tuple(p.shape) for p in parts}) > 1:
            raise ValueError(f"images in a list must share one shape, got {sorted({tuple(p.shape) for p in parts})}")
        images = torch.stack(parts)
    if not isinstance(images, Tensor):
        raise TypeError(f"expected images as a float tensor in [0, 1], a PIL image or a list of them, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"image tensors must be float in [0, 1], got {images.dtype} (divide uint8 images by 255)")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    return _check_range(images)


def _check_range(x: Tensor) -> Tensor:
    if x.numel() == 0:
        raise ValueError(f"got an empty image batch of shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or Inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"image values must lie in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
    return x.clamp(0.0, 1.0)


class ImageTokenizer(_Tokenizer):
    """Discrete image tokenizer: images <-> (B, h, w) code indices. Families: vqvae, vqgan, vit_vqgan.

    Args:
        config: a `TokenizerConfig` (or use `ImageTokenizer.from_name(preset)` / `.from_pretrained(path)`).
    """

    _families = ("vqvae", "vqgan", "vit_vqgan")

    def _prepare(self, images: Any) -> Tensor:
        x = images_to_tensor(images, self.config.image_size)
        f = self.config.downsample_factor
        h, w = x.shape[-2:]
        if self.config.is_transformer and (h, w) != (self.config.image_size,) * 2:
            raise ValueError(f"this tokenizer takes {self.config.image_size}x{self.config.image_size} images, got {h}x{w}")
        if h % f or w % f:
            raise ValueError(f"image side {h}x{w} is not divisible by the downsample factor {f}")
        device, dtype = self._device_dtype()
        return x.to(device=device, dtype=dtype)

    def encode(self, images: Any, *, batch_size: int = 256) -> Tensor:
        """Code indices of images.

        Args:
            images: float tensor (B, 3, H, W) or (3, H, W) in [0, 1], a PIL image, or a list of PIL images/tensors.
            batch_size: images per forward pass (bounds memory).

        Returns:
            int64 tensor (B, h, w) on the tokenizer's device (B = 1 for a single image).
        """
        x = self._prepare(images)
        with self._inference():
            out = [self.quantizer(self.encode_latents(x[i : i + batch_size])).indices for i in range(0, len(x), batch_size)]
        return torch.cat(out)

    def decode(self, tokens: Tensor, *, batch_size: int = 256) -> Tensor:
        """Images of code indices.

        Args:
            tokens: integer tensor (B, h, w) or (h, w) with ids in [0, codebook_size).

        Returns:
            float tensor (B, 3, h*f, w*f) in [0, 1] on the tokenizer's device.
        """
        tokens = self._check_tokens(tokens, 3)
        if self.config.is_transformer and tuple(tokens.shape[1:]) != self.config.grid_size:
            raise ValueError(f"this tokenizer decodes {self.config.grid_size} token grids, got {tuple(tokens.shape[1:])}")
        device, _ = self._device_dtype()
        tokens = tokens.to(device)
        with self._inference():
            out = [
                self.decode_latents(self.quantizer.codes_to_vectors(tokens[i : i + batch_size])).clamp(0.0, 1.0)
                for i in range(0, len(tokens), batch_size)
            ]
        return torch.cat(out)

    def reconstruct(self, images: Any, *, batch_size: int = 256) -> Tensor:
        """decode(encode(images)): float (B, 3, H, W) in [0, 1]."""
        return self.decode(self.encode(images, batch_size=batch_size), batch_size=batch_size)


class VideoTokenizer(_Tokenizer):
    """Discrete video tokenizer: clips (B, T, 3, H, W) in [0, 1] <-> (B, T, h, w) code indices."""

    _families = ("video",)

    def _prepare(self, clips: Any) -> Tensor:
        if not isinstance(clips, Tensor):
            if isinstance(clips, Sequence) and clips and all(isinstance(c, Tensor) for c in clips):
                clips = torch.stack(list(clips))
            else:
                raise TypeError(f"expected clips as a float tensor (B, T, 3, H, W) in [0, 1], got {type(clips).__name__}")
        if not clips.is_floating_point():
            raise TypeError(f"clips must be float in [0, 1], got {clips.dtype} (divide uint8 frames by 255)")
        if clips.ndim == 4:
            clips = clips.unsqueeze(0)
        size = self.config.image_size
        if clips.ndim != 5 or clips.shape[2] != 3 or tuple(clips.shape[-2:]) != (size, size):
            raise ValueError(f"expected clips of shape (B, T, 3, {size}, {size}) or (T, 3, {size}, {size}), got {tuple(clips.shape)}")
        if clips.shape[1] > self.config.num_frames:
            raise ValueError(f"clips have {clips.shape[1]} frames; this tokenizer takes at most {self.config.num_frames}")
        device, dtype = self._device_dtype()
        return _check_range(clips).to(device=device, dtype=dtype)

    def encode(self, clips: Any, *, batch_size: int = 32) -> Tensor:
        """Code indices of clips: float (B, T, 3, H, W) or (T, 3, H, W) in [0, 1] -> int64 (B, T, h, w)."""
        x = self._prepare(clips)
        with self._inference():
            out = [self.quantizer(self.encode_latents(x[i : i + batch_size])).indices for i in range(0, len(x), batch_size)]
        return torch.cat(out)

    def decode(self, tokens: Tensor, *, batch_size: int = 32) -> Tensor:
        """Clips of code indices: integer (B, T, h, w) -> float (B, T, 3, H, W) in [0, 1]."""
        tokens = self._check_tokens(tokens, 4)
        if tuple(tokens.shape[2:]) != self.config.grid_size or tokens.shape[1] > self.config.num_frames:
            raise ValueError(
                f"this tokenizer decodes (B, T<={self.config.num_frames}, {self.config.grid_size[0]}, "
                f"{self.config.grid_size[1]}) tokens, got {tuple(tokens.shape)}"
            )
        device, _ = self._device_dtype()
        tokens = tokens.to(device)
        with self._inference():
            out = [
                self.decode_latents(self.quantizer.codes_to_vectors(tokens[i : i + batch_size])).clamp(0.0, 1.0)
                for i in range(0, len(tokens), batch_size)
            ]
        return torch.cat(out)

    def reconstruct(self, clips: Any, *, batch_size: int = 32) -> Tensor:
        """decode(encode(clips))."""
        return self.decode(self.encode(clips, batch_size=batch_size), batch_size=batch_size)

    # Video models are channel-first over (T, h, w) inside; the public layout is (B, T, C, H, W).
    def encode_latents(self, clips: Tensor) -> Tensor:
        return self.encoder(clips * 2.0 - 1.0)  # (B, D, T, h, w)


def load_tokenizer(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> ImageTokenizer | VideoTokenizer:
    """Load an image or video tokenizer from a folder, choosing the class from its config."""
    return _Tokenizer.from_pretrained(path, device=device)
