"""Post-training stages on the shared trainer: `tessera lm sft | reward | prefer --method dpo|rloo`.

Read top to bottom:
1. `load_start`: the model to start from (`init`, a model folder: the pretrained base for `sft`, the SFT model for
   `reward` and `prefer`), its processor and the tokenized corpus the post-training data is drawn from;
2. `sft`: packed chat conversations, loss on model turns only (`tessera.lm.posttrain_data.SFTBatches`);
3. `reward`: `RewardModel` (decoder + linear head, from the SFT weights) with the Bradley-Terry loss on preference
   pairs; evaluation = held-out pairwise accuracy;
4. `prefer`: DPO against the frozen `init` model, or RLOO (k samples per prompt, leave-one-out baseline, KL penalty to
   the frozen `init` model) against the reward model;
each through `tessera.train.fit` (checkpoints, exact resume, logs), writing `<run>/final` = model folder + `safety/`
(the safety layer's classifier and config) + `posttrain.json` (stage, tokens trained, final evaluation).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from tessera.config import ConfigError
from tessera.lm.corpus import Corpus, CorpusConfig, build_corpus
from tessera.lm.generate import SamplingConfig
from tessera.lm.inference import evaluate_replies, sample_replies
from tessera.lm.model import Decoder
from tessera.lm.objective import LossConfig, lm_loss
from tessera.lm.posttrain_data import (
    DEFAULT_MIXTURE,
    ChatEncoder,
    SFTBatches,
    eval_examples,
    eval_pairs,
    sample_example,
    sample_pair,
)
from tessera.lm.preference import bradley_terry_loss, dpo_loss, response_batch, rloo_loss, sequence_logps
from tessera.lm.pretrained import load_pretrained, save_pretrained
from tessera.lm.processor import Processor
from tessera.lm.reward import RewardModel
from tessera.lm.safety import SafetyConfig, SafetyFilter
from tessera.paths import cache_dir
from tessera.recipes.train_lm import LMRunConfig, TokenizerSpec, build_model, prepare
from tessera.train import FitResult, OptimConfig, StepOutput, Task, TrainConfig, fit

__all__ = ["DPOSettings", "RLOOSettings", "PostTrainConfig", "load_start", "run_sft", "run_reward", "run_prefer",
           "chat_metrics", "STAGES"]

_log = logging.getLogger(__name__)
STAGES = ("sft", "reward", "dpo", "rloo")
REPLY_KINDS = ("describe", "count", "compare", "locate", "answer", "multiturn", "reasoning", "unanswerable", "policy", "benign")


@dataclass
class DPOSettings:
    beta: float = 0.1  # strength of the implicit KL constraint to the reference


@dataclass
class RLOOSettings:
    k: int = 4  # samples per prompt (>= 2: the leave-one-out baseline)
    kl_coef: float = 0.05  # KL penalty to the reference, subtracted from the reward
    temperature: float = 1.0
    max_new_tokens: int = 40


@dataclass
class PostTrainConfig:
    """Settings of one post-training stage (`tessera lm sft|reward|prefer --config ...`)."""

    init: str | None = None  # model folder to start from; None: a fresh `preset` decoder (debug runs and tests only)
    reward_model: str | None = None  # reward-model folder (prefer --method rloo)
    preset: str = "nano"  # decoder preset when init is None
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)  # image tokenizer when init is None
    data: CorpusConfig = field(default_factory=CorpusConfig)  # the corpus the conversations are drawn from
    mixture: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIXTURE))  # SFT instruction kinds
    seq_len: int = 384  # tokens per packed SFT row
    batch_size: int = 8  # SFT rows / preference pairs / RLOO prompts per micro-batch
    dpo: DPOSettings = field(default_factory=DPOSettings)
    rloo: RLOOSettings = field(default_factory=RLOOSettings)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    eval_per_kind: int = 8  # held-out conversations (or pairs) of each kind for the stage's evaluation
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, log_every=20, eval_every=0))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=20))


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def load_start(cfg: PostTrainConfig, image_tokenizer: Any = None) -> tuple[Decoder, Processor, Corpus]:
    """The starting decoder, its processor and the tokenized corpus of a stage.

    Raises:
        FileNotFoundError: `init` is not a model folder.
        ConfigError: the corpus' image size does not match the image tokenizer.
    """
    if cfg.init is None:
        processor, corpus = prepare(LMRunConfig(preset=cfg.preset, tokenizer=cfg.tokenizer, data=cfg.data), image_tokenizer)
        torch.manual_seed(cfg.train.seed)
        model = build_model(LMRunConfig(preset=cfg.preset, seq_len=min(cfg.seq_len, 512)), processor.vocab)
        return model, processor, corpus
    folder = Path(cfg.init)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"init: no model folder at {folder} (expected config.json; e.g. runs/lm/nano/final)")
    model, processor = load_pretrained(folder, image_tokenizer=image_tokenizer)
    tok = processor.image_tokenizer
    if tok is None:
        raise ConfigError(f"init: {folder} has no image tokenizer")
    if int(tok.config.image_size) != cfg.data.image_size:
        raise ConfigError(f"data.image_size={cfg.data.image_size} but the model's image tokenizer reads {tok.config.image_size}px")
    tok_id = _digest(folder / "image_tokenizer") if (folder / "image_tokenizer").is_dir() else f"object-{type(tok).__name__}"
    corpus = build_corpus(cfg.data, tok, tokenizer_id=tok_id, cache=cache_dir("lm", "corpus"))
    return model, processor, corpus


# -- evaluation shared by the stages and the benchmark ---------------------------------------------------------------------
@torch.no_grad()
def chat_metrics(model: Decoder, processor: Processor, corpus: Corpus, n_per_kind: int, seed: int = 0,
                 max_new_tokens: int = 64) -> tuple[dict[str, float], list, list[str]]:
    """Greedy replies to held-out conversations of every text kind -> (metrics, examples, reply texts)."""
    examples = eval_examples(corpus, n_per_kind, "test", seed, REPLY_KINDS)
    enc = ChatEncoder(corpus, processor.vocab)
    prompts = [enc(ex.prompt, add_generation_prompt=True).ids for ex in examples]
    was = model.training
    model.eval()
    replies = sample_replies(model, processor.vocab, prompts, max_new_tokens=max_new_tokens)
    model.train(was)
    texts = [processor.vocab.decode_text(r[0]) for r in replies]
    return evaluate_replies(examples, texts), examples, texts


class _Frozen:
    """A model the trainer must neither optimise nor checkpoint (the reference / reward model), kept off the module."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)

    def on(self, device: torch.device) -> nn.Module:
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        return self.model


