"""Long context: decoder settings that reach 8k+ tokens at nano size on CPU, and a key-value retrieval test.

Axis legend: B prompts, T tokens, V vocab_size, L context lengths, P depths.

Settings (`long_context_config`). Local (sliding-window) layers interleaved with global ones, as in Gemma-2/3: a
local layer's KV cache is a ring of `sliding_window` slots (`tessera.lm.model.KVCache`), so only global layers grow
with the context; with one KV head of 32 dims a nano global layer holds 256 bytes per token (fp32 keys + values).
RoPE: local layers keep base 10k (they only ever see `sliding_window` relative positions); global layers use a large
base (Gemma-3: 1M) so their slowest rotations stay nearly constant across the context, and optionally linear
position interpolation (`rope_scaling`, positions / factor; Gemma-3 uses 8) to stretch a trained model.

Retrieval test (the Gemini report's long-context check: key-value pairs at the start, filler, then a query for one
key). A prompt is `<bos>`, filler tokens, a block of `num_pairs` pairs `key sep value`, more filler, and at the end
`query key sep` (or `key value` pairs and a `query key` question with `use_sep=False`); the model must put the pair's value at the last position. The block sits at relative `depth`
(0 = right after `<bos>`, 1 = right before the query) of a prompt of `length` tokens. Accuracy = the argmax over the
whole vocabulary equals the value; chance is 1 / number of value tokens. Keys, values and filler are disjoint sets
of token ids (`RetrievalSpec`), so any decoder with a large enough vocabulary can be scored.

Prompts longer than `chunk` tokens are prefilled through the KV cache chunk by chunk, so memory stays at
chunk x (chunk + cache) attention scores per layer instead of length^2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tessera.lm.model import Decoder, DecoderConfig, config_from_name

__all__ = [
    "long_context_config",
    "kv_cache_bytes",
    "RetrievalSpec",
    "retrieval_prompt",
    "retrieval_batch",
    "retrieval_accuracy",
]


def long_context_config(
    base: str = "nano",
    context: int = 8192,
    *,
    sliding_window: int = 128,
    layer_types: tuple[str, ...] = ("local", "global"),
    rope_theta: float = 1_000_000.0,
    rope_local_theta: float = 10_000.0,
    rope_scaling: float = 1.0,
    **overrides: Any,
) -> DecoderConfig:
    """A preset (`nano` by default) with a `context`-token window, local/global layers and long-context RoPE."""
    return config_from_name(
        base, max_seq_len=context, sliding_window=sliding_window, layer_types=tuple(layer_types), rope_theta=rope_theta,
        rope_local_theta=rope_local_theta, rope_scaling=rope_scaling, **overrides,
    )


def kv_cache_bytes(cfg: DecoderConfig, tokens: int, batch_size: int = 1, bytes_per_value: int = 4) -> dict[str, int]:
    """KV cache bytes after `tokens` tokens: per layer type and in total (local layers hold at most a window)."""
    per_token = 2 * cfg.num_kv_heads * cfg.head_dim * bytes_per_value * batch_size  # keys + values
    out = {"global": 0, "local": 0}
    for i in range(cfg.num_layers):
        kind = cfg.layer_type(i)
        slots = min(tokens, cfg.sliding_window) if kind == "local" else tokens  # type: ignore[type-var]
        out[kind] += slots * per_token
    out["total"] = out["global"] + out["local"]
    return out


@dataclass
class RetrievalSpec:
    """Token ids of the retrieval task (disjoint sets)."""

    key_ids: list[int]
    value_ids: list[int]
    filler_ids: list[int]
    sep_id: int
    query_id: int
    bos_id: int = 2
    num_pairs: int = 6  # pairs in the block; one of them is queried
    use_sep: bool = True  # pairs as `key sep value` and queries as `query key sep`; False: `key value` / `query key`

    def __post_init__(self) -> None:
        sets = [set(self.key_ids), set(self.value_ids), set(self.filler_ids), {self.sep_id}, {self.query_id}]
        if sum(len(s) for s in sets) != len(set().union(*sets)):
            raise ValueError("retrieval: key, value, filler, sep and query ids must be disjoint")
        if self.num_pairs < 1 or self.num_pairs > len(self.key_ids):
            raise ValueError(f"retrieval: num_pairs must be in [1, {len(self.key_ids)}] (distinct keys), got {self.num_pairs}")
        if len(self.value_ids) < 2 or not self.filler_ids:
            raise ValueError("retrieval: need >= 2 value ids and >= 1 filler id")

    @classmethod
    def for_vocab_size(cls, vocab_size: int, num_keys: int = 64, num_values: int = 16, num_filler: int = 256,
                       num_pairs: int = 6, use_sep: bool = True) -> RetrievalSpec:
        """Consecutive id ranges inside the text part of a Tessera vocabulary (ids from 300: plain text pieces, past
        the special tokens and byte fallbacks); smaller vocabularies start at id 8."""
        start = 300 if vocab_size >= 1024 else 8
        need = num_keys + num_values + num_filler + 2
        if start + need > vocab_size:
            raise ValueError(f"retrieval: vocab_size {vocab_size} is too small for {need} task tokens")
        ids = list(range(start, start + need))
        keys, ids = ids[:num_keys], ids[num_keys:]
        values, ids = ids[:num_values], ids[num_values:]
        filler, ids = ids[:num_filler], ids[num_filler:]
        return cls(keys, values, filler, sep_id=ids[0], query_id=ids[1], num_pairs=num_pairs, use_sep=use_sep)

    @property
    def chance(self) -> float:
        return 1.0 / len(self.value_ids)


def retrieval_prompt(spec: RetrievalSpec, rng: np.random.Generator, length: int, depth: float,
                     num_queries: int = 1) -> tuple[list[int], list[tuple[int, int]]]:
    """One prompt of exactly `length` tokens with the pair block at `depth`, ending with `num_queries` queries.

    The last query is left open (`query key sep`, answer expected next); earlier ones are answered in the prompt
    (training uses them as extra targets). Returns (ids, [(position whose next token is the answer, answer id)]).

    Raises:
        ValueError: `length` too short for the block and the queries, or depth outside [0, 1].
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    n = spec.num_pairs
    keys = rng.choice(spec.key_ids, size=n, replace=False)
    values = rng.choice(spec.value_ids, size=n, replace=True)
    sep = [spec.sep_id] if spec.use_sep else []
    block = [int(t) for k, v in zip(keys, values, strict=True) for t in (k, *sep, v)]
    asked = rng.choice(n, size=num_queries, replace=num_queries > n)
    tail: list[int] = []
    answers: list[tuple[int, int]] = []
    for j, q in enumerate(asked):
        tail += [spec.query_id, int(keys[q]), *sep]
        answers.append((len(tail) - 1, int(values[q])))  # offset inside the tail
        if j < num_queries - 1:
            tail.append(int(values[q]))
    filler = length - 1 - len(block) - len(tail)
    if filler < 0:
        raise ValueError(f"length {length} is too short for {n} pairs and {num_queries} queries")
    before = int(round(depth * filler))
    fill = rng.choice(spec.filler_ids, size=filler).tolist()
    ids = [spec.bos_id, *fill[:before], *block, *fill[before:], *tail]
    offset = len(ids) - len(tail)
    return ids, [(offset + p, a) for p, a in answers]


