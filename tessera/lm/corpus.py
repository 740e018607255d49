"""The embedded multimodal corpus: documents built from procedural scenes and glyphs, deterministically.

Axis legend: N images in a pool, H, W, C image height/width/channels, h, w code grid, B rows, T tokens per row.

A corpus is two image pools per split, rendered once and tokenized once by the image tokenizer (cached):
scenes (`tessera.lm.scenes`; train pool without the held-out colour-shape pairs, test pool with at least one) and
glyphs (`tessera.lm.glyphs`; train and test renders of every letter differ in face/size/offset). Documents are
drawn from the pools on the fly, as a pure function of a seed, in these kinds:

    caption   <boi>img<eoi>caption: a large red circle at the top left.
    generate  draw: a large red circle at the top left.<boi>img<eoi>          (text -> image)
    vqa       <boi>img<eoi>question: what shape is at the top left? answer: circle.
    glyph     <boi>img<eoi>glyph: ж is CYRILLIC SMALL LETTER ZHE, a letter of the Cyrillic script.
              or draw the letter ж.<boi>img<eoi>                              (both directions, as Chameleon)
    episode   <boi>img<eoi> is a dax.<boi>img<eoi> is a wug. ... <boi>img<eoi> is a dax.
              N-way K-shot, classes = colour or shape values (scenes) or letters (glyphs); the label words are
              nonsense words drawn fresh for each episode, so only the context says which is which.
    text      the same generators without pixels: captions, questions about a described scene, glyph facts.
    video / audio / spoken_vqa   clips and speech (`tessera.lm.modalities`; pools handed to `build_corpus`).

Every document starts with <bos> and ends with <eos>. A document is a list of segments (text strings and image
references) so that prompts and answers are tokenized separately, exactly as evaluation feeds them.
Label words for evaluation episodes come from a disjoint word set (`label_word(split="test")`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from tessera.lm import glyphs as glyph_mod
from tessera.lm import scenes as scene_mod

__all__ = [
    "CorpusConfig",
    "ImageRef",
    "Document",
    "ImagePool",
    "Corpus",
    "build_corpus",
    "label_word",
    "sample_document",
    "corpus_text",
    "DOCUMENT_KINDS",
]

_log = logging.getLogger(__name__)

DOCUMENT_KINDS = ("caption", "generate", "vqa", "glyph", "episode", "text", "video", "audio", "spoken_vqa")
_VIDEO_FIELDS = ("video_train_clips", "video_test_clips", "video_frames", "video_max_sprites")


@dataclass
class CorpusConfig:
    """What the corpus holds and how documents are mixed."""

    image_size: int = 32
    train_scenes: int = 20_000  # rendered scenes in the train pool (no held-out colour-shape pair)
    test_scenes: int = 2_000  # rendered scenes in the test pool (>= 1 held-out pair each)
    min_objects: int = 1
    max_objects: int = 3
    glyph_train_renders: int = 8  # renders of every letter in the train pool
    glyph_test_renders: int = 5  # >= shots + 1, so few-shot queries never repeat a support image
    seed: int = 0
    mixture: dict[str, float] = field(
        default_factory=lambda: {"caption": 0.2, "generate": 0.2, "vqa": 0.25, "glyph": 0.1, "episode": 0.15, "text": 0.1}
    )
    episode_ways: tuple[int, int] = (2, 3)  # inclusive range of classes per episode
    episode_shots: tuple[int, int] = (1, 3)  # inclusive range of examples per class
    episode_max_images: int = 7  # supports + query; keeps an episode under ~512 tokens with 8x8 codes
    glyph_episode_share: float = 0.3  # share of episodes built from glyphs instead of scenes
    video_train_clips: int = 4000  # sprite clips in the train video pool (when the mixture has "video")
    video_test_clips: int = 400
    video_frames: int = 4  # frames per clip (4-16); each frame is an image block
    video_max_sprites: int = 2

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mixture) - set(DOCUMENT_KINDS))
        if unknown:
            raise ValueError(f"data.mixture has unknown document kinds {unknown}; known: {list(DOCUMENT_KINDS)}")
        if not self.mixture or min(self.mixture.values()) < 0 or sum(self.mixture.values()) <= 0:
            raise ValueError("data.mixture needs non-negative weights with a positive sum")
        if self.train_scenes < 8 or self.test_scenes < 8:
            raise ValueError("data.train_scenes and data.test_scenes must be >= 8")
        self.episode_ways = tuple(self.episode_ways)  # type: ignore[assignment]
        self.episode_shots = tuple(self.episode_shots)  # type: ignore[assignment]
        if self.episode_ways[0] < 2 or self.episode_shots[0] < 1:
            raise ValueError("data.episode_ways must start at >= 2 and data.episode_shots at >= 1")
        if self.episode_ways[0] + 1 > self.episode_max_images:
            raise ValueError("data.episode_max_images is too small for the smallest episode")
        if not 4 <= self.video_frames <= 16:
            raise ValueError(f"data.video_frames must be in [4, 16], got {self.video_frames}")
        if self.video_train_clips < 1 or self.video_test_clips < 1:
            raise ValueError("data.video_train_clips and data.video_test_clips must be >= 1")

    def uses(self, kind: str) -> bool:
        """Whether the mixture draws documents of `kind`."""
        return self.mixture.get(kind, 0) > 0


# -- label words -----------------------------------------------------------------------------------------------------
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _is_test_word(word: str) -> bool:
    return zlib.crc32(word.encode()) % 5 == 0


def label_word(rng: np.random.Generator, split: str = "train") -> str:
    """A nonsense word of 2-3 CV syllables; test words and train words are disjoint sets (by hash)."""
    while True:
        n = int(rng.integers(2, 4))
        word = "".join(_CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(n))
        if _is_test_word(word) == (split == "test"):
            return word


# -- documents -------------------------------------------------------------------------------------------------------
class ImageRef(NamedTuple):
    """An image of a pool: `pool` is "scenes" or "glyphs", `split` "train" or "test"."""

    pool: str
    split: str
    index: int


Segment = str | ImageRef


@dataclass
class Document:
    """Segments plus what evaluation needs to know about them."""

    kind: str
    segments: list[Segment]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImagePool:
    """Rendered images with their descriptions and (once tokenized) their codes."""

    images: np.ndarray  # (N, H, W, C) uint8
    items: list  # Scene, or (glyph class index, face file name)
    codes: np.ndarray | None = None  # (N, h, w) int16

    def __len__(self) -> int:
        return len(self.items)


class _Tokenizer(Protocol):
    def encode(self, images: torch.Tensor) -> torch.Tensor: ...


def _render_pools(cfg: CorpusConfig) -> dict[tuple[str, str], ImagePool]:
    pools: dict[tuple[str, str], ImagePool] = {}
    for split, n, offset in (("train", cfg.train_scenes, 1), ("test", cfg.test_scenes, 2)):
        rng = np.random.default_rng([cfg.seed, offset])
        scenes = [scene_mod.sample_scene(rng, split, cfg.min_objects, cfg.max_objects) for _ in range(n)]
        pools[("scenes", split)] = ImagePool(scene_mod.render_scenes(scenes, cfg.image_size), scenes)
    classes = glyph_mod.glyph_classes()
    for split, renders, offset in (("train", cfg.glyph_train_renders, 3), ("test", cfg.glyph_test_renders, 4)):
        rng = np.random.default_rng([cfg.seed, offset])
        images, items = [], []
        for ci, (glyph, faces) in enumerate(classes):
            for _ in range(renders):
                face = faces[rng.integers(len(faces))]
                images.append(glyph_mod.render_glyph(glyph.char, face, rng, cfg.image_size))
                items.append((ci, face.name))
        pools[("glyphs", split)] = ImagePool(np.stack(images), items)
    return pools


class Corpus:
    """Image pools (with codes) and the index tables documents are drawn from."""

    def __init__(self, cfg: CorpusConfig, pools: dict[tuple[str, str], ImagePool], *, video: dict | None = None,
                 audio: Any = None) -> None:
        self.cfg = cfg
        self.pools = pools
        self.video = video  # split -> tessera.lm.modalities.VideoPool (with codes), or None
        self.audio = audio  # tessera.lm.audio.SpokenCorpus (with codes), or None
        self.glyph_classes = [g for g, _ in glyph_mod.glyph_classes()]
        self.by_value: dict[tuple[str, str, str], list[int]] = {}  # (split, attribute, value) -> single-object scenes
        for split in ("train", "test"):
            for i, scene in enumerate(pools[("scenes", split)].items):
                if len(scene.objects) == 1:
                    o = scene.objects[0]
                    self.by_value.setdefault((split, "color", o.color), []).append(i)
                    self.by_value.setdefault((split, "shape", o.shape), []).append(i)
        self.glyph_renders: dict[tuple[str, int], list[int]] = {}
        for split in ("train", "test"):
            for i, (ci, _) in enumerate(pools[("glyphs", split)].items):
                self.glyph_renders.setdefault((split, ci), []).append(i)

    def pool(self, ref: ImageRef) -> ImagePool:
        return self.pools[(ref.pool, ref.split)]

    def image(self, ref: ImageRef) -> np.ndarray:
        return self.pool(ref).images[ref.index]

    def codes(self, ref: ImageRef) -> np.ndarray:
        codes = self.pool(ref).codes
        if codes is None:
            raise ValueError("this corpus has not been tokenized (build it with an image tokenizer)")
        return codes[ref.index]

    def scene(self, ref: ImageRef) -> scene_mod.Scene:
        return self.pool(ref).items[ref.index]


def _fingerprint(cfg: CorpusConfig, tokenizer_id: str) -> str:
    settings = asdict(cfg)
    if not cfg.uses("video"):  # corpora without video keep the keys they had before video existed
        for name in _VIDEO_FIELDS:
            settings.pop(name)
    settings["mixture"] = {k: v for k, v in settings["mixture"].items() if k in DOCUMENT_KINDS[:6] or v > 0}
    blob = json.dumps({"cfg": settings, "tokenizer": tokenizer_id, "version": 1}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_corpus(
    cfg: CorpusConfig,
    tokenizer: _Tokenizer | None = None,
    *,
    tokenizer_id: str = "",
    cache: Path | None = None,
    batch_size: int = 256,
    video: dict[str, tuple[np.ndarray, list]] | None = None,
    audio: Any = None,
) -> Corpus:
    """Render the pools and (with a tokenizer) encode every image to codes, caching the result.

    Args:
        cfg: corpus settings.
        tokenizer: an image tokenizer (`encode((B, 3, H, W) float in [0, 1]) -> (B, h, w)` codes); None: no codes.
        tokenizer_id: a string identifying the tokenizer's weights (part of the cache key).
        cache: folder for the cached pools (`<cache>/<fingerprint>.npz`); None: no caching.
        batch_size: images per tokenizer call.
        video: split -> (uint8 clips (N, T, H, W, C), plans) from `tessera.data.video.render_sprite_clips`; their
            frames are tokenized with the images (and cached with them). Needed when the mixture has "video".
        audio: a `tessera.lm.audio.SpokenCorpus` with codes; needed when the mixture has "audio" or "spoken_vqa".
    """
    from tessera.lm.modalities import VideoPool

    if cfg.uses("video") and video is None:
        raise ValueError("data.mixture has video documents but no video clips were given (video=...)")
    if (cfg.uses("audio") or cfg.uses("spoken_vqa")) and (audio is None or audio.codes is None):
        raise ValueError("data.mixture has audio / spoken_vqa documents but no tokenized spoken corpus was given (audio=...)")
    vpools = {s: VideoPool(c, p) for s, (c, p) in video.items()} if video is not None else None
    path = None
    if cache is not None and tokenizer is not None:
        path = Path(cache) / f"{_fingerprint(cfg, tokenizer_id)}.npz"
        if path.is_file():
            try:
                corpus = _load_cached(cfg, path, vpools)
                corpus.audio = audio
                return corpus
            except (OSError, KeyError, ValueError) as exc:
                _log.warning("ignoring unreadable corpus cache %s (%s); rebuilding", path, exc)
    pools = _render_pools(cfg)
    if tokenizer is not None:
        for pool in pools.values():
            pool.codes = encode_images(tokenizer, pool.images, batch_size)
        for vp in (vpools or {}).values():
            N, T = vp.clips.shape[:2]
            codes = encode_images(tokenizer, vp.clips.reshape(N * T, *vp.clips.shape[2:]), batch_size)
            vp.codes = codes.reshape(N, T, *codes.shape[1:])  # (N*T, h, w) -> (N, T, h, w)
        if path is not None:
            _save_cached(path, pools, vpools)
    return Corpus(cfg, pools, video=vpools, audio=audio)


@torch.no_grad()
def encode_images(tokenizer: _Tokenizer, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, h, w) int16 codes with `tokenizer.encode` on float (B, C, H, W) in [0, 1]."""
    out = []
    device = next((p.device for p in getattr(tokenizer, "parameters", lambda: iter(()))()), torch.device("cpu"))
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).float().div(255.0)
        codes = tokenizer.encode(x.to(device))
        out.append(codes.cpu().numpy().astype(np.int16))
    return np.concatenate(out)


