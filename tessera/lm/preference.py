"""Preference objectives: Bradley-Terry (reward model), DPO (offline, against a frozen reference) and RLOO
(on-policy REINFORCE with a leave-one-out baseline and a KL penalty to the reference).

Axis legend: B pairs (or prompts), k samples per prompt, T tokens, V vocabulary.

Written here rather than taken from TRL: TRL's trainers own the training loop, the tokenizer and the Hugging Face
model classes, while Tessera's stages run on the shared trainer (`tessera.train.fit`) with its own decoder,
vocabulary and packed batches; the objectives themselves are a few lines, checked against their published
formulas in the tests.

- Bradley-Terry: P(chosen > rejected) = sigmoid(r_c - r_r); loss = -log sigmoid(r_c - r_r).
- DPO (Rafailov et al. 2023, eq. 7): loss = -log sigmoid(beta * [(log pi(y_c) - log ref(y_c)) - (log pi(y_r) -
  log ref(y_r))]), with log-probabilities summed over the response tokens.
- RLOO (Ahmadian et al. 2024): for k samples of a prompt with rewards R_i = r_i - kl_coef * (log pi(y_i) - log
  ref(y_i)), the advantage of sample i is R_i - mean_{j != i} R_j, and the loss is -mean(A_i * log pi(y_i)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from tessera.lm.model import Decoder

__all__ = [
    "bradley_terry_loss",
    "DPOTerms",
    "dpo_loss",
    "sequence_logps",
    "response_batch",
    "rloo_advantages",
    "rloo_loss",
]


def _check_same_shape(*xs: torch.Tensor) -> None:
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) != 1:
        raise ValueError(f"preference inputs must have the same shape, got {sorted(shapes)}")


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean -log sigmoid(r_chosen - r_rejected) over (B,) reward pairs."""
    _check_same_shape(chosen, rejected)
    return -F.logsigmoid(chosen.float() - rejected.float()).mean()


class DPOTerms(NamedTuple):
    loss: torch.Tensor  # scalar mean over pairs
    chosen_reward: torch.Tensor  # (B,) beta * (log pi - log ref) of the chosen reply (detached)
    rejected_reward: torch.Tensor  # (B,)
    accuracy: torch.Tensor  # scalar: share of pairs whose implicit reward ranks chosen first


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> DPOTerms:
    """DPO loss from (B,) summed response log-probabilities under the policy and the frozen reference.

    Raises:
        ValueError: shapes differ or beta <= 0.
    """
    _check_same_shape(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    if beta <= 0:
        raise ValueError(f"dpo beta must be > 0, got {beta}")
    chosen = policy_chosen.float() - ref_chosen.float().detach()
    rejected = policy_rejected.float() - ref_rejected.float().detach()
    margin = beta * (chosen - rejected)
    return DPOTerms(
        loss=-F.logsigmoid(margin).mean(),
        chosen_reward=(beta * chosen).detach(),
        rejected_reward=(beta * rejected).detach(),
        accuracy=(margin > 0).float().mean().detach(),
    )


def response_batch(rows: Sequence[tuple[list[int], list[int]]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded (prompt + response) rows: input_ids (B, T), attention_mask, response_mask (True on response ids).

    Args:
        rows: (prompt ids, response ids) per row.
    """
    if not rows:
        raise ValueError("response_batch needs at least one row")
    T = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    resp = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, (p, r) in enumerate(rows):
        if not r:
            raise ValueError(f"row {b} has an empty response")
        ids[b, : len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)
        mask[b, : len(p) + len(r)] = True
        resp[b, len(p) : len(p) + len(r)] = True
    return {"input_ids": ids, "attention_mask": mask, "response_mask": resp}


def sequence_logps(model: Decoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) sum of log p(token | tokens before it) over each row's response tokens (`response_batch` layout)."""
    ids, resp = batch["input_ids"], batch["response_mask"]
    out = model(ids, attention_mask=batch["attention_mask"], compute_logits=False)
    predicts = resp[:, 1:]  # position t predicts token t + 1
    hidden = out.hidden[:, :-1][predicts]  # (M, D): only positions whose next token is a response token
    logits = model.logits(hidden).float()  # (M, V)
    tgt = ids[:, 1:][predicts]
    token_logp = logits.log_softmax(-1).gather(-1, tgt[:, None]).squeeze(-1)  # (M,)
    row = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(predicts)[predicts]
    return torch.zeros(ids.shape[0], device=ids.device, dtype=token_logp.dtype).index_add(0, row, token_logp)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(B, k) rewards -> (B, k) leave-one-out advantages r_i - mean_{j != i} r_j (k >= 2)."""
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"RLOO needs (B, k) rewards with k >= 2 samples per prompt, got shape {tuple(rewards.shape)}")
    k = rewards.shape[1]
    others = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def rloo_loss(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, rewards: torch.Tensor, kl_coef: float = 0.05
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLOO loss from (B, k) sequence log-probs (policy with grad, reference without) and (B, k) rewards.

    Returns:
        (loss, metrics: mean reward, mean KL estimate, mean KL-penalised reward).
    """
    _check_same_shape(policy_logps, ref_logps, rewards)
    kl = (policy_logps.detach() - ref_logps.detach()).float()  # per-sample estimate of KL(pi || ref)
    total = rewards.float() - kl_coef * kl
    adv = rloo_advantages(total)
    loss = -(adv * policy_logps.float()).mean()
    return loss, {"reward": rewards.float().mean(), "kl": kl.mean(), "penalised_reward": total.mean()}
