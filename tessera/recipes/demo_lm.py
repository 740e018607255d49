"""The multimodal part of `tessera demo`: train the nano decoder on the embedded corpus, reading and writing the
codes of the rotation-trick tokenizer trained earlier in the demo, then show it captioning held-out scenes, drawing
scenes from captions and classifying in context.

Axis legend: B batch, T tokens, h w code grid.

Held-out scenes hold colour-shape pairs never seen in training. Captioning and drawing are greedy; in-context
classification ranks each class's label word by log-likelihood (`tessera.lm.evaluate.fewshot_accuracy`), chance 1/N.
The gallery (PNGs + captions) is saved in the stage folder so a rerun shows it without the model.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["LMDemoConfig", "run_lm_stage", "lm_section"]


@dataclass
class LMDemoConfig:
    """Settings of the multimodal stage (the quick/full profiles live in `tessera.recipes.demo`)."""

    preset: str = "nano"
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 512
    lr: float = 3e-3
    train_scenes: int = 6000
    test_scenes: int = 400
    glyph_train_renders: int = 4
    gallery: int = 6  # scenes captioned and captions drawn in the report
    caption_eval: int = 60  # held-out scenes scored for caption accuracy
    fewshot_episodes: int = 60  # in-context episodes per shot count
    shots: tuple[int, ...] = (1, 2)
    ways: int = 2


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def run_lm_stage(cfg: LMDemoConfig, folder: Path, tokenizer_folder: Path, seed: int, progress: bool = True) -> dict[str, Any]:
    """Train the decoder through `tessera.recipes.train_lm`, then caption, draw and classify in context."""
    from tessera.config import load_config
    from tessera.io import atomic_write_bytes
    from tessera.lm import scenes as S
    from tessera.lm.corpus import ImageRef
    from tessera.lm.data import DocumentEncoder
    from tessera.lm.evaluate import caption_accuracy, fewshot_accuracy
    from tessera.lm.generate import ModalityConstraint, generate
    from tessera.lm.pretrained import load_pretrained
    from tessera.recipes.train_lm import LMRunConfig, prepare, train_lm

    run_cfg = load_config(LMRunConfig, None, [
        f"preset={cfg.preset}", f"tokenizer.path={tokenizer_folder}", f"seq_len={cfg.seq_len}", f"batch_size={cfg.batch_size}",
        f"data.train_scenes={cfg.train_scenes}", f"data.test_scenes={cfg.test_scenes}", f"data.glyph_train_renders={cfg.glyph_train_renders}",
        f"data.seed={seed}", f"train.steps={cfg.steps}", f"train.log_every={max(1, cfg.steps // 40)}", "train.eval_every=0",
        "train.checkpoint_every=0", f"train.progress={str(progress).lower()}", "train.tensorboard=false", "train.device=cpu",
        f"train.seed={seed}", f"optim.lr={cfg.lr}", f"optim.warmup_steps={max(1, cfg.steps // 10)}", "eval_batches=1",
    ])
    print(f"lm: building the corpus ({cfg.train_scenes} training scenes) with the demo's rotation-trick tokenizer")
    processor, corpus = prepare(run_cfg)
    print(f"lm: training the {cfg.preset} decoder for {cfg.steps} steps of {cfg.batch_size}x{cfg.seq_len} tokens")
    train_lm(run_cfg, folder / "run")
    model, proc = load_pretrained(folder / "run" / "final")
    model.eval()
    vocab = proc.vocab
    enc = DocumentEncoder(corpus, vocab)
    pool = corpus.pools[("scenes", "test")]
    idx = np.random.default_rng([seed, 5]).choice(len(pool), size=min(cfg.gallery, len(pool)), replace=False)
    refs = [ImageRef("scenes", "test", int(i)) for i in idx]
    gallery = folder / "gallery"
    items = []
    with torch.inference_mode():
        # Captioning: held-out scene -> text.
        prompts = [[vocab.bos_id, *enc.segment_ids(r), *enc.segment_ids("caption:")] for r in refs]
        batch = proc.collate(prompts)
        out = generate(model, batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=48, stop_tokens=[vocab.eos_id],
                       constraint=ModalityConstraint(vocab, proc.image_tokens, allow_images=False))
        captions = [vocab.decode_text(out.tokens[b, : int(out.lengths[b])].tolist()).strip() for b in range(len(refs))]
        # Drawing: the true caption of the same scene -> image (one well-formed image block, decoded by the tokenizer).
        prompts = [[vocab.bos_id, *enc.segment_ids("draw: " + S.caption(corpus.scene(r)))] for r in refs]
        batch = proc.collate(prompts)
        out = generate(model, batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=proc.image_tokens + 2,
                       stop_tokens=[vocab.eos_id], constraint=ModalityConstraint(vocab, proc.image_tokens, force_image=True, stop_after_image=True))
        h, w = proc.grid
        codes = vocab.ids_to_codes(out.tokens[:, 1 : 1 + h * w]).reshape(len(refs), h, w)
        drawn = proc.decode_codes(codes)
    for k, r in enumerate(refs):
        atomic_write_bytes(gallery / f"scene_{k}.png", _png(corpus.image(r)))
        atomic_write_bytes(gallery / f"drawn_{k}.png", _png(_to_uint8(drawn[k])))
        items.append({"true_caption": S.caption(corpus.scene(r)), "model_caption": captions[k]})
    print("lm: scoring captions and in-context classification on held-out scenes")
    cap = caption_accuracy(model, proc, corpus, n=cfg.caption_eval, seed=seed)
    few = fewshot_accuracy(model, proc, corpus, shots=cfg.shots, ways=cfg.ways, episodes=cfg.fewshot_episodes, seed=seed)
    (gallery / "items.json").write_text(json.dumps(items, indent=1))
    params = model.num_parameters()
    return {"run_dir": str(folder / "run"), "gallery": items, "caption": cap, "fewshot": few, "parameters": int(params),
            "image_tokens": int(proc.image_tokens)}


def _binomial_ci(p: float, n: int) -> float:
    return 100 * 1.96 * math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def lm_section(report: Any, ctx: dict[str, Any]) -> None:
    """Report section: training curves, a captioning / drawing gallery and in-context classification accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from tessera.train.log import read_metrics_csv

    stage = ctx.get("lm")
    sec = report.section("Multimodal model: captions, generated images, in-context classification")
    if stage is None:
        sec.paragraph("This stage was not run (see the settings section).")
        return
    cfg: LMDemoConfig = stage["config"]
    res = stage["result"]
    folder = Path(stage["folder"])
    sec.paragraph(
        f"A {cfg.preset} decoder ({res['parameters'] / 1e6:.2f}M parameters) trained for {cfg.steps} steps of {cfg.batch_size} x "
        f"{cfg.seq_len} tokens on the embedded corpus (procedural scenes with captions and questions, glyphs, few-shot episodes "
        f"with fresh label words; {cfg.train_scenes} training scenes). Images enter and leave as {res['image_tokens']} codes of the "
        "rotation-trick tokenizer trained above. Held-out scenes contain colour-shape pairs never seen in training. "
        "Captions and drawings are greedy; drawing is constrained to one well-formed image block."
    )
    rows = []
    thumbs = []
    for k, item in enumerate(res["gallery"]):
        rows.append([k + 1, item["true_caption"], item["model_caption"] or "(empty)"])
        thumbs.append((folder / "gallery" / f"scene_{k}.png", folder / "gallery" / f"drawn_{k}.png"))
    if thumbs:
        fig, axes = plt.subplots(2, len(thumbs), figsize=(1.5 * len(thumbs), 3.2), squeeze=False)
        for k, (scene, drawn) in enumerate(thumbs):
            for row, path in enumerate((scene, drawn)):
                ax = axes[row][k]
                ax.imshow(np.asarray(Image.open(path)), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            axes[0][k].set_title(str(k + 1), fontsize=8)
        axes[0][0].set_ylabel("held-out scene", fontsize=8)
        axes[1][0].set_ylabel("drawn from\nits caption", fontsize=8)
        fig.tight_layout()
        sec.figure(fig, caption="Top: held-out scenes the model captioned. Bottom: images the model generated from each scene's true caption.")
    sec.table(["#", "true caption", "model's caption"], rows, caption="Generated captions of the held-out scenes above.")
    cap, few = res["caption"], res["fewshot"]
    n_cap = int(cap["n"])
    table = [["caption attribute accuracy (%)", f"{100 * cap['attribute_accuracy']:.1f}", f"{100 * cap['chance']:.1f}", n_cap],
             ["caption exact match (%)", f"{100 * cap['exact_match']:.1f} ± {_binomial_ci(cap['exact_match'], n_cap):.1f}", "-", n_cap]]
    n_ep = int(few["episodes"])
    for shot in cfg.shots:
        p = few[f"{shot}-shot"]
        table.append([f"in-context classification, {cfg.ways}-way {shot}-shot (%)", f"{100 * p:.1f} ± {_binomial_ci(p, n_ep):.1f}",
                      f"{100 * few['chance']:.0f}", n_ep])
    sec.table(["measure (held-out split)", "model", "chance", "n"], table,
              caption="In-context classification: support images labelled with made-up words, then a query; the model's answer is "
                      "the label word it finds most likely. ± is a 95% binomial interval.")
    csv = Path(res["run_dir"]) / "metrics.csv"
    if csv.is_file():
        rows_csv = [r for r in read_metrics_csv(csv) if "text_ce" in r and "image_ce" in r and "loss" in r]
        if rows_csv:
            fig, ax = plt.subplots(figsize=(5, 3))
            steps = [r["step"] for r in rows_csv]
            ax.plot(steps, [r["text_ce"] for r in rows_csv], label="text tokens")
            ax.plot(steps, [r["image_ce"] for r in rows_csv], label="image codes")
            ax.set_xlabel("step", fontsize=8)
            ax.set_title("decoder training cross-entropy", fontsize=9)
            ax.legend(fontsize=8)
            fig.tight_layout()
            sec.figure(fig, caption="Decoder training curves (per-token cross-entropy by modality).")
    sec.paragraph("Reproduce at full scale: tessera lm train --config configs/lm/nano.yaml; evaluation: benchmarks/lm_eval.py.")
