"""The one vocabulary of Tessera's decoders: text pieces, special tokens and image codes, defined in one place.

Axis legend: K image codebook size, V total vocabulary size.

Layout (ids):
    [0, 4)                 <pad> 0, <eos> 1, <bos> 2, <unk> 3                          (Gemma's ids)
    [4, 4 + len(CONTROL))  control tokens: <boi> <eoi> <boa> <eoa> <bov> <eov> <start_of_turn> <end_of_turn>
                           <patch> <patch_row> <unused0> ... <unused21>                   (reserved for growth)
    then                   256 byte-fallback pieces <0x00>..<0xFF>, then learned SentencePiece pieces
    [text_size, +K)        image codes 0..K-1 of the image tokenizer
    then                   further code ranges (`code_ranges`, in order), then unused rows up to a multiple of 64

The first two groups and the byte pieces live inside the SentencePiece model (pad/eos/bos/unk ids fixed, the rest
declared as control symbols), so the text tokenizer never produces them from user text: "<boi>" typed in a prompt
is text unless the Processor is asked to parse special tokens. Growing the vocabulary never moves an existing id:
new specials take `<unusedN>` slots, new discrete modalities append a code range after the image codes.

Text tokenizer: SentencePiece BPE trained on Tessera's corpus with split digits, byte fallback, whitespace kept
as is (identity normalisation, no dummy prefix), as Gemma's tokenizer does (Gemma-1 report §3). Training is
single-threaded and unshuffled, so the same corpus text gives byte-identical models (`train_text_tokenizer`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from tessera.validate import read_json

__all__ = [
    "BASE_SPECIALS",
    "CONTROL_TOKENS",
    "SPECIAL_TOKENS",
    "Vocabulary",
    "train_text_tokenizer",
    "DEFAULT_TEXT_MODEL",
]

BASE_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")
CONTROL_TOKENS = (
    "<boi>", "<eoi>",  # begin/end of image (discrete codes or patches)
    "<boa>", "<eoa>",  # begin/end of audio
    "<bov>", "<eov>",  # begin/end of video
    "<start_of_turn>", "<end_of_turn>",  # chat turns (Gemma's format)
    "<patch>",  # placeholder replaced by a projected continuous image patch
    "<patch_row>",  # end of a row of patches (variable resolution, Fuyu-style)
) + tuple(f"<unused{i}>" for i in range(22))
SPECIAL_TOKENS = BASE_SPECIALS + CONTROL_TOKENS  # 36 ids, all below the text pieces

DEFAULT_TEXT_MODEL = "lm/text_tokenizer.model"  # under tessera/assets; rebuilt by `tessera lm build-text-tokenizer`
_PAD_MULTIPLE = 64


def train_text_tokenizer(texts: Iterable[str], vocab_size: int, *, character_coverage: float = 0.9995) -> bytes:
    """Train Tessera's SentencePiece BPE model on `texts`; returns the serialized model.

    Args:
        texts: training sentences (one document or line each).
        vocab_size: pieces in the model, specials and 256 byte pieces included.
        character_coverage: characters outside this share of the corpus are left to byte fallback.

    Raises:
        ValueError: vocab_size too small for the specials and byte pieces.
    """
    import string

    import sentencepiece as spm

    minimum = len(SPECIAL_TOKENS) + 256 + 64
    if vocab_size < minimum:
        raise ValueError(f"text vocab_size must be >= {minimum} (specials + 256 byte pieces + some merges), got {vocab_size}")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        control_symbols=list(CONTROL_TOKENS),
        split_digits=True,
        byte_fallback=True,
        character_coverage=character_coverage,
        required_chars=string.ascii_letters + string.digits + string.punctuation,  # ASCII never needs byte fallback
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        max_sentence_length=1 << 14,
        input_sentence_size=0,  # use every sentence: no sampling, so training is deterministic
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


class Vocabulary:
    """Token ids of text, special tokens and discrete codes.

    Args:
        text_model: serialized SentencePiece model (bytes) or a path to one.
        code_ranges: discrete code ranges after the text pieces, in order, e.g. {"image": 512}.
    """

    def __init__(self, text_model: bytes | str | Path, code_ranges: dict[str, int] | None = None) -> None:
        import sentencepiece as spm

        if isinstance(text_model, (str, Path)):
            path = Path(text_model)
            if not path.is_file():
                raise FileNotFoundError(f"text tokenizer model not found: {path}")
            text_model = path.read_bytes()
        self._model_bytes = bytes(text_model)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self._model_bytes)
        except RuntimeError as exc:
            raise ValueError(f"not a SentencePiece model: {exc}") from exc
        for i, tok in enumerate(SPECIAL_TOKENS):
            if self.sp.id_to_piece(i) != tok:
                raise ValueError(
                    f"text tokenizer model does not follow Tessera's layout: id {i} is {self.sp.id_to_piece(i)!r}, "
                    f"expected {tok!r} (train it with tessera.lm.vocab.train_text_tokenizer)"
                )
        self.text_size = int(self.sp.get_piece_size())
        self.code_ranges: dict[str, tuple[int, int]] = {}
        start = self.text_size
        for name, size in (code_ranges or {}).items():
            if size < 1:
                raise ValueError(f"code range {name!r} must have >= 1 codes, got {size}")
            self.code_ranges[name] = (start, start + size)
            start += size
        self.used_size = start
        self.size = -(-start // _PAD_MULTIPLE) * _PAD_MULTIPLE  # V: rows of the embedding table
        self._special = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}

    # -- construction ------------------------------------------------------------------------------------------------
    @classmethod
    def default(cls, image_codebook_size: int) -> Vocabulary:
        """Tessera's committed text tokenizer plus an image code range of `image_codebook_size` codes."""
        from tessera.paths import package_asset

        return cls(package_asset(*DEFAULT_TEXT_MODEL.split("/")), {"image": image_codebook_size})

    def save(self, folder: str | Path) -> None:
        """Write `tokenizer.model` and `vocab.json` (the layout, checked on load)."""
        from tessera.lm._io import atomic_write_bytes, atomic_write_json

        folder = Path(folder)
        atomic_write_bytes(folder / "tokenizer.model", self._model_bytes)
        atomic_write_json(folder / "vocab.json", self.layout())

    @classmethod
    def load(cls, folder: str | Path) -> Vocabulary:
        """Read a vocabulary written by `save`.

        Raises:
            FileNotFoundError: missing files.
            ValueError: the files disagree (e.g. a different tokenizer model than the layout recorded).
        """
        folder = Path(folder)
        layout_path = folder / "vocab.json"
        if not layout_path.is_file():
            raise FileNotFoundError(f"{folder}: no vocab.json")
        layout = read_json(layout_path, "vocabulary layout")
        vocab = cls(folder / "tokenizer.model", {k: v[1] - v[0] for k, v in layout["code_ranges"].items()})
        if vocab.layout() != layout:
            raise ValueError(f"{folder}: tokenizer.model does not match vocab.json (text size or checksum differs)")
        return vocab

    def layout(self) -> dict:
        """JSON description of the id layout (with the text model's checksum)."""
        return {
            "size": self.size,
            "text_size": self.text_size,
            "specials": list(SPECIAL_TOKENS),
            "code_ranges": {k: list(v) for k, v in self.code_ranges.items()},
            "text_model_sha256": hashlib.sha256(self._model_bytes).hexdigest(),
        }

    def fingerprint(self) -> str:
        """Short hash of the layout (for cache keys)."""
        return hashlib.sha256(json.dumps(self.layout(), sort_keys=True).encode()).hexdigest()[:12]

    # -- special tokens ----------------------------------------------------------------------------------------------
    def token_id(self, token: str) -> int:
        """Id of a special token, written with brackets ("<boi>").

        Raises:
            ValueError: unknown special token (the message lists the known ones).
        """
        try:
            return self._special[token]
        except KeyError:
            raise ValueError(f"unknown special token {token!r}; known: {' '.join(SPECIAL_TOKENS)}") from None

    def is_special_token(self, token: str) -> bool:
        return token in self._special

    pad_id = property(lambda self: 0)
    eos_id = property(lambda self: 1)
    bos_id = property(lambda self: 2)
    unk_id = property(lambda self: 3)
    boi_id = property(lambda self: self._special["<boi>"])
    eoi_id = property(lambda self: self._special["<eoi>"])
    patch_id = property(lambda self: self._special["<patch>"])
    patch_row_id = property(lambda self: self._special["<patch_row>"])

    # -- text ----------------------------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Text pieces of `text` (never special tokens)."""
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        return list(self.sp.encode(text, out_type=int))

    def decode_text(self, ids: Sequence[int]) -> str:
        """Text of piece ids; special ids are skipped (use the Processor to render them)."""
        return self.sp.decode([int(i) for i in ids if len(SPECIAL_TOKENS) <= int(i) < self.text_size])

    def piece(self, token_id: int) -> str:
        """Readable name of any id (text piece, special, `<image_17>`, `<unused_row>`)."""
        token_id = int(token_id)
        if 0 <= token_id < self.text_size:
            return self.sp.id_to_piece(token_id)
        for name, (lo, hi) in self.code_ranges.items():
            if lo <= token_id < hi:
                return f"<{name}_{token_id - lo}>"
        if self.used_size <= token_id < self.size:
            return "<unused_row>"
        raise ValueError(f"token id {token_id} out of range [0, {self.size})")

    # -- codes ---------------------------------------------------------------------------------------------------------
    def code_range(self, name: str = "image") -> tuple[int, int]:
        """[start, stop) ids of a discrete code range."""
        if name not in self.code_ranges:
            raise ValueError(f"this vocabulary has no {name!r} codes (ranges: {list(self.code_ranges)})")
        return self.code_ranges[name]

    @property
    def image_offset(self) -> int:
        return self.code_range("image")[0]

    @property
    def image_codebook_size(self) -> int:
        lo, hi = self.code_range("image")
        return hi - lo

    def codes_to_ids(self, codes: torch.Tensor, name: str = "image") -> torch.Tensor:
        """Image codes (any shape, values in [0, K)) -> token ids."""
        lo, hi = self.code_range(name)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= hi - lo):
            raise ValueError(f"{name} codes must lie in [0, {hi - lo}), got [{int(codes.min())}, {int(codes.max())}]")
        return codes.long() + lo

    def ids_to_codes(self, ids: torch.Tensor, name: str = "image") -> torch.Tensor:
        """Token ids of one code range -> codes."""
        lo, hi = self.code_range(name)
        ids = torch.as_tensor(ids)
        if ids.numel() and (int(ids.min()) < lo or int(ids.max()) >= hi):
            raise ValueError(f"ids are not all {name} codes (expected ids in [{lo}, {hi}))")
        return ids.long() - lo

    def is_code(self, ids: torch.Tensor, name: str = "image") -> torch.Tensor:
        """Bool mask of ids that are codes of a range."""
        lo, hi = self.code_range(name)
        return (ids >= lo) & (ids < hi)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        ranges = ", ".join(f"{k}=[{lo},{hi})" for k, (lo, hi) in self.code_ranges.items())
        return f"Vocabulary(size={self.size}, text=[0,{self.text_size}), {ranges})"
