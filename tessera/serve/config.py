"""Settings of `tessera serve`: where it reads models and writes files, and the limits every request is held to.

    cfg = ServeConfig(runs_dir="runs", data_dir="runs/serve", limits=ServeLimits(max_upload_bytes=2**20))
    app = create_app(config=cfg)

Both dataclasses load from YAML through `tessera.config` (unknown keys and wrong types are errors); `serve_debug()`
is the small twin used by tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ServeLimits", "ServeConfig", "serve_debug", "IMAGE_FORMATS"]

# PIL format names accepted by default; the type is sniffed from the bytes, never taken from the client's header.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")


@dataclass
class ServeLimits:
    """Per-request limits (a request over any of them is refused with a 4xx that names the limit)."""

    max_upload_bytes: int = 4 * 1024 * 1024  # one uploaded file
    max_request_bytes: int = 32 * 1024 * 1024  # one whole request body (all files and fields)
    max_image_side: int = 4096  # pixels, either side, checked from the header before decoding
    max_files: int = 64  # images in one request (few-shot support + queries, chat images)
    allowed_formats: tuple[str, ...] = IMAGE_FORMATS
    request_timeout_s: float = 60.0  # model work per request; generation stops at the deadline
    max_new_tokens: int = 256  # chat: tokens generated per turn at most
    max_prompt_chars: int = 4000
    max_way: int = 20  # few-shot: classes per request (the model's own maximum also applies)

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_request_bytes", "max_image_side", "max_files", "max_new_tokens", "max_prompt_chars", "max_way"):
            if getattr(self, name) <= 0:
                raise ValueError(f"limits.{name} must be > 0, got {getattr(self, name)}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"limits.request_timeout_s must be > 0, got {self.request_timeout_s}")
        unknown = [f for f in self.allowed_formats if f not in IMAGE_FORMATS]
        if unknown or not self.allowed_formats:
            raise ValueError(f"limits.allowed_formats: {unknown or 'empty'} (choose from {', '.join(IMAGE_FORMATS)})")


@dataclass
class ServeConfig:
    """The app: model folders are discovered under `runs_dir`; the app writes only under `data_dir`."""

    runs_dir: str | None = None  # default: tessera.paths.runs_dir()
    data_dir: str | None = None  # default: <runs_dir>/serve
    host: str = "127.0.0.1"  # loopback by default: the app has no authentication
    port: int = 8000
    chat_backend: str = "auto"  # "auto": the best registered backend that accepts the checkpoint; or a backend name
    limits: ServeLimits = field(default_factory=ServeLimits)
    scan_depth: int = 5  # folder levels searched for model folders under runs_dir
    model_cache: int = 4  # loaded models kept in memory


def serve_debug() -> ServeConfig:
    """Small limits so tests can hit every one of them quickly."""
    return ServeConfig(limits=ServeLimits(max_upload_bytes=256 * 1024, max_request_bytes=2 * 1024 * 1024, max_image_side=512,
                                          max_files=16, request_timeout_s=20.0, max_new_tokens=80))
