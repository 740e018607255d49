"""Train a Tessera multimodal decoder on the embedded corpus: `tessera lm train --config configs/lm/nano.yaml`.

Read top to bottom:
1. the image tokenizer: a trained `tessera.tokenizer` folder (`tokenizer.path`), or one trained here on the
   corpus' own train-split scene and glyph images and cached (keyed by its settings) so every size shares it;
2. the vocabulary: the committed SentencePiece text model + the tokenizer's codebook;
3. the corpus: pools rendered and tokenized once (cached), documents drawn per step (`tessera.lm.data`); when the
   mixture asks for video / audio / spoken_vqa documents, sprite clips (`tessera.data.video.render_sprite_clips`)
   and the espeak-ng spoken corpus with its audio tokenizer (`tessera.lm.audio`, cached) join it, and the
   vocabulary gets an audio code range;
4. the decoder from a preset (+ overrides), vocab_size set from the vocabulary;
5. `tessera.train.fit` with a token-count `batch_weight` (loss normalised by the global number of target tokens),
   evaluation of held-out-split loss per modality, and the final model folder written to `<run>/final`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tessera.config import ConfigError, from_dict, to_dict
from tessera.lm.audio import SpokenCorpusConfig
from tessera.lm.corpus import Corpus, CorpusConfig, build_corpus
from tessera.lm.data import PackedBatches
from tessera.lm.model import Decoder, DecoderConfig, config_from_name
from tessera.lm.objective import LossConfig, lm_loss
from tessera.lm.pretrained import save_pretrained
from tessera.lm.processor import Processor
from tessera.lm.vocab import Vocabulary
from tessera.paths import cache_dir
from tessera.train import FitResult, OptimConfig, StepOutput, Task, TrainConfig, fit
from tessera.train.mixture import MixtureStage, StagedMixture

__all__ = ["TokenizerSpec", "AudioSpec", "LMRunConfig", "LMTrainModule", "build_model", "prepare", "train_lm", "ensure_image_tokenizer"]

_log = logging.getLogger(__name__)


@dataclass
class TokenizerSpec:
    """Which image tokenizer the decoder reads and writes."""

    path: str | None = None  # a trained tessera.tokenizer folder; None: train one on the corpus (cached)
    preset: str = "vqvae-f4-k512-32px"  # tessera.tokenizer preset used when training here (32x32 -> 8x8 codes)
    steps: int = 1200  # training steps when training here
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


@dataclass
class AudioSpec:
    """The audio tokenizer (trained on the spoken corpus and cached) used when the mixture has audio documents."""

    codebook_size: int = 256
    steps: int = 400
    seed: int = 0
    spoken: SpokenCorpusConfig = field(default_factory=SpokenCorpusConfig)  # what espeak-ng synthesises


@dataclass
class LMRunConfig:
    """Everything `tessera lm train` needs."""

    preset: str = "nano"  # decoder preset (tessera.lm.model.PRESETS)
    model: dict[str, Any] = field(default_factory=dict)  # DecoderConfig overrides; vocab_size comes from the vocabulary
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    audio: AudioSpec = field(default_factory=AudioSpec)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    seq_len: int = 512  # tokens per packed row
    batch_size: int = 16  # rows per micro-batch (all ranks)
    patch_share: float = 0.0  # share of input images given as continuous patches (needs model.patch_size > 0)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600, log_every=20, eval_every=200))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, warmup_steps=60)
    )
    eval_batches: int = 4  # held-out-split batches for the loss evaluation
    # Staged mixture of document kinds over training (tessera.train.mixture), e.g. domain data up at the end:
    # [{start: 0.0, weights: {caption: 1, text: 1}}, {start: 0.8, weights: {vqa: 3, caption: 1}}]. Empty: data.mixture.
    data_schedule: list[MixtureStage] = field(default_factory=list)
    data_schedule_blend: str = "step"  # "step" or "linear" between stages


def build_model(cfg: LMRunConfig, vocab: Vocabulary) -> Decoder:
    """The decoder of a run: preset + overrides, vocab_size from the vocabulary, types checked strictly."""
    if "vocab_size" in cfg.model and cfg.model["vocab_size"] != vocab.size:
        raise ConfigError(f"model.vocab_size={cfg.model['vocab_size']} disagrees with the vocabulary ({vocab.size}); drop it")
    try:
        base = config_from_name(cfg.preset)
    except ValueError as exc:
        raise ConfigError(f"preset: {exc}") from exc
    merged = {**to_dict(base), **cfg.model, "vocab_size": vocab.size}
    model_cfg = from_dict(DecoderConfig, merged, prefix="model")
    if model_cfg.max_seq_len < cfg.seq_len:
        raise ConfigError(f"seq_len={cfg.seq_len} exceeds model.max_seq_len={model_cfg.max_seq_len}")
    return Decoder(model_cfg, patch_token_id=vocab.patch_id if model_cfg.patch_size else None)


class LMTrainModule(nn.Module):
    """The trainer's module: `forward(batch, step)` returns the summed loss (the loop normalises by token count)."""

    def __init__(self, model: Decoder, loss: LossConfig) -> None:
        super().__init__()
        self.model = model
        self.loss_cfg = loss

    def no_weight_decay(self) -> set[str]:
        return {f"model.{n}" for n in self.model.no_weight_decay()}

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        terms = lm_loss(self.model, batch, self.loss_cfg)
        n_text, n_image = terms.n["text"].clamp_min(1), terms.n["image"].clamp_min(1)
        count = terms.count.clamp_min(1)
        metrics = {
            "text_ce": terms.ce_sum["text"] / n_text,
            "image_ce": terms.ce_sum["image"] / n_image,
            "z": terms.z_sum / count,
            "tokens": terms.count.float(),
        }
        return StepOutput(terms.loss, metrics)


