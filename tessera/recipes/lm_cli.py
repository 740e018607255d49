"""`tessera lm <verb>`: train, distill, quantize, generate, eval, presets, build-text-tokenizer.

    tessera lm train     --config configs/lm/nano.yaml [a.b=c ...] [--resume] [--run-dir DIR]
    tessera lm distill   --config configs/lm/distill/nano_from_ultra.yaml [a.b=c ...] [--resume] [--run-dir DIR]
    tessera lm quantize  --checkpoint DIR --bits 4 [--group-size 32] [--no-embeddings] --out DIR
    tessera lm generate  --checkpoint DIR --prompt "caption:" [--image path ...] [--draw] [--out DIR]
                         [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop TOKEN ...]
    tessera lm eval      --checkpoint DIR [--quick] [--json FILE]
    tessera lm sft       --config configs/lm/post/sft_nano.yaml [a.b=c ...] [--resume] [--run-dir DIR]
    tessera lm reward    --config configs/lm/post/reward_nano.yaml [...]
    tessera lm prefer    --method dpo|rloo --config configs/lm/post/dpo_nano.yaml [...]
    tessera lm chat      --checkpoint DIR --prompt "<image>how many shapes are there?" --image scene.png
    tessera lm model-card --run RUN_DIR [--results docs/results/post_training.json] [--out docs/model_card.md]
    tessera lm presets
    tessera lm build-text-tokenizer [--out FILE]
    tessera lm audio-build [--steps N] [--debug]      (the espeak-ng spoken corpus + the audio tokenizer, cached)

In `--prompt`, each `<image>` marks where the next `--image` goes (without markers the images come first), and
likewise `<audio>` for `--audio` (a WAV/FLAC/OGG file, read as 16 kHz mono) and `<video>` for `--video` (a `.npy`
(T, H, W, C) uint8 clip, an animated GIF or a folder of frames); special
tokens such as `<boi>` or `<start_of_turn>` are recognised, unknown `<name>` tokens are an error. Text is printed as it
is generated; every image the model writes is decoded by the image tokenizer and saved as PNG in `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lm", help="train and use the multimodal decoders (nano/pro/ultra)")
    sub = p.add_subparsers(dest="verb", metavar="<verb>")
    p.set_defaults(handler=lambda args: p.print_help() or 2)

    t = sub.add_parser("train", help="train a decoder from a YAML config")
    t.add_argument("--config", required=True, help="YAML run file (configs/lm/*.yaml)")
    t.add_argument("overrides", nargs="*", help="a.b=c overrides, e.g. train.steps=100 preset=pro")
    t.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in the run folder")
    t.add_argument("--run-dir", default=None, help="run folder (default runs/lm/<config name>)")
    t.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    t.set_defaults(handler=_train)

    d = sub.add_parser("distill", help="train a student on a teacher's logits (KL) from a YAML config")
    d.add_argument("--config", required=True, help="YAML run file (configs/lm/distill/*.yaml)")
    d.add_argument("overrides", nargs="*", help="a.b=c overrides, e.g. teacher.path=runs/lm/ultra/final distill.top_k=64")
    d.add_argument("--resume", action="store_true", help="continue the student from its newest intact checkpoint")
    d.add_argument("--run-dir", default=None, help="run folder (default runs/lm/distill/<config name>)")
    d.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    d.set_defaults(handler=_distill)

    q = sub.add_parser("quantize", help="int8 / int4 weight quantization of a model folder")
    q.add_argument("--checkpoint", required=True, help="float model folder (e.g. runs/lm/nano/final)")
    q.add_argument("--bits", type=int, choices=(8, 4), default=8)
    q.add_argument("--group-size", type=int, default=32, help="input features per int4 scale (default 32)")
    q.add_argument("--no-embeddings", action="store_true", help="keep the token embedding table in float")
    q.add_argument("--out", required=True, help="output model folder (readable by generate/eval)")
    q.set_defaults(handler=_quantize)

    g = sub.add_parser("generate", help="continue an interleaved text/image prompt")
    g.add_argument("--checkpoint", required=True, help="model folder (e.g. runs/lm/nano/final)")
    g.add_argument("--prompt", default="", help="text; <image> marks where each --image goes")
    g.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    g.add_argument("--audio", action="append", default=[], help="speech file, WAV/FLAC/OGG (repeatable; <audio> marks where)")
    g.add_argument("--video", action="append", default=[], help=".npy clip, animated GIF or folder of frames (repeatable; <video>)")
    g.add_argument("--draw", action="store_true", help="answer with exactly one image (constrained decoding)")
    g.add_argument("--no-images", action="store_true", help="never open an image block (text-only answer)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop", action="append", default=[], help="extra stop token, e.g. <end_of_turn> (repeatable)")
    g.add_argument("--out", default="generated", help="folder for generated images (default ./generated)")
    g.set_defaults(handler=_generate)

    e = sub.add_parser("eval", help="caption, VQA, generation and few-shot metrics of a model folder")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--quick", action="store_true", help="fewer items (a minute or two)")
    e.add_argument("--json", default=None, help="write the metrics here")
    e.set_defaults(handler=_eval)

    _register_posttrain(sub)

    pr = sub.add_parser("presets", help="list decoder presets with their parameter counts")
    pr.set_defaults(handler=_presets)

    b = sub.add_parser("build-text-tokenizer", help="retrain the SentencePiece text model from the corpus generators")
    b.add_argument("--out", default=None, help="output .model file (default: the packaged asset)")
    b.set_defaults(handler=_build_text_tokenizer)

    a = sub.add_parser("audio-build", help="synthesise the spoken corpus with espeak-ng and train the audio tokenizer (cached)")
    a.add_argument("--steps", type=int, default=400, help="audio tokenizer training steps (default 400)")
    a.add_argument("--codebook-size", type=int, default=256)
    a.add_argument("--debug", action="store_true", help="a tiny corpus (2 speakers per split, 1 render per text)")
    a.set_defaults(handler=_audio_build)


def _train(args: argparse.Namespace) -> int:
    from tessera.config import load_config
    from tessera.paths import runs_dir
    from tessera.recipes.train_lm import LMRunConfig, train_lm
    from tessera.train.runtime import is_main_process, shutdown

    cfg = load_config(LMRunConfig, args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else runs_dir("lm", Path(args.config).stem)
    print(f"lm: preset {cfg.preset}, {cfg.train.steps} steps of {cfg.batch_size}x{cfg.seq_len} tokens; run folder {run_dir}")
    result = train_lm(cfg, run_dir, resume=args.resume, stop_after=args.stop_after)
    main_rank = is_main_process()
    shutdown()
    if not main_rank:  # under torchrun only rank 0 reports
        return 0
    if result.step == cfg.train.steps:
        print(f"eval: {json.dumps({k: round(v, 4) for k, v in result.eval_metrics.items()})}")
        print(f"saved model to {run_dir / 'final'}")
    else:
        print(f"stopped at step {result.step}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from tessera.config import load_config
    from tessera.paths import runs_dir
    from tessera.recipes.distill_lm import DistillRunConfig, distill_lm

    cfg = load_config(DistillRunConfig, args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else runs_dir("lm", "distill", Path(args.config).stem)
    teacher = cfg.teacher.path or f"{cfg.teacher.preset} trained here for {cfg.teacher.steps} steps"
    print(f"lm distill: student {cfg.preset}, teacher {teacher}; {cfg.train.steps} steps of {cfg.batch_size}x{cfg.seq_len} "
          f"tokens; run folder {run_dir}")
    result = distill_lm(cfg, run_dir, resume=args.resume, stop_after=args.stop_after)
    if result.step == cfg.train.steps:
        print(f"eval: {json.dumps({k: round(v, 4) for k, v in result.eval_metrics.items()})}")
        print(f"saved student to {run_dir / 'final'}")
    else:
        print(f"stopped at step {result.step}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    import shutil

    from tessera.lm.model import Decoder
    from tessera.lm.quantize import is_quantized_folder, quantize_model, save_quantized, weight_bytes

    src, out = Path(args.checkpoint), Path(args.out)
    if not src.is_dir():
        raise FileNotFoundError(f"model folder not found: {src}")
    if is_quantized_folder(src):
        raise ValueError(f"{src} is already quantized; quantize the float model folder")
    if out.resolve() == src.resolve():
        raise ValueError("--out must differ from --checkpoint (the float model is kept)")
    model = Decoder.from_pretrained(src)
    q = quantize_model(model, bits=args.bits, group_size=args.group_size, embeddings=not args.no_embeddings)
    out.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():  # the vocabulary, processor and image tokenizer travel with the weights
        if item.name in ("config.json", "model.safetensors"):
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, out / item.name)
    save_quantized(q, out)
    before, after = (src / "model.safetensors").stat().st_size, (out / "model.safetensors").stat().st_size
    print(f"int{args.bits}: weights {weight_bytes(model) / 1e6:.2f} MB -> {weight_bytes(q) / 1e6:.2f} MB in memory; "
          f"file {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB ({after / before:.1%}); saved to {out}")
    return 0


def _prompt_items(prompt: str, image_paths: list[str], audio_paths: list[str] = (), video_paths: list[str] = ()) -> list:
    if audio_paths or video_paths or "<audio>" in prompt or "<video>" in prompt:
        return _media_items(prompt, image_paths, list(audio_paths), list(video_paths))
    return _image_items(prompt, image_paths)


def _media_items(prompt: str, image_paths: list[str], audio_paths: list[str], video_paths: list[str]) -> list:
    """Prompt text split at <image>/<audio>/<video> markers, each replaced by the next file of its kind."""
    import re

    from tessera.lm.audio import AudioClip
    from tessera.lm.video import VideoClip, load_video

    images = [x for x in _image_items("", image_paths) if not isinstance(x, str)]
    media = {"image": images, "audio": [AudioClip.from_file(p) for p in audio_paths],
             "video": [VideoClip(load_video(p)) for p in video_paths]}
    parts = re.split(r"<(image|audio|video)>", prompt)
    markers = parts[1::2]
    for kind, files in media.items():
        n = markers.count(kind)
        if n != len(files) and not (n == 0 and kind == "image"):
            raise ValueError(f"the prompt has {n} <{kind}> markers but {len(files)} --{kind} files were given")
    items: list = [] if "image" in markers else list(images)
    used = {k: 0 for k in media}
    for i, text in enumerate(parts):
        if i % 2 == 0:
            if text:
                items.append(text)
        else:
            items.append(media[text][used[text]])
            used[text] += 1
    return items


def _image_items(prompt: str, image_paths: list[str]) -> list:
    from PIL import Image, UnidentifiedImageError

    images = []
    for p in image_paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc
    from tessera.lm.processor import place_images

    return place_images(prompt, images, "--image files were given")


def _generate(args: argparse.Namespace) -> int:
    import torch

    from tessera.lm.detokenize import detokenize_stream
    from tessera.lm.generate import ModalityConstraint, SamplingConfig, stream_generate
    from tessera.lm.pretrained import load_pretrained

    model, proc = load_pretrained(args.checkpoint)
    vocab = proc.vocab
    items = _prompt_items(args.prompt, args.image, args.audio, args.video)
    if not items:
        raise ValueError("give a --prompt and/or --image / --audio / --video")
    enc = proc.encode(items, add_bos=True)
    stops = [vocab.eos_id] + [vocab.token_id(s) for s in args.stop]
    constraint = ModalityConstraint(vocab, proc.image_tokens, allow_images=not args.no_images, force_image=args.draw,
                                    stop_after_image=args.draw)
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
    out_dir = Path(args.out)
    gen = stream_generate(model, torch.tensor([enc.ids]), patches=enc.patches, max_new_tokens=args.max_new_tokens,
                          sampling=sampling, stop_tokens=stops, constraint=constraint,
                          generator=torch.Generator().manual_seed(args.seed))
    saved = 0
    for piece in detokenize_stream((int(t[0]) for t in gen), proc, stops):
        if piece.kind == "text":
            sys.stdout.write(piece.text)
            sys.stdout.flush()
        elif piece.kind == "image":
            path = _save_png(piece.image, out_dir / f"image_{saved:03d}.png")
            saved += 1
            print(f"\n[image saved to {path}]", flush=True)
        else:
            print(f"\n[incomplete image block of {piece.codes} codes: max-new-tokens reached]")
    print()
    return 0


def _save_png(image, path: Path) -> Path:
    import io

    import numpy as np
    from PIL import Image

    from tessera.lm._io import atomic_write_bytes

    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _eval(args: argparse.Namespace) -> int:
    from tessera.config import from_dict
    from tessera.lm.corpus import CorpusConfig, build_corpus
    from tessera.lm.evaluate import caption_accuracy, fewshot_accuracy, vqa_accuracy
    from tessera.lm.pretrained import load_pretrained
    from tessera.paths import cache_dir

    folder = Path(args.checkpoint)
    model, proc = load_pretrained(folder)
    run_cfg = folder.parent / "config.yaml"
    data = CorpusConfig()
    if run_cfg.is_file():  # a run's final/ folder: evaluate on the run's own corpus settings
        import yaml

        data = from_dict(CorpusConfig, yaml.safe_load(run_cfg.read_text())["data"], prefix="data")
    modal = [k for k in ("video", "audio", "spoken_vqa") if data.uses(k)]
    if modal:  # video clips and the spoken corpus are built by the recipe (cached), with the run's own settings
        from tessera.config import load_config
        from tessera.recipes.train_lm import LMRunConfig, prepare

        _, corpus = prepare(load_config(LMRunConfig, run_cfg), proc.image_tokenizer)
    else:
        corpus = build_corpus(data, proc.image_tokenizer, tokenizer_id=_tokenizer_digest(folder / "image_tokenizer"),
                              cache=cache_dir("lm", "corpus"))
    n = 60 if args.quick else 300
    metrics = {
        "caption": caption_accuracy(model, proc, corpus, n=n),
        "vqa": vqa_accuracy(model, proc, corpus, n=n),
        "fewshot": fewshot_accuracy(model, proc, corpus, episodes=n // 3 if args.quick else 100),
    }
    if modal:
        from tessera.lm.evaluate_modalities import spoken_vqa_accuracy, spoken_word_accuracy, video_qa_accuracy

        if data.uses("video"):
            metrics["video_qa"] = video_qa_accuracy(model, proc, corpus, n=n)
        if data.uses("audio"):
            metrics["spoken_word"] = spoken_word_accuracy(model, proc, corpus, n=n)
        if data.uses("spoken_vqa"):
            metrics["spoken_vqa"] = spoken_vqa_accuracy(model, proc, corpus, n=n)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.json:
        from tessera.lm._io import atomic_write_json

        atomic_write_json(args.json, metrics)
    return 0


def _tokenizer_digest(folder: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            digest.update(f.name.encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def _presets(args: argparse.Namespace) -> int:
    import torch

    from tessera.lm.model import PRESETS, Decoder
    from tessera.lm.vocab import Vocabulary

    vocab_size = Vocabulary.default(512).size
    print(f"{'preset':<12} {'layers':>6} {'d':>5} {'heads':>5} {'kv':>3} {'params':>14} {'non-embedding':>14}")
    for name, cfg in PRESETS.items():
        if not name.startswith("gemma"):
            from dataclasses import replace

            cfg = replace(cfg, vocab_size=vocab_size)
        with torch.device("meta"):
            m = Decoder(cfg)
        print(f"{name:<12} {cfg.num_layers:>6} {cfg.embed_dim:>5} {cfg.num_heads:>5} {cfg.num_kv_heads:>3} "
              f"{m.num_parameters():>14,} {m.num_parameters(True):>14,}")
    return 0


def _build_text_tokenizer(args: argparse.Namespace) -> int:
    from tessera.lm.corpus import build_text_tokenizer
    from tessera.lm.vocab import DEFAULT_TEXT_MODEL
    from tessera.paths import package_asset

    out = Path(args.out) if args.out else package_asset(*DEFAULT_TEXT_MODEL.split("/"))
    record = build_text_tokenizer(out)
    print(f"wrote {out} (sha256 {record['sha256'][:16]}..., sentencepiece {record['sentencepiece']})")
    return 0


# -- post-training (tessera.recipes.posttrain) -------------------------------------------------------------------------
def _register_posttrain(sub: argparse._SubParsersAction) -> None:
    helps = {
        "sft": "supervised chat tuning (loss on model turns only) from a pretrained model folder",
        "reward": "train a reward model (Bradley-Terry on preference pairs) from the SFT model",
        "prefer": "preference optimisation from the SFT model: --method dpo (pairs) or rloo (against the reward model)",
    }
    for verb, text in helps.items():
        q = sub.add_parser(verb, help=text)
        q.add_argument("--config", required=True, help="YAML run file (configs/lm/post/*.yaml)")
        q.add_argument("overrides", nargs="*", help="a.b=c overrides, e.g. init=runs/lm/nano/final train.steps=50")
        if verb == "prefer":
            q.add_argument("--method", choices=("dpo", "rloo"), required=True)
        q.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in the run folder")
        q.add_argument("--run-dir", default=None, help="run folder (default runs/lm/post/<config name>)")
        q.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
        q.set_defaults(handler=_posttrain, stage=verb)
    c = sub.add_parser("chat", help="one chat turn with a post-trained model, behind the safety layer")
    c.add_argument("--checkpoint", required=True, help="model folder or run folder (e.g. runs/lm/post/rloo_nano)")
    c.add_argument("--prompt", required=True, help="the user turn; <image> marks where each --image goes")
    c.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    c.add_argument("--max-new-tokens", type=int, default=64)
    c.add_argument("--out", default="generated", help="folder for images the model draws")
    c.set_defaults(handler=_chat)
    m = sub.add_parser("model-card", help="write docs/model_card.md from a post-trained run and the benchmark results")
    m.add_argument("--run", required=True, help="model folder (or run folder with final/) of the deployed model")
    m.add_argument("--results", default="docs/results/post_training.json", help="benchmarks/post_training.py JSON")
    m.add_argument("--out", default="docs/model_card.md")
    m.set_defaults(handler=_model_card)


def _posttrain(args: argparse.Namespace) -> int:
    from tessera.paths import runs_dir
    from tessera.recipes.posttrain import load_posttrain_config, run_prefer, run_reward, run_sft

    cfg = load_posttrain_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else runs_dir("lm", "post", Path(args.config).stem)
    stage = args.stage if args.stage != "prefer" else args.method
    print(f"lm {stage}: from {cfg.init or f'a fresh {cfg.preset} decoder'}, {cfg.train.steps} steps; run folder {run_dir}")
    if args.stage == "sft":
        result = run_sft(cfg, run_dir, resume=args.resume, stop_after=args.stop_after)
    elif args.stage == "reward":
        result = run_reward(cfg, run_dir, resume=args.resume, stop_after=args.stop_after)
    else:
        result = run_prefer(cfg, run_dir, args.method, resume=args.resume, stop_after=args.stop_after)
    if result.step == cfg.train.steps:
        print(f"eval: {json.dumps({k: round(v, 4) for k, v in result.eval_metrics.items()})}")
        print(f"saved model to {run_dir / 'final'}")
    else:
        print(f"stopped at step {result.step}")
    return 0


def _model_card(args: argparse.Namespace) -> int:
    from tessera.recipes.model_card import write_model_card

    out = write_model_card(args.run, args.results, args.out)
    print(f"wrote {out}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    import torch

    from tessera.lm.safety import load_safe_chat

    chat = load_safe_chat(args.checkpoint, max_new_tokens=args.max_new_tokens)
    images = _prompt_items("", args.image)  # reads and checks the files
    saved = 0
    for chunk in chat.chat([{"role": "user", "content": args.prompt}], images=images):
        if isinstance(chunk, torch.Tensor):
            path = _save_png(chunk, Path(args.out) / f"image_{saved:03d}.png")
            saved += 1
            print(f"\n[image saved to {path}]", flush=True)
        else:
            sys.stdout.write(chunk)
            sys.stdout.flush()
    print()
    return 0


def _audio_build(args: argparse.Namespace) -> int:
    from tessera.lm.audio import AudioTokenizerConfig, SpokenCorpusConfig, ensure_audio_tokenizer

    cfg = SpokenCorpusConfig()
    if args.debug:
        cfg = SpokenCorpusConfig(accents=("en-us", "en-gb"), variants=("m1", "f2"), test_speakers=2, word_train_renders=1,
                                 word_test_renders=1, question_train_renders=1, question_test_renders=1)
    tok, corpus, ident = ensure_audio_tokenizer(cfg, AudioTokenizerConfig(codebook_size=args.codebook_size), steps=args.steps)
    n = {s: sum(it["split"] == s for it in corpus.items) for s in ("train", "test")}
    seconds = sum(len(w) for w in corpus.waveforms) / 16000
    tokens = sum(len(c) for c in corpus.codes)
    print(f"spoken corpus: {len(corpus.items)} clips ({n['train']} train, {n['test']} test; {seconds / 60:.1f} min of speech), "
          f"{len(corpus.texts('word'))} words, {len(corpus.texts('question'))} questions; "
          f"train speakers {', '.join(cfg.speakers('train'))}; held-out speakers {', '.join(cfg.speakers('test'))}")
    print(f"audio tokenizer {ident}: {tok.config.codebook_size} codes, {tokens / max(1, len(corpus.items)):.1f} tokens per clip")
    return 0
