"""Train a long-context nano on key-value retrieval: `python benchmarks/lm_longcontext.py` runs it and sweeps it.

Read top to bottom:
1. the decoder: `tessera.lm.longcontext.long_context_config` (nano, local/global layers, long-context RoPE) with a
   context of `context` tokens and the Tessera vocabulary size;
2. batches: retrieval prompts (`retrieval_batch`) of lengths drawn from `train_lengths` with the pair block at a
   random depth and `num_queries` queries at the end, the answers being the only targets; a pure function of the
   step, so `tessera.train.fit` resumes exactly;
3. `fit` with the token-count `batch_weight`; evaluation = retrieval accuracy at the training lengths; the model
   folder (config.json + model.safetensors) lands in `<run>/final`.

The model only ever sees prompts of at most max(train_lengths) tokens; the sweep then measures how far retrieval
carries beyond that (length generalisation), which is what the RoPE and window settings are for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tessera.lm.longcontext import RetrievalSpec, long_context_config, retrieval_accuracy, retrieval_batch
from tessera.lm.model import Decoder
from tessera.train import FitResult, OptimConfig, StepOutput, Task, TrainConfig, fit

__all__ = ["LongContextRunConfig", "RetrievalModule", "build_long_model", "train_longcontext"]


@dataclass
class LongContextRunConfig:
    """A retrieval training run."""

    base: str = "nano"
    context: int = 8192  # the model's max_seq_len
    sliding_window: int = 128
    layer_types: tuple[str, ...] = ("local", "global")
    rope_theta: float = 1_000_000.0
    rope_local_theta: float = 10_000.0
    rope_scaling: float = 1.0
    model: dict[str, Any] = field(default_factory=dict)  # further DecoderConfig overrides
    vocab_size: int = 2560  # the Tessera vocabulary with a 512-code image tokenizer
    num_pairs: int = 6
    use_sep: bool = True  # `key sep value` pairs (False: `key value`, the classic induction-head layout)
    num_queries: int = 4  # queries per training prompt (each answer is a target)
    train_lengths: tuple[int, ...] = (128, 256, 512)
    batch_size: int = 16
    seed: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=400, log_every=20, checkpoint_every=100))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, weight_decay=0.0, warmup_steps=20))


def build_long_model(cfg: LongContextRunConfig) -> Decoder:
    model_cfg = long_context_config(
        cfg.base, cfg.context, sliding_window=cfg.sliding_window, layer_types=tuple(cfg.layer_types),
        rope_theta=cfg.rope_theta, rope_local_theta=cfg.rope_local_theta, rope_scaling=cfg.rope_scaling,
        vocab_size=cfg.vocab_size, **cfg.model,
    )
    return Decoder(model_cfg)


class RetrievalModule(nn.Module):
    """Cross-entropy summed over the answer positions (the loop normalises by their global count)."""

    def __init__(self, model: Decoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        valid = batch["targets"] != -100
        hidden = self.model(batch["input_ids"], compute_logits=False).hidden[valid]  # (M, D)
        logits = self.model.logits(hidden).float()
        tgt = batch["targets"][valid]
        loss = F.cross_entropy(logits, tgt, reduction="sum")
        acc = (logits.argmax(-1) == tgt).float().mean()
        return StepOutput(loss, {"answer_acc": acc.detach()})


def train_longcontext(cfg: LongContextRunConfig, run_dir: str | Path, *, resume: bool = False) -> tuple[Decoder, FitResult]:
    """Train the retrieval model; returns (model in eval mode, fit result)."""
    spec = RetrievalSpec.for_vocab_size(cfg.vocab_size, num_pairs=cfg.num_pairs, use_sep=cfg.use_sep)
    torch.manual_seed(cfg.train.seed)
    model = build_long_model(cfg)
    lengths = list(cfg.train_lengths)

    def batches(step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([cfg.seed, step, micro, rank])
        length = lengths[int(rng.integers(len(lengths)))]  # one length per micro-batch: no padding needed
        return retrieval_batch(spec, rng, cfg.batch_size // world, length, None, cfg.num_queries)

    def evaluate(module: RetrievalModule, step: int) -> dict[str, float]:
        res = retrieval_accuracy(module.model, lengths=lengths, depths=(0.0, 0.5, 1.0), trials=8, spec=spec, seed=1234)
        return {"retrieval_acc": float(res["mean"])}

    def save(module: RetrievalModule, folder: Path) -> None:
        module.model.save_pretrained(folder)

    task = Task(module=RetrievalModule(model), batches=batches, evaluate=evaluate,
                batch_weight=lambda b: float((b["targets"] != -100).sum()), save_artifact=save,
                progress_keys=("loss", "answer_acc"))
    result = fit(task, cfg.train, cfg.optim, run_dir, resume=resume, config=cfg)
    return model.eval(), result
