"""Corpus documents -> token ids, and the packed, deterministic batches the shared trainer consumes.

Axis legend: B rows per micro-batch (all ranks), T tokens per row.

`PackedBatches(step, micro, rank, world_size)` is a pure function: row g of micro-batch m of step s is filled from
its own RNG stream seeded by (seed, s, m, g), so any world size sees the same global batch, resuming needs no
iterator state, and the trainer's exact-resume guarantee holds.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from tessera.lm.corpus import Corpus, Document, ImageRef, sample_document
from tessera.lm.modalities import AudioRef, VideoRef
from tessera.lm.objective import IMAGE, SKIP, TEXT, fill_row, packed_batch
from tessera.lm.processor import patch_block
from tessera.lm.vocab import Vocabulary

__all__ = ["DocumentEncoder", "PackedBatches"]


class DocumentEncoder:
    """Token ids and per-token modality of a corpus document, with image codes from the corpus' cache.

    With `patch_size > 0` and `patch_share > 0`, each *input* image (one that is not the document's last segment,
    i.e. not an image the model must write) is given as continuous pixel patches instead of codes with probability
    `patch_share`; its placeholders are never targets.
    """

    def __init__(self, corpus: Corpus, vocab: Vocabulary, patch_size: int = 0, patch_share: float = 0.0) -> None:
        if patch_share > 0 and patch_size <= 0:
            raise ValueError("patch_share > 0 needs a model with patch_size > 0")
        self.corpus = corpus
        self.vocab = vocab
        self.patch_size = patch_size
        self.patch_share = patch_share
        self._text = lru_cache(maxsize=65536)(vocab.encode_text)

    def segment_ids(self, seg: str | ImageRef | VideoRef | AudioRef) -> list[int]:
        if isinstance(seg, str):
            return self._text(seg)
        v = self.vocab
        if isinstance(seg, VideoRef):  # <bov> + one image block per frame + <eov>
            frames = self.corpus.video[seg.split].codes[seg.index].astype(np.int64)  # (T, h, w)
            ids = [v.bov_id]
            for f in frames:
                ids += [v.boi_id, *v.codes_to_ids(torch.from_numpy(f).reshape(-1)).tolist(), v.eoi_id]
            return ids + [v.eov_id]
        if isinstance(seg, AudioRef):
            codes = torch.from_numpy(self.corpus.audio.codes[seg.index].astype(np.int64))
            return [v.boa_id, *v.codes_to_ids(codes, "audio").tolist(), v.eoa_id]
        codes = torch.from_numpy(self.corpus.codes(seg).astype(np.int64)).reshape(-1)
        return [v.boi_id, *v.codes_to_ids(codes).tolist(), v.eoi_id]

    def __call__(self, doc: Document, *, bos: bool = True, eos: bool = True, rng: np.random.Generator | None = None):
        """(ids, modality per token, patches (P, C*p*p) or None)."""
        ids = [self.vocab.bos_id] if bos else []
        mods: list[int] = [TEXT] if bos else []
        patches = []
        lo, hi = self.vocab.code_range("image")
        for i, seg in enumerate(doc.segments):
            is_input_image = isinstance(seg, ImageRef) and i < len(doc.segments) - 1
            if is_input_image and self.patch_share > 0 and rng is not None and rng.random() < self.patch_share:
                image = torch.from_numpy(self.corpus.image(seg)).permute(2, 0, 1).float() / 255.0  # (C, H, W)
                block, pix = patch_block(self.vocab, image, self.patch_size)
                ids += block
                mods += [SKIP] * (len(block) - 1) + [TEXT]  # placeholders are never targets; <eoi> after them is
                patches.append(pix)
                continue
            seg_ids = self.segment_ids(seg)
            ids += seg_ids
            if isinstance(seg, AudioRef):  # speech is read, never written: its codes are not targets
                mods += [SKIP] * (len(seg_ids) - 1) + [TEXT]
            else:
                mods += [IMAGE if lo <= t < hi else TEXT for t in seg_ids]
        if eos:
            ids.append(self.vocab.eos_id)
            mods.append(TEXT)
        return ids, mods, (torch.cat(patches) if patches else None)


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

    def __init__(
        self, corpus: Corpus, vocab: Vocabulary, seq_len: int, batch_size: int, seed: int = 0, split: str = "train",
        *, patch_size: int = 0, patch_share: float = 0.0, schedule: Any = None,
    ) -> None:
        if seq_len < 16 or batch_size < 1:
            raise ValueError(f"need seq_len >= 16 and batch_size >= 1, got {seq_len}, {batch_size}")
        self.encoder = DocumentEncoder(corpus, vocab, patch_size, patch_share)
        self.corpus = corpus
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.split = split
        self.schedule = schedule  # a tessera.train.mixture.StagedMixture over document kinds (None: corpus mixture)

    def row(self, rng: np.random.Generator, max_misses: int = 4, step: int = 0) -> list[tuple]:
        """Documents for one row, drawn from `rng` (the step picks the mixture stage when there is a schedule)."""

        def draw() -> tuple:
            kind = None if self.schedule is None else self.schedule.sample(rng, step)
            return self.encoder(sample_document(self.corpus, rng, self.split, kind), rng=rng)

        return fill_row(draw, self.seq_len, max_misses)

    def __call__(self, step: int, micro: int = 0, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        return packed_batch(lambda rng: self.row(rng, step=step), seq_len=self.seq_len, batch_size=self.batch_size,
                            seed=self.seed, step=step, micro=micro, rank=rank, world_size=world_size)

    @staticmethod
    def weight(batch: dict[str, torch.Tensor]) -> float:
        """Target tokens in a batch: the trainer's `batch_weight`."""
        return float((batch["targets"] != -100).sum())
