"""Every run file loads; a short CAML pretraining beats chance by a wide margin on a held-out dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tessera.config import load_config
from tessera.recipes.pretrain_features import PretrainFeaturesConfig
from tessera.recipes.train_icl import TrainICLConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "icl").glob("*.yaml")), ids=lambda p: p.name)
def test_icl_run_files_load(path):
    cfg = load_config(TrainICLConfig, path)
    assert cfg.train.steps >= 1
    assert path.read_text().startswith("#") and "tessera icl train --config" in path.read_text()
    # The model must build for its extractor's feature size (a pixels-8 CAML once failed here after the other runs
    # had trained for an hour: 192 + 64 is not divisible by the preset's 5 heads).
    from tessera.features import load_extractor
    from tessera.recipes.train_icl import model_config

    model_config(cfg, load_extractor(cfg.data.extractor).embed_dim)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "features").glob("*.yaml")), ids=lambda p: p.name)
def test_feature_run_files_load(path):
    cfg = load_config(PretrainFeaturesConfig, path)
    assert cfg.train.steps >= 1


def test_held_out_data_cannot_be_trained_on():
    with pytest.raises(Exception, match="held-out"):
        load_config(TrainICLConfig, None, ["data.datasets=[icons]"])
    with pytest.raises(Exception, match="held-out"):
        load_config(PretrainFeaturesConfig, None, ["data.datasets=[glyphs-eval]"])


def _overrides(suite_cfg) -> str:
    """The tiny suite's non-default fields as a YAML flow mapping (so the recipe uses the fixture's build)."""
    import dataclasses

    from tessera.icl.suite import SuiteConfig

    default = SuiteConfig()
    diff = {f.name: getattr(suite_cfg, f.name) for f in dataclasses.fields(suite_cfg) if f.name not in ("system", "resolution") and getattr(suite_cfg, f.name) != getattr(default, f.name)}
    return "{" + ", ".join(f"{k}: {v}" for k, v in diff.items()) + "}"


@pytest.mark.integration
def test_short_pretraining_beats_chance_on_a_held_out_dataset(tiny_suite, tmp_path):
    from tessera.features import load_extractor
    from tessera.icl.embeddings import embed_dataset
    from tessera.icl.episodes import fixed_episodes
    from tessera.icl.suite import load_suite_dataset
    from tessera.icl.zoo import load_model
    from tessera.recipes.train_icl import run

    try:
        load_extractor("tessera-resnet-s")
    except FileNotFoundError:
        pytest.skip("the shipped tessera-resnet-s weights are not in this checkout")
    cfg = load_config(
        TrainICLConfig,
        None,
        [
            "model.preset=caml-debug", "model.num_layers=1", "model.max_way=5",
            "data.system=false", "data.datasets=[glyphs,shapes]", f"data.suite_overrides={_overrides(tiny_suite)}",
            "episodes.episodes_per_step=4", "episodes.queries_per_class=3", "episodes.val_episodes=10",
            "train.steps=80", "train.log_every=20", "train.eval_every=0", "train.progress=false", "train.device=cpu",
            "optim.lr=1e-3", "optim.warmup_steps=10",
        ],
    )
    out = run(cfg, run_dir=tmp_path / "run", progress=False)
    model, _ = load_model(out["final"])
    ext = load_extractor("tessera-resnet-s")
    held = embed_dataset(ext, load_suite_dataset("glyphs-eval", "all", cfg=tiny_suite, build=False), progress=False).split("test")
    eps = fixed_episodes(held.labels, 5, 5, 5, 40, seed=0)
    accs = []
    with torch.inference_mode():
        for ep in eps:
            s = torch.from_numpy(np.asarray(held.features[ep.support], dtype=np.float32))
            q = torch.from_numpy(np.asarray(held.features[ep.query], dtype=np.float32))
            pred = model(s, torch.from_numpy(ep.support_labels), q).logits[0].argmax(-1).numpy()
            accs.append((pred == ep.query_labels).mean())
    print(f"held-out 5w5s accuracy after a short pretraining: {np.mean(accs):.3f}")
    assert float(np.mean(accs)) > 0.5, f"held-out 5-way 5-shot accuracy {np.mean(accs):.2f} (chance 0.20)"


def test_embed_dataset_of_a_split_view_is_cached_beside_the_whole_dataset(tiny_suite, tmp_path):
    """A split view (name "glyphs/train") used to crash: its cache file pointed into a folder never created."""
    import numpy as np

    from tessera.features import load_extractor
    from tessera.icl.embeddings import embed_dataset
    from tessera.icl.suite import load_suite_dataset

    ext = load_extractor("tessera-resnet-debug")
    whole = load_suite_dataset("glyphs", "all", cfg=tiny_suite, build=False)
    train = load_suite_dataset("glyphs", "train", cfg=tiny_suite, build=False)
    es_train = embed_dataset(ext, train, cache=tmp_path, progress=False)
    assert es_train.features.shape == (len(train), ext.embed_dim)
    assert es_train.class_split == ["train"] * train.num_classes and es_train.split("train").num_classes == train.num_classes
    es_whole = embed_dataset(ext, whole, cache=tmp_path, progress=False)
    assert es_whole.features.shape == (len(whole), ext.embed_dim)  # not overwritten by (or confused with) the view
    again = embed_dataset(ext, train, cache=tmp_path, progress=False)  # from the cache
    assert isinstance(again.features, np.memmap) and np.allclose(np.asarray(again.features), np.asarray(es_train.features))
    rows = np.flatnonzero(np.isin(np.asarray(whole.labels), [whole.class_names.index(c) for c in train.class_names]))
    assert np.allclose(np.asarray(es_whole.features)[rows], np.asarray(es_train.features), atol=1e-5)
    assert len(list(tmp_path.rglob("*.npy"))) == 2
