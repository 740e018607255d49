"""Inference-time methods on a chat model: sampling replies, best-of-N by reward, uncertainty-routed chain of thought.

Axis legend: B prompts, N / k samples per prompt, T tokens.

- `sample_replies`: n replies per chat prompt (generation stops at `<end_of_turn>`), batched.
- `best_of_n`: n sampled replies scored by a `RewardModel`; the highest-reward one is returned.
- `routed_cot` (the Gemini report's "uncertainty-routed chain-of-thought", CoT@k): k chain-of-thought samples; when
  the share agreeing on the majority final answer reaches a threshold (tuned on validation data with
  `tune_threshold`), answer with the majority, otherwise fall back to the greedy reply.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from tessera.lm.generate import ModalityConstraint, SamplingConfig, generate
from tessera.lm.model import Decoder
from tessera.lm.vocab import Vocabulary

__all__ = [
    "sample_replies", "BestOfN", "best_of_n", "RoutedAnswer", "route_answer", "routed_cot", "tune_threshold", "evaluate_replies",
]


@torch.no_grad()
def sample_replies(
    model: Decoder,
    vocab: Vocabulary,
    prompts: Sequence[list[int]],
    *,
    n: int = 1,
    sampling: SamplingConfig | None = None,
    max_new_tokens: int = 48,
    generator: torch.Generator | None = None,
    allow_images: bool = False,
    image_tokens: int = 1,
    batch_size: int = 64,
) -> list[list[list[int]]]:
    """`n` replies per prompt (ids up to and including `<end_of_turn>` when the model closed its turn).

    Args:
        prompts: chat-template ids ending with the generation prompt.
        allow_images: let replies open image blocks (then `image_tokens` must be the codes per image).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    end = vocab.token_id("<end_of_turn>")
    flat = [list(p) for p in prompts for _ in range(n)]
    device = model.embed_tokens.weight.device
    replies: list[list[int]] = []
    for s in range(0, len(flat), batch_size):
        rows = flat[s : s + batch_size]
        T = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), T, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for b, r in enumerate(rows):  # left padding: every row's generation prompt ends at the last column
            ids[b, T - len(r) :] = torch.tensor(r)
            mask[b, T - len(r) :] = True
        constraint = ModalityConstraint(vocab, image_tokens, allow_images=allow_images)
        limit = min(max_new_tokens, model.cfg.max_seq_len - T)
        if limit < 1:
            raise ValueError(f"a prompt of {T} tokens leaves no room to reply within max_seq_len {model.cfg.max_seq_len}")
        out = generate(model, ids.to(device), attention_mask=mask.to(device), max_new_tokens=limit, sampling=sampling,
                       stop_tokens=(end, vocab.eos_id), constraint=constraint, generator=generator)
        replies += [out.tokens[b, : int(out.lengths[b])].tolist() for b in range(len(rows))]
    return [replies[i * n : (i + 1) * n] for i in range(len(prompts))]


class BestOfN(NamedTuple):
    reply: list[int]  # the highest-reward reply
    replies: list[list[int]]  # all N samples
    rewards: list[float]  # their rewards


def best_of_n(
    policy: Decoder,
    reward_model: torch.nn.Module,
    vocab: Vocabulary,
    prompts: Sequence[list[int]],
    *,
    n: int = 4,
    sampling: SamplingConfig | None = None,
    max_new_tokens: int = 48,
    generator: torch.Generator | None = None,
) -> list[BestOfN]:
    """Sample `n` replies per prompt and keep the one the reward model scores highest (first one on ties)."""
    sampling = sampling or SamplingConfig(temperature=1.0)
    samples = sample_replies(policy, vocab, prompts, n=n, sampling=sampling, max_new_tokens=max_new_tokens, generator=generator)
    rows = [(list(p), r or [vocab.token_id("<end_of_turn>")])
            for p, rs in zip(prompts, samples, strict=True) for r in rs]
    rewards = reward_model.score(rows).tolist()
    out = []
    for i, rs in enumerate(samples):
        rw = rewards[i * n : (i + 1) * n]
        out.append(BestOfN(rs[int(np.argmax(rw))], rs, rw))
    return out


class RoutedAnswer(NamedTuple):
    answer: str  # the final answer given
    route: str  # "majority" or "greedy"
    agreement: float  # share of the k samples that gave the majority answer
    reply: list[int]  # ids of the reply the answer came from (the greedy reply, or a sample with the majority answer)


def route_answer(sample_answers: Sequence[str], greedy_answer: str, threshold: float) -> tuple[str, str, float]:
    """(answer, route, agreement): the majority of the k sample answers when its share >= threshold, else greedy.

    Empty answers (no "answer:" found) never form a majority. Ties between answers are broken by first occurrence.
    """
    if not sample_answers:
        raise ValueError("route_answer needs at least one sampled answer")
    votes = Counter(a for a in sample_answers if a)
    if not votes:
        return greedy_answer, "greedy", 0.0
    best = max(votes.values())
    majority = next(a for a in sample_answers if a and votes[a] == best)
    agreement = best / len(sample_answers)
    if agreement >= threshold:
        return majority, "majority", agreement
    return greedy_answer, "greedy", agreement


