"""Processor: interleaved strings and images <-> ids, special tokens, patches, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import palette_image


def test_round_trip_of_interleaved_text_and_images(proc):
    items = ["caption: a red circle", palette_image(0), " and then", palette_image(1), "done."]
    enc = proc.encode(items, add_bos=True, add_eos=True)
    assert enc.ids[0] == proc.vocab.bos_id and enc.ids[-1] == proc.vocab.eos_id
    assert enc.ids.count(proc.vocab.boi_id) == 2 and len(enc.ids) > 2 * (64 + 2)
    back = proc.decode(enc.ids)
    assert [type(x) for x in back] == [str, torch.Tensor, str, torch.Tensor, str]
    assert back[0] == items[0] and back[2] == items[2] and back[4] == items[4]
    torch.testing.assert_close(back[1], items[1]) and torch.testing.assert_close(back[3], items[3])
    assert proc.encode(back, add_bos=False).ids == enc.ids[1:-1]


def test_accepts_pil_numpy_and_other_sizes(proc):
    from PIL import Image

    arr = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    a = proc.encode([arr]).ids
    b = proc.encode([Image.fromarray(arr)]).ids
    assert a == b and len(a) == 1 + 66
    with pytest.raises(ValueError, match="must lie in"):
        proc.encode([torch.full((3, 32, 32), 2.0)])
    with pytest.raises(ValueError, match="NaN"):
        proc.encode([torch.full((3, 32, 32), float("nan"))])


def test_special_tokens_in_text(proc):
    ids = proc.text_ids("<start_of_turn>user hi<end_of_turn>")
    assert ids[0] == proc.vocab.token_id("<start_of_turn>") and ids[-1] == proc.vocab.token_id("<end_of_turn>")
    assert proc.decode(ids) == ["<start_of_turn>user hi<end_of_turn>"]
    with pytest.raises(ValueError, match="unknown special token '<foo>'"):
        proc.encode("hello <foo> world")
    assert proc.vocab.decode_text(proc.encode("a <foo> b", parse_special=False, add_bos=False).ids) == "a <foo> b"


def test_malformed_image_blocks_decode_as_text(proc):
    lo = proc.vocab.image_offset
    ids = [proc.vocab.boi_id, lo + 3, lo + 4, proc.vocab.eoi_id]
    assert proc.decode(ids) == ["<boi><image_3><image_4><eoi>"]
    assert proc.encode("<boi><image_3><image_4><eoi>", add_bos=False).ids == ids


def test_patches_keep_aspect_ratio_with_row_markers(proc):
    wide = torch.rand(3, 16, 32)
    enc = proc.encode(["look:", wide], image_input="patches", add_bos=False)
    v = proc.vocab
    assert enc.ids.count(v.patch_id) == enc.patches.shape[0] == 4 * 8
    assert enc.ids.count(v.patch_row_id) == 4 and enc.patches.shape[1] == 3 * 4 * 4
    assert float(enc.patches.min()) >= -1 and float(enc.patches.max()) <= 1
    big = proc.encode([torch.rand(3, 256, 256)], image_input="patches")
    assert big.patches.shape[0] <= 64  # downscaled to the patch budget


def test_collate_left_pads(proc):
    batch = proc.collate([[2, 10, 11], [2, 12]])
    assert batch["input_ids"].tolist() == [[2, 10, 11], [0, 2, 12]]
    assert batch["attention_mask"].tolist() == [[True] * 3, [False, True, True]]
