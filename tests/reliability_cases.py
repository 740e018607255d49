"""A catalogue of bad inputs for every public entry point, each with the clear error it must produce.

Used by `tests/test_reliability.py` (every case is a test) and by `benchmarks/reliability.py` (which counts them,
with generated cases, fault injections and kills, into docs/reliability.md). A case passes when the call raises one
of the expected exception types AND the message matches `names`: a regex for what the user must be told (the
argument, the file, the key, the range). Anything else (no error, a different exception, a vague message) fails.

Objects are tiny and built once per process (`_objects`), so the whole catalogue runs in a few seconds on CPU.
"""

from __future__ import annotations

import atexit
import io
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NAN = float("nan")
INF = float("inf")


@dataclass(frozen=True)
class Case:
    entry: str  # the public entry point
    problem: str  # category: nan_inf, rank, dtype, empty, range, memory, image, config, checkpoint
    name: str
    call: Callable[[], Any]
    raises: tuple[type[BaseException], ...]
    names: str  # regex the message must match (case-insensitive)


@dataclass
class Outcome:
    case: Case
    ok: bool
    detail: str


def run_case(case: Case) -> Outcome:
    """Call the case; ok when the expected error type is raised with a message naming the problem."""
    try:
        out = case.call()
    except case.raises as exc:
        msg = str(exc)
        if re.search(case.names, msg, re.IGNORECASE | re.DOTALL):
            return Outcome(case, True, f"{type(exc).__name__}: {msg[:160]}")
        return Outcome(case, False, f"vague message ({type(exc).__name__}): {msg[:160]}")
    except Exception as exc:  # noqa: BLE001 - any other exception is the finding
        return Outcome(case, False, f"unexpected {type(exc).__name__}: {str(exc)[:160]}")
    return Outcome(case, False, f"no error; returned {type(out).__name__}")


