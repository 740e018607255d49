"""Nano deployment: a nano student distilled from a larger teacher vs nano from scratch on the same token budget,
then int8 and int4 weights of the distilled nano: file size, peak memory, tokens/s and the quality change.

    python benchmarks/lm_deploy.py --quick   # 16px corpus, debug image tokenizer, pro teacher, 128-token rows: ~20-30 min on 2 busy cores
    python benchmarks/lm_deploy.py           # 32px corpus, the LM's real tokenizer, ultra teacher (hours on CPU)
    python benchmarks/lm_deploy.py --teacher runs/lm/ultra/final   # distil from an already trained model folder

Writes docs/results/lm_deploy.md and .json (lm_deploy_quick.* for --quick). Runs stay in runs/lm_deploy/<profile>.

Pipeline (all through the public entry points: `tessera.recipes.distill_lm.distill_lm`, `train_lm`, the
`tessera lm quantize` CLI verb, `tessera.lm.quantize.load_quantized`):
1. the teacher (trained here with `teacher.preset` / `teacher.steps`, unless --teacher is given);
2. the distilled nano (KL on the teacher's logits) and a nano trained from scratch with the same preset, data,
   seq_len, batch_size and steps (= the same token budget);
3. held-out evaluation of teacher / distilled / scratch: KL(teacher || model) per token, text and image
   cross-entropy, caption attribute accuracy and VQA accuracy (greedy, test-split scenes) with chance lines;
4. the distilled nano quantized to int8 (per channel) and int4 (groups of 32, packed): weight bytes, file size,
   peak resident memory of a fresh process that loads the folder and generates (ru_maxrss after imports vs after
   generating), generation tokens/s (batch 1, 64-token prompt, 128 new tokens, greedy, median of repeats), the same
   quality metrics, and logit error / top-1 agreement against the float model on held-out batches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tessera.cli import main as cli_main  # noqa: E402
from tessera.config import to_dict  # noqa: E402
from tessera.lm.corpus import CorpusConfig  # noqa: E402
from tessera.lm.data import PackedBatches  # noqa: E402
from tessera.lm.evaluate import caption_accuracy, vqa_accuracy  # noqa: E402
from tessera.lm.generate import generate  # noqa: E402
from tessera.lm.pretrained import load_pretrained  # noqa: E402
from tessera.lm.quantize import weight_bytes  # noqa: E402
from tessera.recipes.distill_lm import DistillRunConfig, DistillTrainModule, TeacherSpec, distill_lm, evaluate_student  # noqa: E402
from tessera.recipes.train_lm import TokenizerSpec, prepare, train_lm  # noqa: E402
from tessera.train import OptimConfig, TrainConfig  # noqa: E402

PROFILES = {
    "quick": dict(
        tokenizer=TokenizerSpec(preset="vqvae-debug", steps=200, batch_size=32),
        data=CorpusConfig(image_size=16, train_scenes=2000, test_scenes=300, glyph_train_renders=2, glyph_test_renders=5),
        seq_len=128, batch_size=8, student_steps=100, teacher=TeacherSpec(preset="pro", steps=120, lr=1e-3),
        eval_batches=4, n_eval=100,
    ),
    "full": dict(
        tokenizer=TokenizerSpec(), data=CorpusConfig(), seq_len=512, batch_size=8, student_steps=400,
        teacher=TeacherSpec(preset="ultra", steps=400, lr=1e-3), eval_batches=8, n_eval=300,
    ),
}

_PEAK_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[2])
from tessera.lm.pretrained import load_pretrained
from tessera.lm.generate import generate
import torch._dynamo  # noqa: F401 - imported by meta-device model skeletons (load_quantized): a library cost, not the model's

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB

base = status("VmRSS")
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS (Linux >= 4.0)
    reset = True
except OSError:
    reset = False
model, proc = load_pretrained(sys.argv[1])
loaded = status("VmRSS")
ids = torch.randint(300, 2000, (1, 64), generator=torch.Generator().manual_seed(0))
generate(model, ids, max_new_tokens=128, stop_tokens=())
print(json.dumps({"load_kb": loaded - base, "peak_kb": status("VmHWM") - base, "peak_reset": reset}))
"""


def _peak_memory(folder: Path) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(folder), str(ROOT)], capture_output=True, text=True,
                         env=env, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    if not data["peak_reset"]:
        raise RuntimeError("cannot reset the peak-RSS counter (/proc/self/clear_refs); peak memory would be wrong")
    return {"load_mb": data["load_kb"] / 1024, "peak_mb": data["peak_kb"] / 1024}


