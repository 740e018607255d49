"""Packing and the loss: targets stay inside documents, modality weights, z-loss, exact accumulation."""

from __future__ import annotations

import torch

from tessera.lm.model import Decoder, config_from_name
from tessera.lm.objective import IGNORE, IMAGE, TEXT, LossConfig, lm_loss, pack_documents
from tessera.train import OptimConfig, StepOutput, Task, TrainConfig, fit


def _docs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n):
        length = int(torch.randint(5, 40, (1,), generator=g))
        ids = torch.randint(40, 90, (length,), generator=g).tolist()
        mods = [IMAGE if t >= 70 else TEXT for t in ids]
        docs.append((ids, mods))
    return docs


def test_packing_keeps_targets_inside_documents():
    docs = [([2, 10, 11, 1], [0] * 4), ([2, 20, 21, 22, 1], [0, 0, 1, 1, 0]), ([2, 30, 1], [0] * 3)]
    batch, used = pack_documents(docs, seq_len=8, rows=2)
    assert used == 3
    assert batch["input_ids"].tolist() == [[2, 10, 11, 1, 0, 0, 0, 0], [2, 20, 21, 22, 1, 2, 30, 1]]
    assert batch["targets"].tolist() == [[10, 11, 1, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE],
                                         [20, 21, 22, 1, IGNORE, 30, 1, IGNORE]]
    assert batch["modality"][1, :4].tolist() == [0, 1, 1, 0]
    assert batch["segment_ids"].tolist()[1] == [1, 1, 1, 1, 1, 2, 2, 2]


def _model():
    torch.manual_seed(0)
    return Decoder(config_from_name("debug", vocab_size=97, layer_types=("global",)))


def test_modality_weights_and_z_loss():
    model = _model()
    batch, _ = pack_documents(_docs(6), 96, 2)
    base = lm_loss(model, batch, LossConfig(z_loss=0.0))
    text_only = lm_loss(model, batch, LossConfig(image_weight=0.0, z_loss=0.0))
    torch.testing.assert_close(text_only.loss, base.ce_sum["text"])
    torch.testing.assert_close(base.loss, base.ce_sum["text"] + base.ce_sum["image"])
    with_z = lm_loss(model, batch, LossConfig(z_loss=1e-3))
    torch.testing.assert_close(with_z.loss, base.loss + 1e-3 * base.z_sum)
    assert int(base.count) == int((batch["targets"] != IGNORE).sum()) == int(base.n["text"] + base.n["image"])
    with torch.no_grad():
        logits = model(batch["input_ids"], segment_ids=batch["segment_ids"], attention_mask=batch["attention_mask"]).logits
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE, reduction="sum")
    torch.testing.assert_close(base.loss.detach(), ref, rtol=1e-5, atol=1e-3)


class _Module(torch.nn.Module):
    def __init__(self, mean_of_means: bool = False) -> None:
        super().__init__()
        self.model = _model()
        self.mean_of_means = mean_of_means

    def forward(self, batch, step):
        terms = lm_loss(self.model, batch, LossConfig())
        return StepOutput(terms.loss / terms.count if self.mean_of_means else terms.loss, {})


def _run(tmp_path, name, accum, rows_per_micro, mean_of_means=False):
    rows = [pack_documents(_docs(12, seed=s), 64, 1)[0] for s in range(8)]  # rows hold different token counts

    def batches(step, micro, rank, world):
        part = rows[micro * rows_per_micro : (micro + 1) * rows_per_micro]
        return {k: torch.cat([r[k] for r in part]) for k in part[0]}

    module = _Module(mean_of_means)
    task = Task(module=module, batches=batches, batch_weight=None if mean_of_means else (lambda b: float((b["targets"] != IGNORE).sum())))
    cfg = TrainConfig(steps=3, grad_accum=accum, progress=False, device="cpu", tensorboard=False, log_every=1)
    fit(task, cfg, OptimConfig(lr=1e-2, warmup_steps=0, grad_clip=0.0), tmp_path / name)
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_loss_normalisation_is_the_same_with_and_without_accumulation(tmp_path):
    one = _run(tmp_path, "one", accum=1, rows_per_micro=8)
    four = _run(tmp_path, "four", accum=4, rows_per_micro=2)
    torch.testing.assert_close(four, one, atol=2e-5, rtol=1e-4)
    # The naive alternative (a mean per micro-batch, averaged) is not the same optimisation problem.
    naive = _run(tmp_path, "naive", accum=4, rows_per_micro=2, mean_of_means=True)
    assert (naive - one).abs().max() > 1e-3