# -- the image tokenizer ---------------------------------------------------------------------------------------------
def ensure_image_tokenizer(spec: TokenizerSpec, data: CorpusConfig, progress: bool = True) -> tuple[Any, str]:
    """Load or train (and cache) the image tokenizer; returns (tokenizer in eval mode, identity string for caches).

    Trained here, the tokenizer sees only the corpus' train-split images (scenes without the held-out colour-shape
    pairs, and train renders of the glyphs); its validation images are the test-split scenes. The cache folder is
    keyed by the tokenizer settings and the corpus settings that shape those images.
    """
    from tessera.tokenizer import ImageTokenizer

    if spec.path is not None:
        folder = Path(spec.path)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer.path: no tokenizer folder at {folder}")
    else:
        shape = (data.image_size, data.seed, data.train_scenes, data.test_scenes, data.min_objects, data.max_objects,
                 data.glyph_train_renders)
        key = hashlib.sha256(repr((to_dict(spec), shape, "v1")).encode()).hexdigest()[:12]
        run = cache_dir("lm", "image_tokenizer", key)
        folder = run / "final"
        if not (folder / "config.json").is_file():
            _train_image_tokenizer(spec, data, run, progress)
    tok = ImageTokenizer.from_pretrained(folder).eval()
    digest = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            digest.update(f.name.encode())
            digest.update(f.read_bytes())
    return tok, digest.hexdigest()[:16]


def _train_image_tokenizer(spec: TokenizerSpec, data: CorpusConfig, run: Path, progress: bool) -> None:
    """Train `spec.preset` with tessera.tokenizer's recipe on the corpus images (resumable: checkpoints in `run`)."""
    from tessera.lm.corpus import _render_pools
    from tessera.recipes.train_tokenizer import load_train_config
    from tessera.recipes.train_tokenizer import train as train_tokenizer

    pools = _render_pools(data)
    as_items = lambda arr: torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # noqa: E731 - (N, H, W, C) -> (N, C, H, W)
    train_items = torch.cat([as_items(pools[("scenes", "train")].images), as_items(pools[("glyphs", "train")].images)])
    val_items = torch.cat([as_items(pools[("scenes", "test")].images), as_items(pools[("glyphs", "test")].images)])
    cfg = load_train_config(None, [
        f"preset={spec.preset}",
        f"train.steps={spec.steps}",
        f"train.seed={spec.seed}",
        f"train.progress={str(progress).lower()}",
        "train.tensorboard=false",
        "train.eval_every=0",
        f"train.checkpoint_every={max(1, spec.steps // 4)}",
        f"data.batch_size={spec.batch_size}",
        f"data.seed={spec.seed}",
        "data.num_val=512",
        f"optim.lr={spec.lr}",
        "eval.frechet=none",
        "eval.grid_images=16",
    ])
    if cfg.model.image_size != data.image_size:
        raise ConfigError(f"tokenizer.preset {spec.preset!r} is for {cfg.model.image_size}px images, data.image_size is {data.image_size}")
    _log.info("training the image tokenizer %s for %d steps on %d corpus images (cached in %s)", spec.preset, spec.steps,
              len(train_items), run)
    _, metrics = train_tokenizer(cfg, run, resume=True, data=(train_items, val_items))
    _log.info("image tokenizer: %s", {k: v for k, v in metrics.items() if not k.startswith("_")})


# -- putting it together ---------------------------------------------------------------------------------------------
def data_schedule(cfg: LMRunConfig) -> StagedMixture | None:
    """The run's staged mixture of document kinds, or None (the corpus' fixed `data.mixture`)."""
    if not cfg.data_schedule:
        return None
    from tessera.lm.corpus import DOCUMENT_KINDS

    try:
        schedule = StagedMixture(list(cfg.data_schedule), total_steps=cfg.train.steps, blend=cfg.data_schedule_blend)
    except ValueError as exc:
        raise ConfigError(f"data_schedule: {exc}") from exc
    unknown = sorted(set(schedule.domains) - set(DOCUMENT_KINDS))
    if unknown:
        raise ConfigError(f"data_schedule names unknown document kinds {unknown}; known: {list(DOCUMENT_KINDS)}")
    return schedule


