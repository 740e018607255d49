"""Episode sampling (first-appearance labels, no leakage, fixed seeds) and the embedded suite (build, splits)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tessera.icl.episodes import class_index, episode_rng, first_appearance_labels, fixed_episodes, sample_episode
from tessera.icl.suite import DATASETS, SuiteConfig, build_suite, load_suite_dataset, suite_manifest
from tessera.icl.suite._store import assign_splits


def test_first_appearance_labels():
    mapped, order = first_appearance_labels(["b", "a", "b", "c", "a"])
    assert mapped.tolist() == [0, 1, 0, 2, 1] and order == ["b", "a", "c"]
    mapped, order = first_appearance_labels(np.array([9, 9, 3]))
    assert mapped.tolist() == [0, 0, 1] and order == [9, 3]


def test_sample_episode_labels_follow_the_actual_classes():
    labels = np.repeat(np.arange(10), 8)
    classes = class_index(labels)
    for i in range(50):
        ep = sample_episode(classes, 5, 3, 4, episode_rng(0, i))
        assert not set(ep.support) & set(ep.query)  # no support/query leakage
        # Labels are first-appearance labels of the true classes, for the support and the queries alike.
        assert ep.support_labels[0] == 0 and set(ep.support_labels.tolist()) == set(range(5))
        assert (ep.classes[ep.support_labels] == labels[ep.support]).all()
        assert (ep.classes[ep.query_labels] == labels[ep.query]).all()
        firsts = [int(np.flatnonzero(ep.support_labels == k)[0]) for k in range(5)]
        assert firsts == sorted(firsts)


def test_small_classes_give_their_remaining_items_as_queries():
    labels = np.repeat(np.arange(6), [6, 7, 8, 6, 20, 3])  # class 5 is too small for 5-shot
    ep = sample_episode(class_index(labels), 5, 5, 15, episode_rng(1, 0))
    assert 5 not in ep.classes
    counts = np.bincount(ep.query_labels, minlength=5)
    assert counts.min() >= 1 and counts.max() <= 15


def test_fixed_episodes_are_reproducible_and_method_independent():
    labels = np.repeat(np.arange(12), 10)
    a = fixed_episodes(labels, 5, 1, 5, 20, seed=7)
    b = fixed_episodes(labels, 5, 1, 5, 20, seed=7)
    assert all((x.support == y.support).all() and (x.query == y.query).all() for x, y in zip(a, b, strict=True))
    c = fixed_episodes(labels, 5, 1, 5, 20, seed=8)
    assert any((x.support != y.support).any() for x, y in zip(a, c, strict=True))


def test_too_few_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="need 5 classes"):
        sample_episode(class_index(np.repeat(np.arange(3), 10)), 5, 1, 1, episode_rng(0, 0))


def test_split_assignment_is_stable_and_disjoint():
    keys = [f"k{i}" for i in range(100)]
    s1 = assign_splits(keys, (0.6, 0.2, 0.2), "x")
    s2 = assign_splits(list(reversed(keys)), (0.6, 0.2, 0.2), "x")
    assert dict(zip(keys, s1, strict=True)) == dict(zip(reversed(keys), s2, strict=True))
    assert s1.count("train") == 60 and s1.count("val") == 20


def test_tiny_suite_builds_with_disjoint_class_splits(tiny_suite):
    m = suite_manifest(tiny_suite)
    assert m["reduced"] is True and "fonts-noto-core" in m["missing_debian_packages"]
    for name in ("glyphs", "shapes", "glyphs-eval"):
        ds = load_suite_dataset(name, "all", cfg=tiny_suite, build=False)
        assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (32, 32, 3)
        split = ds.meta["class_split"]
        parts = {s: set(ds.split(s).class_names) for s in ("train", "val", "test") if s in split}
        assert set.union(*parts.values()) == set(ds.class_names)
        assert sum(len(p) for p in parts.values()) == ds.num_classes  # disjoint
        assert DATASETS[name].role == ds.meta["role"]
        x = ds.to_tensor(np.arange(4))
        assert x.shape == (4, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    # Held-out scripts never appear in the base glyph dataset.
    base = {c.split("/")[0] for c in load_suite_dataset("glyphs", cfg=tiny_suite, build=False).class_names}
    held = {c.split("/")[0] for c in load_suite_dataset("glyphs-eval", cfg=tiny_suite, build=False).class_names}
    assert base and held and not base & held


def test_reduced_build_warns_and_records_unavailable_datasets(icl_cache, tmp_path):
    cfg = SuiteConfig(system=False, shape_classes=10, shape_instances=4)
    with pytest.warns(UserWarning, match="REDUCED"):
        build_suite(cfg, ["icons", "shapes"], root=tmp_path, progress=False)
    m = json.loads((tmp_path / cfg.key() / "manifest.json").read_text())
    assert m["datasets"]["icons"]["available"] is False
    assert m["datasets"]["shapes"]["classes"] == 10
    with pytest.raises(ValueError, match="unknown suite dataset"):
        load_suite_dataset("omniglot", cfg=cfg, root=tmp_path)


def test_rebuild_is_deterministic(tmp_path):
    cfg = SuiteConfig(system=False, shape_classes=6, shape_instances=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = build_suite(cfg, ["shapes"], root=tmp_path / "a", progress=False)
        b = build_suite(cfg, ["shapes"], root=tmp_path / "b", progress=False)
    ma = json.loads((a / "shapes" / "meta.json").read_text())
    mb = json.loads((b / "shapes" / "meta.json").read_text())
    assert ma["sha256"] == mb["sha256"]


def test_dataset_built_without_a_package_is_rebuilt_once_it_is_installed(tmp_path):
    import json

    from tessera.icl.suite import _stale

    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"missing_debian_packages": ["fonts-noto-core", "mate-backgrounds"]}))
    assert _stale(meta, missing_now=["mate-backgrounds"])  # fonts-noto-core arrived: rebuild
    assert not _stale(meta, missing_now=["fonts-noto-core", "mate-backgrounds"])  # nothing new: reuse
    meta.write_text(json.dumps({"missing_debian_packages": []}))
    assert not _stale(meta, missing_now=[])
