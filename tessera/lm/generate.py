"""Generation: KV-cached decoding with greedy / temperature / top-k / top-p sampling, stop tokens, streaming and
modality-constrained decoding of image blocks.

Axis legend: B batch, T prompt length, V vocabulary.

Modality constraint (Chameleon §2.4's state machine). Each row is in text mode or inside an image block:
- text mode: image codes, `<eoi>` and input-only tokens (`<pad>`, `<bos>`, `<patch>`, `<patch_row>`, unused rows)
  are masked out; `<boi>` is allowed unless images are disabled, and `force_image` makes it the first token;
- image mode (after `<boi>`): only image codes until exactly h*w have been written, then only `<eoi>`.
So every image the model writes is a well-formed block the image tokenizer can decode. A prompt that ends inside an
image block (e.g. "draw: ...<boi>") starts in image mode with the codes it already holds counted.

`stream_generate` yields one token per row per step (finished rows yield `<pad>`); `generate` collects them.
`use_cache=False` recomputes the whole sequence every step (the reference the cache is tested and benchmarked
against).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from tessera.lm.model import Decoder
from tessera.lm.vocab import SPECIAL_TOKENS, Vocabulary

__all__ = ["SamplingConfig", "ModalityConstraint", "GenerationOutput", "generate", "stream_generate", "sample_next"]


@dataclass
class SamplingConfig:
    """How the next token is chosen. temperature 0 means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0  # keep the k most likely tokens (0: all)
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p (1: all)

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling needs temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {self}")


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits (masked entries -inf) -> (B,) token ids."""
    logits = logits.float()
    if cfg.temperature == 0.0:
        return logits.argmax(-1)
    logits = logits / cfg.temperature
    if cfg.top_k > 0 and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p (the most likely token always stays).
        drop = probs.cumsum(-1) - probs >= cfg.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class ModalityConstraint:
    """Per-row text/image state machine that masks logits so image blocks are always well formed.

    Args:
        vocab: the vocabulary.
        image_tokens: codes per image (h * w of the image tokenizer).
        allow_images: whether the model may open an image block in text mode.
        force_image: the first generated token must be `<boi>` (text-to-image prompts).
        stop_after_image: a row finishes right after it closes an image block.
    """

    def __init__(
        self,
        vocab: Vocabulary,
        image_tokens: int,
        *,
        allow_images: bool = True,
        force_image: bool = False,
        stop_after_image: bool = False,
    ) -> None:
        if image_tokens < 1:
            raise ValueError(f"image_tokens must be >= 1, got {image_tokens}")
        self.vocab = vocab
        self.image_tokens = image_tokens
        self.force_image = force_image
        self.stop_after_image = stop_after_image
        V = vocab.size
        lo, hi = vocab.code_range("image")
        text = torch.ones(V, dtype=torch.bool)
        for tok in ("<pad>", "<bos>", "<eoi>", "<patch>", "<patch_row>"):
            text[vocab.token_id(tok)] = False
        text[lo:hi] = False
        text[vocab.used_size :] = False
        for a, b in vocab.code_ranges.values():
            text[a:b] = False
        if not allow_images:
            text[vocab.boi_id] = False
        image = torch.zeros(V, dtype=torch.bool)
        image[lo:hi] = True
        close = torch.zeros(V, dtype=torch.bool)
        close[vocab.eoi_id] = True
        boi = torch.zeros(V, dtype=torch.bool)
        boi[vocab.boi_id] = True
        self._masks = torch.stack([text, image, close, boi])  # (4, V) allowed sets by state
        self.in_image: torch.Tensor | None = None  # (B,) bool
        self.count: torch.Tensor | None = None  # (B,) codes written in the open block
        self.steps = 0

    def start(self, prompts: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Initialise each row's state from its prompt (B, T) (a prompt may end inside an image block)."""
        B, T = prompts.shape
        self.in_image = torch.zeros(B, dtype=torch.bool)
        self.count = torch.zeros(B, dtype=torch.long)
        self.steps = 0
        boi, eoi = self.vocab.boi_id, self.vocab.eoi_id
        for b in range(B):
            row = prompts[b] if attention_mask is None else prompts[b][attention_mask[b].bool()]
            row = row.tolist()
            last_boi = max((i for i, t in enumerate(row) if t == boi), default=-1)
            last_eoi = max((i for i, t in enumerate(row) if t == eoi), default=-1)
            if last_boi > last_eoi:
                codes = self.vocab.is_code(torch.tensor(row[last_boi + 1 :], dtype=torch.long)).sum()
                if int(codes) != len(row) - last_boi - 1 or int(codes) > self.image_tokens:
                    raise ValueError("the prompt ends inside an image block that holds non-code tokens or too many codes")
                self.in_image[b] = True
                self.count[b] = int(codes)

    def allowed(self, device: torch.device | None = None) -> torch.Tensor:
        """(B, V) bool: tokens each row may emit now."""
        assert self.in_image is not None and self.count is not None, "call start() first"
        state = torch.zeros_like(self.count)  # 0 text
        state[self.in_image] = 1
        state[self.in_image & (self.count >= self.image_tokens)] = 2
        if self.force_image and self.steps == 0:
            state[~self.in_image] = 3
        return self._masks.to(device)[state.to(device)]

    def update(self, tokens: torch.Tensor) -> torch.Tensor:
        """Advance with the emitted (B,) tokens; returns (B,) bool rows that must stop now (image closed)."""
        tokens = tokens.cpu()
        assert self.in_image is not None and self.count is not None
        is_code = self.vocab.is_code(tokens)
        self.count = torch.where(self.in_image & is_code, self.count + 1, self.count)
        closing = self.in_image & (tokens == self.vocab.eoi_id)
        opening = ~self.in_image & (tokens == self.vocab.boi_id)
        self.in_image = (self.in_image | opening) & ~closing
        self.count = torch.where(opening | closing, torch.zeros_like(self.count), self.count)
        self.steps += 1
        return closing if self.stop_after_image else torch.zeros_like(closing)


