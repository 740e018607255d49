"""`tessera tokenizer <verb>`: train, eval, encode, decode, presets.

    tessera tokenizer train   --config configs/tokenizer/vqvae_f4_32px.yaml [a.b=c ...] [--resume] [--run-dir DIR]
    tessera tokenizer eval    --model RUN_OR_FOLDER [--data skimage|embedded|folder:PATH|sprites] [--num N] [--frechet auto]
    tessera tokenizer encode  --model FOLDER IMAGE_OR_FOLDER ... --out tokens.npy
    tessera tokenizer decode  --model FOLDER tokens.npy --out DIR
    tessera tokenizer presets

Handlers raise ValueError/FileNotFoundError with messages that name the file or key; the CLI prints them as one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tokenizer", help="train, evaluate and use image/video tokenizers")
    sub = p.add_subparsers(dest="verb", metavar="<verb>")
    p.set_defaults(handler=lambda args: p.print_help() or 2)

    t = sub.add_parser("train", help="train a tokenizer from a YAML config")
    t.add_argument("--config", required=True, help="YAML run file (configs/tokenizer/*.yaml)")
    t.add_argument("overrides", nargs="*", help="a.b=c overrides, e.g. train.steps=100 model.estimator=ste")
    t.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in the run folder")
    t.add_argument("--run-dir", default=None, help="run folder (default runs/tokenizer/<config name>)")
    t.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    t.set_defaults(handler=_train)

    e = sub.add_parser("eval", help="held-out metrics and a reconstruction grid of a saved tokenizer")
    e.add_argument("--model", required=True, help="tokenizer folder (config.json + model.safetensors) or run folder")
    e.add_argument("--data", default="embedded", help="embedded (default), skimage, sprites, or folder:PATH")
    e.add_argument("--num", type=int, default=512, help="validation items (default 512)")
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--frechet", default="auto", help="auto, none, inception, or a feature network (e.g. tessera-resnet-s)")
    e.add_argument("--grid", default=None, help="write a reconstruction grid PNG here")
    e.add_argument("--json", default=None, help="write the metrics as JSON here")
    e.set_defaults(handler=_eval)

    enc = sub.add_parser("encode", help="encode image files to token ids (.npy)")
    enc.add_argument("--model", required=True)
    enc.add_argument("inputs", nargs="+", help="image files or folders of images")
    enc.add_argument("--out", required=True, help="output .npy file: int64 (N, h, w); file names go to <out>.json")
    enc.set_defaults(handler=_encode)

    dec = sub.add_parser("decode", help="decode token ids (.npy) to PNG images")
    dec.add_argument("--model", required=True)
    dec.add_argument("tokens", help=".npy file of int token ids (N, h, w) or (h, w)")
    dec.add_argument("--out", required=True, help="output folder for <i>.png")
    dec.set_defaults(handler=_decode)

    pr = sub.add_parser("presets", help="list the model presets")
    pr.set_defaults(handler=_presets)


def _train(args: argparse.Namespace) -> int:
    from tessera.paths import runs_dir
    from tessera.recipes.train_tokenizer import describe, dump_metrics, load_train_config, train
    from tessera.train.runtime import is_main_process, shutdown

    cfg = load_train_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else runs_dir("tokenizer", Path(args.config).stem)
    print(f"tokenizer: {describe(cfg)}; run folder {run_dir}")
    result, metrics = train(cfg, run_dir, resume=args.resume, stop_after=args.stop_after)
    main_rank = is_main_process()
    shutdown()
    if not main_rank:  # under torchrun only rank 0 reports
        return 0
    if metrics:
        print(dump_metrics(metrics))
        print(f"saved tokenizer to {run_dir / 'final'}")
    else:
        print(f"stopped at step {result.step}")
    return 0


def _data_from_arg(spec: str, tok) -> object:
    from tessera.recipes.tokenizer_data import DataConfig, load_split

    cfg = tok.config
    if spec.startswith("folder:"):
        data = DataConfig(source="folder", folder=spec.split(":", 1)[1], val_folder=spec.split(":", 1)[1])
    elif spec in ("embedded", "skimage", "sprites"):
        data = DataConfig(source=spec)
    else:
        raise ValueError(f"--data must be embedded, skimage, sprites or folder:PATH, got {spec!r}")
    return data, load_split(data, "val", cfg.image_size, video=cfg.family == "video", frames=cfg.num_frames)


def _eval(args: argparse.Namespace) -> int:
    from tessera.recipes.train_tokenizer import _LazyFloat
    from tessera.tokenizer import load_tokenizer
    from tessera.tokenizer.metrics import evaluate_tokenizer, resolve_fid_network, save_reconstruction_grid

    tok = load_tokenizer(args.model)
    _, items = _data_from_arg(args.data, tok)
    net, key = resolve_fid_network(args.frechet)
    res = evaluate_tokenizer(
        tok, _LazyFloat(items[: args.num]), batch_size=args.batch_size, feature_network=net, feature_key=key or "fd", keep=16
    )
    metrics = {k: v for k, v in res.items() if not k.startswith("_")}
    if key and key != "rfid":
        metrics["frechet_note"] = f"Frechet distance on {key[3:]} features (not Inception: not an FID)"
    text = json.dumps(metrics, indent=2, sort_keys=True)
    print(text)
    if args.json:
        from tessera.io import atomic_write_bytes

        atomic_write_bytes(args.json, (text + "\n").encode())
    if args.grid:
        save_reconstruction_grid(res["_originals"], res["_recons"], args.grid)
        print(f"wrote {args.grid}")
    return 0


def _image_files(inputs: list[str]) -> list[Path]:
    from tessera.recipes.tokenizer_data import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"{path}: no image files in this folder")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"image file not found: {path}")
    return files


def _encode(args: argparse.Namespace) -> int:
    import numpy as np

    from tessera.io import atomic_write_bytes
    from tessera.recipes.tokenizer_data import load_image_file
    from tessera.tokenizer import ImageTokenizer

    tok = ImageTokenizer.from_pretrained(args.model)
    files = _image_files(args.inputs)
    images = [load_image_file(f) for f in files]  # each error names its file
    tokens = tok.encode(images).cpu().numpy().astype(np.int64)
    out = Path(args.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out must end in .npy, got {out}")
    import io

    buf = io.BytesIO()
    np.save(buf, tokens, allow_pickle=False)
    atomic_write_bytes(out, buf.getvalue())
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps({"files": [str(f) for f in files], "shape": list(tokens.shape)}, indent=2) + "\n").encode())
    print(f"encoded {len(files)} image(s) -> {out} {tuple(tokens.shape)} (codebook {tok.config.codebook_size})")
    return 0


def _decode(args: argparse.Namespace) -> int:
    import io

    import numpy as np
    import torch
    from PIL import Image

    from tessera.io import atomic_write_bytes
    from tessera.tokenizer import ImageTokenizer

    tok = ImageTokenizer.from_pretrained(args.model)
    path = Path(args.tokens)
    if not path.is_file():
        raise FileNotFoundError(f"token file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy array of token ids ({type(exc).__name__}: {exc})") from exc
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: token ids must be integers, got dtype {arr.dtype}")
    try:
        images = tok.decode(torch.from_numpy(arr.astype(np.int64)))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        arr8 = (img.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr8).save(buf, format="PNG")
        atomic_write_bytes(out / f"{i:05d}.png", buf.getvalue())  # a crash never leaves a half-written image
    print(f"decoded {len(images)} image(s) -> {out}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from tessera.tokenizer import TokenizerConfig
    from tessera.tokenizer.config import PRESETS

    for name in sorted(PRESETS):
        c = TokenizerConfig.from_name(name)
        print(f"{name:26s} {c.family:10s} {c.image_size:4d}px -> {c.grid_size[0]}x{c.grid_size[1]} (f={c.downsample_factor}), K={c.codebook_size}")
    return 0
