"""Chat backends: what answers a chat turn. The default streams the plain multimodal decoder; others plug in.

A backend turns a `ChatRequest` into a stream of `ChatEvent`s (text pieces, finished images, a refusal, the end).
`register_chat_backend(name, factory, accepts=..., priority=...)` adds one; with `ServeConfig.chat_backend="auto"`
the app picks, for the chosen checkpoint folder, the registered backend of highest priority whose `accepts(folder)`
is true, falling back to "plain". A post-trained checkpoint (one whose folder has the `safety/` written by the
post-training recipes) is served this way through `SafeChatBackend`, registered below as

    register_chat_backend("safe", SafeChatBackend, accepts=_has_safety_layer, priority=10)

and other backends plug in the same way, with no change to the app.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

__all__ = [
    "ChatRequest",
    "ChatEvent",
    "ChatBackend",
    "PlainLMBackend",
    "SafeChatBackend",
    "register_chat_backend",
    "chat_backends",
    "select_chat_backend",
]


@dataclass
class ChatRequest:
    """One chat turn. `images` are placed where the prompt has `<image>` markers (else before the text)."""

    prompt: str
    images: list[Image.Image] = field(default_factory=list)
    max_new_tokens: int = 64
    draw: bool = False  # answer with exactly one image
    temperature: float = 0.0
    seed: int = 0
    deadline: float = float("inf")  # time.monotonic() after which generation stops


@dataclass
class ChatEvent:
    """kind: "text" (a new piece of text), "image" (a finished image), "refusal" (text), "stopped" (why), "done"."""

    kind: str
    text: str = ""
    image: Image.Image | None = None


class ChatBackend(Protocol):
    name: str

    def stream(self, request: ChatRequest) -> Iterator[ChatEvent]: ...


@dataclass
class _Registered:
    factory: Callable[[Path], ChatBackend]
    accepts: Callable[[Path], bool]
    priority: int


_BACKENDS: dict[str, _Registered] = {}
_LOCK = threading.Lock()


def register_chat_backend(
    name: str,
    factory: Callable[[Path], ChatBackend],
    *,
    accepts: Callable[[Path], bool] | None = None,
    priority: int = 0,
) -> None:
    """Register (or replace) a chat backend.

    Args:
        name: the name (`ServeConfig.chat_backend` / `tessera serve --chat-backend` select it explicitly).
        factory: folder of an LM checkpoint -> backend (called once per folder; the result is cached).
        accepts: whether "auto" may use this backend for a folder (default: every folder).
        priority: "auto" prefers higher priorities.
    """
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"chat backend name must be alphanumeric (with - or _), got {name!r}")
    with _LOCK:
        _BACKENDS[name] = _Registered(factory, accepts or (lambda folder: True), priority)


def chat_backends() -> list[str]:
    """Registered backend names, highest priority first."""
    with _LOCK:
        return [n for n, _ in sorted(_BACKENDS.items(), key=lambda kv: -kv[1].priority)]


def select_chat_backend(choice: str, folder: Path) -> tuple[str, Callable[[Path], ChatBackend]]:
    """(name, factory) of the backend for `folder`: `choice` by name, or "auto" as described above."""
    with _LOCK:
        items = dict(_BACKENDS)
    if choice != "auto":
        if choice not in items:
            raise ValueError(f"chat backend {choice!r} is not registered (registered: {', '.join(items) or 'none'})")
        return choice, items[choice].factory
    for name, reg in sorted(items.items(), key=lambda kv: -kv[1].priority):
        if reg.accepts(folder):
            return name, reg.factory
    raise ValueError("no registered chat backend accepts this checkpoint")


def _prompt_items(prompt: str, images: list[Any]) -> list[Any]:
    from tessera.lm.processor import place_images

    return place_images(prompt, images, "images were attached")


class PlainLMBackend:
    """The multimodal decoder as trained, streamed token by token (text pieces as whole characters, images whole)."""

    name = "plain"

    def __init__(self, folder: Path) -> None:
        from tessera.lm.pretrained import load_pretrained

        self.model, self.processor = load_pretrained(folder)
        self.model.eval()
        self._lock = threading.Lock()  # one generation at a time per model: CPU threads are the bottleneck anyway

    def stream(self, request: ChatRequest) -> Iterator[ChatEvent]:
        import numpy as np
        import torch

        from tessera.lm.detokenize import detokenize_stream
        from tessera.lm.generate import ModalityConstraint, SamplingConfig, stream_generate

        proc, vocab = self.processor, self.processor.vocab
        items = _prompt_items(request.prompt, request.images)
        if not items:
            raise ValueError("the prompt is empty: give some text and/or an image")
        enc = proc.encode(items, add_bos=True, max_length=self.model.cfg.max_seq_len - request.max_new_tokens)
        constraint = ModalityConstraint(vocab, proc.image_tokens, allow_images=True, force_image=request.draw,
                                        stop_after_image=request.draw)
        max_new = min(request.max_new_tokens, self.model.cfg.max_seq_len - len(enc.ids))
        if request.draw:
            max_new = max(max_new, proc.image_tokens + 2)
        late: list[bool] = []

        def until_deadline(gen: Iterator[torch.Tensor]) -> Iterator[int]:
            for token in gen:
                if time.monotonic() > request.deadline:
                    late.append(True)
                    return
                yield int(token[0])

        with self._lock:
            gen = stream_generate(self.model, torch.tensor([enc.ids]), patches=enc.patches, max_new_tokens=max_new,
                                  sampling=SamplingConfig(request.temperature), stop_tokens=[vocab.eos_id],
                                  constraint=constraint, generator=torch.Generator().manual_seed(request.seed))
            for piece in detokenize_stream(until_deadline(gen), proc, [vocab.eos_id]):
                if piece.kind == "text":
                    yield ChatEvent("text", piece.text)
                elif piece.kind == "image":
                    arr = (piece.image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                    yield ChatEvent("image", image=Image.fromarray(arr))
                elif not late:
                    yield ChatEvent("stopped", f"max_new_tokens reached inside an image ({piece.codes} of {proc.image_tokens} codes)")
            if late:
                yield ChatEvent("stopped", "the request's time limit was reached")
        yield ChatEvent("done")


register_chat_backend("plain", PlainLMBackend, priority=-100)


def _has_safety_layer(folder: Path) -> bool:
    return any((f / "safety" / "safety.json").is_file() for f in (folder, folder / "final"))


class SafeChatBackend:
    """A post-trained checkpoint behind its safety layer (`tessera.lm.safety.load_safe_chat`).

    The safety layer checks the whole reply before releasing it, so text arrives in word-sized pieces only after the
    reply has passed; a blocked prompt or reply becomes a "refusal" event with the configured refusal text.
    """

    name = "safe"

    def __init__(self, folder: Path) -> None:
        from tessera.lm.safety import load_safe_chat

        self.chat = load_safe_chat(folder)
        self._lock = threading.Lock()

    def stream(self, request: ChatRequest) -> Iterator[ChatEvent]:
        import numpy as np

        from tessera.lm.generate import SamplingConfig

        if not request.prompt and not request.images:
            raise ValueError("the prompt is empty: give some text and/or an image")
        messages = [{"role": "user", "content": request.prompt}]
        with self._lock:
            chunks = list(self.chat.chat(messages, images=list(request.images), max_new_tokens=request.max_new_tokens,
                                         sampling=SamplingConfig(request.temperature), seed=request.seed))
            blocked = any(v.blocked for v in self.chat.last_verdicts.values())
        if blocked:
            yield ChatEvent("refusal", "".join(c for c in chunks if isinstance(c, str)))
        else:
            for c in chunks:
                if isinstance(c, str):
                    yield ChatEvent("text", c)
                else:
                    arr = (c.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                    yield ChatEvent("image", image=Image.fromarray(arr))
        yield ChatEvent("done")


# "auto" serves a post-trained checkpoint (one with a safety/ folder) through its safety layer.
register_chat_backend("safe", SafeChatBackend, accepts=_has_safety_layer, priority=10)
