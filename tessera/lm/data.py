"""Corpus documents -> token ids, and the packed, deterministic batches the shared trainer consumes.

Axis legend: B rows per micro-batch (all ranks), T tokens per row.

`PackedBatches(step, micro, rank, world_size)` is a pure function: row g of micro-batch m of step s is filled from
its own RNG stream seeded by (seed, s, m, g), so any world size sees the same global batch, resuming needs no
iterator state, and the trainer's exact-resume guarantee holds.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from tessera.lm.corpus import Corpus, Document, ImageRef, sample_document
from tessera.lm.objective import IMAGE, TEXT, pack_documents
from tessera.lm.vocab import Vocabulary

__all__ = ["DocumentEncoder", "PackedBatches"]


class DocumentEncoder:
    """Token ids and per-token modality of a corpus document, with image codes from the corpus' cache."""

    def __init__(self, corpus: Corpus, vocab: Vocabulary) -> None:
        self.corpus = corpus
        self.vocab = vocab
        self._text = lru_cache(maxsize=65536)(vocab.encode_text)

    def segment_ids(self, seg: str | ImageRef) -> list[int]:
        if isinstance(seg, str):
            return self._text(seg)
        codes = torch.from_numpy(self.corpus.codes(seg).astype(np.int64)).reshape(-1)
        return [self.vocab.boi_id, *self.vocab.codes_to_ids(codes).tolist(), self.vocab.eoi_id]

    def __call__(self, doc: Document, *, bos: bool = True, eos: bool = True) -> tuple[list[int], list[int]]:
        ids = [self.vocab.bos_id] if bos else []
        for seg in doc.segments:
            ids += self.segment_ids(seg)
        if eos:
            ids.append(self.vocab.eos_id)
        lo, hi = self.vocab.code_range("image")
        mods = [IMAGE if lo <= t < hi else TEXT for t in ids]
        return ids, mods


class PackedBatches:
    """Batches of packed documents for `tessera.train.fit`.

    Args:
        corpus: a tokenized corpus.
        vocab: the vocabulary.
        seq_len: T.
        batch_size: B, rows per micro-batch summed over ranks.
        seed: data seed.
        split: "train" or "test" pools.
    """

    def __init__(self, corpus: Corpus, vocab: Vocabulary, seq_len: int, batch_size: int, seed: int = 0, split: str = "train") -> None:
        if seq_len < 16 or batch_size < 1:
            raise ValueError(f"need seq_len >= 16 and batch_size >= 1, got {seq_len}, {batch_size}")
        self.encoder = DocumentEncoder(corpus, vocab)
        self.corpus = corpus
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.split = split

    def row(self, rng: np.random.Generator, max_misses: int = 4) -> list[tuple[list[int], list[int]]]:
        """Documents for one row: drawn until `max_misses` draws in a row do not fit."""
        docs, used, misses = [], 0, 0
        while misses < max_misses:
            ids, mods = self.encoder(sample_document(self.corpus, rng, self.split))
            if used + len(ids) > self.seq_len:
                misses += 1
                continue
            docs.append((ids, mods))
            used += len(ids)
        return docs

    def __call__(self, step: int, micro: int = 0, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        if self.batch_size % world_size:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by the world size {world_size}")
        per_rank = self.batch_size // world_size
        rows = []
        for i in range(per_rank):
            g = rank * per_rank + i
            rows.append(self.row(np.random.default_rng([self.seed, step, micro, g])))
        parts = [pack_documents(docs, self.seq_len, 1)[0] for docs in rows]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    @staticmethod
    def weight(batch: dict[str, torch.Tensor]) -> float:
        """Target tokens in a batch: the trainer's `batch_weight`."""
        return float((batch["targets"] != -100).sum())
