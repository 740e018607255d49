"""Vocabulary: fixed special ids, text round trips (split digits, byte fallback), persistence, reproducible model."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from tessera.lm.vocab import CONTROL_TOKENS, SPECIAL_TOKENS, Vocabulary
from tessera.paths import package_asset


def test_layout_is_fixed_and_grows_without_moving_ids(vocab):
    assert [vocab.pad_id, vocab.eos_id, vocab.bos_id, vocab.unk_id] == [0, 1, 2, 3]  # Gemma's ids
    assert vocab.token_id("<boi>") == 4 and vocab.token_id("<eoi>") == 5
    for tok in ("<boa>", "<eoa>", "<bov>", "<eov>", "<start_of_turn>", "<end_of_turn>", "<unused0>"):
        assert vocab.piece(vocab.token_id(tok)) == tok
    lo, hi = vocab.code_range("image")
    assert (lo, hi) == (vocab.text_size, vocab.text_size + 512) and vocab.size % 64 == 0 and vocab.size >= hi
    grown = Vocabulary(package_asset("lm", "text_tokenizer.model"), {"image": 512, "audio": 64})
    assert grown.code_range("image") == (lo, hi) and grown.code_range("audio") == (hi, hi + 64)
    assert len(SPECIAL_TOKENS) == 4 + len(CONTROL_TOKENS)


@pytest.mark.parametrize(
    "text",
    ["caption: a large red circle at the top left.", "glyph: ж is CYRILLIC SMALL LETTER ZHE.", "x = 12345 + 0.5",
     "中文 and emoji 🙂, tabs\tand  double  spaces", "<boi> typed by a user is just text"],
)
def test_text_round_trips_exactly(vocab, text):
    ids = vocab.encode_text(text)
    assert vocab.decode_text(ids) == text
    assert all(len(SPECIAL_TOKENS) <= i < vocab.text_size for i in ids)  # never a special token or an image code


def test_digits_are_split_and_unknown_characters_fall_back_to_bytes(vocab):
    pieces = [vocab.piece(i) for i in vocab.encode_text("2048")]
    assert pieces == ["2", "0", "4", "8"]
    pieces = [vocab.piece(i) for i in vocab.encode_text("🙂")]
    assert pieces == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]


def test_codes_and_errors(vocab):
    codes = torch.tensor([[0, 511], [7, 8]])
    ids = vocab.codes_to_ids(codes)
    assert torch.equal(vocab.ids_to_codes(ids), codes) and vocab.is_code(ids).all()
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 512\)"):
        vocab.codes_to_ids(torch.tensor([512]))
    with pytest.raises(ValueError, match="unknown special token '<foo>'"):
        vocab.token_id("<foo>")
    with pytest.raises(ValueError, match="no 'video' codes"):
        vocab.code_range("video")


def test_save_and_load_check_the_layout(tmp_path, vocab):
    vocab.save(tmp_path)
    back = Vocabulary.load(tmp_path)
    assert back.layout() == vocab.layout() and back.encode_text("hello") == vocab.encode_text("hello")
    layout = json.loads((tmp_path / "vocab.json").read_text())
    layout["text_model_sha256"] = "0" * 64
    (tmp_path / "vocab.json").write_text(json.dumps(layout))
    with pytest.raises(ValueError, match="does not match vocab.json"):
        Vocabulary.load(tmp_path)
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Vocabulary(b"not a model")


@pytest.mark.integration
def test_committed_text_tokenizer_is_reproduced_by_its_recipe(tmp_path):
    import sentencepiece

    from tessera.lm.corpus import build_text_tokenizer

    record = json.loads(package_asset("lm", "text_tokenizer.json").read_text())
    if record["sentencepiece"] != sentencepiece.__version__:
        pytest.skip(f"committed with sentencepiece {record['sentencepiece']}, installed {sentencepiece.__version__}")
    build_text_tokenizer(tmp_path / "tok.model")
    assert hashlib.sha256((tmp_path / "tok.model").read_bytes()).hexdigest() == record["sha256"]
    assert hashlib.sha256(package_asset("lm", "text_tokenizer.model").read_bytes()).hexdigest() == record["sha256"]