def _finish(run_dir: Path, stage: str, cfg: PostTrainConfig, extra: dict) -> None:
    from tessera.lm._io import atomic_write_json

    final = run_dir / "final"
    if final.is_dir():
        SafetyFilter(cfg.safety).save(final / "safety")
        atomic_write_json(final / "posttrain.json", {"stage": stage, "init": cfg.init, "reward_model": cfg.reward_model, **extra})


def _prior_tokens(cfg: PostTrainConfig) -> float:
    if cfg.init is None:
        return 0.0
    f = Path(cfg.init) / "posttrain.json"
    return float(json.loads(f.read_text()).get("tokens_total", 0.0)) if f.is_file() else 0.0


# -- SFT ----------------------------------------------------------------------------------------------------------------
class SFTModule(nn.Module):
    """Token-summed cross-entropy on model-turn tokens (the loop normalises by the global target count)."""

    def __init__(self, model: Decoder) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.float64))
        self.loss_cfg = LossConfig(z_loss=0.0)

    def no_weight_decay(self) -> set[str]:
        return {f"model.{n}" for n in self.model.no_weight_decay()}

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        terms = lm_loss(self.model, batch, self.loss_cfg)
        self.tokens_seen += terms.count.double()
        return StepOutput(terms.loss, {"ce": terms.loss.detach() / terms.count.clamp_min(1), "tokens": terms.count.float()})