@cache
def _objects() -> dict[str, Any]:
    """Tiny untrained models and their saved folders (a temporary folder per process)."""
    from PIL import Image

    from tessera.icl import CAML, CAMLConfig
    from tessera.icl.zoo import save_model
    from tessera.lm.model import Decoder, config_from_name
    from tessera.lm.pretrained import save_pretrained
    from tessera.lm.processor import Processor
    from tessera.lm.vocab import Vocabulary
    from tessera.quantize import VectorQuantizer
    from tessera.tokenizer import ImageTokenizer, TokenizerConfig

    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="tessera-reliability-"))
    atexit.register(shutil.rmtree, root, True)
    tok = ImageTokenizer(TokenizerConfig.from_name("vqvae-debug")).eval()
    tok.save_pretrained(root / "tokenizer")
    vocab = Vocabulary.default(image_codebook_size=tok.config.codebook_size)
    dec = Decoder(config_from_name("debug", vocab_size=vocab.size)).eval()
    proc = Processor(vocab, tok)
    save_pretrained(dec, proc, root / "lm")
    caml = CAML(CAMLConfig.from_name("caml-debug", feature_dim=16)).eval()
    save_model(caml, "caml", caml.cfg, root / "caml")
    images = root / "images"
    images.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, "PNG")
    (images / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8)
    (images / "text.jpg").write_text("not an image")
    (images / "bomb.png").write_bytes(_png_claiming(20_000, 20_000))
    return {"root": root, "tok": tok, "vocab": vocab, "dec": dec, "proc": proc, "caml": caml, "images": images,
            "vq": VectorQuantizer(8, 16)}


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels (a decompression bomb as the decoder first sees it)."""
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def _copy_with(folder: str, edit: Callable[[Path], None]) -> Path:
    """A damaged copy of one of the saved folders."""
    o = _objects()
    dst = Path(tempfile.mkdtemp(dir=o["root"])) / folder
    shutil.copytree(o["root"] / folder, dst)
    edit(dst)
    return dst


def _edit_json(key_path: tuple[str, ...], value: Any, file: str = "config.json") -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = json.loads((folder / file).read_text())
        node = data
        for k in key_path[:-1]:
            node = node[k]
        node[key_path[-1]] = value
        (folder / file).write_text(json.dumps(data))

    return edit


def _truncate(file: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = (folder / file).read_bytes()
        (folder / file).write_bytes(data[: len(data) // 3])

    return edit


def _write(file: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / file).write_text(text)


class CLIError(Exception):
    """A `tessera ...` command that exited non-zero; the message is what it printed on stderr."""


def _cli(*argv: Any) -> int:
    """Run `tessera argv...` in-process; raise CLIError(stderr) when it fails (argparse errors included)."""
    import contextlib

    from tessera.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
    if rc:
        raise CLIError(f"exit {rc}: {err.getvalue().strip()}")
    return rc


def _npy(name: str, arr: np.ndarray, allow_pickle: bool = False) -> Path:
    path = _objects()["root"] / name
    np.save(path, arr, allow_pickle=allow_pickle)
    return path


def _yaml(name: str, text: str) -> Path:
    path = _objects()["root"] / name
    path.write_text(text)
    return path


def _hf_folder(config_text: str, bin_only: bool = False) -> Path:
    folder = Path(tempfile.mkdtemp(dir=_objects()["root"]))
    (folder / "config.json").write_text(config_text)
    if bin_only:
        (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not read")
    return folder


def _folder_with_corrupt_image():
    from tessera.data.folders import ImageFolderDataset

    root = Path(tempfile.mkdtemp(dir=_objects()["root"]))
    (root / "cls").mkdir()
    (root / "cls" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    return ImageFolderDataset(root)


def _fit_resume_mismatch() -> None:
    from tessera.train import OptimConfig, StepOutput, Task, TrainConfig, fit

    class Tiny(torch.nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(n, 1)

        def forward(self, batch, step):  # noqa: ARG002
            return StepOutput(self.lin(batch).pow(2).mean(), {})

    run = Path(tempfile.mkdtemp(dir=_objects()["root"]))
    cfg = TrainConfig(steps=1, progress=False, tensorboard=False, device="cpu")
    fit(Task(Tiny(4), lambda s, m, r, w: torch.ones(2, 4)), cfg, OptimConfig(warmup_steps=0), run)
    cfg2 = TrainConfig(steps=2, progress=False, tensorboard=False, device="cpu")
    fit(Task(Tiny(5), lambda s, m, r, w: torch.ones(2, 5)), cfg2, OptimConfig(warmup_steps=0), run, resume=True)


def _cases() -> list[Case]:
    from tessera.config import ConfigError, load_config
    from tessera.data.folders import ImageFolderDataset
    from tessera.data.imageio import load_image
    from tessera.icl import CAMLConfig, fixed_episodes, sample_episode
    from tessera.icl.model import CheckpointMismatchError
    from tessera.icl.zoo import load_model
    from tessera.lm import from_hf
    from tessera.lm.generate import SamplingConfig, generate
    from tessera.lm.pretrained import load_pretrained
    from tessera.lm.processor import Processor
    from tessera.lm.vocab import Vocabulary
    from tessera.quantize import VectorQuantizer, nearest_codes
    from tessera.recipes.train_icl import TrainICLConfig
    from tessera.recipes.train_lm import LMRunConfig
    from tessera.recipes.train_tokenizer import load_train_config
    from tessera.tokenizer import ImageTokenizer, TokenizerConfig
    from tessera.train.checkpoint import CheckpointError

    o = _objects
    V, E = ValueError, TypeError
    vq = lambda: o()["vq"]  # noqa: E731
    tok = lambda: o()["tok"]  # noqa: E731
    dec = lambda: o()["dec"]  # noqa: E731
    proc = lambda: o()["proc"]  # noqa: E731
    caml = lambda: o()["caml"]  # noqa: E731
    img = lambda name: o()["images"] / name  # noqa: E731
    vocab_size = lambda: o()["vocab"].size  # noqa: E731
    S, L, Q = torch.randn(1, 5, 16), torch.tensor([[0, 1, 2, 3, 4]]), torch.randn(1, 3, 16)
    classes = [np.arange(i * 5, i * 5 + 5) for i in range(4)]
    tiny_suite = "data.suite_overrides={glyph_max_per_script: 8}"

    c = [
        # -- tessera.quantize ----------------------------------------------------------------------------------------
        Case("quantize.VectorQuantizer", "nan_inf", "NaN input", lambda: vq()(torch.full((2, 4, 8), NAN)), (V,), "NaN"),
        Case("quantize.VectorQuantizer", "nan_inf", "Inf input", lambda: vq()(torch.full((2, 4, 8), INF)), (V,), "Inf"),
        Case("quantize.VectorQuantizer", "dtype", "integer input", lambda: vq()(torch.ones(2, 4, 8, dtype=torch.long)), (E,), "floating|int64"),
        Case("quantize.VectorQuantizer", "rank", "rank-1 input", lambda: vq()(torch.ones(8)), (V,), r"rank 1|\(8,\)"),
        Case("quantize.VectorQuantizer", "rank", "wrong last axis", lambda: vq()(torch.ones(2, 4, 7)), (V,), "dim=8"),
        Case("quantize.VectorQuantizer", "empty", "empty batch", lambda: vq()(torch.ones(0, 4, 8)), (V,), "empty"),
        Case("quantize.VectorQuantizer", "dtype", "float mask", lambda: vq()(torch.ones(2, 4, 8), mask=torch.ones(2, 4)), (E,), "mask"),
        Case("quantize.VectorQuantizer", "memory", "oversized codebook", lambda: VectorQuantizer(4096, 10**8), (V,), "codebook_size|max_chunk_bytes"),
        Case("quantize.nearest_codes", "nan_inf", "NaN vectors", lambda: nearest_codes(torch.full((4, 8), NAN), torch.randn(16, 8)), (V,), "x contains"),
        Case("quantize.nearest_codes", "nan_inf", "Inf codebook", lambda: nearest_codes(torch.randn(4, 8), torch.full((16, 8), INF)), (V,), "codebook contains"),
        Case("quantize.nearest_codes", "empty", "empty codebook", lambda: nearest_codes(torch.randn(4, 8), torch.randn(0, 8)), (V,), "codebook is empty"),
        Case("quantize.nearest_codes", "rank", "dimension mismatch", lambda: nearest_codes(torch.randn(4, 8), torch.randn(16, 7)), (V,), r"\(16, 7\)"),
        # -- tessera.tokenizer -----------------------------------------------------------------------------------------
        Case("tokenizer.ImageTokenizer.encode", "nan_inf", "NaN image", lambda: tok().encode(torch.full((1, 3, 16, 16), NAN)), (V,), "NaN"),
        Case("tokenizer.ImageTokenizer.encode", "dtype", "uint8 image", lambda: tok().encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)), (E,), "uint8"),
        Case("tokenizer.ImageTokenizer.encode", "rank", "2-D image", lambda: tok().encode(torch.zeros(16, 16)), (V,), r"\(16, 16\)"),
        Case("tokenizer.ImageTokenizer.encode", "rank", "one channel", lambda: tok().encode(torch.zeros(1, 1, 16, 16)), (V,), r"\(B, 3, H, W\)"),
        Case("tokenizer.ImageTokenizer.encode", "rank", "size not divisible", lambda: tok().encode(torch.zeros(1, 3, 17, 17)), (V,), "17x17"),
        Case("tokenizer.ImageTokenizer.encode", "empty", "empty batch", lambda: tok().encode(torch.zeros(0, 3, 16, 16)), (V,), "empty"),
        Case("tokenizer.ImageTokenizer.encode", "range", "values in 0..255", lambda: tok().encode(torch.full((1, 3, 16, 16), 255.0)), (V,), r"\[0, 1\]"),
        Case("tokenizer.ImageTokenizer.decode", "range", "token id >= codebook", lambda: tok().decode(torch.full((1, 4, 4), 999)), (V,), r"\[0, 32\)"),
        Case("tokenizer.ImageTokenizer.decode", "range", "negative token id", lambda: tok().decode(torch.full((1, 4, 4), -1)), (V,), r"\[0, 32\)"),
        Case("tokenizer.ImageTokenizer.decode", "dtype", "float tokens", lambda: tok().decode(torch.ones(1, 4, 4)), (E,), "integer"),
        Case("tokenizer.ImageTokenizer.decode", "empty", "empty batch", lambda: tok().decode(torch.zeros(0, 4, 4, dtype=torch.long)), (V,), "empty"),
        Case("tokenizer.ImageTokenizer", "memory", "codebook too large for the search's memory bound", lambda: ImageTokenizer(TokenizerConfig.from_name("vqvae-debug", codebook_size=10**9)), (V,), "codebook_size=1000000000"),
        Case("tokenizer.ImageTokenizer.from_pretrained", "checkpoint", "missing folder", lambda: ImageTokenizer.from_pretrained(o()["root"] / "nope"), (FileNotFoundError,), "nope"),
        Case("tokenizer.ImageTokenizer.from_pretrained", "checkpoint", "truncated weights", lambda: ImageTokenizer.from_pretrained(_copy_with("tokenizer", _truncate("model.safetensors"))), (V,), r"model\.safetensors.*(truncated|corrupt)"),
        Case("tokenizer.ImageTokenizer.from_pretrained", "checkpoint", "weights of another config", lambda: ImageTokenizer.from_pretrained(_copy_with("tokenizer", _edit_json(("config", "codebook_size"), 64))), (V,), r"does not match|size mismatch"),
        Case("tokenizer.ImageTokenizer.from_pretrained", "config", "unknown config key", lambda: ImageTokenizer.from_pretrained(_copy_with("tokenizer", _edit_json(("config", "bogus_key"), 1))), (V,), "bogus_key"),
        Case("tokenizer.ImageTokenizer.from_pretrained", "config", "config not JSON", lambda: ImageTokenizer.from_pretrained(_copy_with("tokenizer", _write("config.json", "{oops"))), (V,), r"config\.json.*JSON"),
        # -- tessera.icl -----------------------------------------------------------------------------------------------
        Case("icl.CAML", "nan_inf", "NaN support features", lambda: caml()(torch.full_like(S, NAN), L, Q), (V,), "support contains"),
        Case("icl.CAML", "nan_inf", "Inf query features", lambda: caml()(S, L, torch.full_like(Q, INF)), (V,), "query contains"),
        Case("icl.CAML", "dtype", "integer features", lambda: caml()(S.long(), L, Q.long()), (E,), "support must be a floating"),
        Case("icl.CAML", "dtype", "float labels", lambda: caml()(S, L.float(), Q), (E,), "labels must be integers"),
        Case("icl.CAML", "rank", "feature size of another extractor", lambda: caml()(torch.randn(1, 5, 15), L, torch.randn(1, 3, 15)), (V,), "feature_dim 16"),
        Case("icl.CAML", "rank", "rank-4 support", lambda: caml()(S[None], L, Q), (V,), r"\(B, N, D\)"),
        Case("icl.CAML", "rank", "labels of another length", lambda: caml()(S, torch.tensor([[0, 1, 2]]), Q), (V,), "disagree"),
        Case("icl.CAML", "range", "label beyond max way", lambda: caml()(S, torch.tensor([[0, 1, 2, 3, 99]]), Q), (V,), r"\[0, 5\)"),
        Case("icl.CAML", "range", "negative label", lambda: caml()(S, torch.tensor([[0, 1, 2, 3, -1]]), Q), (V,), r"\[0, 5\)"),
        Case("icl.CAML", "empty", "empty support", lambda: caml()(torch.randn(1, 0, 16), torch.zeros(1, 0, dtype=torch.long), Q), (V,), "empty support"),
        Case("icl.CAMLConfig", "memory", "max_way beyond the label encoder", lambda: CAMLConfig.from_name("caml-debug", feature_dim=16, max_way=10**7), (V,), "label_dim"),
        Case("icl.sample_episode", "range", "more ways than classes", lambda: sample_episode(classes, 5, 1, 1, np.random.default_rng(0)), (V,), "5-way"),
        Case("icl.sample_episode", "range", "negative way", lambda: sample_episode(classes, -1, 1, 1, np.random.default_rng(0)), (V,), "way=-1"),
        Case("icl.fixed_episodes", "empty", "no labels", lambda: fixed_episodes(np.array([], dtype=np.int64), 2, 1, 1, 3, 0), (V,), "need 2 classes"),
        Case("icl.fixed_episodes", "range", "negative episode count", lambda: fixed_episodes(np.repeat(np.arange(4), 5), 2, 1, 1, -3, 0), (V,), "num"),
        Case("icl.load_model", "checkpoint", "truncated weights", lambda: load_model(_copy_with("caml", _truncate("model.safetensors"))), (CheckpointMismatchError,), r"model\.safetensors"),
        Case("icl.load_model", "checkpoint", "weights of another config", lambda: load_model(_copy_with("caml", _edit_json(("config", "feature_dim"), 32))), (CheckpointMismatchError,), "do not fit|mismatch"),
        Case("icl.load_model", "config", "unknown config key", lambda: load_model(_copy_with("caml", _edit_json(("config", "bogus"), 3))), (CheckpointMismatchError,), "bogus"),
        # -- tessera.lm ------------------------------------------------------------------------------------------------
        Case("lm.Decoder.forward", "range", "token id >= vocab_size", lambda: dec()(torch.full((1, 8), vocab_size())), (V,), "input_ids must lie"),
        Case("lm.Decoder.forward", "range", "negative token id", lambda: dec()(torch.full((1, 8), -1)), (V,), "input_ids must lie"),
        Case("lm.Decoder.forward", "dtype", "float ids", lambda: dec()(torch.ones(1, 8)), (V, E), "integer"),
        Case("lm.Decoder.forward", "rank", "rank-1 ids", lambda: dec()(torch.ones(8, dtype=torch.long)), (V,), r"\(B, T\)"),
        Case("lm.Decoder.forward", "empty", "empty batch", lambda: dec()(torch.ones(0, 8, dtype=torch.long)), (V,), "empty"),
        Case("lm.Decoder.forward", "range", "longer than max_seq_len", lambda: dec()(torch.ones(1, 10_000, dtype=torch.long)), (V,), "max_seq_len"),
        Case("lm.Decoder.forward", "rank", "attention_mask of another shape", lambda: dec()(torch.ones(1, 8, dtype=torch.long), attention_mask=torch.ones(1, 3)), (V,), "attention_mask"),
        Case("lm.generate", "range", "negative max_new_tokens", lambda: generate(dec(), torch.ones(1, 4, dtype=torch.long), max_new_tokens=-1), (V,), "max_new_tokens"),
        Case("lm.generate", "empty", "empty prompt", lambda: generate(dec(), torch.ones(1, 0, dtype=torch.long), max_new_tokens=2), (V,), "non-empty|empty"),
        Case("lm.generate", "range", "prompt id out of range", lambda: generate(dec(), torch.full((1, 4), vocab_size() + 1), max_new_tokens=2), (V,), "must lie"),
        Case("lm.SamplingConfig", "range", "negative temperature", lambda: SamplingConfig(temperature=-1.0), (V,), "temperature"),
        Case("lm.SamplingConfig", "range", "top_p above 1", lambda: SamplingConfig(top_p=2.0), (V,), "top_p"),
        Case("lm.Processor", "nan_inf", "NaN image", lambda: proc().encode(["a cat", torch.full((3, 16, 16), NAN)]), (V,), "NaN"),
        Case("lm.Processor", "dtype", "not an image", lambda: proc().encode(["a cat", 5]), (E,), "int"),
        Case("lm.Processor", "rank", "2-D image tensor", lambda: proc().encode([torch.zeros(16, 16)]), (V,), r"\(C, H, W\)"),
        Case("lm.Processor", "range", "float image in 0..255", lambda: proc().encode([torch.full((3, 16, 16), 200.0)]), (V,), r"\[0, 1\]"),
        Case("lm.Processor", "range", "decode id out of range", lambda: proc().decode([vocab_size() + 5]), (V,), "out of range"),
        Case("lm.Processor", "range", "image code out of range", lambda: proc().code_block(torch.full((4, 4), 999)), (V,), r"\[0, 32\)"),
        Case("lm.Processor", "checkpoint", "tokenizer codebook != vocabulary", lambda: Processor(Vocabulary.default(image_codebook_size=64), tok()), (V,), "32 codes.*64"),
        Case("lm.load_pretrained", "checkpoint", "missing folder", lambda: load_pretrained(o()["root"] / "nolm"), (FileNotFoundError,), "nolm"),
        Case("lm.load_pretrained", "checkpoint", "truncated weights", lambda: load_pretrained(_copy_with("lm", _truncate("model.safetensors"))), (V,), r"model\.safetensors"),
        Case("lm.load_pretrained", "checkpoint", "weights of another config", lambda: load_pretrained(_copy_with("lm", _edit_json(("config", "embed_dim"), 128))), (V,), "do not match|mismatch"),
        Case("lm.load_pretrained", "config", "unknown config key", lambda: load_pretrained(_copy_with("lm", _edit_json(("config", "bogus"), 1))), (V,), "bogus"),
        Case("lm.load_pretrained", "config", "wrong config type", lambda: load_pretrained(_copy_with("lm", _edit_json(("config", "num_layers"), "two"))), (V,), "num_layers"),
        Case("lm.load_pretrained", "config", "config not JSON", lambda: load_pretrained(_copy_with("lm", _write("config.json", "{oops"))), (V,), r"config\.json.*JSON"),
        Case("lm.from_hf", "checkpoint", "missing folder", lambda: from_hf(o()["root"] / "nohf"), (FileNotFoundError,), "nohf"),
        Case("lm.from_hf", "config", "config not JSON", lambda: from_hf(_hf_folder("{oops")), (V,), r"config\.json.*JSON"),
        Case("lm.from_hf", "config", "not a Gemma config", lambda: from_hf(_hf_folder('{"model_type": "llama"}')), (V,), "llama"),
        Case("lm.from_hf", "checkpoint", "pickled weights only", lambda: from_hf(_hf_folder('{"model_type": "gemma", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 16}', bin_only=True)), (FileNotFoundError,), "pickled"),
        # -- tessera.data ----------------------------------------------------------------------------------------------
        Case("data.load_image", "image", "truncated PNG", lambda: load_image(img("truncated.png")), (V,), r"truncated\.png"),
        Case("data.load_image", "image", "corrupt PNG", lambda: load_image(img("corrupt.png")), (V,), r"corrupt\.png"),
        Case("data.load_image", "image", "text file named .jpg", lambda: load_image(img("text.jpg")), (V,), r"text\.jpg.*not an image"),
        Case("data.load_image", "image", "decompression bomb (400 Mpixel PNG)", lambda: load_image(img("bomb.png")), (V,), r"bomb\.png.*too large"),
        Case("data.ImageFolderDataset", "image", "corrupt file inside a dataset", lambda: _folder_with_corrupt_image()[0], (V,), r"x\.png"),
        Case("data.ImageFolderDataset", "empty", "folder without images", lambda: ImageFolderDataset(Path(tempfile.mkdtemp(dir=o()["root"]))), (FileNotFoundError,), "no image files"),
        Case("data.load_image", "image", "missing file", lambda: load_image(img("missing.png")), (FileNotFoundError,), r"missing\.png"),
        # -- configs and the trainer -----------------------------------------------------------------------------------
        Case("config.load_config", "config", "unknown key (LM)", lambda: load_config(LMRunConfig, None, ["seq_lenn=3"]), (ConfigError,), "seq_lenn"),
        Case("config.load_config", "config", "wrong type (LM)", lambda: load_config(LMRunConfig, None, ["seq_len=abc"]), (ConfigError,), "seq_len.*int"),
        Case("config.load_config", "config", "wrong bool (CAML)", lambda: load_config(TrainICLConfig, None, ["train.progress=maybe"]), (ConfigError,), "train.progress"),
        Case("config.load_config", "config", "wrong nested type (CAML)", lambda: load_config(TrainICLConfig, None, [tiny_suite, "episodes.max_shot=[1]"]), (ConfigError,), "episodes.max_shot"),
        Case("tokenizer train config", "config", "unknown key", lambda: load_train_config(None, ["model.codebook_sise=64"]), (ConfigError,), "codebook_sise"),
        Case("tokenizer train config", "config", "unknown preset", lambda: load_train_config(None, ["preset=nope"]), (ConfigError,), "preset"),
        Case("train.fit", "checkpoint", "resume with a checkpoint of another shape", _fit_resume_mismatch, (CheckpointError,), r"model\.safetensors.*lin\.weight"),
        # -- command-line verbs (in-process; the CLI prints one line naming the problem and exits 1) ----------------
        Case("cli tokenizer encode", "image", "corrupt image", lambda: _cli("tokenizer", "encode", "--model", o()["root"] / "tokenizer", img("corrupt.png"), "--out", o()["root"] / "x.npy"), (CLIError,), r"corrupt\.png"),
        Case("cli tokenizer encode", "image", "decompression bomb", lambda: _cli("tokenizer", "encode", "--model", o()["root"] / "tokenizer", img("bomb.png"), "--out", o()["root"] / "x.npy"), (CLIError,), r"bomb\.png.*too large"),
        Case("cli tokenizer encode", "checkpoint", "missing model folder", lambda: _cli("tokenizer", "encode", "--model", o()["root"] / "nope", img("corrupt.png"), "--out", o()["root"] / "x.npy"), (CLIError,), "nope"),
        Case("cli tokenizer decode", "range", "ids beyond the codebook", lambda: _cli("tokenizer", "decode", "--model", o()["root"] / "tokenizer", _npy("big.npy", np.full((1, 4, 4), 999)), "--out", o()["root"] / "dec"), (CLIError,), r"big\.npy.*\[0, 32\)"),
        Case("cli tokenizer decode", "dtype", "float ids", lambda: _cli("tokenizer", "decode", "--model", o()["root"] / "tokenizer", _npy("float.npy", np.ones((1, 4, 4))), "--out", o()["root"] / "dec"), (CLIError,), r"float\.npy.*integers"),
        Case("cli tokenizer decode", "checkpoint", "pickled .npy refused", lambda: _cli("tokenizer", "decode", "--model", o()["root"] / "tokenizer", _npy("pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True), "--out", o()["root"] / "dec"), (CLIError,), r"pickled\.npy"),
        Case("cli tokenizer train", "config", "unknown key in the YAML", lambda: _cli("tokenizer", "train", "--config", _yaml("tok.yaml", "preset: vqvae-debug\ntrain:\n  stepz: 3\n"), "--run-dir", o()["root"] / "r"), (CLIError,), "train.stepz"),
        Case("cli icl train", "config", "wrong type override", lambda: _cli("icl", "train", "--config", _CONFIGS / "icl" / "caml_debug.yaml", "--run-dir", o()["root"] / "r", "train.steps=many"), (CLIError,), "train.steps"),
        Case("cli icl predict", "image", "missing support folder", lambda: _cli("icl", "predict", "--support", o()["root"] / "nosupport", "--query", img("corrupt.png"), "--checkpoint", o()["root"] / "caml"), (CLIError,), "nosupport"),
        Case("cli lm train", "config", "wrong type override", lambda: _cli("lm", "train", "--config", _CONFIGS / "lm" / "nano_debug.yaml", "--run-dir", o()["root"] / "r", "seq_len=abc"), (CLIError,), "seq_len"),
        Case("cli lm generate", "checkpoint", "missing model folder", lambda: _cli("lm", "generate", "--checkpoint", o()["root"] / "nolm", "--prompt", "hi"), (CLIError,), "nolm"),
        Case("cli lm generate", "image", "truncated image", lambda: _cli("lm", "generate", "--checkpoint", o()["root"] / "lm", "--prompt", "<image> what is it?", "--image", img("truncated.png")), (CLIError,), r"truncated\.png"),
    ]
    return c


CASES: list[Case] = []


def all_cases() -> list[Case]:
    if not CASES:
        CASES.extend(_cases())
    return CASES
