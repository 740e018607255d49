"""Video and audio documents of the embedded corpus: references, pools and the three document kinds.

Axis legend: N clips, T frames, H, W pixels, h, w code grid, L audio codes.

    video       <bov><boi>f0<eoi>...<boi>f3<eoi><eov>question: which way does the red circle move? answer: left.
    audio       <boa>codes<eoa>transcript: seven.                         (spoken-word recognition)
    spoken_vqa  <boi>img<eoi><boa>spoken question<eoa>answer: circle.     (a spoken question about an image)

Video clips are rendered by the recipe (`tessera.data.video.render_sprite_clips`) and handed to `build_corpus`;
the spoken clips come from `tessera.lm.audio.SpokenCorpus` with their audio codes. Test documents use test clips:
clips from their own seed stream, and speech from speakers never heard in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from tessera.lm import scenes as S
from tessera.lm.video import sample_video_question

__all__ = ["VideoRef", "AudioRef", "VideoPool", "video_document", "audio_document", "spoken_vqa_document", "MODAL_KINDS"]

MODAL_KINDS = ("video", "audio", "spoken_vqa")


class VideoRef(NamedTuple):
    """A clip of the corpus' video pool of `split`."""

    split: str
    index: int


class AudioRef(NamedTuple):
    """A clip of the spoken corpus (index into `SpokenCorpus.items`)."""

    split: str
    index: int


@dataclass
class VideoPool:
    """Rendered clips, their plans (sprites, events) and, once tokenized, their per-frame codes."""

    clips: np.ndarray  # (N, T, H, W, C) uint8
    plans: list[dict[str, Any]]
    codes: np.ndarray | None = None  # (N, T, h, w) int16

    def __post_init__(self) -> None:
        if self.clips.ndim != 5 or self.clips.dtype != np.uint8:
            raise ValueError(f"video clips must be uint8 (N, T, H, W, C), got {self.clips.dtype} {self.clips.shape}")
        if len(self.plans) != len(self.clips):
            raise ValueError(f"{len(self.plans)} clip plans for {len(self.clips)} clips")

    def __len__(self) -> int:
        return len(self.plans)


def _need(corpus: Any, what: str) -> Any:
    got = getattr(corpus, what, None)
    if got is None:
        raise ValueError(f"this corpus has no {what} pool: build it with build_corpus(..., {what}=...) "
                         f"(the recipe does so when data.mixture asks for {what} documents)")
    return got


def video_document(corpus: Any, rng: np.random.Generator, split: str, qtype: str | None = None):
    """A question about a random clip of `split`."""
    from tessera.lm.corpus import Document

    pool = _need(corpus, "video")[split]
    idx = int(rng.integers(len(pool)))
    qtype, q, a = sample_video_question(pool.plans[idx], rng, qtype)
    return Document("video", [VideoRef(split, idx), f"question: {q} answer:", f" {a}."],
                    {"qtype": qtype, "answer": a, "plan": pool.plans[idx]})


def audio_document(corpus: Any, rng: np.random.Generator, split: str, word: str | None = None):
    """A spoken word of `split`'s speakers and its transcript."""
    from tessera.lm.corpus import Document

    spoken = _need(corpus, "audio")
    words = spoken.texts("word")
    word = word or words[int(rng.integers(len(words)))]
    clips = spoken.clips(split, "word", word)
    ref = AudioRef(split, clips[int(rng.integers(len(clips)))])
    return Document("audio", [ref, "transcript:", f" {word}."], {"answer": word, "choices": words})


def spoken_vqa_document(corpus: Any, rng: np.random.Generator, split: str, qtype: str | None = None):
    """A scene of `split` and a spoken question about it (a clip of the question text); the answer is text."""
    from tessera.lm.corpus import Document, ImageRef

    spoken = _need(corpus, "audio")
    scenes = corpus.pools[("scenes", split)]
    idx = int(rng.integers(len(scenes)))
    scene = scenes.items[idx]
    qtype, q, a = S.sample_question(scene, rng, qtype)
    clips = spoken.clips(split, "question", q)
    ref = AudioRef(split, clips[int(rng.integers(len(clips)))])
    return Document("spoken_vqa", [ImageRef("scenes", split, idx), ref, "answer:", f" {a}."],
                    {"scene": scene, "qtype": qtype, "question": q, "answer": a})
