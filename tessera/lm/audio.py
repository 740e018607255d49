"""Audio for the decoders: 16 kHz speech -> log-mel frames -> rotation-trick VQ codes inside `<boa> ... <eoa>`.

Axis legend: N samples, M mel bins, F mel frames, B batch, D code-space channels, L audio tokens (F / downsample).

Pipeline (every step shared by the embedded corpus and a user's WAV files, so both are read the same way):
1. `load_audio(path)`: any file libsndfile reads (WAV, FLAC, OGG) -> mono float32 at 16 kHz (polyphase resampling);
2. `log_mel(waveform)`: 25 ms Hann windows every 10 ms (`torch.stft`), a Slaney mel filterbank from librosa, log10,
   floored 8 decades under the loudest bin (Whisper's floor) and shifted so the loudest bin is 1, i.e. features in
   [-1, 1] that do not depend on a file's gain;
3. `AudioTokenizer`: a small strided 1-D conv encoder (time downsampled 4x: one token per 40 ms), a
   `tessera.quantize.VectorQuantizer` with the rotation trick, and a mirrored decoder back to mel frames trained on
   reconstruction. The decoder only exists to train the codes; the LM reads codes and answers in text.

The embedded spoken corpus (`SpokenCorpus`) is synthesised offline with espeak-ng (Debian package `espeak-ng`)
across accents, voice variants, pitches and speeds: isolated words (digits, the scene colours and shapes, directions,
yes/no) and every question `tessera.lm.scenes` can ask, each with its transcript. Speakers (accent + variant) are
split: test renders come from speakers never heard in training. Built by `tessera lm audio-build` and cached under
`cache_dir("lm", "audio")`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tessera.quantize import VectorQuantizer

__all__ = [
    "SAMPLE_RATE",
    "AudioClip",
    "load_audio",
    "log_mel",
    "AudioTokenizerConfig",
    "AudioTokenizer",
    "AudioTokenizerOutput",
    "SpokenCorpusConfig",
    "SpokenCorpus",
    "build_spoken_corpus",
    "synthesize",
    "espeak_available",
    "train_audio_tokenizer",
    "ensure_audio_tokenizer",
    "spoken_words",
    "spoken_questions",
]

_log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
_FEATURES = "logmel-peak-v2"  # part of the audio tokenizer's cache key: bump when `log_mel` changes


class AudioClip(NamedTuple):
    """Mono speech: float32 samples in [-1, 1] at `sample_rate` Hz (resampled to 16 kHz when encoded)."""

    waveform: torch.Tensor  # (N,)
    sample_rate: int = SAMPLE_RATE

    @classmethod
    def from_file(cls, path: str | Path) -> AudioClip:
        """Read a sound file (WAV, FLAC, OGG) as 16 kHz mono; see `load_audio` for the errors."""
        return cls(torch.from_numpy(load_audio(path)), SAMPLE_RATE)


def _need(module: str, extra: str = "audio") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is needed for audio input; install it with `pip install 'tessera[{extra}]'`") from exc


def resample(waveform: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy) of a 1-D signal to `target` Hz."""
    if sample_rate == target:
        return waveform.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(int(sample_rate), int(target))
    return resample_poly(waveform, target // g, int(sample_rate) // g).astype(np.float32)


def load_audio(path: str | Path, *, max_seconds: float = 30.0) -> np.ndarray:
    """A sound file -> float32 (N,) mono samples at 16 kHz.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable sound file, empty, longer than `max_seconds`, or holding NaN/Inf samples.
    """
    sf = _need("soundfile")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    except Exception as exc:  # soundfile raises its own LibsndfileError (a RuntimeError) or TypeError
        raise ValueError(f"{path}: not a readable sound file ({exc})") from exc
    if data.shape[0] == 0:
        raise ValueError(f"{path}: the file holds no samples")
    if data.shape[0] / sr > max_seconds:
        raise ValueError(f"{path}: {data.shape[0] / sr:.1f} s of audio, more than the limit of {max_seconds:g} s")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: the file holds NaN or Inf samples")
    return resample(data.mean(axis=1), int(sr))


def _check_waveform(waveform: torch.Tensor | np.ndarray) -> torch.Tensor:
    w = torch.as_tensor(waveform)
    if w.ndim == 2 and 1 in w.shape:
        w = w.reshape(-1)
    if w.ndim != 1:
        raise ValueError(f"waveform must be mono (N,), got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"waveform must be float samples in [-1, 1], got dtype {w.dtype}")
    if w.numel() < N_FFT:
        raise ValueError(f"waveform has {w.numel()} samples; need at least {N_FFT} (25 ms at 16 kHz)")
    if not torch.isfinite(w).all():
        raise ValueError("waveform contains NaN or Inf samples")
    return w.float()


_MEL_CACHE: dict[int, torch.Tensor] = {}


def _mel_filters(n_mels: int) -> torch.Tensor:
    if n_mels not in _MEL_CACHE:
        librosa = _need("librosa")
        fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels, fmin=0.0, fmax=SAMPLE_RATE / 2)
        _MEL_CACHE[n_mels] = torch.from_numpy(fb).float()  # (M, N_FFT // 2 + 1)
    return _MEL_CACHE[n_mels]


def log_mel(waveform: torch.Tensor | np.ndarray, n_mels: int = 64) -> torch.Tensor:
    """16 kHz mono samples (N,) -> log-mel features (M, F) in [-1, 1] (peak at 1), F = N // 160 + 1 frames.

    Raises:
        ValueError / TypeError: not mono, not float, too short, or non-finite.
    """
    w = _check_waveform(waveform)
    spec = torch.stft(w, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True).abs().pow(2)  # (N_FFT/2+1, F)
    mel = _mel_filters(n_mels) @ spec  # (M, F)
    logm = mel.clamp_min(1e-10).log10()
    peak = logm.max()
    logm = torch.maximum(logm, peak - 8.0)  # dynamic range of 80 dB below the loudest bin
    return (logm - peak + 4.0) / 4.0  # in [-1, 1], the loudest bin at 1: a file's gain does not change the features


def trim_silence(waveform: np.ndarray, top_db: float = 40.0) -> np.ndarray:
    """Leading and trailing silence removed (librosa's energy threshold), so clip length tracks the speech."""
    librosa = _need("librosa")
    trimmed, _ = librosa.effects.trim(waveform, top_db=top_db)
    return trimmed if trimmed.size >= N_FFT else waveform


# -- the tokenizer ---------------------------------------------------------------------------------------------------
@dataclass
class AudioTokenizerConfig:
    """Shape of the mel-frame VQ tokenizer."""

    n_mels: int = 64  # M
    hidden: int = 128  # conv channels
    codebook_dim: int = 32  # D, channels at the quantizer
    codebook_size: int = 256  # K audio codes (the vocabulary's "audio" range)
    downsample: int = 4  # mel frames per token (a power of 2): 4 -> one token per 40 ms
    max_tokens: int = 96  # longer clips are cut (96 tokens = 3.84 s)

    def __post_init__(self) -> None:
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"audio downsample must be a power of 2, got {self.downsample}")
        for name in ("n_mels", "hidden", "codebook_dim", "codebook_size", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"audio tokenizer {name} must be >= 1, got {getattr(self, name)}")


class AudioTokenizerOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, M, F)
    codes: torch.Tensor  # (B, L)
    loss: torch.Tensor  # reconstruction MSE + the quantizer's commitment loss
    metrics: dict[str, torch.Tensor]


def _conv_stack(c_in: int, hidden: int, c_out: int, stages: int, up: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv1d(c_in, hidden, 3, padding=1), nn.GELU()]
    for _ in range(stages):
        conv = nn.ConvTranspose1d if up else nn.Conv1d
        layers += [conv(hidden, hidden, 4, stride=2, padding=1), nn.GELU(), nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU()]
    layers.append(nn.Conv1d(hidden, c_out, 3, padding=1))
    return nn.Sequential(*layers)


class AudioTokenizer(nn.Module):
    """Log-mel frames (B, M, F) <-> audio codes (B, F / downsample) through a rotation-trick VQ bottleneck."""

    def __init__(self, config: AudioTokenizerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or AudioTokenizerConfig()
        stages = int(math.log2(cfg.downsample))
        self.encoder = _conv_stack(cfg.n_mels, cfg.hidden, cfg.codebook_dim, stages, up=False)
        self.quantizer = VectorQuantizer(cfg.codebook_dim, cfg.codebook_size, kmeans_init=True, dead_code_threshold=1.0)
        self.decoder = _conv_stack(cfg.codebook_dim, cfg.hidden, cfg.n_mels, stages, up=True)

    def _pad(self, mel: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if mel.ndim != 3 or mel.shape[1] != cfg.n_mels:
            raise ValueError(f"mel features must be (B, {cfg.n_mels}, F), got {tuple(mel.shape)}")
        F_ = mel.shape[-1]
        target = max(cfg.downsample, -(-F_ // cfg.downsample) * cfg.downsample)
        mel = mel[..., : cfg.max_tokens * cfg.downsample]
        if mel.shape[-1] < target and target <= cfg.max_tokens * cfg.downsample:
            mel = F.pad(mel, (0, target - mel.shape[-1]), value=float(mel.min()))  # pad with silence
        return mel

    def forward(self, mel: torch.Tensor) -> AudioTokenizerOutput:
        mel = self._pad(mel)
        z = self.encoder(mel)  # (B, D, L)
        q = self.quantizer(z.transpose(1, 2))  # (B, L, D) vectors
        recon = self.decoder(q.quantized.transpose(1, 2))  # (B, M, F)
        rec = F.mse_loss(recon, mel)
        return AudioTokenizerOutput(recon, q.indices, rec + q.loss, {"mse": rec.detach(), **q.metrics})

    @torch.no_grad()
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, M, F) features -> (B, L) int64 codes, L = ceil(F / downsample) (at most `max_tokens`)."""
        mel = self._pad(mel)
        return self.quantizer(self.encoder(mel).transpose(1, 2)).indices

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, L) codes -> (B, M, L * downsample) reconstructed log-mel features."""
        K = self.config.codebook_size
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= K):
            raise ValueError(f"audio codes must lie in [0, {K})")
        vectors = self.quantizer.codes_to_vectors(codes.long())  # (B, L, D)
        return self.decoder(vectors.transpose(1, 2))

    def encode_waveform(self, waveform: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """Mono samples -> (L,) codes (resampled to 16 kHz first)."""
        w = _check_waveform(waveform).numpy()
        if sample_rate != SAMPLE_RATE:
            w = resample(w, sample_rate)
        mel = log_mel(w, self.config.n_mels)
        device = next(self.parameters()).device
        return self.encode(mel[None].to(device))[0].cpu()

    def save_pretrained(self, folder: str | Path) -> Path:
        from tessera.lm._io import atomic_write_json, save_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors(folder / "model.safetensors", self.state_dict())
        atomic_write_json(folder / "config.json", {"format": "tessera.lm.AudioTokenizer", "version": 1, "config": asdict(self.config)})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> AudioTokenizer:
        from tessera.config import from_dict
        from tessera.lm._io import load_safetensors

        folder = Path(folder)
        meta_path = folder / "config.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder}: no config.json (not an audio tokenizer folder)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "tessera.lm.AudioTokenizer":
            raise ValueError(f"{folder}: config.json is not an audio tokenizer's (format {meta.get('format')!r})")
        model = cls(from_dict(AudioTokenizerConfig, meta["config"], prefix="audio_tokenizer"))
        model.load_state_dict(load_safetensors(folder / "model.safetensors"))
        return model.eval()


# -- the spoken corpus ------------------------------------------------------------------------------------------------
def spoken_words() -> tuple[str, ...]:
    """The isolated-word vocabulary: digits, the scene colours and shapes, directions, yes / no."""
    from tessera.lm import scenes as S

    digits = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    return digits + tuple(S.COLORS) + S.SHAPES + ("left", "right", "up", "down", "yes", "no")


def spoken_questions() -> tuple[str, ...]:
    """Every question text `tessera.lm.scenes.sample_question` can produce."""
    from tessera.lm import scenes as S

    qs = ["how many shapes are there?"]
    for pos in S.POSITIONS:
        qs += [f"what shape is at the {pos}?", f"what color is the shape at the {pos}?", f"what size is the shape at the {pos}?"]
    for c in S.COLORS:
        for s in S.SHAPES:
            qs += [f"is there a {c} {s}?", f"where is the {c} {s}?"]
    return tuple(qs)


@dataclass
class SpokenCorpusConfig:
    """What is synthesised. Speakers = accent x variant; `test_speakers` of them are held out for the test split."""

    accents: tuple[str, ...] = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029")
    variants: tuple[str, ...] = ("m1", "m3", "m5", "f1", "f2", "f4")
    pitches: tuple[int, ...] = (30, 45, 60, 75)  # espeak-ng -p (0-99)
    speeds: tuple[int, ...] = (120, 150, 180)  # espeak-ng -s, words per minute
    test_speakers: int = 6
    word_train_renders: int = 24  # renders per word (train speakers)
    word_test_renders: int = 8  # renders per word (held-out speakers)
    question_train_renders: int = 8
    question_test_renders: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        self.accents, self.variants = tuple(self.accents), tuple(self.variants)
        self.pitches, self.speeds = tuple(self.pitches), tuple(self.speeds)
        n = len(self.accents) * len(self.variants)
        if not 1 <= self.test_speakers < n:
            raise ValueError(f"test_speakers must be in [1, {n - 1}] ({n} speakers), got {self.test_speakers}")
        if min(self.word_train_renders, self.word_test_renders, self.question_train_renders, self.question_test_renders) < 1:
            raise ValueError("every *_renders count must be >= 1")

    def speakers(self, split: str) -> list[str]:
        """espeak-ng voice names ("en-gb+f2") of a split (a seeded, disjoint division)."""
        allv = [f"{a}+{v}" for a in self.accents for v in self.variants]
        order = np.random.default_rng([self.seed, 5]).permutation(len(allv))
        test = {allv[i] for i in order[: self.test_speakers]}
        return [v for v in allv if (v in test) == (split == "test")]


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, voice: str = "en-us", pitch: int = 50, speed: int = 150) -> np.ndarray:
    """Speak `text` with espeak-ng; float32 (N,) mono at 16 kHz, leading/trailing silence trimmed.

    Raises:
        RuntimeError: espeak-ng is not installed (Debian package `espeak-ng`) or failed.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng); it synthesises the spoken corpus")
    sf = _need("soundfile")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        proc = subprocess.run([exe, "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(out), text],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.strip()}")
        data, sr = sf.read(str(out), dtype="float32", always_2d=True)
    return trim_silence(resample(data.mean(axis=1), int(sr)))


@dataclass
class SpokenCorpus:
    """Synthesised clips with transcripts; `codes` are filled in by an audio tokenizer (`tokenize`)."""

    config: SpokenCorpusConfig
    items: list[dict[str, Any]]  # text, kind ("word" / "question"), split, voice, pitch, speed
    waveforms: list[np.ndarray]  # float32 (N,) at 16 kHz
    codes: list[np.ndarray] | None = None  # int16 (L,) per clip
    index: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)  # (split, kind, text) -> clip ids

    def __post_init__(self) -> None:
        self.index = {}
        for i, it in enumerate(self.items):
            self.index.setdefault((it["split"], it["kind"], it["text"]), []).append(i)

    def clips(self, split: str, kind: str, text: str) -> list[int]:
        got = self.index.get((split, kind, text))
        if not got:
            raise ValueError(f"the spoken corpus has no {split} {kind} clip of {text!r}")
        return got

    def texts(self, kind: str) -> list[str]:
        return sorted({it["text"] for it in self.items if it["kind"] == kind})

    @torch.no_grad()
    def tokenize(self, tokenizer: AudioTokenizer, batch_size: int = 64) -> None:
        """Fill `codes` with each clip's audio codes."""
        tokenizer.eval()
        codes = []
        for start in range(0, len(self.waveforms), batch_size):
            for w in self.waveforms[start : start + batch_size]:
                codes.append(tokenizer.encode_waveform(w).numpy().astype(np.int16))
        self.codes = codes


def _corpus_key(cfg: SpokenCorpusConfig) -> str:
    blob = json.dumps({"cfg": asdict(cfg), "words": spoken_words(), "questions": spoken_questions(), "v": 1},
                      sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_spoken_corpus(cfg: SpokenCorpusConfig | None = None, *, cache: Path | None = None, workers: int = 2,
                        progress: bool = False) -> SpokenCorpus:
    """Synthesise (or load from the cache) the spoken corpus.

    Args:
        cfg: what to synthesise (default: the shipped settings).
        cache: folder of the cached corpus; default `cache_dir("lm", "audio", <key>)`.
        workers: espeak-ng processes run at once.
        progress: log progress.

    Raises:
        RuntimeError: espeak-ng missing (only when the corpus is not cached yet).
    """
    from tessera.io import atomic_write_json
    from tessera.paths import cache_dir

    cfg = cfg or SpokenCorpusConfig()
    folder = Path(cache) if cache is not None else cache_dir("lm", "audio", _corpus_key(cfg))
    meta_path, wav_path = folder / "items.json", folder / "waveforms.npz"
    if meta_path.is_file() and wav_path.is_file():
        items = json.loads(meta_path.read_text())
        with np.load(wav_path) as z:
            flat, offsets = z["samples"], z["offsets"]
        waves = [flat[offsets[i] : offsets[i + 1]].astype(np.float32) / 32767.0 for i in range(len(items))]
        return SpokenCorpus(cfg, items, waves)
    rng = np.random.default_rng([cfg.seed, 17])
    items: list[dict[str, Any]] = []
    plan = [("word", spoken_words(), cfg.word_train_renders, cfg.word_test_renders),
            ("question", spoken_questions(), cfg.question_train_renders, cfg.question_test_renders)]
    for kind, texts, n_train, n_test in plan:
        for text in texts:
            for split, n in (("train", n_train), ("test", n_test)):
                voices = cfg.speakers(split)
                for _ in range(n):
                    items.append({"text": text, "kind": kind, "split": split, "voice": voices[int(rng.integers(len(voices)))],
                                  "pitch": int(rng.choice(cfg.pitches)), "speed": int(rng.choice(cfg.speeds))})
    _log.info("synthesising %d spoken clips with espeak-ng into %s", len(items), folder)

    def speak(it: dict[str, Any]) -> np.ndarray:
        return synthesize(it["text"].rstrip("?"), it["voice"], it["pitch"], it["speed"])

    with ThreadPoolExecutor(max(1, workers)) as pool:
        waves = list(pool.map(speak, items))
    lengths = np.array([len(w) for w in waves])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.concatenate([np.clip(np.rint(w * 32767), -32767, 32767).astype(np.int16) for w in waves])
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "waveforms.tmp.npz"
    np.savez(tmp, samples=flat, offsets=offsets)
    tmp.replace(wav_path)
    atomic_write_json(meta_path, items)
    waves = [flat[offsets[i] : offsets[i + 1]].astype(np.float32) / 32767.0 for i in range(len(items))]
    return SpokenCorpus(cfg, items, waves)


def train_audio_tokenizer(
    corpus: SpokenCorpus,
    config: AudioTokenizerConfig | None = None,
    *,
    steps: int = 400,
    batch_size: int = 32,
    crop_frames: int = 96,
    lr: float = 2e-3,
    seed: int = 0,
) -> tuple[AudioTokenizer, dict[str, float]]:
    """Train the mel-frame VQ tokenizer on the corpus' train clips (random crops), AdamW, warmup + cosine decay.

    Returns (tokenizer in eval mode, held-out metrics: reconstruction MSE and code usage on test-speaker clips).
    """
    torch.manual_seed(seed)
    cfg = config or AudioTokenizerConfig()
    model = AudioTokenizer(cfg)
    crop_frames = -(-crop_frames // cfg.downsample) * cfg.downsample
    mels = {s: [log_mel(w, cfg.n_mels) for w, it in zip(corpus.waveforms, corpus.items, strict=True) if it["split"] == s] for s in ("train", "test")}
    if not mels["train"]:
        raise ValueError("the spoken corpus has no train clips")
    rng = np.random.default_rng([seed, 3])

    def batch(pool: list[torch.Tensor], n: int) -> torch.Tensor:
        out = []
        for i in rng.integers(len(pool), size=n):
            m = pool[int(i)]
            if m.shape[1] >= crop_frames:
                s = int(rng.integers(m.shape[1] - crop_frames + 1))
                m = m[:, s : s + crop_frames]
            else:
                m = F.pad(m, (0, crop_frames - m.shape[1]), value=float(m.min()))
            out.append(m)
        return torch.stack(out)  # (B, M, F)

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warmup, then cosine decay to zero
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, i / max(1, steps)))))
    model.train()
    for _ in range(steps):
        out = model(batch(mels["train"], batch_size))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        test = mels["test"] or mels["train"]
        out = model(batch(test, min(256, 4 * batch_size)))
    metrics = {"heldout_mse": float(out.metrics["mse"]), "heldout_usage": float(out.metrics["usage"]),
               "heldout_perplexity": float(out.metrics["perplexity"]),
               "silence_mse": float(batch(test, 64).var(dim=-1).mean())}  # predicting each clip's mean: a baseline
    return model, metrics