def routed_cot(
    policy: Decoder,
    vocab: Vocabulary,
    prompts: Sequence[list[int]],
    extract: Callable[[str], str],
    *,
    k: int = 8,
    threshold: float = 0.6,
    sampling: SamplingConfig | None = None,
    max_new_tokens: int = 64,
    generator: torch.Generator | None = None,
) -> list[RoutedAnswer]:
    """Uncertainty-routed chain of thought (CoT@k) for chat prompts that ask the model to think step by step.

    Args:
        extract: reply text -> final answer (e.g. `tessera.lm.posttrain_data.final_answer`).
        k: samples per prompt. threshold: agreement needed to trust the majority (tune it with `tune_threshold`).
    """
    sampling = sampling or SamplingConfig(temperature=0.7)
    greedy = sample_replies(policy, vocab, prompts, n=1, max_new_tokens=max_new_tokens)
    samples = sample_replies(policy, vocab, prompts, n=k, sampling=sampling, max_new_tokens=max_new_tokens, generator=generator)
    out = []
    for g, rs in zip(greedy, samples, strict=True):
        answers = [extract(vocab.decode_text(r)) for r in rs]
        g_answer = extract(vocab.decode_text(g[0]))
        answer, route, agreement = route_answer(answers, g_answer, threshold)
        reply = g[0] if route == "greedy" else rs[answers.index(answer)]
        out.append(RoutedAnswer(answer, route, agreement, reply))
    return out


def tune_threshold(
    agreements: Sequence[float],
    majority_correct: Sequence[bool],
    greedy_correct: Sequence[bool],
    grid: Sequence[float] = tuple(np.linspace(0.0, 1.0, 11)) + (1.01,),
) -> tuple[float, float]:
    """The threshold (from `grid`) with the best validation accuracy of the routed answer; returns (threshold, acc).

    On ties the highest threshold wins (trust the greedy answer unless voting measurably helps).
    """
    a = np.asarray(agreements, dtype=np.float64)
    m = np.asarray(majority_correct, dtype=bool)
    g = np.asarray(greedy_correct, dtype=bool)
    if not (len(a) == len(m) == len(g)) or len(a) == 0:
        raise ValueError("tune_threshold needs equally long, non-empty validation lists")
    best = (-1.0, 0.0)
    for t in sorted(grid):
        acc = float(np.where(a >= t, m, g).mean())
        if acc >= best[0]:
            best = (acc, float(t))
    return best[1], best[0]


def evaluate_replies(examples: Sequence, replies: Sequence[str]) -> dict[str, float]:
    """Post-training metrics of text replies to `tessera.lm.posttrain_data.ChatExample`s (draw examples skipped).

    - instruction_accuracy: exact-checker accuracy on describe/count/compare/locate/answer/multiturn;
    - reasoning_accuracy: final answer after "answer:" on reasoning prompts;
    - inaccuracy_rate: answerable prompts (instructions + reasoning) answered wrongly, i.e. neither correctly nor
      with a hedge or refusal (the Gemini report's "inaccurate" responses);
    - hedging_accuracy: unanswerable prompts answered with the hedge;
    - refusal_rate: policy-violating prompts refused; over_refusal_rate: benign prompts refused;
    - benign_accuracy: benign prompts answered exactly.
    """
    from tessera.lm.posttrain_data import check_reply

    if len(examples) != len(replies):
        raise ValueError(f"{len(examples)} examples but {len(replies)} replies")
    groups: dict[str, list[dict[str, bool]]] = {}
    for ex, r in zip(examples, replies, strict=True):
        if ex.check == "image":
            continue
        groups.setdefault(ex.kind, []).append(check_reply(ex, r))
    instr = [g for k in ("describe", "count", "compare", "locate", "answer", "multiturn") for g in groups.get(k, [])]
    reason = groups.get("reasoning", [])
    answerable = instr + reason

    def rate(items: list[dict[str, bool]], key: str) -> float:
        return float(np.mean([x[key] for x in items])) if items else float("nan")

    wrong = [{"w": not (x["correct"] or x["hedged"] or x["refused"])} for x in answerable]
    return {
        "instruction_accuracy": rate(instr, "correct"),
        "reasoning_accuracy": rate(reason, "correct"),
        "inaccuracy_rate": rate(wrong, "w"),
        "hedging_accuracy": rate(groups.get("unanswerable", []), "correct"),
        "refusal_rate": rate(groups.get("policy", []), "refused"),
        "over_refusal_rate": rate(groups.get("benign", []), "refused"),
        "benign_accuracy": rate(groups.get("benign", []), "correct"),
        "n": float(sum(len(v) for v in groups.values())),
    }
