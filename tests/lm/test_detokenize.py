"""Streaming detokenization: text released only in whole characters, image blocks decoded at <eoi>, stops honoured."""

from __future__ import annotations

import torch

from tessera.lm.detokenize import detokenize_stream

from .conftest import palette_image


def test_pieces_rebuild_text_and_images_in_order(proc):
    items = ["naïve café → ∑ 日本", palette_image(0), " then more"]
    ids = proc.encode(items, add_bos=False).ids
    pieces = list(detokenize_stream(iter(ids), proc))
    kinds = [p.kind for p in pieces]
    first_image = kinds.index("image")
    assert "".join(p.text for p in pieces[:first_image]) == items[0]
    assert "".join(p.text for p in pieces[first_image + 1 :]) == items[2]
    torch.testing.assert_close(pieces[first_image].image, items[1])
    assert all("\ufffd" not in p.text for p in pieces)  # never half a UTF-8 character


def test_byte_fallback_characters_are_held_until_complete(proc):
    ids = proc.encode(["😀"], add_bos=False).ids
    byte_pieces = [i for i in ids if proc.vocab.sp.IdToPiece(i).startswith("<0x")]
    assert len(byte_pieces) >= 2, "the emoji should need byte fallback in the committed vocabulary"
    pieces = list(detokenize_stream(iter(ids), proc))
    assert [p.text for p in pieces] == ["😀"]


def test_stop_token_ends_text_but_not_inside_an_image(proc, vocab):
    img = proc.encode([palette_image(1)], add_bos=False).ids  # <boi> codes <eoi>
    ids = proc.encode(["ok"], add_bos=False).ids + img + [vocab.eos_id] + proc.encode(["hidden"], add_bos=False).ids
    pieces = list(detokenize_stream(iter(ids), proc, [vocab.eos_id]))
    assert [p.kind for p in pieces][-1] == "image"
    assert "".join(p.text for p in pieces) == "ok"


def test_a_stream_ending_inside_an_image_block_says_how_far_it_got(proc):
    img = proc.encode([palette_image(2)], add_bos=False).ids
    pieces = list(detokenize_stream(iter(img[:11]), proc))
    assert len(pieces) == 1 and pieces[0].kind == "incomplete_image" and pieces[0].codes == 10
