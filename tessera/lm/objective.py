"""Next-token training on packed interleaved documents: packing and the token-normalised, modality-weighted loss.

Axis legend: B rows, T tokens per row, V vocabulary, D embed_dim, M target tokens in a batch.

Packing. Documents (each `<bos> ... <eos>`) are laid whole into rows of `seq_len` tokens, greedily in draw order;
the rest of a row is padding. `segment_ids` tell the decoder where documents start, so attention never crosses a
document boundary and positions restart at 0 in each (no cross-document leakage, unlike naive concatenation).
Targets are the next token *within the same document*; a document's last token, and padding, have no target (-100).

Loss. `lm_loss` returns a SUM over target tokens of w_modality * cross-entropy (+ z_loss * log^2 Z, Chameleon /
PaLM's z-loss), and the number of target tokens. The shared trainer divides the sum by the total target count of the
whole global batch (its `batch_weight` hook), so gradient accumulation and data parallelism give exactly the gradient
of one big batch, however documents split across micro-batches (transformers #34191). Modality weights let image
codes, which are many and high-entropy, count more or less than text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from tessera.lm.model import Decoder

__all__ = ["LossConfig", "LossTerms", "lm_loss", "pack_documents", "fill_row", "packed_batch", "IGNORE", "TEXT", "IMAGE",
           "SKIP"]

IGNORE = -100
TEXT, IMAGE = 0, 1  # modality of a target token
SKIP = -1  # a token that is never a target (placeholders of continuous image patches)


@dataclass
class LossConfig:
    """Loss weights."""

    text_weight: float = 1.0  # weight of text (and special-token) targets
    image_weight: float = 1.0  # weight of image-code targets
    z_loss: float = 1e-4  # coefficient of log^2 Z on every target position (0 disables)

    def __post_init__(self) -> None:
        if self.text_weight < 0 or self.image_weight < 0 or self.z_loss < 0:
            raise ValueError("loss weights must be >= 0")


class LossTerms(NamedTuple):
    """Sums over target tokens (divide by `count`, or by the global count under accumulation)."""

    loss: torch.Tensor  # scalar: sum of weighted CE + z-loss terms
    count: torch.Tensor  # number of target tokens
    ce_sum: dict[str, torch.Tensor]  # unweighted CE summed per modality ("text", "image")
    n: dict[str, torch.Tensor]  # target tokens per modality
    z_sum: torch.Tensor  # sum of log^2 Z


def lm_loss(
    model: Decoder,
    batch: dict[str, torch.Tensor],
    cfg: LossConfig,
) -> LossTerms:
    """Forward `batch` through `model` and return the summed loss terms.

    Args:
        model: the decoder.
        batch: input_ids, targets, modality, segment_ids, attention_mask (all (B, T)); optional patches.
        cfg: loss weights.
    """
    out = model(
        batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        segment_ids=batch.get("segment_ids"),
        patches=batch.get("patches"),
        compute_logits=False,
    )
    targets = batch["targets"]
    valid = targets != IGNORE  # (B, T)
    hidden = out.hidden[valid]  # (M, D): project only positions with a target (padding costs nothing)
    logits = model.logits(hidden).float()  # (M, V)
    tgt = targets[valid]
    # One log-sum-exp serves both the cross-entropy (lse - target logit) and the z-loss (lse^2).
    lse = torch.logsumexp(logits, dim=-1)  # (M,)
    ce = lse - logits.gather(-1, tgt[:, None]).squeeze(-1)  # (M,)
    modality = batch["modality"][valid]
    is_image = modality == IMAGE
    weights = torch.where(is_image, cfg.image_weight, cfg.text_weight).to(ce.dtype)
    loss = (weights * ce).sum()
    z_sum = lse.pow(2).sum()
    if cfg.z_loss > 0:
        loss = loss + cfg.z_loss * z_sum
    return LossTerms(
        loss=loss,
        count=valid.sum(),
        ce_sum={"text": ce[~is_image].sum().detach(), "image": ce[is_image].sum().detach()},
        n={"text": (~is_image).sum(), "image": is_image.sum()},
        z_sum=z_sum.detach(),
    )


def pack_documents(
    documents: Sequence[tuple],
    seq_len: int,
    rows: int,
    pad_id: int = 0,
) -> tuple[dict[str, torch.Tensor], int]:
    """Pack documents (ids, per-token modality[, patches]) into `rows` rows of `seq_len`, whole documents, in order.

    A document that does not fit in the rest of the current row starts the next row; packing ends when the rows
    are full (the remaining documents are not used). Tokens whose modality is SKIP are never targets. Patches of
    the packed documents are concatenated in packing order (the order of their `<patch>` placeholders).

    Returns:
        (batch dict with input_ids, targets, modality, segment_ids, attention_mask [, patches], documents used).

    Raises:
        ValueError: a document longer than `seq_len`.
    """
    input_ids = torch.full((rows, seq_len), pad_id, dtype=torch.long)
    targets = torch.full((rows, seq_len), IGNORE, dtype=torch.long)
    modality = torch.zeros((rows, seq_len), dtype=torch.long)
    segment_ids = torch.full((rows, seq_len), -1, dtype=torch.long)
    row, col, used = 0, 0, 0
    patches: list[torch.Tensor] = []
    for d, doc in enumerate(documents):
        ids, mods = doc[0], doc[1]
        n = len(ids)
        if n > seq_len:
            raise ValueError(f"document {d} has {n} tokens, more than seq_len={seq_len}")
        if n < 2:
            continue
        if col + n > seq_len:
            row, col = row + 1, 0
            if row >= rows:
                break
        t = torch.as_tensor(ids, dtype=torch.long)
        m = torch.as_tensor(mods, dtype=torch.long)[1:]
        input_ids[row, col : col + n] = t
        targets[row, col : col + n - 1] = t[1:].masked_fill(m == SKIP, IGNORE)
        modality[row, col : col + n - 1] = m.clamp_min(0)
        segment_ids[row, col : col + n] = d
        if len(doc) > 2 and doc[2] is not None:
            patches.append(doc[2])
        col += n
        used += 1
    batch = {
        "input_ids": input_ids,
        "targets": targets,
        "modality": modality,
        "segment_ids": segment_ids,
        "attention_mask": segment_ids >= 0,
    }
    if patches:
        batch["patches"] = torch.cat(patches)
    return batch, used


def fill_row(draw: Callable[[], tuple], seq_len: int, max_misses: int) -> list[tuple]:
    """Documents for one packed row: `draw()` is called until `max_misses` drawn documents did not fit (in total)."""
    docs: list[tuple] = []
    used = misses = 0
    while misses < max_misses:
        doc = draw()
        if used + len(doc[0]) > seq_len:
            misses += 1
            continue
        docs.append(doc)
        used += len(doc[0])
    return docs


def packed_batch(
    row: Callable[[np.random.Generator], list[tuple]],
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    step: int,
    micro: int,
    rank: int,
    world_size: int,
) -> dict[str, torch.Tensor]:
    """This rank's share of a packed global batch, a pure function of (seed, step, micro, global row).

    Global row g is filled by `row(rng)` from its own RNG stream seeded by (seed, step, micro, g), so every world
    size sees the same global batch and resuming needs no iterator state. Rank r holds rows
    [r * B / world, (r + 1) * B / world).
    """
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the world size {world_size}")
    per_rank = batch_size // world_size
    parts = [pack_documents(row(np.random.default_rng([seed, step, micro, rank * per_rank + i])), seq_len, 1)[0]
             for i in range(per_rank)]
    batch = {k: torch.cat([p[k] for p in parts]) for k in ("input_ids", "targets", "modality", "segment_ids", "attention_mask")}
    pix = [p["patches"] for p in parts if "patches" in p]
    if pix:
        batch["patches"] = torch.cat(pix)  # row-major order = the order of the <patch> placeholders in (B, T)
    return batch
