"""Processor: interleaved text and images <-> token ids of the shared vocabulary, and back.

Axis legend: B batch, T tokens, C channels, H, W pixels, h, w code grid, P patches, p patch size.

Images enter in one of two ways:
- "codes" (default; early fusion, the form the model also writes): the image tokenizer's h*w codes inside
  `<boi> ... <eoi>`, in raster order;
- "patches": flattened p x p pixel patches at (almost) native resolution for the model's zero-initialised linear
  projection: `<boi>` + rows of `<patch>` placeholders each closed by `<patch_row>` + `<eoi>` (Fuyu-style rows, so
  the patch count and aspect ratio vary per image). The pixels travel next to the ids (`Encoding.patches`).

Video clips (`tessera.lm.video.VideoClip`, or any (T, C, H, W) tensor) enter as `<bov>` + one image block per frame
+ `<eov>`; speech (`tessera.lm.audio.AudioClip`, e.g. `AudioClip.from_file("question.wav")`) as `<boa>` + the audio
tokenizer's codes of its log-mel frames + `<eoa>`. `decode` turns well-formed video blocks back into (T, 3, H, W)
frames and audio blocks into `AudioCodes`.

Text may contain special tokens written as `<name>` (e.g. `<start_of_turn>`, or `<boi>` to ask for an image),
parsed when `parse_special=True`; an unknown `<name>` is an error rather than silently becoming text. Image codes can
be written `<image_17>` (that is how `decode` renders codes outside a well-formed block).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from tessera.lm.vocab import Vocabulary
from tessera.validate import read_json

__all__ = ["Processor", "Encoding", "ImageLike", "AudioCodes", "to_image_tensor", "patch_block"]

ImageLike = Union[torch.Tensor, np.ndarray, "PIL.Image.Image"]  # noqa: F821
_SPECIAL_RE = re.compile(r"<(?:[A-Za-z_][A-Za-z0-9_]*)>")
_CODE_RE = re.compile(r"<image_(\d+)>")


class AudioCodes(NamedTuple):
    """A decoded `<boa> ... <eoa>` block: the audio codes (L,) (and, with an audio tokenizer, their (M, F) log-mel)."""

    codes: torch.Tensor
    mel: torch.Tensor | None = None


def _is_video(item: Any) -> bool:
    from tessera.lm.video import VideoClip

    return isinstance(item, VideoClip) or (isinstance(item, torch.Tensor) and item.ndim == 4)


def _is_audio(item: Any) -> bool:
    from tessera.lm.audio import AudioClip

    return isinstance(item, AudioClip)


class Encoding(NamedTuple):
    """Token ids of one interleaved sequence, plus pixels for `<patch>` placeholders."""

    ids: list[int]
    patches: torch.Tensor | None = None  # (P, C*p*p) in [-1, 1], in placeholder order


def to_image_tensor(image: Any) -> torch.Tensor:
    """A PIL image, (H, W, C) uint8 array or (C, H, W) tensor -> float (3, H, W) in [0, 1].

    Raises:
        ValueError / TypeError: wrong shape, channel count, dtype or non-finite values.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"image array must be (H, W, C) with C in 1/3/4, got shape {image.shape}")
        t = torch.from_numpy(np.array(image[..., :3] if image.shape[2] != 1 else np.repeat(image, 3, 2)))  # a copy: PIL arrays are read-only
        t = t.permute(2, 0, 1)
        image = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"expected an image (PIL image, numpy array or tensor), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image tensor must be (C, H, W) with C = 1 or 3, got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    image = image.float()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or Inf values")
    if image.min() < -1e-3 or image.max() > 1 + 1e-3:
        raise ValueError(f"float images must lie in [0, 1], got [{float(image.min()):.3g}, {float(image.max()):.3g}]")
    return image.clamp(0, 1)


def _tokenizer_config(tokenizer: Any) -> Any:
    cfg = getattr(tokenizer, "config", None) or getattr(tokenizer, "cfg", None)
    if cfg is None:
        raise TypeError("the image tokenizer has no `config` with image_size/grid_size/codebook_size")
    return cfg


