"""Distil a large decoder into a nano student: `tessera lm distill --config configs/lm/distill/nano_from_ultra.yaml`.

Read top to bottom:
1. the teacher: a trained model folder (`teacher.path`, e.g. `runs/lm/ultra/final`), or one trained here with
   `tessera.recipes.train_lm` (`teacher.preset`, `teacher.steps`; resumable, in `<run>/teacher`);
2. the student's data: the same corpus and image tokenizer as the teacher (the teacher's own tokenizer when loaded
   from a folder), so both read one vocabulary;
3. the student from `preset` (+ `model` overrides), trained by `tessera.train.fit` on the sum over target tokens
   of alpha * T^2 KL(teacher || student) + (1 - alpha) * cross-entropy (+ z-loss), normalised by the global token
   count, with checkpoints and `--resume` like every Tessera trainer;
4. evaluation on held-out batches: KL(teacher || student) per token at T=1 and the student's text/image
   cross-entropy; the student folder lands in `<run>/final` (a normal model folder: generate/eval/quantize it).

The same-token-budget baseline is `tessera lm train` with the same preset, seq_len, batch_size and steps; the
benchmark `benchmarks/lm_deploy.py` runs both and reports them side by side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config import ConfigError
from tessera.lm.data import PackedBatches
from tessera.lm.distill import DistillConfig, distill_loss, kl_to_teacher
from tessera.lm.model import Decoder
from tessera.lm.objective import IGNORE, IMAGE
from tessera.lm.pretrained import load_pretrained, save_pretrained
from tessera.recipes.train_lm import LMRunConfig, build_model, prepare, train_lm
from tessera.train import FitResult, StepOutput, Task, fit

__all__ = ["TeacherSpec", "DistillRunConfig", "DistillTrainModule", "load_or_train_teacher", "distill_lm"]

_log = logging.getLogger(__name__)


@dataclass
class TeacherSpec:
    """Where the teacher comes from."""

    path: str | None = None  # a trained model folder; None: train `preset` here first (in <run>/teacher)
    preset: str = "ultra"  # decoder preset of a teacher trained here
    model: dict[str, Any] = field(default_factory=dict)  # DecoderConfig overrides of a teacher trained here
    steps: int = 400  # training steps of a teacher trained here (same data, seq_len and batch_size as the student)
    lr: float = 1e-3


@dataclass
class DistillRunConfig(LMRunConfig):
    """`LMRunConfig` for the student (preset, data, optimiser, loop) plus the teacher and the distillation loss."""

    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    distill: DistillConfig = field(default_factory=DistillConfig)


class DistillTrainModule(nn.Module):
    """The trainer's module: student forward + frozen teacher forward on the same batch; returns a summed loss.

    The teacher is held outside the module tree, so it is neither optimised nor checkpointed with the student.
    """

    def __init__(self, student: Decoder, teacher: Decoder, cfg: DistillRunConfig) -> None:
        super().__init__()
        if student.cfg.vocab_size != teacher.cfg.vocab_size:
            raise ConfigError(f"student vocab_size {student.cfg.vocab_size} != teacher vocab_size {teacher.cfg.vocab_size}")
        self.model = student
        self._teacher = [teacher.eval().requires_grad_(False)]
        self.distill = cfg.distill
        self.loss_cfg = cfg.loss

    @property
    def teacher(self) -> Decoder:
        return self._teacher[0]

    def no_weight_decay(self) -> set[str]:
        return {f"model.{n}" for n in self.model.no_weight_decay()}

    def logits_pair(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(student logits (M, V), teacher logits (M, V), valid mask (B, T)) at the target positions."""
        kwargs = dict(attention_mask=batch.get("attention_mask"), segment_ids=batch.get("segment_ids"),
                      patches=batch.get("patches"), compute_logits=False)
        valid = batch["targets"] != IGNORE
        hidden = self.model(batch["input_ids"], **kwargs).hidden[valid]  # (M, D)
        student = self.model.logits(hidden).float()
        teacher = self.teacher
        device = batch["input_ids"].device
        if teacher.embed_tokens.weight.device != device:
            teacher.to(device)
        with torch.no_grad():
            t_hidden = teacher(batch["input_ids"], **kwargs).hidden[valid]
            teacher_logits = teacher.logits(t_hidden).float()
        return student, teacher_logits, valid

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        student, teacher, valid = self.logits_pair(batch)
        d = self.distill
        kd = distill_loss(student, teacher, d.temperature, d.top_k)
        tgt = batch["targets"][valid]
        lse = torch.logsumexp(student, dim=-1)
        ce = lse - student.gather(-1, tgt[:, None]).squeeze(-1)  # (M,)
        loss = d.alpha * kd + (1.0 - d.alpha) * ce.sum()
        if self.loss_cfg.z_loss > 0:
            loss = loss + self.loss_cfg.z_loss * lse.pow(2).sum()
        count = max(1, int(valid.sum()))
        metrics = {"kd": kd.detach() / count, "ce": ce.detach().sum() / count, "tokens": float(count)}
        return StepOutput(loss, metrics)


