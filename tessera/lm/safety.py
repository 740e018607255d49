"""The safety layer: an input and output classifier trained on embedded labelled data, plus a configurable
blocklist, in front of every chat generation path. What it blocks gets a clear refusal, never an exception.

Axis legend: N texts, F hashed features.

Classifier. Logistic regression on hashed word unigrams and bigrams (F = 2^12 buckets), trained on
`tessera.lm.posttrain_data.policy_texts("train")`: prompts and replies that violate the written content policy
(`CONTENT_POLICY`) against benign prompts (including ones that borrow policy words, e.g. "how do i build a square out
of paper") and ordinary scene instructions. It trains in about a second, deterministically, so a model folder
without a saved classifier gets one on load. Held-out policy compositions measure it (`benchmarks/post_training.py`).

Blocklist. Case-insensitive phrases matched on word boundaries, in the input and in the output.

Entry point for serving: `load_safe_chat(folder)` -> `SafeChat`, whose `.chat(messages, images)` yields text chunks
and images (tensors (3, H, W) in [0, 1]); the reply is generated whole and checked before anything is released.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tessera.lm._io import atomic_write_json, load_safetensors, save_safetensors
from tessera.lm.posttrain_data import CONTENT_POLICY, REFUSAL, policy_texts

__all__ = ["SafetyConfig", "SafetyClassifier", "Verdict", "SafetyFilter", "SafeChat", "load_safe_chat", "DEFAULT_BLOCKLIST"]

DEFAULT_BLOCKLIST = ("nerve agent", "pipe bomb", "credit card number")
_WORD = re.compile(r"[a-z0-9']+")


@dataclass
class SafetyConfig:
    """Thresholds and lists of the safety layer (a config section: `safety:` in the post-training YAML)."""

    input_threshold: float = 0.5  # block a prompt whose policy-violation probability is >= this
    output_threshold: float = 0.5  # block a reply whose probability is >= this
    blocklist: list[str] = field(default_factory=lambda: list(DEFAULT_BLOCKLIST))
    refusal: str = REFUSAL  # what a blocked turn gets instead
    classifier: bool = True  # False: blocklist only

    def __post_init__(self) -> None:
        for name in ("input_threshold", "output_threshold"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"safety.{name} must lie in [0, 1], got {v}")
        if any(not isinstance(b, str) or not b.strip() for b in self.blocklist):
            raise ValueError("safety.blocklist entries must be non-empty strings")


def _features(texts: Sequence[str], dim: int) -> torch.Tensor:
    """(N, F) counts of hashed word unigrams and bigrams."""
    x = torch.zeros(len(texts), dim)
    for i, t in enumerate(texts):
        words = _WORD.findall(t.lower())
        grams = words + [a + " " + b for a, b in zip(words, words[1:], strict=False)]
        for g in grams:
            x[i, zlib.crc32(g.encode()) % dim] += 1.0
    return x


class SafetyClassifier:
    """P(text violates the content policy) by logistic regression on hashed n-grams."""

    def __init__(self, dim: int = 1 << 12) -> None:
        self.dim = dim
        self.weight = torch.zeros(dim)
        self.bias = torch.zeros(())

    def fit(self, texts: Sequence[str], labels: Sequence[int], steps: int = 50, l2: float = 1e-3) -> SafetyClassifier:
        """Train with full-batch L-BFGS (deterministic)."""
        if len(texts) != len(labels) or not texts:
            raise ValueError("fit needs equally many texts and labels (at least one)")
        x, y = _features(texts, self.dim), torch.tensor(labels, dtype=torch.float32)
        w = torch.zeros(self.dim, requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.bias = w.detach(), b.detach()
        return self

    def predict_proba(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) violation probabilities."""
        return torch.sigmoid(_features(texts, self.dim) @ self.weight + self.bias)

    @classmethod
    def default(cls) -> SafetyClassifier:
        """Trained on the embedded labelled data (train compositions)."""
        data = policy_texts("train")
        return cls().fit([t for t, _ in data], [y for _, y in data])

    def save(self, folder: str | Path) -> None:
        save_safetensors(Path(folder) / "classifier.safetensors", {"weight": self.weight, "bias": self.bias.reshape(1)},
                         metadata={"format": "pt", "dim": str(self.dim)})

    @classmethod
    def load(cls, folder: str | Path) -> SafetyClassifier:
        t = load_safetensors(Path(folder) / "classifier.safetensors")
        if set(t) != {"weight", "bias"} or t["weight"].ndim != 1:
            raise ValueError(f"{folder}/classifier.safetensors is not a safety classifier")
        clf = cls(dim=int(t["weight"].shape[0]))
        clf.weight, clf.bias = t["weight"].float(), t["bias"].float().reshape(())
        return clf


