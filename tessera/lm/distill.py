"""Knowledge distillation of a decoder into a smaller one: the student matches the teacher's next-token distribution.

Axis legend: M target positions, V vocab_size, K top-k entries kept per position.

Loss (Hinton et al. 2015): T^2 * KL(softmax(teacher / T) || softmax(student / T)) per target position, summed, so the
trainer can normalise by the global token count like the next-token loss. The T^2 factor keeps the gradient scale
independent of the temperature. With `top_k > 0` only the teacher's k most likely tokens are kept and renormalised
(Gemma-3 distils from 256 sampled logits per token; storing or shipping k logits instead of V is what makes
offline distillation affordable): the term is then sum_k p_k (log p_k - log q_k) with q the student's full softmax,
i.e. the cross-entropy to the truncated teacher minus its entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["DistillConfig", "distill_loss", "kl_to_teacher"]


@dataclass
class DistillConfig:
    """How the student learns from the teacher."""

    temperature: float = 1.0  # softens both distributions; the loss is scaled by T^2
    top_k: int = 0  # keep the teacher's top-k tokens per position (0: the full distribution)
    alpha: float = 1.0  # weight of the distillation term; (1 - alpha) weights the usual next-token cross-entropy

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"distill.temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"distill.top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill.alpha must be in [0, 1], got {self.alpha}")


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Summed distillation loss over positions: (M, V) student and teacher logits -> scalar.

    Raises:
        ValueError: shapes differ, or non-finite teacher logits.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(f"student and teacher logits must both be (M, V), got {tuple(student_logits.shape)} and "
                         f"{tuple(teacher_logits.shape)} (do the two models share one vocabulary?)")
    t = teacher_logits.detach().float() / temperature
    if not bool(torch.isfinite(t).all()):
        raise ValueError("teacher logits contain NaN/Inf")
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (M, V)
    if top_k and top_k < t.shape[-1]:
        top, idx = t.topk(top_k, dim=-1)  # (M, K)
        log_p = F.log_softmax(top, dim=-1)
        kl = (log_p.exp() * (log_p - log_q.gather(-1, idx))).sum()
    else:
        log_p = F.log_softmax(t, dim=-1)
        kl = F.kl_div(log_q, log_p, log_target=True, reduction="sum")
    return kl * temperature**2


@torch.no_grad()
def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) per position at temperature 1 over the full vocabulary (the evaluation number)."""
    return distill_loss(student_logits, teacher_logits, 1.0, 0) / max(1, student_logits.shape[0])