def ensure_audio_tokenizer(
    corpus_cfg: SpokenCorpusConfig | None = None,
    config: AudioTokenizerConfig | None = None,
    *,
    steps: int = 400,
    seed: int = 0,
) -> tuple[AudioTokenizer, SpokenCorpus, str]:
    """The spoken corpus (synthesised once) and a tokenizer trained on it (cached); returns (tokenizer, corpus with
    codes, identity string for caches)."""
    from tessera.io import atomic_write_json
    from tessera.paths import cache_dir

    corpus_cfg = corpus_cfg or SpokenCorpusConfig()
    config = config or AudioTokenizerConfig()
    corpus = build_spoken_corpus(corpus_cfg)
    key = hashlib.sha256(json.dumps([_corpus_key(corpus_cfg), asdict(config), steps, seed, _FEATURES]).encode()).hexdigest()[:12]
    folder = cache_dir("lm", "audio_tokenizer", key)
    if not (folder / "model.safetensors").is_file():
        _log.info("training the audio tokenizer for %d steps (cached in %s)", steps, folder)
        tok, metrics = train_audio_tokenizer(corpus, config, steps=steps, seed=seed)
        tok.save_pretrained(folder)
        atomic_write_json(folder / "metrics.json", metrics)
    tok = AudioTokenizer.from_pretrained(folder)
    codes_path = folder / f"codes_{_corpus_key(corpus_cfg)}.npz"
    if codes_path.is_file():
        with np.load(codes_path) as z:
            flat, offsets = z["codes"], z["offsets"]
        corpus.codes = [flat[offsets[i] : offsets[i + 1]] for i in range(len(corpus.items))]
    else:
        corpus.tokenize(tok)
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in corpus.codes])])
        tmp = folder / "codes.tmp.npz"
        np.savez(tmp, codes=np.concatenate(corpus.codes), offsets=offsets)
        tmp.replace(codes_path)
    return tok, corpus, f"audio-{key}"