class GenerationOutput(NamedTuple):
    """What `generate` returns."""

    tokens: torch.Tensor  # (B, N) generated ids; rows that stopped early are padded with <pad>
    lengths: torch.Tensor  # (B,) generated tokens per row, the stop token included
    logits: torch.Tensor | None  # (B, N, V) the (unmasked) logits each token was chosen from, if requested


def _check_lengths(model: Decoder, prompt_len: int, max_new_tokens: int) -> None:
    limit = model.cfg.max_seq_len
    if prompt_len >= limit:
        raise ValueError(
            f"the prompt has {prompt_len} tokens but the model's context is {limit} tokens (max_seq_len); shorten it"
        )
    if prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context of {limit} "
            f"tokens; ask for at most {limit - prompt_len} new tokens"
        )


@torch.inference_mode()
def stream_generate(
    model: Decoder,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    patches: torch.Tensor | None = None,
    max_new_tokens: int = 64,
    sampling: SamplingConfig | None = None,
    stop_tokens: Sequence[int] = (1,),
    constraint: ModalityConstraint | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    on_logits: Callable[[torch.Tensor], None] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, step by step (finished rows yield `<pad>` = 0).

    Args:
        model: the decoder (its mode is left as is; call `.eval()` first).
        input_ids: (B, T) prompts, left-padded when their lengths differ.
        attention_mask: (B, T), 0 on padding.
        patches: pixels for `<patch>` placeholders in the prompts.
        max_new_tokens: generation length limit.
        sampling: greedy by default.
        stop_tokens: a row finishes after emitting one of these (default `<eos>`).
        constraint: a `ModalityConstraint` (None: no masking at all).
        generator: RNG for sampling.
        use_cache: KV cache (True) or full recompute each step (False).
        on_logits: called with the (B, V) raw logits of every step (tests, scoring).

    Raises:
        ValueError: prompt + max_new_tokens exceeds the model's context, or bad shapes.
    """
    sampling = sampling or SamplingConfig()
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (B, T) tensor, got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    B, T = input_ids.shape
    _check_lengths(model, T, max_new_tokens)
    device = model.embed_tokens.weight.device
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device).bool()
        if bool(attention_mask.all()):
            attention_mask = None
    stops = torch.tensor(sorted(set(int(s) for s in stop_tokens)), dtype=torch.long, device=device)
    if constraint is not None:
        constraint.start(input_ids.cpu(), None if attention_mask is None else attention_mask.cpu())
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    cache = model.new_cache(B, T + max_new_tokens) if use_cache else None
    out = model(input_ids, attention_mask=attention_mask, patches=patches, cache=cache, last_only=True)
    seq, mask = input_ids, attention_mask
    for step in range(max_new_tokens):
        logits = out.logits[:, -1].float()  # (B, V)
        if on_logits is not None:
            on_logits(logits)
        if constraint is not None:
            logits = logits.masked_fill(~constraint.allowed(device), float("-inf"))
        token = sample_next(logits, sampling, generator)
        token = torch.where(finished, torch.zeros_like(token), token)
        yield token
        stop_now = torch.isin(token, stops)
        if constraint is not None:
            stop_now |= constraint.update(token).to(device)
        finished |= stop_now
        if bool(finished.all()) or step == max_new_tokens - 1:
            return
        if use_cache:
            out = model(token[:, None], cache=cache)
        else:
            seq = torch.cat([seq, token[:, None]], dim=1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
            out = model(seq, attention_mask=mask, patches=patches, last_only=True)


def generate(
    model: Decoder,
    input_ids: torch.Tensor,
    *,
    return_logits: bool = False,
    **kwargs,
) -> GenerationOutput:
    """Run `stream_generate` to the end and collect the tokens (same arguments).

    Returns:
        `GenerationOutput(tokens, lengths, logits)`.
    """
    stops = set(int(s) for s in kwargs.get("stop_tokens", (1,)))
    collected: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    if return_logits:
        user_hook = kwargs.pop("on_logits", None)

        def hook(x: torch.Tensor) -> None:
            logits.append(x.clone())
            if user_hook is not None:
                user_hook(x)

        kwargs["on_logits"] = hook
    for token in stream_generate(model, input_ids, **kwargs):
        collected.append(token)
    tokens = torch.stack(collected, dim=1) if collected else torch.zeros(input_ids.shape[0], 0, dtype=torch.long)
    # A row's length: up to and including its first stop token (or image close), else everything generated.
    B, N = tokens.shape
    lengths = torch.full((B,), N, dtype=torch.long)
    constraint = kwargs.get("constraint")
    for b in range(B):
        row = tokens[b].tolist()
        for i, t in enumerate(row):
            if t in stops or (constraint is not None and constraint.stop_after_image and t == constraint.vocab.eoi_id):
                lengths[b] = i + 1
                break
        tokens[b, lengths[b] :] = 0
    return GenerationOutput(tokens.cpu(), lengths, torch.stack(logits, 1).cpu() if return_logits else None)


def special_ids(vocab: Vocabulary) -> dict[str, int]:
    """Name -> id of every special token (for stop-token arguments)."""
    return {tok: vocab.token_id(tok) for tok in SPECIAL_TOKENS}
