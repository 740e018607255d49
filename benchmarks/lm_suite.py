"""The capability suite: every capability of the multimodal decoders, side by side for each model, with chance lines.

    python benchmarks/lm_suite.py                     # quick profile (the default): short training, small eval sets
    python benchmarks/lm_suite.py --profile full      # configs/lm/modalities.yaml as written, larger eval sets
    python benchmarks/lm_suite.py --distilled runs/lm/distill/final --int8 DIR --int4 DIR --caml DIR

Writes docs/results/lm_suite.md, lm_suite.json and lm_suite.png.

Rows (all on held-out items: test scenes with unseen colour-shape pairs, test clips, speakers never heard in training,
test label words): captioning (attribute slots), VQA, caption-to-image (probe fidelity of drawn images), video QA
(direction / count / order), spoken-word recognition, spoken question about an image, long-context key-value retrieval,
few-shot in-context classification with interleaved images (2-way, 1 and 3 shots, scenes and glyphs).

Columns: nano / pro / ultra trained here from `configs/lm/modalities.yaml` (same data, same steps; runs reused when
their config matches), then distilled nano, int8 nano and int4 nano. The int8 / int4 columns quantize the nano trained
here with `tessera.lm.quantize.quantize_model` when that module exists (or load `--int8/--int4` folders); the distilled
column needs `--distilled` (a model folder from `tessera lm distill`, with this suite's vocabulary); long-context
retrieval uses `tessera.lm.longcontext.retrieval_accuracy` when it exists. Anything unavailable is reported as
"not run", never estimated.

Few-shot side by side: the same episodes (same images, same seeds) answered by each LM (label log-likelihood) and by
CAML on a frozen extractor's features: a checkpoint given with `--caml`, or else a caml-xs trained here on
tessera-resnet-s features of episodes from the LM corpus' *train* pools (the LMs' own training images), plus the
training-free prototype classifier on the same features as a reference.

`--reuse` takes the LM columns from an earlier docs/results/lm_suite.json of the same profile and config instead of
evaluating them again (to add or redo the CAML comparison or a late column).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tessera.config import load_config, to_dict  # noqa: E402
from tessera.lm.corpus import episode  # noqa: E402
from tessera.lm.data import DocumentEncoder  # noqa: E402
from tessera.lm.evaluate import caption_accuracy, generation_fidelity, score_continuations, vqa_accuracy  # noqa: E402
from tessera.lm.evaluate_modalities import spoken_vqa_accuracy, spoken_word_accuracy, video_qa_accuracy  # noqa: E402
from tessera.lm.pretrained import load_pretrained  # noqa: E402
from tessera.recipes.reuse import train_or_reuse  # noqa: E402
from tessera.recipes.train_lm import LMRunConfig, prepare, train_lm  # noqa: E402

SIZES = ("nano", "pro", "ultra")
COLUMNS = ("nano", "pro", "ultra", "distilled nano", "int8 nano", "int4 nano")
ROWS = ("captioning", "VQA", "caption-to-image", "video QA", "spoken-word recognition", "spoken question about an image",
        "long-context retrieval", "few-shot in-context classification")
PROFILES: dict[str, dict[str, Any]] = {
    # Sized for a shared 2-core machine: a 150-step image tokenizer on a 3000-scene corpus (the same settings, hence
    # the same cached tokenizer, as benchmarks/post_training.py's quick profile), 20 LM steps of 4 x 512 tokens, small
    # eval sets. A plumbing check of every row and column, not a measure of what the models can learn.
    "quick": dict(caml_steps=100, overrides=["train.steps=20", "batch_size=4", "train.eval_every=0", "train.checkpoint_every=10",
                             "optim.warmup_steps=4", "tokenizer.steps=150", "audio.steps=150", "data.train_scenes=3000",
                             "data.test_scenes=400", "data.glyph_train_renders=1", "data.video_train_clips=1500",
                             "data.video_test_clips=200"],
                  n=12, fidelity=4, episodes=4, probe_steps=500, lc_trials=2),
    "full": dict(caml_steps=1500, overrides=[], n=150, fidelity=60, episodes=60, probe_steps=800, lc_trials=16),
    "debug": dict(caml_steps=5, config="modalities_debug.yaml", overrides=[], n=4, fidelity=2, episodes=2, probe_steps=20, lc_trials=1),
}
SHOTS = (1, 3)
SOURCES = ("scenes", "glyphs")


# -- models ----------------------------------------------------------------------------------------------------------
def _train_or_reuse(size: str, config: str, overrides: list[str], run_root: Path) -> tuple[LMRunConfig, Path, float]:
    cfg = load_config(LMRunConfig, ROOT / "configs" / "lm" / config, [f"preset={size}", *overrides])
    final, seconds = train_or_reuse(cfg, run_root / size, lambda c, run: train_lm(c, run, resume=True), size)
    return cfg, final, seconds


def _distilled(nano_cfg: LMRunConfig, teacher_final: Path, run_root: Path) -> tuple[Path | None, str, float]:
    """A nano distilled from the suite's ultra with the nano's own data and token budget (`tessera.recipes.distill_lm`).

    Returns (model folder or None, why not, seconds)."""
    try:
        from tessera.recipes.distill_lm import DistillRunConfig, distill_lm
    except ImportError:
        return None, "not run: tessera.recipes.distill_lm is not in this checkout (or pass --distilled DIR)", float("nan")
    from tessera.config import from_dict

    cfg = from_dict(DistillRunConfig, {**to_dict(nano_cfg), "teacher": {"path": str(teacher_final)}})
    final, seconds = train_or_reuse(cfg, run_root / "distilled_nano", lambda c, run: distill_lm(c, run, resume=True))
    return final, "", seconds


def _quantized(model: torch.nn.Module, bits: int) -> tuple[Any, str]:
    """(int`bits` copy of `model`, "") or (None, why not)."""
    try:
        from tessera.lm.quantize import quantize_model
    except ImportError:
        return None, "not run: tessera.lm.quantize is not in this checkout"
    try:
        return quantize_model(copy.deepcopy(model), bits=bits, group_size=32).eval(), ""
    except Exception as exc:  # report, do not guess: the cell says why it is empty
        return None, f"not run: quantize_model failed ({type(exc).__name__}: {exc})"


def _model_bytes(model: torch.nn.Module) -> int:
    try:
        from tessera.lm.quantize import weight_bytes

        return int(weight_bytes(model))
    except ImportError:
        return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


# -- few-shot episodes, LM and CAML on the same images -------------------------------------------------------------
def _episodes(corpus, episodes: int, seed: int = 0) -> list[tuple[str, int, Any]]:
    out = []
    for source in SOURCES:
        for k in SHOTS:
            rng = np.random.default_rng([seed, k, 31])  # the seeds tessera.lm.evaluate.fewshot_accuracy uses
            try:
                out += [(source, k, episode(corpus, rng, 2, k, "test", source=source)) for _ in range(episodes)]
            except ValueError as exc:  # a corpus too small for this shot count (debug configs)
                print(f"few-shot {source} {k}-shot skipped: {exc}", flush=True)
    return out


def _lm_fewshot(model, processor, corpus, eps) -> dict[str, float]:
    enc = DocumentEncoder(corpus, processor.vocab)
    hits: dict[str, list[int]] = {}
    for source, k, doc in eps:
        prefix = [processor.vocab.bos_id]
        for seg in doc.segments[:-1]:
            prefix += enc.segment_ids(seg)
        scores = score_continuations(model, prefix, [enc.segment_ids(f" {w}.") for w in doc.meta["labels"]])
        hits.setdefault(f"{source}/{k}-shot", []).append(int(doc.meta["labels"][int(np.argmax(scores))] == doc.meta["answer"]))
    out = {key: float(np.mean(v)) for key, v in hits.items()}
    out["accuracy"] = float(np.mean([h for v in hits.values() for h in v]))
    out["chance"] = 0.5
    return out


def _episode_parts(doc) -> tuple[list, list[int]]:
    """Image refs (supports then query) and support labels in first-appearance order (as CAML is trained and run)."""
    from tessera.icl.episodes import first_appearance_labels

    refs = [s for s in doc.segments if not isinstance(s, str)]
    names = [s.strip().removeprefix("is a ").rstrip(".") for s in doc.segments if isinstance(s, str)][:-2]
    mapped, _ = first_appearance_labels(names)
    return refs, [int(x) for x in mapped]


def _train_caml(corpus, extractor, steps: int, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A caml-xs trained on the extractor's features of 2-3-way, 1-3-shot episodes drawn from the corpus' train pools."""
    from tessera.icl.model import CAML, CAMLConfig
    from tessera.icl.predict import FewShotClassifier

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 77])
    feats: dict[tuple, torch.Tensor] = {}

    def embed(refs) -> torch.Tensor:
        todo = [r for r in refs if r not in feats]
        if todo:
            images = torch.from_numpy(np.stack([corpus.image(r) for r in todo])).permute(0, 3, 1, 2).float() / 255
            with torch.no_grad():
                for r, f in zip(todo, extractor.embed(images).float(), strict=True):
                    feats[r] = f
        return torch.stack([feats[r] for r in refs])

    def draw(ways: int, shots: int, source: str):
        try:
            return episode(corpus, rng, ways, shots, "train", source=source)
        except ValueError:  # too few renders of a glyph for this shot count (debug corpora): use scenes
            return episode(corpus, rng, ways, shots, "train", source="scenes")

    model = CAML(CAMLConfig.from_name("caml-xs", feature_dim=extractor.embed_dim))
    warm = [draw(2, 3, s) for s in SOURCES for _ in range(100)]
    center = torch.cat([embed(_episode_parts(d)[0]) for d in warm]).mean(0)  # CL2N centre from training images only
    model.feature_norm.set_center(center)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 30) * max(0.05, 1 - i / max(1, steps)))
    model.train()
    losses = []
    for _ in range(steps):
        ways, shots = int(rng.integers(2, 4)), int(rng.integers(1, 4))
        source = SOURCES[int(rng.random() < 0.3)]  # the corpus' glyph share of episodes
        sup, lab, qry, tgt = [], [], [], []
        for _ in range(16):
            doc = draw(ways, shots, source)
            refs, labels = _episode_parts(doc)
            f = embed(refs)
            names = [s.strip().removeprefix("is a ").rstrip(".") for s in doc.segments if isinstance(s, str)][:-2]
            sup.append(f[:-1])
            lab.append(torch.tensor(labels))
            qry.append(f[-1:])
            tgt.append(labels[names.index(doc.meta["answer"])])
        out = model(torch.stack(sup), torch.stack(lab), torch.stack(qry))
        loss = torch.nn.functional.cross_entropy(out.logits[:, 0], torch.tensor(tgt))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    info = {"caml": "caml-xs trained here", "steps": steps, "episodes_per_step": 16, "final_loss": float(np.mean(losses[-20:]))}
    return FewShotClassifier(extractor, model), info