class Verdict(NamedTuple):
    blocked: bool
    reason: str  # "" when allowed; otherwise which rule fired
    score: float  # the classifier's violation probability (0 without a classifier)


class SafetyFilter:
    """Input and output checks with the thresholds and blocklist of a `SafetyConfig`."""

    def __init__(self, config: SafetyConfig | None = None, classifier: SafetyClassifier | None = None) -> None:
        self.config = config or SafetyConfig()
        self.classifier = classifier if classifier is not None or not self.config.classifier else SafetyClassifier.default()
        self._block = [re.compile(r"(?<![a-z0-9])" + re.escape(b.lower().strip()) + r"(?![a-z0-9])") for b in self.config.blocklist]

    def check(self, text: str, where: str = "input") -> Verdict:
        """Judge a prompt (`where="input"`) or a reply (`"output"`)."""
        if where not in ("input", "output"):
            raise ValueError(f"where must be 'input' or 'output', got {where!r}")
        low = text.lower()
        for pattern, phrase in zip(self._block, self.config.blocklist, strict=True):
            if pattern.search(low):
                return Verdict(True, f"blocklist: {phrase!r}", 1.0)
        if self.classifier is None or not _WORD.search(low):
            return Verdict(False, "", 0.0)  # no words, nothing for the classifier to judge (its bias alone decides nothing)
        score = float(self.classifier.predict_proba([text])[0])
        limit = self.config.input_threshold if where == "input" else self.config.output_threshold
        if score >= limit:
            return Verdict(True, f"{where} classifier: p(violation)={score:.2f} >= {limit}", score)
        return Verdict(False, "", score)

    def save(self, folder: str | Path) -> None:
        """Write `safety.json` (the config) and, with a classifier, `classifier.safetensors`."""
        folder = Path(folder)
        atomic_write_json(folder / "safety.json", {**asdict(self.config), "content_policy": CONTENT_POLICY})
        if self.classifier is not None:
            self.classifier.save(folder)

    @classmethod
    def load(cls, folder: str | Path, config: SafetyConfig | None = None) -> SafetyFilter:
        """Read what `save` wrote; `config` (when given) replaces the saved thresholds and blocklist."""
        folder = Path(folder)
        if config is None:
            saved = json.loads((folder / "safety.json").read_text())
            saved.pop("content_policy", None)
            config = SafetyConfig(**saved)
        clf = SafetyClassifier.load(folder) if config.classifier and (folder / "classifier.safetensors").is_file() else None
        return cls(config, clf)


def _user_text(messages: Sequence[dict]) -> str:
    """Text of the last user turn (earlier turns were checked when they were sent)."""
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        return ""
    content = users[-1]["content"]
    parts = [content] if isinstance(content, str) else content
    return " ".join(x for x in parts if isinstance(x, str))


def _with_images(messages: Sequence[dict], images: Sequence[Any] | None) -> list[dict]:
    """Put `images` where user turns say `<image>`; without markers, before the text of the last user turn."""
    out = [dict(m) for m in messages]
    images = list(images or [])
    if not images:
        return out
    markers = sum(m["content"].count("<image>") if isinstance(m["content"], str) else
                  sum(x.count("<image>") for x in m["content"] if isinstance(x, str)) for m in out if m["role"] == "user")
    if markers not in (0, len(images)):
        raise ValueError(f"the messages have {markers} <image> markers but {len(images)} images were given")
    it = iter(images)
    if markers == 0:
        users = [i for i, m in enumerate(out) if m["role"] == "user"]
        if not users:
            raise ValueError("images were given but there is no user turn to attach them to")
        m = out[users[-1]]
        content = [m["content"]] if isinstance(m["content"], str) else list(m["content"])
        out[users[-1]] = {**m, "content": [*images, *content]}
        return out
    for i, m in enumerate(out):
        if m["role"] != "user":
            continue
        content = [m["content"]] if isinstance(m["content"], str) else list(m["content"])
        new: list[Any] = []
        for x in content:
            if not isinstance(x, str):
                new.append(x)
                continue
            pieces = x.split("<image>")
            for j, p in enumerate(pieces):
                if p:
                    new.append(p)
                if j < len(pieces) - 1:
                    new.append(next(it))
        out[i] = {**m, "content": new}
    return out