def run_sft(cfg: PostTrainConfig, run_dir: str | Path, *, resume: bool = False, image_tokenizer: Any = None,
            stop_after: int | None = None) -> FitResult:
    """Supervised tuning on chat conversations; the model folder lands in `<run_dir>/final`."""
    run_dir = Path(run_dir)
    model, processor, corpus = load_start(cfg, image_tokenizer)
    if model.cfg.max_seq_len < cfg.seq_len:
        raise ConfigError(f"seq_len={cfg.seq_len} exceeds the model's max_seq_len={model.cfg.max_seq_len}")
    batches = SFTBatches(corpus, processor.vocab, cfg.seq_len, cfg.batch_size, seed=cfg.data.seed, mixture=cfg.mixture)
    module = SFTModule(model)

    def evaluate(m: SFTModule, step: int) -> dict[str, float]:
        return chat_metrics(m.model, processor, corpus, cfg.eval_per_kind)[0]

    task = Task(module=module, batches=batches, evaluate=evaluate, batch_weight=SFTBatches.weight,
                save_artifact=lambda m, folder: save_pretrained(m.model, processor, folder), progress_keys=("loss",))
    result = fit(task, cfg.train, cfg.optim, run_dir, resume=resume, config=cfg, stop_after=stop_after)
    if result.step == cfg.train.steps:
        tokens = float(module.tokens_seen)
        _finish(run_dir, "sft", cfg, {"tokens_stage": tokens, "tokens_total": _prior_tokens(cfg) + tokens,
                                      "eval": result.eval_metrics})
    return result


# -- preference pairs -----------------------------------------------------------------------------------------------------
class PairBatches:
    """B preference pairs per micro-batch as a (2B, T) response batch: chosen rows first, then rejected."""

    def __init__(self, corpus: Corpus, encoder: ChatEncoder, batch_size: int, seed: int, split: str = "train") -> None:
        self.corpus, self.encoder, self.batch_size, self.seed, self.split = corpus, encoder, batch_size, seed, split

    def rows(self, pairs) -> dict[str, torch.Tensor]:
        prompts = [self.encoder(p.prompt, add_generation_prompt=True).ids for p in pairs]
        chosen = [(q, self.encoder.reply_ids(p.chosen)) for q, p in zip(prompts, pairs, strict=True)]
        rejected = [(q, self.encoder.reply_ids(p.rejected)) for q, p in zip(prompts, pairs, strict=True)]
        return response_batch(chosen + rejected)

    def __call__(self, step: int, micro: int = 0, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        if self.batch_size % world_size:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by the world size {world_size}")
        per = self.batch_size // world_size
        pairs = [sample_pair(self.corpus, np.random.default_rng([self.seed, step, micro, rank * per + i]), self.split)
                 for i in range(per)]
        return self.rows(pairs)


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0] // 2
    return x[:n], x[n:]


class RewardModule(nn.Module):
    def __init__(self, reward: RewardModel) -> None:
        super().__init__()
        self.reward = reward
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.float64))

    def no_weight_decay(self) -> set[str]:
        return {f"reward.{n}" for n in self.reward.no_weight_decay()}

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        r = self.reward(batch["input_ids"], batch["attention_mask"])
        rc, rr = _halves(r)
        self.tokens_seen += batch["attention_mask"].sum().double()
        return StepOutput(bradley_terry_loss(rc, rr), {"accuracy": (rc > rr).float().mean(), "margin": (rc - rr).mean().detach()})


@torch.no_grad()
def pairwise_accuracy(reward: RewardModel, batches: PairBatches, pairs) -> dict[str, float]:
    """Held-out pairwise accuracy of a reward model, overall and per pair kind."""
    device = reward.head.weight.device
    hits: dict[str, list[float]] = {}
    for s in range(0, len(pairs), 16):
        chunk = pairs[s : s + 16]
        b = batches.rows(chunk)
        rc, rr = _halves(reward(b["input_ids"].to(device), b["attention_mask"].to(device)))
        for p, c, r in zip(chunk, rc.tolist(), rr.tolist(), strict=True):
            hits.setdefault(p.kind, []).append(float(c > r))
    out = {"pairwise_accuracy": float(np.mean([h for v in hits.values() for h in v]))}
    out.update({f"pairwise_accuracy/{k}": float(np.mean(v)) for k, v in hits.items()})
    return out