@torch.no_grad()
def _feature_fewshot(corpus, eps, caml_dir: str | None, caml_steps: int) -> dict[str, Any]:
    """CAML and the prototype classifier on the frozen extractor's features, on the LMs' episodes."""
    from tessera.features import load_extractor
    from tessera.icl.baselines import protonet

    result: dict[str, Any] = {}
    clf = None
    if caml_dir is not None:
        from tessera.icl.predict import FewShotClassifier

        clf = FewShotClassifier.from_pretrained(caml_dir)
        extractor, ext_name = clf.extractor, clf.extractor.name
        result["caml_checkpoint"] = str(caml_dir)
    else:
        ext_name = "tessera-resnet-s"
        extractor = load_extractor(ext_name).eval()
        with torch.enable_grad():
            clf, result["caml_training"] = _train_caml(corpus, extractor, caml_steps)
    result["extractor"] = ext_name
    hits: dict[str, dict[str, list[int]]] = {"caml": {}, "prototypes": {}}
    for source, k, doc in eps:
        refs = [s for s in doc.segments if not isinstance(s, str)]
        names = [s.strip().removeprefix("is a ").rstrip(".") for s in doc.segments if isinstance(s, str)][:-2]
        images = torch.from_numpy(np.stack([corpus.image(r) for r in refs])).permute(0, 3, 1, 2).float() / 255
        feats = extractor.embed(images).float()
        support, query = feats[:-1], feats[-1:]
        labels = [doc.meta["labels"].index(n) for n in names]  # any fixed class order: both readouts map back to names
        key = f"{source}/{k}-shot"
        pred = int(protonet(support, torch.tensor(labels), query, 2).argmax(-1)[0])
        hits["prototypes"].setdefault(key, []).append(int(doc.meta["labels"][pred] == doc.meta["answer"]))
        if clf is not None:
            probs, classes = clf.classify_features(support, labels, query)  # maps labels by first appearance itself
            pred = classes[int(np.argmax(probs[0]))]
            hits["caml"].setdefault(key, []).append(int(doc.meta["labels"][pred] == doc.meta["answer"]))
    for name, h in hits.items():
        if h:
            result[name] = {key: float(np.mean(v)) for key, v in h.items()}
            result[name]["accuracy"] = float(np.mean([x for v in h.values() for x in v]))
    return result