def _tokens_per_s(model, repeats: int) -> float:
    ids = torch.randint(300, 2000, (1, 64), generator=torch.Generator().manual_seed(0))
    generate(model, ids, max_new_tokens=16, stop_tokens=())  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        generate(model, ids, max_new_tokens=128, stop_tokens=())
        times.append(time.perf_counter() - t)
    return 128 / statistics.median(times)


@torch.no_grad()
def _logit_agreement(model, reference, batches) -> dict[str, float]:
    errs, agree, n, scale = 0.0, 0, 0, 0.0
    max_err = 0.0
    for b in batches:
        kw = dict(attention_mask=b["attention_mask"], segment_ids=b["segment_ids"])
        valid = b["targets"] != -100
        ref = reference(b["input_ids"], **kw).logits[valid].float()
        out = model(b["input_ids"], **kw).logits[valid].float()
        errs += float((out - ref).abs().mean()) * len(ref)
        max_err = max(max_err, float((out - ref).abs().max()))
        scale += float(ref.std()) * len(ref)
        agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
        n += len(ref)
    return {"mean_abs_logit_err": errs / n, "max_abs_logit_err": max_err, "logit_std": scale / n, "top1_agreement": agree / n}


def _quality(model, teacher, cfg, proc, corpus, eval_set, n_eval: int) -> dict[str, float]:
    out = evaluate_student(DistillTrainModule(model, teacher, cfg), eval_set)
    cap = caption_accuracy(model, proc, corpus, n=n_eval)
    vqa = vqa_accuracy(model, proc, corpus, n=n_eval)
    out.update(caption_acc=cap["attribute_accuracy"], caption_chance=cap["chance"], vqa_acc=vqa["accuracy"],
               vqa_chance=vqa["chance"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--teacher", default=None, help="a trained teacher model folder (skips training one)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    profile = "quick" if args.quick else "full"
    p = PROFILES[profile]
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    run_root = ROOT / "runs" / "lm_deploy" / profile
    train = TrainConfig(steps=p["student_steps"], log_every=20, eval_every=0, checkpoint_every=100, progress=False,
                        device="cpu", tensorboard=False)
    teacher_spec = replace(p["teacher"], path=args.teacher)
    cfg = DistillRunConfig(
        preset="nano", tokenizer=p["tokenizer"], data=p["data"], seq_len=p["seq_len"], batch_size=p["batch_size"],
        eval_batches=p["eval_batches"], train=train,
        optim=OptimConfig(lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=20, min_lr_ratio=0.1, grad_clip=1.0),
        teacher=teacher_spec,
    )
    t0 = time.time()
    stamps: dict[str, float] = {}

    # 1-2. teacher, distilled nano, nano from scratch (each skipped when its final/ folder exists)
    if not (run_root / "distilled" / "final" / "config.json").is_file():
        distill_lm(cfg, run_root / "distilled", resume=True)
    stamps["teacher+distill_s"] = time.time() - t0
    if not (run_root / "scratch" / "final" / "config.json").is_file():
        train_lm(cfg, run_root / "scratch", resume=True)
    stamps["all_training_s"] = time.time() - t0
    teacher_folder = Path(args.teacher) if args.teacher else run_root / "distilled" / "teacher" / "final"
    teacher, proc = load_pretrained(teacher_folder)
    proc_, corpus = prepare(cfg, proc.image_tokenizer)
    eval_source = PackedBatches(corpus, proc.vocab, cfg.seq_len, cfg.batch_size, seed=cfg.data.seed + 7, split="test")
    eval_set = [eval_source(i) for i in range(cfg.eval_batches)]

    # 4. quantize the distilled nano through the CLI verb
    folders = {"teacher": teacher_folder, "distilled": run_root / "distilled" / "final", "scratch": run_root / "scratch" / "final"}
    for bits in (8, 4):
        out = run_root / f"distilled_int{bits}"
        rc = cli_main(["lm", "quantize", "--checkpoint", str(folders["distilled"]), "--bits", str(bits), "--out", str(out)])
        if rc != 0:
            raise SystemExit(f"quantize int{bits} failed")
        folders[f"int{bits}"] = out

    rows: dict[str, dict] = {}
    float_nano = None
    for name, folder in folders.items():
        model, _ = load_pretrained(folder, image_tokenizer=proc.image_tokenizer)
        if name == "distilled":
            float_nano = model
        row = {"parameters": model.num_parameters() if not name.startswith("int") else float_nano.num_parameters(),
               "weight_mb": weight_bytes(model) / 1e6, "file_mb": (folder / "model.safetensors").stat().st_size / 1e6}
        row.update(_quality(model, teacher, cfg, proc, corpus, eval_set, p["n_eval"]))
        if name in ("distilled", "int8", "int4", "teacher"):
            row["tokens_per_s"] = _tokens_per_s(model, args.repeats)
            row.update(_peak_memory(folder))
        if name.startswith("int"):
            row.update(_logit_agreement(model, float_nano, eval_set))
        rows[name] = row
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    result = {
        "profile": profile,
        "command": "python benchmarks/lm_deploy.py" + (" --quick" if args.quick else "") + (f" --teacher {args.teacher}" if args.teacher else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}",
        "load_average": os.getloadavg(),
        "wall_s": time.time() - t0,
        "timings": stamps,
        "config": to_dict(cfg),
        "token_budget": cfg.train.steps * cfg.batch_size * cfg.seq_len,
        "rows": rows,
    }
    name = "lm_deploy_quick" if args.quick else "lm_deploy"
    out_dir = ROOT / "docs" / "results"
    from tessera.io import atomic_write_json, atomic_write_text

    atomic_write_json(out_dir / f"{name}.json", result)
    atomic_write_text(out_dir / f"{name}.md", _markdown(result))
    print(f"wrote {out_dir / name}.md")
    return 0


def _markdown(r: dict) -> str:
    rows = r["rows"]
    t = r["config"]["teacher"]
    lines = [
        f"# Nano deployment: distillation and int8 / int4 weights ({r['profile']} profile)",
        "",
        f"Produced by `{r['command']}` on {r['date']} ({r['machine']}; a shared machine, load average "
        f"{', '.join(f'{x:.1f}' for x in r['load_average'])} at the end, so speeds are indicative; wall time "
        f"{r['wall_s'] / 60:.0f} min). Corpus: {r['config']['data']['image_size']}px scenes/glyphs, image tokenizer "
        f"`{r['config']['tokenizer']['preset']}`. Teacher: `{t['path'] or t['preset']}`"
        + ("" if t["path"] else f" trained here for {t['steps']} steps")
        + f"; students: nano, {r['config']['train']['steps']} steps x {r['config']['batch_size']} x "
        f"{r['config']['seq_len']} tokens = {r['token_budget']:,} tokens each (distilled: T={r['config']['distill']['temperature']}, "
        f"top_k={r['config']['distill']['top_k']}, alpha={r['config']['distill']['alpha']}).",
        "",
        "Held-out split (test scenes, unseen colour-shape pairs). KL = KL(teacher || model) per target token at T=1.",
        "",
        "| model | params | weights MB | file MB | KL to teacher | text CE | image CE | caption acc (chance) | VQA acc (chance) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['parameters']:,} | {row['weight_mb']:.2f} | {row['file_mb']:.2f} | {row['kl_to_teacher']:.3f} | "
            f"{row['text_ce']:.3f} | {row['image_ce']:.3f} | {row['caption_acc']:.3f} ({row['caption_chance']:.3f}) | "
            f"{row['vqa_acc']:.3f} ({row['vqa_chance']:.3f}) |"
        )
    lines += [
        "",
        "Deployment of the distilled nano (generation: batch 1, 64-token prompt, 128 new tokens, greedy, median; "
        "memory, in a fresh process: load MB = resident-set growth from after its imports to after loading the folder; "
        "peak MB = the peak resident set while loading and generating (the kernel's peak counter reset after the "
        "imports, torch._dynamo included, which building a meta-device skeleton imports) minus the post-import "
        "resident set; allocator and library overheads are of the same order as a "
        "nano's weights, so these are coarse).",
        "",
        "| model | tokens/s | load MB | peak MB | mean abs logit err (logit std) | max abs logit err | top-1 agreement with float |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("teacher", "distilled", "int8", "int4"):
        row = rows[name]
        q = (f"{row['mean_abs_logit_err']:.4f} ({row['logit_std']:.2f}) | {row['max_abs_logit_err']:.3f} | "
             f"{row['top1_agreement']:.4f}") if "top1_agreement" in row else "- | - | -"
        lines.append(f"| {name} | {row['tokens_per_s']:.0f} | {row['load_mb']:.1f} | {row['peak_mb']:.1f} | {q} |")
    lines += [
        "",
        "Reading it: the weights MB column is the state dict (int8: 1 byte per weight + one fp32 scale per row; int4: "
        "half a byte + one fp32 scale per 32 weights); norms stay fp32. The dequantising matmul rebuilds each layer's "
        "float weight per call, so int8/int4 trade speed for size on CPU; see docs/lm_deploy.md.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