def run_reward(cfg: PostTrainConfig, run_dir: str | Path, *, resume: bool = False, image_tokenizer: Any = None,
               stop_after: int | None = None) -> FitResult:
    """Train a reward model (from `init`, normally the SFT model) with the Bradley-Terry loss."""
    run_dir = Path(run_dir)
    model, processor, corpus = load_start(cfg, image_tokenizer)
    encoder = ChatEncoder(corpus, processor.vocab)
    batches = PairBatches(corpus, encoder, cfg.batch_size, cfg.data.seed)
    held_out = eval_pairs(corpus, cfg.eval_per_kind, "test", seed=cfg.data.seed)
    module = RewardModule(RewardModel(model))

    def save(m: RewardModule, folder: Path) -> None:
        m.reward.save_pretrained(folder)
        processor.save_pretrained(folder)

    task = Task(module=module, batches=batches, evaluate=lambda m, step: pairwise_accuracy(m.reward, batches, held_out),
                save_artifact=save, progress_keys=("loss", "accuracy"))
    result = fit(task, cfg.train, cfg.optim, run_dir, resume=resume, config=cfg, stop_after=stop_after)
    if result.step == cfg.train.steps:
        _finish(run_dir, "reward", cfg, {"tokens_stage": float(module.tokens_seen), "eval": result.eval_metrics})
    return result


# -- preference optimisation ----------------------------------------------------------------------------------------------
class DPOModule(nn.Module):
    def __init__(self, policy: Decoder, reference: Decoder, beta: float) -> None:
        super().__init__()
        self.model = policy
        self.reference = _Frozen(reference)
        self.beta = beta
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.float64))

    def no_weight_decay(self) -> set[str]:
        return {f"model.{n}" for n in self.model.no_weight_decay()}

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        logp = sequence_logps(self.model, batch)
        with torch.no_grad():
            ref = sequence_logps(self.reference.on(logp.device), batch)
        pc, pr = _halves(logp)
        rc, rr = _halves(ref)
        terms = dpo_loss(pc, pr, rc, rr, self.beta)
        self.tokens_seen += batch["response_mask"].sum().double()
        return StepOutput(terms.loss, {"accuracy": terms.accuracy, "margin": (terms.chosen_reward - terms.rejected_reward).mean()})


class PromptBatches:
    """B chat prompts (text-reply kinds) per micro-batch, for on-policy sampling."""

    def __init__(self, corpus: Corpus, encoder: ChatEncoder, batch_size: int, seed: int) -> None:
        self.corpus, self.encoder, self.batch_size, self.seed = corpus, encoder, batch_size, seed

    def __call__(self, step: int, micro: int = 0, rank: int = 0, world_size: int = 1) -> list[list[int]]:
        per = self.batch_size // world_size
        out = []
        for i in range(per):
            rng = np.random.default_rng([self.seed, step, micro, rank * per + i])
            ex = sample_example(self.corpus, rng, "train", REPLY_KINDS[int(rng.integers(len(REPLY_KINDS)))])
            out.append(self.encoder(ex.prompt, add_generation_prompt=True).ids)
        return out