def _save_cached(path: Path, pools: dict[tuple[str, str], ImagePool], video: dict | None = None) -> None:
    arrays = {f"{p}_{s}": pool.codes for (p, s), pool in pools.items()}
    arrays.update({f"video_{s}": vp.codes for s, vp in (video or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}.npz")  # per process: torchrun ranks may build it together
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _load_cached(cfg: CorpusConfig, path: Path, video: dict | None = None) -> Corpus:
    pools = _render_pools(cfg)  # rendering is fast (~15k images/s) and keeps the cache small: only codes are stored
    with np.load(path) as data:
        for (p, s), pool in list(pools.items()):
            codes = data[f"{p}_{s}"]
            if len(codes) != len(pool):
                raise ValueError(f"{path}: {p}/{s} has {len(codes)} codes for {len(pool)} images")
            pool.codes = codes
        for s, vp in (video or {}).items():
            codes = data[f"video_{s}"]
            if codes.shape[:2] != vp.clips.shape[:2]:
                raise ValueError(f"{path}: video/{s} codes {codes.shape[:2]} do not match the clips {vp.clips.shape[:2]}")
            vp.codes = codes
    return Corpus(cfg, pools, video=video)


# -- sampling documents ----------------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def sample_document(corpus: Corpus, rng: np.random.Generator, split: str = "train", kind: str | None = None) -> Document:
    """One document of `kind` (default: drawn from the mixture) from the `split` pools."""
    cfg = corpus.cfg
    if kind is None:
        kinds = [k for k, w in cfg.mixture.items() if w > 0]
        p = np.array([cfg.mixture[k] for k in kinds], dtype=np.float64)
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    scenes = corpus.pools[("scenes", split)]
    if kind in ("caption", "generate", "vqa", "text"):
        idx = int(rng.integers(len(scenes)))
        ref = ImageRef("scenes", split, idx)
        scene = scenes.items[idx]
        cap = scene_mod.caption(scene)
        if kind == "caption":
            return Document(kind, [ref, "caption:", " " + cap], {"scene": scene})
        if kind == "generate":
            return Document(kind, ["draw: " + cap, ref], {"scene": scene})
        if kind == "vqa":
            qtype, q, a = scene_mod.sample_question(scene, rng)
            return Document(kind, [ref, f"question: {q} answer:", f" {a}."], {"scene": scene, "qtype": qtype, "answer": a})
        return _text_document(corpus, rng, scene)
    if kind == "glyph":
        pool = corpus.pools[("glyphs", split)]
        idx = int(rng.integers(len(pool)))
        glyph = corpus.glyph_classes[pool.items[idx][0]]
        ref = ImageRef("glyphs", split, idx)
        if rng.random() < 0.5:
            return Document(kind, [ref, "glyph:", " " + glyph.description()], {"glyph": glyph})
        return Document(kind, [f"draw the letter {glyph.char}.", ref], {"glyph": glyph})
    if kind == "episode":
        lo, hi = cfg.episode_ways
        ways = int(rng.integers(lo, hi + 1))
        max_shots = max(1, (cfg.episode_max_images - 1) // ways)
        source = "glyphs" if rng.random() < cfg.glyph_episode_share else "scenes"
        if source == "glyphs":  # every glyph has only so many renders: supports + query must be distinct
            renders = cfg.glyph_train_renders if split == "train" else cfg.glyph_test_renders
            max_shots = min(max_shots, renders - 1)
            if max_shots < cfg.episode_shots[0]:
                source, max_shots = "scenes", max(1, (cfg.episode_max_images - 1) // ways)
        shots = int(rng.integers(cfg.episode_shots[0], min(cfg.episode_shots[1], max_shots) + 1))
        return episode(corpus, rng, ways, shots, split, source=source)
    if kind in ("video", "audio", "spoken_vqa"):
        from tessera.lm import modalities as M

        build = {"video": M.video_document, "audio": M.audio_document, "spoken_vqa": M.spoken_vqa_document}[kind]
        return build(corpus, rng, split)
    raise ValueError(f"unknown document kind {kind!r}; known: {list(DOCUMENT_KINDS)}")


def _text_document(corpus: Corpus, rng: np.random.Generator, scene: scene_mod.Scene) -> Document:
    """Plain text from the same generators (no pixels)."""
    choice = rng.integers(3)
    cap = scene_mod.caption(scene)
    if choice == 0:
        return Document("text", [f"a picture of {cap}"], {})
    if choice == 1:
        _, q, a = scene_mod.sample_question(scene, rng)
        return Document("text", [f"scene: {cap} question: {q} answer: {a}."], {})
    glyph = _pick(rng, corpus.glyph_classes)
    return Document("text", [glyph.description()], {})


def episode(
    corpus: Corpus,
    rng: np.random.Generator,
    ways: int,
    shots: int,
    split: str = "train",
    *,
    source: str = "scenes",
    attribute: str | None = None,
) -> Document:
    """An N-way K-shot in-context classification episode with fresh label words.

    Scenes: classes are values of one attribute (colour or shape) of single-object scenes, whose other attributes
    vary; glyphs: classes are letters, examples differ in face/size/offset. Supports are shuffled; the query's label
    is the last text segment (meta["answer"], meta["labels"] holds every class's word).
    """
    labels: list[str] = []
    while len(labels) < ways:
        word = label_word(rng, split)
        if word not in labels:
            labels.append(word)
    if source == "scenes":
        attribute = attribute or ("color" if rng.random() < 0.5 else "shape")
        values = list(scene_mod.COLORS) if attribute == "color" else list(scene_mod.SHAPES)
        # Test single-object scenes all hold a held-out pair, so some colours never occur there.
        # Small corpora hold few single-object scenes of some values: a class needs shots + 1 of them (the query).
        values = [v for v in values if len(corpus.by_value.get((split, attribute, v), ())) > shots]
        if len(values) < ways:
            raise ValueError(f"only {len(values)} {attribute} values have at least {shots + 1} single-object {split} "
                             f"scenes; a {ways}-way {shots}-shot episode needs {ways} (build a larger corpus)")
        classes = [values[i] for i in rng.choice(len(values), size=ways, replace=False)]
        members = [corpus.by_value[(split, attribute, c)] for c in classes]
    elif source == "glyphs":
        eligible = [c for c in range(len(corpus.glyph_classes)) if len(corpus.glyph_renders.get((split, c), ())) > shots]
        if len(eligible) < ways:
            raise ValueError(f"only {len(eligible)} letters have at least {shots + 1} {split} renders; a {ways}-way "
                             f"{shots}-shot glyph episode needs {ways}")
        classes = [eligible[int(i)] for i in rng.choice(len(eligible), size=ways, replace=False)]
        members = [corpus.glyph_renders[(split, c)] for c in classes]
    else:
        raise ValueError(f"episode source must be 'scenes' or 'glyphs', got {source!r}")
    examples = []
    query_class = int(rng.integers(ways))
    for ci, pool_idx in enumerate(members):
        need = shots + (ci == query_class)
        if len(pool_idx) < need:
            raise ValueError(f"episode needs {need} distinct images of a class but the {split} pool has {len(pool_idx)}")
        picks = rng.choice(len(pool_idx), size=need, replace=False)
        examples.append([pool_idx[int(p)] for p in picks])
    query = examples[query_class].pop()
    support = [(ci, idx) for ci in range(ways) for idx in examples[ci]]
    order = rng.permutation(len(support))
    segments: list[Segment] = []
    for j in order:
        ci, idx = support[int(j)]
        segments += [ImageRef(source, split, idx), f" is a {labels[ci]}."]
    segments += [ImageRef(source, split, query), " is a", f" {labels[query_class]}."]
    meta = {"labels": labels, "answer": labels[query_class], "ways": ways, "shots": shots, "source": source,
            "attribute": attribute, "classes": classes}
    return Document("episode", segments, meta)


def corpus_text(num_documents: int = 40_000, seed: int = 0) -> list[str]:
    """Text of the corpus generators (all document kinds, both splits' vocabularies) for training the text tokenizer.

    Needs no rendering or image tokenizer: the scenes and glyphs are sampled, not drawn.
    """
    rng = np.random.default_rng([seed, 99])
    glyphs = [g for g, _ in glyph_mod.glyph_classes()]
    out: list[str] = []
    for i in range(num_documents):
        split = "test" if i % 5 == 0 else "train"
        scene = scene_mod.sample_scene(rng, "any")
        cap = scene_mod.caption(scene)
        _, q, a = scene_mod.sample_question(scene, rng)
        glyph = _pick(rng, glyphs)
        words = [label_word(rng, split) for _ in range(3)]
        out += [
            f"caption: {cap}",
            f"draw: {cap}",
            f"question: {q} answer: {a}.",
            f"glyph: {glyph.description()}",
            f"draw the letter {glyph.char}.",
            " ".join(f" is a {w}." for w in words),
        ]
    return out


TEXT_TOKENIZER_SETTINGS = {"vocab_size": 2048, "num_documents": 40_000, "seed": 0}


def build_text_tokenizer(path: str | Path, **settings) -> dict[str, Any]:
    """Train Tessera's text tokenizer on `corpus_text` and write it to `path` (+ a `.json` record next to it).

    With the default settings this reproduces the committed `tessera/assets/lm/text_tokenizer.model` byte for byte
    (same sentencepiece version; the record holds the version and checksum).
    """
    import sentencepiece

    from tessera.lm._io import atomic_write_bytes, atomic_write_json
    from tessera.lm.vocab import train_text_tokenizer

    s = {**TEXT_TOKENIZER_SETTINGS, **settings}
    model = train_text_tokenizer(corpus_text(s["num_documents"], s["seed"]), s["vocab_size"])
    path = Path(path)
    atomic_write_bytes(path, model)
    record = {
        **s,
        "sha256": hashlib.sha256(model).hexdigest(),
        "sentencepiece": sentencepiece.__version__,
        "command": "tessera lm build-text-tokenizer",
    }
    atomic_write_json(path.with_suffix(".json"), record)
    return record
