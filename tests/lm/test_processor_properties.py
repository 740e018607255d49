"""Property-based checks of the LM Processor (hypothesis): interleaved text and images round-trip, ids stay in the
vocabulary, image blocks have the tokenizer's grid, batches collate without losing a token, bad ids are refused.

The image tokenizer is the stand-in `PaletteTokenizer` (conftest.py), whose decode -> encode is exact, so images
made from random codes must come back as the same codes through the Processor."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.lm.processor import Processor

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# Printable text without "<" (which starts a special token); SentencePiece keeps these byte for byte.
TEXT = st.text(st.characters(codec="latin-1", categories=("L", "N", "P", "Zs"), exclude_characters="<"), min_size=1, max_size=40)


@pytest.fixture(scope="module")
def proc(vocab, image_tokenizer) -> Processor:
    return Processor(vocab, image_tokenizer)


@st.composite
def interleaved(draw):
    """A list of strings and (codes of) images, no two strings adjacent (adjacent strings merge on decode)."""
    n = draw(st.integers(1, 5))
    items = []
    for _ in range(n):
        if draw(st.booleans()) and not (items and isinstance(items[-1], str)):
            items.append(draw(TEXT))
        else:
            items.append(torch.tensor(draw(st.lists(st.integers(0, 511), min_size=64, max_size=64))).reshape(8, 8))
    return items


@SETTINGS
@given(items=interleaved())
def test_interleaved_round_trip(proc, items):
    as_input = [it if isinstance(it, str) else proc.decode_codes(it[None])[0] for it in items]
    enc = proc.encode(as_input, add_bos=True, add_eos=True, parse_special=False)
    v = proc.vocab
    assert all(0 <= t < v.size for t in enc.ids)
    assert enc.ids[0] == v.bos_id and enc.ids[-1] == v.eos_id
    n_images = sum(not isinstance(it, str) for it in items)
    assert enc.ids.count(v.boi_id) == enc.ids.count(v.eoi_id) == n_images
    starts = [i for i, t in enumerate(enc.ids) if t == v.boi_id]
    for s in starts:  # <boi>, h*w codes, <eoi>
        assert enc.ids[s + 1 + proc.image_tokens] == v.eoi_id
    lo, hi = v.code_range("image")
    codes = [torch.tensor(enc.ids[s + 1 : s + 1 + proc.image_tokens]) - lo for s in starts]
    expected = [it.reshape(-1) for it in items if not isinstance(it, str)]
    for got, want in zip(codes, expected, strict=True):
        assert torch.equal(got, want)
    out = proc.decode(enc.ids)
    assert len(out) == len(items)
    for got, want in zip(out, items, strict=True):
        if isinstance(want, str):
            assert got == want
        else:
            assert isinstance(got, torch.Tensor) and got.shape == (3, 32, 32)


@SETTINGS
@given(rows=st.lists(st.lists(st.integers(0, 2000), min_size=1, max_size=12), min_size=1, max_size=5),
       side=st.sampled_from(["left", "right"]))
def test_collate_pads_without_losing_tokens(proc, rows, side):
    batch = proc.collate(rows, pad_side=side)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (len(rows), max(map(len, rows)))
    for i, r in enumerate(rows):
        assert int(mask[i].sum()) == len(r)
        assert ids[i][mask[i]].tolist() == r
        assert (ids[i][~mask[i]] == proc.vocab.pad_id).all()
        if side == "left":
            assert bool(mask[i, -1])
        else:
            assert bool(mask[i, 0])


@SETTINGS
@given(ids=st.lists(st.integers(-5, 3000), min_size=1, max_size=30))
def test_decode_accepts_every_valid_id_and_names_a_bad_one(proc, ids):
    size = proc.vocab.size
    if all(0 <= t < size for t in ids):
        out = proc.decode(ids, skip_control=False)
        assert all(isinstance(x, (str, torch.Tensor)) for x in out)
    else:
        with pytest.raises(ValueError, match="out of range"):
            proc.decode(ids)