class RLOOModule(nn.Module):
    def __init__(self, policy: Decoder, reference: Decoder, reward: RewardModel, processor: Processor,
                 settings: RLOOSettings, seed: int) -> None:
        super().__init__()
        if settings.k < 2:
            raise ConfigError(f"rloo.k must be >= 2 (leave-one-out baseline), got {settings.k}")
        self.model = policy
        self.reference = _Frozen(reference)
        self.reward = _Frozen(reward)
        self.vocab = processor.vocab
        self.settings = settings
        self.seed = seed
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.float64))

    def no_weight_decay(self) -> set[str]:
        return {f"model.{n}" for n in self.model.no_weight_decay()}

    def forward(self, prompts: list[list[int]], step: int) -> StepOutput:
        s = self.settings
        device = self.model.embed_tokens.weight.device
        gen = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + step)
        samples = sample_replies(self.model, self.vocab, prompts, n=s.k, sampling=SamplingConfig(temperature=s.temperature),
                                 max_new_tokens=s.max_new_tokens, generator=gen)
        end = [self.vocab.token_id("<end_of_turn>")]
        rows = [(p, r or end) for p, rs in zip(prompts, samples, strict=True) for r in rs]
        batch = {k: v.to(device) for k, v in response_batch(rows).items()}
        logp = sequence_logps(self.model, batch).view(len(prompts), s.k)
        with torch.no_grad():
            ref = sequence_logps(self.reference.on(device), batch).view(len(prompts), s.k)
            rewards = self.reward.on(device)(batch["input_ids"], batch["attention_mask"]).view(len(prompts), s.k)
        loss, metrics = rloo_loss(logp, ref, rewards, s.kl_coef)
        self.tokens_seen += batch["response_mask"].sum().double()
        return StepOutput(loss, metrics)


def run_prefer(cfg: PostTrainConfig, run_dir: str | Path, method: Literal["dpo", "rloo"] = "dpo", *, resume: bool = False,
               image_tokenizer: Any = None, stop_after: int | None = None) -> FitResult:
    """Preference optimisation from `init` (the SFT model, also the frozen reference): DPO on preference pairs, or
    RLOO against `reward_model`."""
    if method not in ("dpo", "rloo"):
        raise ConfigError(f"--method must be 'dpo' or 'rloo', got {method!r}")
    run_dir = Path(run_dir)
    policy, processor, corpus = load_start(cfg, image_tokenizer)
    reference = copy.deepcopy(policy)  # the frozen SFT model both methods stay close to
    encoder = ChatEncoder(corpus, processor.vocab)
    if method == "dpo":
        module: nn.Module = DPOModule(policy, reference, cfg.dpo.beta)
        batches: Any = PairBatches(corpus, encoder, cfg.batch_size, cfg.data.seed)
        held_out = eval_pairs(corpus, cfg.eval_per_kind, "test", seed=cfg.data.seed)

        @torch.no_grad()
        def evaluate(m: DPOModule, step: int) -> dict[str, float]:
            accs = []
            dev = next(m.parameters()).device
            for s in range(0, len(held_out), 16):
                b = {k: v.to(dev) for k, v in batches.rows(held_out[s : s + 16]).items()}
                pc, pr = _halves(sequence_logps(m.model, b))
                rc, rr = _halves(sequence_logps(m.reference.on(dev), b))
                accs.append(dpo_loss(pc, pr, rc, rr, cfg.dpo.beta).accuracy.item() * len(pc))
            return {"implicit_reward_accuracy": sum(accs) / len(held_out)}
    else:
        if cfg.reward_model is None:
            raise ConfigError("prefer --method rloo needs reward_model: a folder written by `tessera lm reward`")
        reward = RewardModel.from_pretrained(cfg.reward_model)
        module = RLOOModule(policy, reference, reward, processor, cfg.rloo, cfg.train.seed)
        batches = PromptBatches(corpus, encoder, cfg.batch_size, cfg.data.seed)

        def evaluate(m: RLOOModule, step: int) -> dict[str, float]:
            return chat_metrics(m.model, processor, corpus, cfg.eval_per_kind)[0]

    task = Task(module=module, batches=batches, evaluate=evaluate,
                save_artifact=lambda m, folder: save_pretrained(m.model, processor, folder), progress_keys=("loss",))
    result = fit(task, cfg.train, cfg.optim, run_dir, resume=resume, config=cfg, stop_after=stop_after)
    if result.step == cfg.train.steps:
        tokens = float(module.tokens_seen)
        _finish(run_dir, method, cfg, {"tokens_stage": tokens, "tokens_total": _prior_tokens(cfg) + tokens,
                                       "eval": result.eval_metrics})
    return result


def load_posttrain_config(path: str | Path | None, overrides: list[str]) -> PostTrainConfig:
    from tessera.config import load_config

    return load_config(PostTrainConfig, path, overrides)