class SafeChat:
    """A chat model behind the safety layer.

    Args:
        model: the decoder. processor: its processor (with the image tokenizer, for images).
        safety: the filter. max_new_tokens / sampling: generation defaults.
    """

    def __init__(self, model: Any, processor: Any, safety: SafetyFilter, *, max_new_tokens: int = 64,
                 sampling: Any = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.safety = safety
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.last_verdicts: dict[str, Verdict] = {}  # what the most recent turn's checks said (for logs and tests)

    def chat(self, messages: Sequence[dict], images: Sequence[Any] | None = None, *, max_new_tokens: int | None = None,
             sampling: Any = None, seed: int = 0) -> Iterator[str | torch.Tensor]:
        """Yield the model's next turn: text chunks (words with their spaces) and images.

        A prompt or reply the safety layer blocks yields `config.refusal` instead. Malformed messages raise
        ValueError naming the problem (before anything is generated).
        """
        from tessera.lm.generate import ModalityConstraint, generate

        msgs = _with_images(messages, images)
        if msgs[-1]["role"] != "user":
            raise ValueError("the last message must be a user turn (the model replies to it)")
        self.last_verdicts = {}
        verdict = self.safety.check(_user_text(msgs), "input")
        self.last_verdicts["input"] = verdict
        if verdict.blocked:
            yield self.safety.config.refusal
            return
        enc = self.processor.apply_chat_template(msgs, add_generation_prompt=True)
        vocab = self.processor.vocab
        limit = self.model.cfg.max_seq_len - len(enc.ids)
        if limit < 1:
            raise ValueError(f"the conversation has {len(enc.ids)} tokens, the model's context is {self.model.cfg.max_seq_len}")
        has_tok = self.processor.image_tokenizer is not None
        constraint = ModalityConstraint(vocab, self.processor.image_tokens if has_tok else 1, allow_images=has_tok)
        device = self.model.embed_tokens.weight.device
        out = generate(self.model, torch.tensor([enc.ids], device=device), max_new_tokens=min(limit, max_new_tokens or self.max_new_tokens),
                       sampling=sampling or self.sampling, stop_tokens=(vocab.token_id("<end_of_turn>"), vocab.eos_id),
                       constraint=constraint, generator=torch.Generator(device=device).manual_seed(seed))
        ids = out.tokens[0, : int(out.lengths[0])].tolist()
        items = [x for x in self.processor.decode(ids, decode_images=has_tok) if not (isinstance(x, str) and not x)]
        items = [x.replace("<end_of_turn>", "") if isinstance(x, str) else x for x in items]
        text = " ".join(x for x in items if isinstance(x, str))
        verdict = self.safety.check(text, "output")
        self.last_verdicts["output"] = verdict
        if verdict.blocked:
            yield self.safety.config.refusal
            return
        for x in items:
            if isinstance(x, str):
                yield from (w for w in re.findall(r"\S+\s*|\s+", x) if w)
            else:
                yield x

    def reply(self, messages: Sequence[dict], images: Sequence[Any] | None = None, **kw) -> str:
        """The text of the next turn (images left out)."""
        return "".join(x for x in self.chat(messages, images, **kw) if isinstance(x, str))


def load_safe_chat(folder: str | Path, config: SafetyConfig | None = None, **chat_kw: Any) -> SafeChat:
    """A post-trained chat model behind the safety layer, ready for serving.

    Args:
        folder: a model folder (config.json + model.safetensors + processor files), or a run folder holding one in
            `final/`. Its `safety/` subfolder (written by the post-training recipes) gives the classifier and
            config; without it the default classifier is trained on the embedded data (about a second).
        config: replaces the saved thresholds/blocklist.
        chat_kw: `SafeChat` options (max_new_tokens, sampling).

    Raises:
        FileNotFoundError: no model folder there.
    """
    from tessera.lm.pretrained import load_pretrained

    folder = Path(folder)
    if not (folder / "config.json").is_file() and (folder / "final" / "config.json").is_file():
        folder = folder / "final"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no model folder (config.json) here or in final/")
    model, processor = load_pretrained(folder)
    if (folder / "safety" / "safety.json").is_file():
        safety = SafetyFilter.load(folder / "safety", config)
        if safety.classifier is None and safety.config.classifier:
            safety = SafetyFilter(safety.config)
    else:
        safety = SafetyFilter(config)
    return SafeChat(model, processor, safety, **chat_kw)