def _pair(x: Any) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, (int, np.integer)) else (int(x[0]), int(x[1]))


class Processor:
    """Turns interleaved lists of strings and images into token ids of `vocab`, and ids back into text and images.

    Args:
        vocab: the vocabulary (its "image" range must match the tokenizer's codebook).
        image_tokenizer: an object with `encode(images (B, 3, H, W)) -> (B, h, w)` codes, `decode(codes) -> images`
            and a `config` with `image_size`, `grid_size`, `codebook_size` (`tessera.tokenizer.ImageTokenizer`).
        patch_size: p for the "patches" input mode (0: disabled).
        max_patches: cap on patches per image in "patches" mode (larger images are downscaled).
        audio_tokenizer: a `tessera.lm.audio.AudioTokenizer` (its codebook must match the vocabulary's "audio" range).
    """

    def __init__(self, vocab: Vocabulary, image_tokenizer: Any = None, *, patch_size: int = 0, max_patches: int = 256,
                 audio_tokenizer: Any = None) -> None:
        self.vocab = vocab
        self.image_tokenizer = image_tokenizer
        self.audio_tokenizer = audio_tokenizer
        self.patch_size = patch_size
        self.max_patches = max_patches
        if audio_tokenizer is not None:
            k = int(audio_tokenizer.config.codebook_size)
            have = vocab.code_ranges.get("audio")
            if have is None or have[1] - have[0] != k:
                raise ValueError(f"audio tokenizer has {k} codes but the vocabulary's audio range is {have} "
                                 "(build it with Vocabulary.default(..., audio_codebook_size=K))")
        if image_tokenizer is not None:
            cfg = _tokenizer_config(image_tokenizer)
            if int(cfg.codebook_size) != vocab.image_codebook_size:
                raise ValueError(
                    f"image tokenizer has {cfg.codebook_size} codes but the vocabulary reserves {vocab.image_codebook_size}"
                )

    # -- image geometry ------------------------------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the code grid of one image."""
        return _pair(_tokenizer_config(self._need_tokenizer()).grid_size)

    @property
    def image_size(self) -> tuple[int, int]:
        return _pair(_tokenizer_config(self._need_tokenizer()).image_size)

    @property
    def image_tokens(self) -> int:
        """Codes per image (h * w); an image block is this + 2 tokens."""
        h, w = self.grid
        return h * w

    def _need_tokenizer(self) -> Any:
        if self.image_tokenizer is None:
            raise ValueError("this Processor has no image tokenizer, so it cannot encode or decode image codes")
        return self.image_tokenizer

    # -- encoding ------------------------------------------------------------------------------------------------------
    def text_ids(self, text: str, parse_special: bool = True) -> list[int]:
        """Ids of a text segment; with `parse_special`, `<name>` special tokens and `<image_N>` codes are recognised.

        Raises:
            ValueError: an unknown `<name>` token (pass parse_special=False to keep it as plain text).
        """
        if not parse_special:
            return self.vocab.encode_text(text)
        ids: list[int] = []
        pos = 0
        for m in _SPECIAL_RE.finditer(text):
            token = m.group(0)
            code = _CODE_RE.fullmatch(token)
            if code is None and not self.vocab.is_special_token(token):
                raise ValueError(
                    f"unknown special token {token!r} in text; known special tokens: "
                    f"{' '.join(t for t in self.vocab._special if not t.startswith('<unused'))} (and <image_N>); "
                    "pass parse_special=False to treat it as plain text"
                )
            if m.start() > pos:
                ids += self.vocab.encode_text(text[pos : m.start()])
            if code is not None:
                ids += self.vocab.codes_to_ids(torch.tensor([int(code.group(1))])).tolist()
            else:
                ids.append(self.vocab.token_id(token))
            pos = m.end()
        if pos < len(text):
            ids += self.vocab.encode_text(text[pos:])
        return ids

    def code_block(self, codes: torch.Tensor | np.ndarray) -> list[int]:
        """`<boi>` + ids of one image's (h, w) codes in raster order + `<eoi>`."""
        codes = torch.as_tensor(np.asarray(codes) if isinstance(codes, np.ndarray) else codes)
        return [self.vocab.boi_id, *self.vocab.codes_to_ids(codes.reshape(-1)).tolist(), self.vocab.eoi_id]

    @torch.no_grad()
    def encode_images(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Images -> (B, h, w) codes, each first center-cropped to a square and resized to the tokenizer's size."""
        tok = self._need_tokenizer()
        size = self.image_size
        batch = torch.stack([_fit(to_image_tensor(im), size) for im in images])
        device = next((p.device for p in getattr(tok, "parameters", lambda: iter(()))()), torch.device("cpu"))
        codes = tok.encode(batch.to(device)).cpu()
        if codes.shape[1:] != self.grid:
            raise ValueError(f"image tokenizer returned codes of shape {tuple(codes.shape[1:])}, expected {self.grid}")
        return codes

    def video_block(self, clip: Any) -> list[int]:
        """`<bov>` + an image block per frame (each frame tokenized by the image tokenizer) + `<eov>`."""
        frames = _video_tensor(clip)
        codes = self.encode_images(list(frames))  # (T, h, w)
        ids = [self.vocab.bov_id]
        for c in codes:
            ids += self.code_block(c)
        return ids + [self.vocab.eov_id]

    def audio_codes(self, clip: Any) -> torch.Tensor:
        """(L,) audio codes of an `AudioClip` (resampled to 16 kHz, log-mel, the audio tokenizer)."""
        if self.audio_tokenizer is None:
            raise ValueError("this Processor has no audio tokenizer, so it cannot encode audio")
        return self.audio_tokenizer.encode_waveform(clip.waveform, int(clip.sample_rate))

    def audio_block(self, clip: Any) -> list[int]:
        """`<boa>` + audio codes + `<eoa>`."""
        return [self.vocab.boa_id, *self.vocab.codes_to_ids(self.audio_codes(clip), "audio").tolist(), self.vocab.eoa_id]

    def patch_block(self, image: ImageLike) -> tuple[list[int], torch.Tensor]:
        """Ids and flattened pixels (P, C*p*p) in [-1, 1] of one image in "patches" mode."""
        if self.patch_size <= 0:
            raise ValueError("patch input needs a Processor with patch_size > 0 (and a model with model.patch_size)")
        return patch_block(self.vocab, to_image_tensor(image), self.patch_size, self.max_patches)

    def encode(
        self,
        items: str | ImageLike | Sequence[str | ImageLike],
        *,
        add_bos: bool = True,
        add_eos: bool = False,
        parse_special: bool = True,
        image_input: str = "codes",
        max_length: int | None = None,
    ) -> Encoding:
        """Ids of an interleaved sequence of strings, images, video clips and audio clips.

        Args:
            items: a string, an image, a `VideoClip` / (T, C, H, W) tensor, an `AudioClip`, or a list of them in order.
            add_bos / add_eos: wrap the sequence in `<bos>` ... `<eos>`.
            parse_special: recognise `<name>` special tokens inside strings.
            image_input: "codes" (discrete, via the image tokenizer) or "patches" (continuous).
            max_length: raise if the result is longer.

        Raises:
            ValueError: unknown special token, bad image, or a sequence longer than `max_length`.
        """
        if isinstance(items, str) or not isinstance(items, Sequence) or _is_video(items) or _is_audio(items):
            items = [items]
        if image_input not in ("codes", "patches"):
            raise ValueError(f"image_input must be 'codes' or 'patches', got {image_input!r}")
        images = [it for it in items if not isinstance(it, str) and not _is_video(it) and not _is_audio(it)]
        codes = self.encode_images(images) if images and image_input == "codes" else None
        ids = [self.vocab.bos_id] if add_bos else []
        patches: list[torch.Tensor] = []
        k = 0
        for it in items:
            if isinstance(it, str):
                ids += self.text_ids(it, parse_special)
            elif _is_video(it):
                ids += self.video_block(it)
            elif _is_audio(it):
                ids += self.audio_block(it)
            elif codes is not None:
                ids += self.code_block(codes[k])
                k += 1
            else:
                block, pix = self.patch_block(it)
                ids += block
                patches.append(pix)
        if add_eos:
            ids.append(self.vocab.eos_id)
        if max_length is not None and len(ids) > max_length:
            raise ValueError(f"the input has {len(ids)} tokens, more than the limit of {max_length}")
        return Encoding(ids, torch.cat(patches) if patches else None)

    __call__ = encode

    def collate(self, encodings: Sequence[Encoding | list[int]], pad_side: str = "left") -> dict[str, torch.Tensor | None]:
        """Pad a batch: {"input_ids": (B, T), "attention_mask": (B, T) bool, "patches": (P, C*p*p) or None}.

        Left padding (the default) keeps every row's last token at the end, as generation needs.
        """
        if pad_side not in ("left", "right"):
            raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
        rows = [e.ids if isinstance(e, Encoding) else list(e) for e in encodings]
        if not rows or min(len(r) for r in rows) == 0:
            raise ValueError("cannot collate an empty batch or an empty sequence")
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.vocab.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, r in enumerate(rows):
            sl = slice(T - len(r), T) if pad_side == "left" else slice(0, len(r))
            ids[i, sl] = torch.tensor(r, dtype=torch.long)
            mask[i, sl] = True
        pix = [e.patches for e in encodings if isinstance(e, Encoding) and e.patches is not None]
        return {"input_ids": ids, "attention_mask": mask, "patches": torch.cat(pix) if pix else None}

    # -- chat ----------------------------------------------------------------------------------------------------------
    def apply_chat_template(
        self, messages: Sequence[dict], *, add_generation_prompt: bool = True, parse_special: bool = False
    ) -> Any:
        """Ids of a conversation in Tessera's chat template (`tessera.lm.chat`), images tokenized to codes.

        Returns a `tessera.lm.chat.ChatEncoding` (ids + which tokens supervised tuning learns). User text is plain
        text by default (`parse_special=False`), so a typed "<end_of_turn>" cannot forge a turn.
        """
        from tessera.lm.chat import check_messages, encode_chat

        check_messages(messages)
        images = [x for m in messages for x in ([] if isinstance(m["content"], str) else m["content"]) if not isinstance(x, str)]
        codes = iter(self.encode_images(images)) if images else iter(())

        def item(x: Any) -> list[int]:
            return self.text_ids(x, parse_special) if isinstance(x, str) else self.code_block(next(codes))

        return encode_chat(messages, self.vocab, item, add_generation_prompt=add_generation_prompt)

    def parse_chat(self, ids: Sequence[int] | torch.Tensor) -> list[dict]:
        """Messages of a rendered conversation (the inverse of `apply_chat_template`; images decoded to pixels)."""
        from tessera.lm.chat import parse_chat

        return parse_chat(ids.tolist() if isinstance(ids, torch.Tensor) else ids, self.vocab, self.decode)

    # -- decoding ------------------------------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | torch.Tensor, *, skip_control: bool = True, decode_images: bool = True) -> list[str | torch.Tensor]:
        """Ids -> an interleaved list of strings and images ((3, H, W) float in [0, 1]).

        A well-formed image block (`<boi>`, exactly h*w codes, `<eoi>`) becomes an image (decoded by the image
        tokenizer, all blocks in one batch); a `<bov>` followed only by well-formed image blocks and `<eov>` becomes a
        (T, 3, H, W) clip; `<boa>` + audio codes + `<eoa>` becomes `AudioCodes`; anything else is rendered as text: special tokens by name, stray codes
        as `<image_N>`. `<bos>`, `<eos>` and `<pad>` are dropped unless `skip_control=False`.
        """
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        v = self.vocab
        n_codes = self.image_tokens if self.image_tokenizer is not None else None
        lo, hi = v.code_range("image")
        out: list[Any] = []
        text: list[str] = []
        buf: list[int] = []

        def flush_text() -> None:
            if buf:
                text.append(v.decode_text(buf))
                buf.clear()
            if text:
                out.append("".join(text))
                text.clear()

        blocks: list[list[int]] = []
        videos: list[list[int]] = []  # per clip: indices into `blocks`
        audio_lo, audio_hi = v.code_ranges.get("audio", (0, 0))
        i = 0
        while i < len(ids):
            t = ids[i]
            if t == v.bov_id and n_codes is not None and decode_images:
                j, frames = i + 1, []
                while j + n_codes + 1 < len(ids) and ids[j] == v.boi_id and ids[j + n_codes + 1] == v.eoi_id \
                        and all(lo <= x < hi for x in ids[j + 1 : j + 1 + n_codes]):
                    frames.append(ids[j + 1 : j + 1 + n_codes])
                    j += n_codes + 2
                if frames and j < len(ids) and ids[j] == v.eov_id:
                    flush_text()
                    videos.append(list(range(len(blocks), len(blocks) + len(frames))))
                    blocks += frames
                    out.append(("video", len(videos) - 1))
                    i = j + 1
                    continue
            if t == v.boa_id and audio_hi > audio_lo:
                j = i + 1
                while j < len(ids) and audio_lo <= ids[j] < audio_hi:
                    j += 1
                if j > i + 1 and j < len(ids) and ids[j] == v.eoa_id:
                    flush_text()
                    codes = torch.tensor(ids[i + 1 : j]) - audio_lo
                    mel = self.audio_tokenizer.decode(codes[None])[0] if self.audio_tokenizer is not None else None
                    out.append(AudioCodes(codes, mel))
                    i = j + 1
                    continue
            if t == v.boi_id and n_codes is not None and decode_images:
                j = i + 1
                while j < len(ids) and lo <= ids[j] < hi and j - i - 1 < n_codes:
                    j += 1
                if j - i - 1 == n_codes and j < len(ids) and ids[j] == v.eoi_id:
                    flush_text()
                    blocks.append(ids[i + 1 : j])
                    out.append(len(blocks) - 1)  # placeholder, replaced by the decoded image below
                    i = j + 1
                    continue
            if t < v.text_size and t >= len(v._special):
                buf.append(t)
            else:
                if buf:
                    text.append(v.decode_text(buf))
                    buf.clear()
                if t in (v.pad_id, v.bos_id, v.eos_id) and skip_control:
                    pass
                elif lo <= t < hi:
                    text.append(f"<image_{t - lo}>")
                elif audio_lo <= t < audio_hi:
                    text.append(f"<audio_{t - audio_lo}>")
                else:
                    text.append(v.piece(t))
            i += 1
        flush_text()
        if blocks:
            h, w = self.grid
            codes = v.ids_to_codes(torch.tensor(blocks)).reshape(len(blocks), h, w)
            images = self.decode_codes(codes)
            out = [images[x] if isinstance(x, int) else images[videos[x[1]]] if type(x) is tuple else x for x in out]
        return out

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, 3, H, W) images in [0, 1]."""
        tok = self._need_tokenizer()
        device = next((p.device for p in getattr(tok, "parameters", lambda: iter(()))()), torch.device("cpu"))
        return tok.decode(codes.to(device)).float().clamp(0, 1).cpu()

    # -- persistence ---------------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        """Write the vocabulary, processor.json and the image tokenizer (`image_tokenizer/`) into `folder`."""
        from tessera.lm._io import atomic_write_json

        folder = Path(folder)
        self.vocab.save(folder)
        atomic_write_json(folder / "processor.json", {"patch_size": self.patch_size, "max_patches": self.max_patches})
        if self.image_tokenizer is not None:
            if not hasattr(self.image_tokenizer, "save_pretrained"):
                raise TypeError("the image tokenizer cannot be saved (no save_pretrained)")
            self.image_tokenizer.save_pretrained(folder / "image_tokenizer")
        if self.audio_tokenizer is not None:
            self.audio_tokenizer.save_pretrained(folder / "audio_tokenizer")

    @classmethod
    def from_pretrained(cls, folder: str | Path, image_tokenizer: Any = None) -> Processor:
        """Load what `save_pretrained` wrote; the image tokenizer from `image_tokenizer/` unless one is given."""
        folder = Path(folder)
        vocab = Vocabulary.load(folder)
        settings = read_json(folder / "processor.json", "processor settings") if (folder / "processor.json").is_file() else {}
        if image_tokenizer is None and (folder / "image_tokenizer").is_dir():
            from tessera.tokenizer import ImageTokenizer

            image_tokenizer = ImageTokenizer.from_pretrained(folder / "image_tokenizer").eval()
        audio_tokenizer = None
        if (folder / "audio_tokenizer").is_dir():
            from tessera.lm.audio import AudioTokenizer

            audio_tokenizer = AudioTokenizer.from_pretrained(folder / "audio_tokenizer")
        return cls(vocab, image_tokenizer, audio_tokenizer=audio_tokenizer, **settings)


def patch_block(vocab: Vocabulary, image: torch.Tensor, p: int, max_patches: int = 256) -> tuple[list[int], torch.Tensor]:
    """One image (3, H, W) in [0, 1] -> (ids, patches (P, C*p*p) in [-1, 1]) for continuous input.

    The image is resized (aspect ratio kept, at most `max_patches` patches) to whole patches; ids are `<boi>`, then
    per row `cols` x `<patch>` and a `<patch_row>`, then `<eoi>`.
    """
    _, H, W = image.shape
    scale = min(1.0, math.sqrt(max_patches / max(1.0, (H / p) * (W / p))))
    rows = max(1, round(H * scale / p))
    cols = max(1, round(W * scale / p))
    while rows * cols > max_patches:  # rounding up can overshoot the cap
        rows, cols = (rows - 1, cols) if rows >= cols else (rows, cols - 1)
    if (H, W) != (rows * p, cols * p):
        image = F.interpolate(image[None], size=(rows * p, cols * p), mode="bilinear", antialias=True, align_corners=False)[0]
    patches = image.reshape(3, rows, p, cols, p).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3 * p * p)  # (P, C*p*p)
    ids = [vocab.boi_id]
    for _ in range(rows):
        ids += [vocab.patch_id] * cols + [vocab.patch_row_id]
    ids.append(vocab.eoi_id)
    return ids, patches.clamp(0, 1) * 2 - 1


def _video_tensor(clip: Any) -> torch.Tensor:
    from tessera.lm.video import to_video_tensor

    return to_video_tensor(clip)


def _fit(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Center-crop to the target aspect ratio, then resize (antialiased) to `size`."""
    _, H, W = image.shape
    th, tw = size
    if (H, W) == (th, tw):
        return image
    target = tw / th
    if W / H > target:  # too wide
        new_w = max(1, round(H * target))
        x0 = (W - new_w) // 2
        image = image[:, :, x0 : x0 + new_w]
    elif W / H < target:
        new_h = max(1, round(W / target))
        y0 = (H - new_h) // 2
        image = image[:, y0 : y0 + new_h]
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def place_images(prompt: str, images: list[Any], attached: str = "images were attached") -> list[Any]:
    """Interleave `images` into `prompt` at its `<image>` markers (no markers: images first, then the text).

    Raises:
        ValueError: the marker count is neither 0 nor the number of images (`attached` names them in the message).
    """
    parts = prompt.split("<image>")
    markers = len(parts) - 1
    if markers not in (0, len(images)):
        raise ValueError(f"the prompt has {markers} <image> markers but {len(images)} {attached}")
    if markers == 0:
        return [*images, prompt] if prompt else list(images)
    items: list[Any] = []
    for i, text in enumerate(parts):
        if text:
            items.append(text)
        if i < len(images):
            items.append(images[i])
    return items