def load_or_train_teacher(cfg: DistillRunConfig, run_dir: Path, image_tokenizer: Any = None) -> tuple[Decoder, Any]:
    """The teacher decoder and the image tokenizer the student must share with it."""
    if cfg.teacher.path is not None:
        folder = Path(cfg.teacher.path)
        if not folder.is_dir():
            raise FileNotFoundError(f"teacher.path: no model folder at {folder}")
        teacher, proc = load_pretrained(folder, image_tokenizer=image_tokenizer)
        return teacher, proc.image_tokenizer
    teacher_cfg = LMRunConfig(
        preset=cfg.teacher.preset, model=dict(cfg.teacher.model), tokenizer=cfg.tokenizer, data=cfg.data,
        seq_len=cfg.seq_len, batch_size=cfg.batch_size, loss=cfg.loss, eval_batches=cfg.eval_batches,
        train=replace(cfg.train, steps=cfg.teacher.steps, eval_every=0,
                      checkpoint_every=cfg.train.checkpoint_every or max(1, cfg.teacher.steps // 4)),
        optim=replace(cfg.optim, lr=cfg.teacher.lr),
    )
    folder = run_dir / "teacher"
    if not (folder / "final" / "config.json").is_file():
        _log.info("training the teacher (%s, %d steps) in %s", cfg.teacher.preset, cfg.teacher.steps, folder)
        train_lm(teacher_cfg, folder, resume=True, image_tokenizer=image_tokenizer)
    teacher, proc = load_pretrained(folder / "final", image_tokenizer=image_tokenizer)
    return teacher, proc.image_tokenizer


def distill_lm(
    cfg: DistillRunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    image_tokenizer: Any = None,
    teacher: Decoder | None = None,
    stop_after: int | None = None,
) -> FitResult:
    """Distil the teacher into the configured student; the student folder lands in `<run_dir>/final`.

    Args:
        cfg: the run config.
        run_dir: the run folder (the teacher trained here goes to `<run_dir>/teacher`).
        resume: continue the student from its newest intact checkpoint.
        image_tokenizer: use this image tokenizer object (tests); else the teacher's, or `cfg.tokenizer`.
        teacher: use this decoder as the teacher instead of `cfg.teacher` (tests, benchmarks).
        stop_after: stop early at this step (tests).
    """
    run_dir = Path(run_dir)
    if teacher is None:
        teacher, image_tokenizer = load_or_train_teacher(cfg, run_dir, image_tokenizer)
    processor, corpus = prepare(cfg, image_tokenizer)
    vocab = processor.vocab
    if teacher.cfg.vocab_size != vocab.size:
        raise ConfigError(f"the teacher's vocab_size {teacher.cfg.vocab_size} != the corpus vocabulary {vocab.size}: "
                          "the student must use the teacher's image tokenizer (tokenizer.path) and text model")
    torch.manual_seed(cfg.train.seed)
    student = build_model(cfg, vocab)
    _log.info("distilling a %.2fM-parameter teacher into a %.2fM-parameter %s student", teacher.num_parameters() / 1e6,
              student.num_parameters() / 1e6, cfg.preset)
    patches = dict(patch_size=student.cfg.patch_size, patch_share=cfg.patch_share)
    train_batches = PackedBatches(corpus, vocab, cfg.seq_len, cfg.batch_size, seed=cfg.data.seed, split="train", **patches)
    eval_source = PackedBatches(corpus, vocab, cfg.seq_len, cfg.batch_size, seed=cfg.data.seed + 1, split="test", **patches)
    eval_set = [eval_source(i) for i in range(cfg.eval_batches)]
    module = DistillTrainModule(student, teacher, cfg)

    def evaluate(module: DistillTrainModule, step: int) -> dict[str, float]:
        return evaluate_student(module, eval_set)

    def save(module: DistillTrainModule, folder: Path) -> None:
        save_pretrained(module.model, processor, folder)

    task = Task(
        module=module,
        batches=train_batches,
        evaluate=evaluate,
        batch_weight=PackedBatches.weight,
        save_artifact=save,
        progress_keys=("loss", "kd", "ce"),
    )
    return fit(task, cfg.train, cfg.optim, run_dir, resume=resume, config=cfg, stop_after=stop_after)


@torch.no_grad()
def evaluate_student(module: DistillTrainModule, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Held-out KL(teacher || student) per token (T=1, full vocabulary) and the student's text/image cross-entropy."""
    device = next(module.parameters()).device
    kl_sum, n = 0.0, 0
    ce = {"text": 0.0, "image": 0.0}
    counts = {"text": 0, "image": 0}
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        student, teacher, valid = module.logits_pair(batch)
        m = student.shape[0]
        kl_sum += float(kl_to_teacher(student, teacher)) * m
        n += m
        token_ce = F.cross_entropy(student, batch["targets"][valid], reduction="none")
        is_image = batch["modality"][valid] == IMAGE
        for name, sel in (("text", ~is_image), ("image", is_image)):
            ce[name] += float(token_ce[sel].sum())
            counts[name] += int(sel.sum())
    out = {"kl_to_teacher": kl_sum / max(1, n)}
    out.update({f"{k}_ce": ce[k] / max(1, counts[k]) for k in ce})
    return out
