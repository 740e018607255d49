"""Distillation: the loss is a KL (zero when student = teacher, top-k variant consistent), and training a student on
the teacher's logits lowers its KL to the teacher, well below a student trained from scratch on the same tokens."""

from __future__ import annotations

import pytest
import torch

from tessera.config import ConfigError, load_config
from tessera.lm.corpus import CorpusConfig
from tessera.lm.distill import DistillConfig, distill_loss, kl_to_teacher
from tessera.lm.model import Decoder, config_from_name
from tessera.recipes.distill_lm import DistillRunConfig, DistillTrainModule, distill_lm, evaluate_student
from tessera.recipes.train_lm import prepare, train_lm
from tessera.train import OptimConfig, TrainConfig

from .conftest import PaletteTokenizer
from .test_train import CONFIGS


def test_distill_loss_is_a_kl():
    torch.manual_seed(0)
    t = torch.randn(5, 50)
    assert float(distill_loss(t.clone(), t)) == pytest.approx(0.0, abs=1e-5)
    s = torch.randn(5, 50)
    full = distill_loss(s, t)
    assert float(full) > 0
    assert float(kl_to_teacher(s, t)) == pytest.approx(float(full) / 5, rel=1e-5)
    # top-k with k = V is the full KL; with small k it only counts the teacher's top tokens.
    assert float(distill_loss(s, t, top_k=50)) == pytest.approx(float(full), rel=1e-4)
    assert float(distill_loss(s, t, top_k=5)) != pytest.approx(float(full), rel=1e-2)
    assert float(distill_loss(s, t, temperature=2.0)) > 0
    s.requires_grad_(True)
    distill_loss(s, t, top_k=5).backward()
    assert s.grad is not None and bool(torch.isfinite(s.grad).all())
    with pytest.raises(ValueError, match="vocabulary"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        DistillConfig(temperature=0)


def _cfg(**kw) -> DistillRunConfig:
    cfg = DistillRunConfig(
        preset="debug",
        model={"embed_dim": 32, "num_layers": 1, "mlp_dim": 64, "num_heads": 2, "num_kv_heads": 1},
        data=CorpusConfig(train_scenes=300, test_scenes=60, max_objects=1, glyph_train_renders=1, glyph_test_renders=1,
                          mixture={"caption": 0.5, "vqa": 0.5}),
        seq_len=96, batch_size=8, eval_batches=2,
        train=TrainConfig(steps=40, log_every=20, progress=False, device="cpu", tensorboard=False),
        optim=OptimConfig(lr=1e-2, warmup_steps=4, weight_decay=0.0),
        **kw,
    )
    return cfg


@pytest.mark.slow
def test_distillation_lowers_the_students_kl_to_the_teacher(tmp_path, monkeypatch):
    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path / "cache"))
    tok = PaletteTokenizer(grid_size=4)
    cfg = _cfg()
    # The teacher: the debug preset trained briefly on the same corpus (the benchmark uses a larger, longer one).
    teacher_cfg = DistillRunConfig(**{**cfg.__dict__, "preset": "debug", "model": {}})
    teacher_cfg.train = TrainConfig(steps=40, log_every=20, progress=False, device="cpu", tensorboard=False)
    from tessera.lm.pretrained import load_pretrained

    train_lm(teacher_cfg, tmp_path / "teacher", image_tokenizer=tok)
    teacher, _ = load_pretrained(tmp_path / "teacher" / "final", image_tokenizer=tok)

    proc, corpus = prepare(cfg, tok)
    from tessera.lm.data import PackedBatches
    from tessera.recipes.train_lm import build_model

    eval_set = [PackedBatches(corpus, proc.vocab, cfg.seq_len, cfg.batch_size, seed=99, split="test")(i) for i in range(2)]
    torch.manual_seed(cfg.train.seed)
    before = evaluate_student(DistillTrainModule(build_model(cfg, proc.vocab), teacher, cfg), eval_set)

    res = distill_lm(cfg, tmp_path / "distilled", image_tokenizer=tok, teacher=teacher)
    student, _ = load_pretrained(tmp_path / "distilled" / "final", image_tokenizer=tok)
    after = evaluate_student(DistillTrainModule(student, teacher, cfg), eval_set)

    train_lm(cfg, tmp_path / "scratch", image_tokenizer=tok)  # same preset, batches and steps: same token budget
    scratch, _ = load_pretrained(tmp_path / "scratch" / "final", image_tokenizer=tok)
    baseline = evaluate_student(DistillTrainModule(scratch, teacher, cfg), eval_set)

    assert after["kl_to_teacher"] < 0.5 * before["kl_to_teacher"], (before, after)
    assert after["kl_to_teacher"] < baseline["kl_to_teacher"], (after, baseline)
    assert res.eval_metrics["kl_to_teacher"] == pytest.approx(res.eval_metrics["kl_to_teacher"])  # logged at the end
    assert not any(n.startswith("_teacher") for n in DistillTrainModule(student, teacher, cfg).state_dict())


def test_distill_configs_load_and_have_debug_twins():
    files = sorted((CONFIGS / "distill").glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_config(DistillRunConfig, f)
        assert f"tessera lm distill --config configs/lm/distill/{f.name}" in f.read_text()
        if not f.stem.endswith("_debug"):
            assert (f.parent / f"{f.stem}_debug.yaml").is_file()
        assert cfg.distill.temperature > 0
    with pytest.raises(ConfigError, match="distill.top_k"):
        load_config(DistillRunConfig, None, ["distill.top_k=-1"])


def test_vocab_mismatch_is_a_clear_error():
    student = Decoder(config_from_name("debug", vocab_size=100))
    teacher = Decoder(config_from_name("debug", vocab_size=120))
    with pytest.raises(ConfigError, match="vocab_size"):
        DistillTrainModule(student, teacher, DistillRunConfig())