# -- one column --------------------------------------------------------------------------------------------------------
def _long_context(model, trials: int) -> dict[str, Any]:
    try:
        from tessera.lm.longcontext import retrieval_accuracy
    except ImportError:
        return {"status": "not run: tessera.lm.longcontext is not in this checkout"}
    limit = model.cfg.max_seq_len
    lengths = [n for n in (256, 512, 1024) if n <= limit]
    try:
        got = retrieval_accuracy(model, lengths=lengths, depths=(0.1, 0.5, 0.9), trials=trials)
    except Exception as exc:
        return {"status": f"not run: retrieval_accuracy failed ({type(exc).__name__}: {exc})"}
    values = _numbers(got)
    out = {"raw": _jsonable(got), "lengths": lengths}
    if isinstance(got, dict) and isinstance(got.get("mean"), (int, float)):  # the mean over the (length, depth) cells
        out["accuracy"] = float(got["mean"])
    elif isinstance(got, dict) and isinstance(got.get("accuracy"), (int, float)):
        out["accuracy"] = float(got["accuracy"])
    elif values:
        out["accuracy"] = float(np.mean(values))
    if isinstance(got, dict) and "chance" in got:
        out["chance"] = float(got["chance"])
    return out


def _numbers(x: Any) -> list[float]:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return [float(x)]
    if isinstance(x, dict):
        return [v for k, val in x.items() if k not in ("chance", "n", "trials", "lengths", "depths", "mean") for v in _numbers(val)]
    if isinstance(x, (list, tuple)):
        return [v for val in x for v in _numbers(val)]
    return []


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def evaluate_column(model, processor, corpus, probe, prof: dict, eps) -> dict[str, Any]:
    n = prof["n"]
    r: dict[str, Any] = {"parameters": model.num_parameters() if hasattr(model, "num_parameters") else None,
                         "weight_bytes": _model_bytes(model)}
    t = time.time()
    r["captioning"] = caption_accuracy(model, processor, corpus, n=n)
    r["VQA"] = vqa_accuracy(model, processor, corpus, n=n)
    fid = generation_fidelity(model, processor, corpus, probe, n=prof["fidelity"])
    r["caption-to-image"] = {"accuracy": fid["fidelity/all"], "chance": fid["chance/all"], "ceiling": fid["reconstruction/all"],
                             "real": fid["real/all"], "n": fid["n"]}
    r["video QA"] = video_qa_accuracy(model, processor, corpus, n=n)
    r["spoken-word recognition"] = spoken_word_accuracy(model, processor, corpus, n=n)
    r["spoken question about an image"] = spoken_vqa_accuracy(model, processor, corpus, n=n)
    r["long-context retrieval"] = _long_context(model, prof["lc_trials"])
    r["few-shot in-context classification"] = _lm_fewshot(model, processor, corpus, eps)
    r["eval_seconds"] = time.time() - t
    return r