def retrieval_batch(spec: RetrievalSpec, rng: np.random.Generator, batch_size: int, length: int,
                    depth: float | None = None, num_queries: int = 1) -> dict[str, torch.Tensor]:
    """(B, T) prompts with `targets` (-100 except at answer positions); depth drawn uniformly when None."""
    rows, targets = [], []
    for _ in range(batch_size):
        d = float(rng.random()) if depth is None else depth
        ids, answers = retrieval_prompt(spec, rng, length, d, num_queries)
        tgt = [-100] * len(ids)
        for pos, a in answers:
            tgt[pos] = a
        rows.append(ids)
        targets.append(tgt)
    return {"input_ids": torch.tensor(rows), "targets": torch.tensor(targets)}


@torch.no_grad()
def _last_logits(model: Decoder, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, V) logits at the last position, prefilling through the KV cache in chunks of `chunk` tokens."""
    B, T = ids.shape
    if T <= chunk:
        return model(ids, last_only=True).logits[:, -1].float()
    cache = model.new_cache(B, T)
    out = None
    for start in range(0, T, chunk):
        out = model(ids[:, start : start + chunk], cache=cache, last_only=True)
    return out.logits[:, -1].float()  # type: ignore[union-attr]


@torch.no_grad()
def retrieval_accuracy(
    model: Decoder,
    *,
    lengths: tuple[int, ...] | list[int] = (512, 1024, 2048, 4096, 8192),
    depths: tuple[float, ...] | list[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    trials: int = 16,
    spec: RetrievalSpec | None = None,
    seed: int = 0,
    batch_size: int = 4,
    chunk: int = 1024,
) -> dict[str, Any]:
    """Key-value retrieval accuracy of `model` swept over prompt length and depth of the pair block.

    Args:
        model: a decoder (eval mode is set and restored); lengths beyond its `max_seq_len` are reported as None.
        lengths: prompt lengths in tokens.
        depths: relative positions of the pair block in [0, 1].
        trials: prompts per (length, depth) cell.
        spec: the task's token ids (default: `RetrievalSpec.for_vocab_size(model.cfg.vocab_size)`).
        seed: prompt seed (the same prompts for every model given the same spec).
        batch_size: prompts per forward pass.
        chunk: prefill chunk size for long prompts.

    Returns:
        {"lengths", "depths", "accuracy": L x P nested list (None where the model's context is too short),
         "mean": mean over the cells that ran, "chance", "trials"}.
    """
    spec = spec or RetrievalSpec.for_vocab_size(model.cfg.vocab_size)
    if max(spec.value_ids + spec.key_ids + spec.filler_ids + [spec.sep_id, spec.query_id]) >= model.cfg.vocab_size:
        raise ValueError(f"retrieval spec uses ids beyond the model's vocab_size {model.cfg.vocab_size}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    grid: list[list[float | None]] = []
    for i, length in enumerate(lengths):
        row: list[float | None] = []
        for j, depth in enumerate(depths):
            if length > model.cfg.max_seq_len:
                row.append(None)
                continue
            rng = np.random.default_rng([seed, i, j])
            correct = 0
            for start in range(0, trials, batch_size):
                b = retrieval_batch(spec, rng, min(batch_size, trials - start), length, depth)
                logits = _last_logits(model, b["input_ids"].to(device), chunk)
                answer = b["targets"][:, -1].to(device)
                correct += int((logits.argmax(-1) == answer).sum())
            row.append(correct / trials)
        grid.append(row)
    model.train(was_training)
    ran = [a for r in grid for a in r if a is not None]
    return {"lengths": list(lengths), "depths": list(depths), "accuracy": grid,
            "mean": float(np.mean(ran)) if ran else None, "chance": spec.chance, "trials": trials}