def prepare(cfg: LMRunConfig, image_tokenizer: Any = None) -> tuple[Processor, Corpus]:
    """The processor (vocabulary + image tokenizer) and the tokenized corpus of a run."""
    if image_tokenizer is None:
        image_tokenizer, tok_id = ensure_image_tokenizer(cfg.tokenizer, cfg.data, progress=cfg.train.progress)
    else:
        tok_id = f"object-{type(image_tokenizer).__name__}"
    tok_cfg = getattr(image_tokenizer, "config", None)
    if tok_cfg is None or int(tok_cfg.image_size) != cfg.data.image_size:
        raise ConfigError(f"data.image_size={cfg.data.image_size} must equal the image tokenizer's image_size")
    audio_tok = spoken = video = None
    if cfg.data.uses("audio") or cfg.data.uses("spoken_vqa"):
        from tessera.lm.audio import AudioTokenizerConfig, ensure_audio_tokenizer

        audio_tok, spoken, _ = ensure_audio_tokenizer(cfg.audio.spoken, AudioTokenizerConfig(codebook_size=cfg.audio.codebook_size),
                                                      steps=cfg.audio.steps, seed=cfg.audio.seed)
    if cfg.data.uses("video"):
        from tessera.data.video import render_sprite_clips

        d = cfg.data
        video = {split: render_sprite_clips(n, split, d.video_frames, d.image_size, seed=d.seed, max_sprites=d.video_max_sprites)
                 for split, n in (("train", d.video_train_clips), ("test", d.video_test_clips))}
    vocab = Vocabulary.default(image_codebook_size=int(tok_cfg.codebook_size),
                               audio_codebook_size=int(audio_tok.config.codebook_size) if audio_tok is not None else 0)
    processor = Processor(vocab, image_tokenizer, audio_tokenizer=audio_tok)
    corpus = build_corpus(cfg.data, image_tokenizer, tokenizer_id=tok_id, cache=cache_dir("lm", "corpus"), video=video,
                          audio=spoken)
    return processor, corpus


def train_lm(
    cfg: LMRunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    image_tokenizer: Any = None,
    stop_after: int | None = None,
) -> FitResult:
    """Train a decoder as configured; the model folder lands in `<run_dir>/final`.

    Args:
        cfg: the run config.
        run_dir: the run folder.
        resume: continue from the newest intact checkpoint.
        image_tokenizer: use this tokenizer object instead of `cfg.tokenizer` (tests).
        stop_after: stop early at this step (tests).
    """
    processor, corpus = prepare(cfg, image_tokenizer)
    vocab = processor.vocab
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, vocab)
    _log.info("decoder %s: %.2fM parameters (%.2fM without embeddings)", cfg.preset, model.num_parameters() / 1e6,
              model.num_parameters(True) / 1e6)
    if cfg.patch_share > 0 and model.cfg.patch_size <= 0:
        raise ConfigError("patch_share > 0 needs model.patch_size > 0 (e.g. model={patch_size: 8})")
    patches = dict(patch_size=model.cfg.patch_size, patch_share=cfg.patch_share)
    schedule = data_schedule(cfg)
    train_batches = PackedBatches(corpus, vocab, cfg.seq_len, cfg.batch_size, seed=cfg.data.seed, split="train",
                                  schedule=schedule, **patches)
    eval_source = PackedBatches(corpus, vocab, cfg.seq_len, cfg.batch_size, seed=cfg.data.seed + 1, split="test", **patches)
    eval_set = [eval_source(i) for i in range(cfg.eval_batches)]

    def evaluate(module: LMTrainModule, step: int) -> dict[str, float]:
        sums = {"text": 0.0, "image": 0.0}
        counts = {"text": 0, "image": 0}
        device = next(module.parameters()).device
        for batch in eval_set:
            batch = {k: v.to(device) for k, v in batch.items()}
            terms = lm_loss(module.model, batch, module.loss_cfg)
            for k in sums:
                sums[k] += float(terms.ce_sum[k])
                counts[k] += int(terms.n[k])
        return {f"{k}_ce": sums[k] / max(1, counts[k]) for k in sums}

    def save(module: LMTrainModule, folder: Path) -> None:
        save_pretrained(module.model, processor, folder)

    task = Task(
        module=LMTrainModule(model, cfg.loss),
        batches=train_batches,
        evaluate=evaluate,
        batch_weight=PackedBatches.weight,
        save_artifact=save,
        progress_keys=("loss", "text_ce", "image_ce"),
        fsdp_units=lambda module: list(module.model.layers),  # under strategy=fsdp each decoder layer is one shard unit
    )
    return fit(task, cfg.train, cfg.optim, run_dir, resume=resume, config=cfg, stop_after=stop_after)
