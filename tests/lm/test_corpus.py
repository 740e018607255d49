"""Scenes, glyphs, episodes and documents: deterministic, non-overlapping, held-out by composition."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.lm import scenes as S
from tessera.lm.corpus import CorpusConfig, ImageRef, build_corpus, episode, label_word, sample_document
from tessera.lm.glyphs import SCRIPTS, glyph_classes


def test_scenes_split_by_held_out_pairs_and_captions_parse_back():
    rng = np.random.default_rng(0)
    for _ in range(300):
        train, test = S.sample_scene(rng, "train"), S.sample_scene(rng, "test")
        assert not train.held_out and test.held_out
        for scene in (train, test):
            parsed = S.parse_caption(S.caption(scene))
            assert parsed == {o.position: (o.size, o.color, o.shape) for o in scene.objects}
    colors_per_shape = {s: {c for c in S.COLORS if (c, s) not in S.HELD_OUT_PAIRS} for s in S.SHAPES}
    assert min(len(v) for v in colors_per_shape.values()) >= 6


def test_objects_stay_inside_their_cells():
    rng = np.random.default_rng(1)
    for _ in range(100):
        scene = S.sample_scene(rng, "any", 1, 4)
        image = S.render_scene(scene).astype(int)
        ink = np.abs(image - scene.background).sum(-1) > 30  # (H, W) pixels that differ from the background
        for cell in range(4):
            r, c = divmod(cell, 2)
            region = ink[16 * r : 16 * r + 16, 16 * c : 16 * c + 16]
            assert region.any() == (scene.at(cell) is not None)  # an object is drawn exactly in the occupied cells


def test_questions_have_correct_answers():
    rng = np.random.default_rng(2)
    for _ in range(200):
        scene = S.sample_scene(rng, "any")
        for qtype in S.QUESTION_TYPES:
            t, q, a = S.sample_question(scene, rng, qtype)
            assert a in S.answer_choices(t)
            if t == "count":
                assert a == S.COUNT_WORDS[len(scene.objects)]
            if t == "shape_at":
                obj = scene.at(S.POSITIONS.index(q.removeprefix("what shape is at the ").rstrip("?")))
                assert a == (obj.shape if obj else "nothing")


def test_glyph_classes_cover_six_scripts():
    classes = glyph_classes()
    assert len(classes) > 200 and {g.script.upper() for g, _ in classes} == set(SCRIPTS)
    assert all(len(faces) >= 4 for _, faces in classes)


def test_label_words_are_fresh_and_split():
    rng = np.random.default_rng(3)
    train = {label_word(rng, "train") for _ in range(500)}
    test = {label_word(rng, "test") for _ in range(500)}
    assert not train & test and len(train) > 400


@pytest.fixture(scope="module")
def corpus(image_tokenizer):
    cfg = CorpusConfig(train_scenes=400, test_scenes=200, glyph_train_renders=2, glyph_test_renders=1)
    return build_corpus(cfg, image_tokenizer)


def test_documents_are_deterministic_and_well_formed(corpus):
    for kind in ("caption", "generate", "vqa", "glyph", "episode", "text"):
        a = sample_document(corpus, np.random.default_rng([5, 1]), "train", kind)
        b = sample_document(corpus, np.random.default_rng([5, 1]), "train", kind)
        assert a.segments == b.segments and a.kind == kind
    doc = sample_document(corpus, np.random.default_rng(9), "test", "episode")
    images = [s for s in doc.segments if isinstance(s, ImageRef)]
    assert len(images) == doc.meta["ways"] * doc.meta["shots"] + 1
    assert doc.segments[-1] == f" {doc.meta['answer']}." and doc.meta["answer"] in doc.meta["labels"]
    assert all(r.split == "test" for r in images)
    assert corpus.codes(images[0]).shape == (8, 8)


def test_episodes_from_a_small_corpus_use_only_classes_with_enough_images(image_tokenizer):
    # 60 scenes hold few single-object scenes per colour/shape: episodes must draw only classes that have shots + 1
    small = build_corpus(CorpusConfig(train_scenes=60, test_scenes=30, glyph_train_renders=1, glyph_test_renders=1),
                         image_tokenizer)
    for seed in range(200):
        doc = sample_document(small, np.random.default_rng([seed]), "train", "episode")
        assert doc.kind == "episode"
    with pytest.raises(ValueError, match=r"at least 41 single-object train scenes"):
        episode(small, np.random.default_rng(0), 2, 40, "train", source="scenes", attribute="color")
    with pytest.raises(ValueError, match=r"at least 2 train renders"):
        episode(small, np.random.default_rng(0), 2, 1, "train", source="glyphs")
