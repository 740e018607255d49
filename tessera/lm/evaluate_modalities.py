"""Held-out evaluation of the video and audio capabilities (test clips, speakers never heard in training).

Axis legend: B batch, T tokens.

- Video QA: greedy answer to a question about a test clip (direction / count / order, cycled), exact match;
  chance = 1 / |answers| of each question type (order: 1/2, the two sprites named in the question).
- Spoken-word recognition: greedy transcript of a test-speaker clip of an isolated word; chance = 1 / |words|.
- Spoken question about an image: a test scene and a test-speaker recording of a question about it, greedy text
  answer; chance = 1 / |answers| of each question type, as for written VQA.
"""

from __future__ import annotations

import numpy as np
import torch

from tessera.lm import scenes as S
from tessera.lm.corpus import Corpus
from tessera.lm.data import DocumentEncoder
from tessera.lm.evaluate import _greedy_batch
from tessera.lm.modalities import audio_document, spoken_vqa_document, video_document
from tessera.lm.model import Decoder
from tessera.lm.processor import Processor
from tessera.lm.video import VIDEO_QUESTION_TYPES, video_answer_choices

__all__ = ["video_qa_accuracy", "spoken_word_accuracy", "spoken_vqa_accuracy"]


def _answer(processor: Processor, ids: list[int]) -> str:
    return processor.vocab.decode_text(ids).strip().rstrip(".").strip()


def _run(model: Decoder, processor: Processor, corpus: Corpus, docs: list, batch_size: int, max_new: int) -> list[str]:
    """Greedy answers to documents whose last segment is the answer (prompts = every other segment)."""
    enc = DocumentEncoder(corpus, processor.vocab)
    answers: list[str] = []
    for start in range(0, len(docs), batch_size):
        chunk = docs[start : start + batch_size]
        prompts = []
        for d in chunk:
            ids = [processor.vocab.bos_id]
            for seg in d.segments[:-1]:
                ids += enc.segment_ids(seg)
            prompts.append(ids)
        outs = _greedy_batch(model, processor, prompts, max_new, [processor.vocab.eos_id])
        answers += [_answer(processor, o) for o in outs]
    return answers


def _summary(hits: dict[str, list[int]], chance: list[float]) -> dict[str, float]:
    flat = [h for v in hits.values() for h in v]
    out = {"accuracy": float(np.mean(flat)) if flat else float("nan"), "chance": float(np.mean(chance)) if chance else float("nan"),
           "n": len(flat)}
    out.update({f"accuracy/{k}": float(np.mean(v)) for k, v in hits.items()})
    return out


@torch.no_grad()
def video_qa_accuracy(model: Decoder, processor: Processor, corpus: Corpus, n: int = 150, batch_size: int = 25,
                      seed: int = 0) -> dict[str, float]:
    """Greedy answers to `n` questions about test clips; accuracy overall and per type, with the chance line."""
    rng = np.random.default_rng([seed, 41])
    docs = [video_document(corpus, rng, "test", VIDEO_QUESTION_TYPES[i % len(VIDEO_QUESTION_TYPES)]) for i in range(n)]
    got = _run(model, processor, corpus, docs, batch_size, 16)
    hits: dict[str, list[int]] = {}
    chance = []
    for d, a in zip(docs, got, strict=True):
        hits.setdefault(d.meta["qtype"], []).append(int(a == d.meta["answer"]))
        chance.append(1.0 / len(video_answer_choices(d.meta["qtype"])))
    return _summary(hits, chance)


@torch.no_grad()
def spoken_word_accuracy(model: Decoder, processor: Processor, corpus: Corpus, n: int = 150, batch_size: int = 25,
                         seed: int = 0) -> dict[str, float]:
    """Greedy transcripts of `n` test-speaker word clips (words cycled); exact-match accuracy and chance."""
    rng = np.random.default_rng([seed, 43])
    words = corpus.audio.texts("word")
    docs = [audio_document(corpus, rng, "test", words[i % len(words)]) for i in range(n)]
    got = _run(model, processor, corpus, docs, batch_size, 8)
    hits = {"word": [int(a == d.meta["answer"]) for d, a in zip(docs, got, strict=True)]}
    out = _summary(hits, [1.0 / len(words)] * len(docs))
    out.pop("accuracy/word")
    return out


@torch.no_grad()
def spoken_vqa_accuracy(model: Decoder, processor: Processor, corpus: Corpus, n: int = 150, batch_size: int = 25,
                        seed: int = 0) -> dict[str, float]:
    """Greedy answers to `n` spoken questions (test speakers) about test scenes; accuracy per type and chance."""
    rng = np.random.default_rng([seed, 47])
    docs = [spoken_vqa_document(corpus, rng, "test", S.QUESTION_TYPES[i % len(S.QUESTION_TYPES)]) for i in range(n)]
    got = _run(model, processor, corpus, docs, batch_size, 8)
    hits: dict[str, list[int]] = {}
    chance = []
    for d, a in zip(docs, got, strict=True):
        hits.setdefault(d.meta["qtype"], []).append(int(a == d.meta["answer"]))
        chance.append(1.0 / len(S.answer_choices(d.meta["qtype"])))
    return _summary(hits, chance)