# -- report --------------------------------------------------------------------------------------------------------------
def _cell(col: dict | str | None, row: str) -> str:
    if col is None:
        return "not run"
    if isinstance(col, str):
        return "not run"
    v = col.get(row, {})
    acc = v.get("accuracy", v.get("attribute_accuracy"))
    return "not run" if acc is None or acc != acc else f"{100 * acc:.1f}"


def _chance(results: dict, row: str) -> str:
    for col in results.values():
        if isinstance(col, dict) and row in col and col[row].get("chance") is not None:
            return f"{100 * col[row]['chance']:.1f}"
    return "-"


def render(meta: dict, results: dict, icl: dict) -> str:
    m = meta["machine"]
    lines = [
        "# Capability suite: nano / pro / ultra / distilled nano / int8 / int4",
        "",
        f"Command: `{meta['command']}` ({meta['profile']} profile), run {meta['date']} on {m['cpu_count']} CPUs "
        f"({m['torch_threads']} torch threads), torch {meta['versions']['torch']}; wall time {meta['wall_s'] / 60:.1f} min. "
        f"Load average before/after {m['load_average_before'][0]:.1f} / {m['load_average_after'][0]:.1f}"
        + (" (shared machine: other jobs ran at the same time)" if max(m['load_average_before'][0], m['load_average_after'][0]) > 1.5 else "")
        + ".",
        "",
        *([meta["note"], ""] if meta.get("note") else []),
        f"Training: {meta['setup']['steps']} steps of {meta['setup']['batch_size']} x {meta['setup']['seq_len']} tokens per size "
        f"from `configs/lm/{meta['setup']['config']}` (mixture {meta['setup']['mixture']}); vocabulary {meta['setup']['vocab_size']} ids "
        f"(text, specials, {meta['setup']['image_codes']} image codes, {meta['setup']['audio_codes']} audio codes). "
        + ("**The quick profile trains far too briefly for most capabilities to rise above chance: it checks that the whole "
           "suite runs end to end and records where each model stands after a few minutes of CPU training, nothing more.** "
           if meta["profile"] != "full" else ""),
        "",
        "Accuracy % on held-out items (greedy decoding; few-shot by label log-likelihood).",
        "",
        "| capability | " + " | ".join(COLUMNS) + " | chance |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for row in ROWS:
        lines.append(f"| {row} | " + " | ".join(_cell(results.get(c), row) for c in COLUMNS) + f" | {_chance(results, row)} |")
    first = next((results[c] for c in COLUMNS if isinstance(results.get(c), dict)), None)
    if first is not None:
        lines += ["", f"Items per model: {first['captioning']['n']} captions, {first['VQA']['n']} written and "
                  f"{first['spoken question about an image']['n']} spoken questions, {first['video QA']['n']} video questions, "
                  f"{first['spoken-word recognition']['n']} spoken words, {first['caption-to-image']['n']} drawn images, "
                  f"{len(SOURCES) * len(SHOTS) * meta['episodes']} few-shot episodes. The quick profile's counts are small: "
                  "one item is several points."]
    if meta.get("column_notes"):
        lines += ["", "Column notes:", ""] + [f"- {c}: {n}" for c, n in meta["column_notes"].items()]
    lines += ["", "Columns that did not run, and why:", ""]
    if not any(meta["missing"].get(c) for c in COLUMNS):
        lines.append("- none: every column ran.")
    for c in COLUMNS:
        why = meta["missing"].get(c)
        if why:
            lines.append(f"- {c}: {why}")
    lc = [f"{c}: {results[c]['long-context retrieval'].get('status')}" for c in COLUMNS
          if isinstance(results.get(c), dict) and results[c]["long-context retrieval"].get("status")]
    if lc:
        lines.append("- long-context retrieval cells: " + "; ".join(sorted(set(x.split(': ', 1)[1] for x in lc))))
    lines += ["", "## What this run shows", "", *_reading(results, meta), "", "## Rows"]
    lines += [
        "",
        "- captioning: attribute-slot accuracy of greedy captions of test scenes (held-out colour-shape pairs); chance = "
        "captions of random training scenes.",
        "- VQA: exact answers to written questions about test scenes; chance = 1/|answers| per question type.",
        "- caption-to-image: the scene probe's recognition of the requested attributes in images the model draws; chance = "
        "the probe on real renders of other scenes" + (f"; ceiling (probe on tokenizer reconstructions) {_pct(_first(results, 'caption-to-image', 'ceiling'))}%." if _first(results, 'caption-to-image', 'ceiling') is not None else "."),
        f"- video QA: {meta['setup']['video_frames']}-frame sprite clips (test seed stream), questions about direction, count of "
        "events and order of appearance; chance = 1/|answers| per type.",
        "- spoken-word recognition: isolated words (digits, colours, shapes, directions, yes/no) spoken by espeak-ng voices "
        "held out from training; greedy transcript must match; chance = 1/|words|.",
        "- spoken question about an image: a test scene plus a held-out voice asking one of the VQA questions; text answer.",
        "- long-context retrieval: key-value pairs, filler, query (tessera.lm.longcontext), at lengths up to the model's context.",
        f"- few-shot: 2-way episodes, {'/'.join(map(str, SHOTS))} shots per class, scenes (colour or shape classes) and glyphs "
        f"(letters), {meta['episodes']} episodes per (source, shots); fresh test label words.",
        "",
        "## Per-type details",
        "",
        "| model | VQA by type | video QA direction / count / order | spoken VQA | few-shot scenes 1/3, glyphs 1/3 | weights MB | eval s |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in COLUMNS:
        r = results.get(c)
        if not isinstance(r, dict):
            continue
        vqa = ", ".join(f"{k.split('/')[1]} {_pct(v)}" for k, v in r["VQA"].items() if k.startswith("accuracy/"))
        vid = " / ".join(_pct(r["video QA"].get(f"accuracy/{t}")) for t in ("direction", "count", "order"))
        svqa = _pct(r["spoken question about an image"].get("accuracy"))
        fs = r["few-shot in-context classification"]
        fss = ", ".join(_pct(fs.get(f"{s}/{k}-shot")) for s in SOURCES for k in SHOTS)
        lines.append(f"| {c} | {vqa} | {vid} | {svqa} | {fss} | {r['weight_bytes'] / 1e6:.2f} | {r['eval_seconds']:.0f} |")
    lines += [
        "",
        "## Few-shot in-context classification: the LMs and CAML on the same episodes",
        "",
        f"Same episodes, same images. The LMs read the interleaved images as tokens and rank the label words; CAML and the "
        f"prototype classifier see features of the frozen extractor `{icl.get('extractor')}`.",
        "",
        "| model | " + " | ".join(f"{s} {k}-shot" for s in SOURCES for k in SHOTS) + " | mean |",
        "|---|" + "---|" * (len(SOURCES) * len(SHOTS) + 1),
    ]
    for c in COLUMNS:
        r = results.get(c)
        if isinstance(r, dict):
            fs = r["few-shot in-context classification"]
            lines.append(f"| LM {c} | " + " | ".join(_pct(fs.get(f"{s}/{k}-shot")) for s in SOURCES for k in SHOTS) + f" | {_pct(fs['accuracy'])} |")
    caml_label = "CAML (" + (f"checkpoint {icl['caml_checkpoint']}" if "caml_checkpoint" in icl else
                             f"caml-xs trained here, {icl.get('caml_training', {}).get('steps')} steps") + ")"
    for name, label in (("caml", caml_label), ("prototypes", "prototypes (training-free reference)")):
        if name in icl:
            lines.append(f"| {label} | " + " | ".join(_pct(icl[name].get(f"{s}/{k}-shot")) for s in SOURCES for k in SHOTS)
                         + f" | {_pct(icl[name]['accuracy'])} |")
        else:
            lines.append(f"| {label} | " + " | ".join("not run" for _ in range(len(SOURCES) * len(SHOTS))) + " | not run |")
    lines.append("| chance | " + " | ".join("50.0" for _ in range(len(SOURCES) * len(SHOTS))) + " | 50.0 |")
    if "caml_training" in icl:
        t = icl["caml_training"]
        lines += ["", f"CAML here: `caml-xs` (2 layers) on frozen `{icl['extractor']}` features, trained for {t['steps']} steps of "
                  f"{t['episodes_per_step']} episodes (2-3 way, 1-3 shot) drawn from the same *train* pools the LMs learn from "
                  f"(final training loss {t['final_loss']:.3f}); the LMs' test episodes, test images and label words are never seen."]
    lines += ["", "![capabilities](lm_suite.png)", "",
              "Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in meta["timings_s"].items()) + ".", ""]
    return "\n".join(lines)


def _reading(results: dict, meta: dict) -> list[str]:
    """Plain statements computed from the table: which rows any model beats chance on, and by how much."""
    cols = [c for c in COLUMNS if isinstance(results.get(c), dict)]
    above, at_or_below = [], []
    for row in ROWS:
        ch = _chance(results, row)
        accs = {c: results[c][row].get("accuracy", results[c][row].get("attribute_accuracy")) for c in cols}
        accs = {c: a for c, a in accs.items() if a is not None and a == a}
        if ch == "-" or not accs:
            continue
        best = max(accs, key=accs.get)
        if 100 * accs[best] > float(ch):
            above.append(f"{row} (best: {best} {100 * accs[best]:.1f} vs chance {ch})")
        else:
            at_or_below.append(row)
    out = []
    if above:
        out.append("- Rows where at least one model scores above its chance line: " + "; ".join(above) + ". With "
                   f"{meta['episodes']} episodes per (source, shots) or the item counts above, differences of a few "
                   "items are noise.")
    if at_or_below:
        out.append("- Rows where no model beats chance: " + ", ".join(at_or_below) + ". Exact-match rows score 0 when "
                   "a model has not yet learned the answer format (its greedy answer is not one of the valid answers), "
                   "which is below the chance line of a model that guesses among valid answers.")
    return out


def _first(results: dict, row: str, key: str):
    for c in COLUMNS:
        r = results.get(c)
        if isinstance(r, dict) and r.get(row, {}).get(key) is not None:
            return r[row][key]
    return None


def _pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in COLUMNS if isinstance(results.get(c), dict)]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / max(1, len(cols))
    for j, c in enumerate(cols):
        vals = []
        for row in ROWS:
            v = results[c].get(row, {})
            acc = v.get("accuracy", v.get("attribute_accuracy"))
            vals.append(np.nan if acc is None else 100 * acc)
        ax.bar(np.arange(len(ROWS)) + j * width - 0.4 + width / 2, vals, width, label=c)
    for i, row in enumerate(ROWS):
        ch = _chance(results, row)
        if ch != "-":
            ax.hlines(float(ch), i - 0.45, i + 0.45, colors="k", linestyles="--", linewidth=1)
    ax.set_xticks(np.arange(len(ROWS)))
    ax.set_xticklabels([r.replace(" ", "\n", 2) for r in ROWS], fontsize=7)
    ax.set_ylabel("held-out accuracy %  (dashed: chance)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--sizes", default=",".join(SIZES), help="sizes to train and evaluate (default nano,pro,ultra)")
    parser.add_argument("--distilled", default=None, help="model folder of a distilled nano (tessera lm distill)")
    parser.add_argument("--int8", default=None, help="int8 model folder (default: quantize the nano trained here)")
    parser.add_argument("--int4", default=None, help="int4 model folder (default: quantize the nano trained here)")
    parser.add_argument("--caml", default=None, help="CAML checkpoint folder (default: train a caml-xs here on the corpus' train episodes)")
    parser.add_argument("--reuse", action="store_true", help="take LM columns from an earlier lm_suite.json of the same profile/config")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="rewrite lm_suite.md/png from lm_suite.json")
    parser.add_argument("--note", default="", help="a line for the report (e.g. which checkout the run used)")
    parser.add_argument("--runs", default=None, help="run folder root (default runs/lm_suite/<profile>)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.report_only:
        from tessera.io import atomic_write_text

        out = Path(args.out)
        data = json.loads((out / "lm_suite.json").read_text())
        results, icl = data.pop("results"), data.pop("icl_side_by_side")
        plot(results, out / "lm_suite.png")
        atomic_write_text(out / "lm_suite.md", render(data, results, icl))
        print((out / "lm_suite.md").read_text())
        return
    prof = PROFILES[args.profile]
    config = prof.get("config", "modalities.yaml")
    run_root = Path(args.runs) if args.runs else ROOT / "runs" / "lm_suite" / args.profile
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    start, load_before = time.time(), os.getloadavg()
    timings: dict[str, float] = {}

    from lm_eval import _probe

    t = time.time()
    probe, _ = _probe(prof["probe_steps"], progress=False)
    timings["probe_s"] = time.time() - t

    results: dict[str, Any] = {}
    missing: dict[str, str] = {}
    trained: dict[str, Any] = {}
    cfg = corpus = eps = None
    previous: dict[str, Any] = {}
    old_json = Path(args.out) / "lm_suite.json"
    if args.reuse and old_json.is_file():
        old = json.loads(old_json.read_text())
        if old.get("profile") == args.profile:
            previous = old
    for size in sizes:
        cfg, final, train_s = _train_or_reuse(size, config, prof["overrides"], run_root)
        timings[f"train_{size}_s"] = train_s
        model, proc = load_pretrained(final)
        model.eval()
        if corpus is None:
            t = time.time()
            _, corpus = prepare(cfg, proc.image_tokenizer)
            eps = _episodes(corpus, prof["episodes"])
            timings["corpus_s"] = time.time() - t
        sha = hashlib.sha256((final.parent / "config.yaml").read_bytes()).hexdigest()[:12]  # the run as trained
        if previous.get("results", {}).get(size, {}).get("run_config_sha256") == sha:
            r = previous["results"][size]
            print(f"[{size}] reusing its evaluation from {old_json}", flush=True)
            if r["long-context retrieval"].get("status"):  # the earlier checkout lacked tessera.lm.longcontext: retry
                r["long-context retrieval"] = _long_context(model, prof["lc_trials"])
        else:
            r = evaluate_column(model, proc, corpus, probe, prof, eps)
        r["train_seconds"] = train_s
        r["run_config_sha256"] = sha
        results[size] = r
        trained[size] = (model, proc)
        timings[f"eval_{size}_s"] = r["eval_seconds"]
        print(f"[{size}] " + json.dumps({k: (v.get('accuracy', v.get('attribute_accuracy')) if isinstance(v, dict) else v) for k, v in r.items()}), flush=True)
    for s in SIZES:
        if s not in sizes:
            missing[s] = "not run: left out with --sizes"

    extra = {"distilled nano": args.distilled, "int8 nano": args.int8, "int4 nano": args.int4}
    notes: dict[str, str] = {}
    if not args.distilled and "ultra" in trained and "nano" in trained:
        nano_cfg = load_config(LMRunConfig, ROOT / "configs" / "lm" / config, ["preset=nano", *prof["overrides"]])
        folder, why, seconds = _distilled(nano_cfg, run_root / "ultra" / "final", run_root)
        if folder is not None:
            extra["distilled nano"] = str(folder)
            timings["train_distilled_nano_s"] = seconds
            notes["distilled nano"] = ("a nano student trained here on the ultra column's logits (`tessera.recipes.distill_lm`, its "
                                       "default loss) with the nano column's data, steps and batch: the same token budget")
        else:
            missing["distilled nano"] = why
    for col, folder in extra.items():
        model = None
        if col in missing:
            continue
        if folder:
            model, proc = load_pretrained(folder)
            if proc.vocab.layout() != trained[sizes[0]][1].vocab.layout():
                missing[col] = f"not run: {folder} has a different vocabulary from the suite's models"
                model = None
        elif col != "distilled nano" and "nano" in trained:
            model, why = _quantized(trained["nano"][0], 8 if col.startswith("int8") else 4)
            proc = trained["nano"][1]
            if model is None:
                missing[col] = why
            else:
                notes[col] = (f"the nano column's weights quantized by `tessera.lm.quantize.quantize_model(bits="
                              f"{8 if col.startswith('int8') else 4}, group_size=32)`")
        else:
            missing[col] = "not run: no model given (pass --distilled DIR: a nano distilled by `tessera lm distill` on this suite's data)" \
                if col == "distilled nano" else "not run: the nano column did not run"
        if model is not None and col in previous.get("results", {}) and not folder and "nano" in previous.get("results", {}) \
                and results["nano"] is previous["results"]["nano"]:
            results[col] = previous["results"][col]
            print(f"[{col}] reusing its evaluation", flush=True)
            if results[col]["long-context retrieval"].get("status"):
                results[col]["long-context retrieval"] = _long_context(model, prof["lc_trials"])
        elif model is not None:
            r = evaluate_column(model.eval(), proc, corpus, probe, prof, eps)
            results[col] = r
            timings[f"eval_{col.replace(' ', '_')}_s"] = r["eval_seconds"]
            print(f"[{col}] done", flush=True)

    t = time.time()
    icl = _feature_fewshot(corpus, eps, args.caml, prof["caml_steps"])
    timings["caml_s"] = time.time() - t
    wall = time.time() - start
    cmd = "python benchmarks/lm_suite.py" + (f" --profile {args.profile}" if args.profile != "quick" else "")
    for flag in ("sizes", "distilled", "int8", "int4", "caml", "threads"):
        val = getattr(args, flag)
        if val and not (flag == "sizes" and val == ",".join(SIZES)):
            cmd += f" --{flag} {val}"
    meta = {
        "command": cmd, "profile": args.profile, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "wall_s": wall,
        "note": args.note, "timings_s": timings, "missing": missing, "column_notes": notes, "episodes": prof["episodes"],
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "setup": {"config": config, "steps": cfg.train.steps, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len,
                  "mixture": cfg.data.mixture, "video_frames": cfg.data.video_frames,
                  "vocab_size": trained[sizes[0]][1].vocab.size, "image_codes": trained[sizes[0]][1].vocab.image_codebook_size,
                  "audio_codes": (lambda r: r[1] - r[0])(trained[sizes[0]][1].vocab.code_range("audio")),
                  "config_sha256": hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from tessera.io import atomic_write_text

    atomic_write_text(out / "lm_suite.json", json.dumps({**meta, "results": results, "icl_side_by_side": icl}, indent=1,
                                                        default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)) + "\n")
    plot(results, out / "lm_suite.png")
    atomic_write_text(out / "lm_suite.md", render(meta, results, icl))
    print((out / "lm_suite.md").read_text())


if __name__ == "__main__":
    main()
