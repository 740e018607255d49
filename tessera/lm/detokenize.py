"""Streaming detokenization: turn generated token ids, one at a time, into text pieces and finished images.

`stream_generate` yields ids; a reader wants words and pictures. Two things make that more than `decode` per token:
- subword pieces with byte fallback can end inside a UTF-8 character, so text is released only once the decoded
  string no longer ends in U+FFFD (the replacement character) and extends what was already released;
- an image is a `<boi> codes... <eoi>` block: its codes are held until `<eoi>` and then decoded to pixels at once.

The CLI (`tessera lm generate`) and the server's plain backend both read generation through `detokenize_stream`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from tessera.lm.processor import Processor

__all__ = ["StreamPiece", "detokenize_stream"]


@dataclass(frozen=True)
class StreamPiece:
    """One piece of a streamed reply.

    kind "text": `text` holds the new characters; "image": `image` is a (3, H, W) float tensor in [0, 1];
    "incomplete_image": the token stream ended inside an image block after `codes` codes (nothing to show).
    """

    kind: Literal["text", "image", "incomplete_image"]
    text: str = ""
    image: torch.Tensor | None = None
    codes: int = 0


def detokenize_stream(tokens: Iterable[int], processor: Processor, stop_ids: Iterable[int] = ()) -> Iterator[StreamPiece]:
    """Read token ids as they arrive and yield text pieces and decoded images.

    Args:
        tokens: generated ids (one row), e.g. `int(t[0]) for t in stream_generate(...)`.
        processor: the model's `Processor` (its vocabulary and image tokenizer decode the pieces).
        stop_ids: ids that end the reply outside an image block (not shown).
    """
    vocab = processor.vocab
    stops = set(int(s) for s in stop_ids)
    text_ids: list[int] = []
    released = ""
    block: list[int] | None = None
    for t in tokens:
        t = int(t)
        if block is None and t == vocab.boi_id:
            block = []
            continue
        if block is not None:
            if t != vocab.eoi_id:
                block.append(t)
                continue
            image = processor.decode([vocab.boi_id, *block, vocab.eoi_id])[0]
            block = None
            if isinstance(image, torch.Tensor):
                yield StreamPiece("image", image=image)
            continue
        if t in stops:
            return
        text_ids.append(t)
        text = "".join(x for x in processor.decode(text_ids) if isinstance(x, str))
        if not text.endswith("\ufffd") and text.startswith(released) and len(text) > len(released):
            yield StreamPiece("text", text=text[len(released):])
            released = text
    if block is not None:
        yield StreamPiece("incomplete_image", codes=len(block))
