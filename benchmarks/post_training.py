"""Post-training stage by stage, measured against ground truth: base -> SFT -> SFT+DPO / SFT+RL -> + best-of-N ->
+ routed CoT, for the nano and pro decoders, plus the safety layer and the reward model.

    OMP_NUM_THREADS=1 python benchmarks/post_training.py --profile quick        # ~CPU minutes per preset
    python benchmarks/post_training.py --profile full --presets nano pro

Writes docs/results/post_training.md and .json (and, with --model-card, docs/model_card.md from the nano RL run).
Every stage runs through the same recipes as `tessera lm train|sft|reward|prefer` (runs under
runs/bench/post_training/<profile>/<preset>/<stage>, resumed when present). All figures are on held-out compositions
(test-split scenes with colour-shape pairs never seen in training; text prompts with unseen template-filler pairs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tessera.io import atomic_write_json, atomic_write_text  # noqa: E402
from tessera.lm.corpus import CorpusConfig  # noqa: E402
from tessera.lm.generate import SamplingConfig  # noqa: E402
from tessera.lm.inference import best_of_n, evaluate_replies, routed_cot, sample_replies, tune_threshold  # noqa: E402
from tessera.lm.posttrain_data import ChatEncoder, check_reply, eval_examples, final_answer, policy_texts  # noqa: E402
from tessera.lm.pretrained import load_pretrained  # noqa: E402
from tessera.lm.reward import RewardModel  # noqa: E402
from tessera.lm.safety import SafetyFilter  # noqa: E402
from tessera.recipes.posttrain import REPLY_KINDS, PostTrainConfig, load_start, run_prefer, run_reward, run_sft  # noqa: E402
from tessera.recipes.train_lm import LMRunConfig, TokenizerSpec, train_lm  # noqa: E402
from tessera.train import OptimConfig, TrainConfig  # noqa: E402

PROFILES = {
    # Minutes of single-threaded CPU per preset on a shared machine: every stage is short, so absolute accuracies
    # are low; the point is the measured direction of each stage.
    "quick": dict(pretrain=150, sft=150, reward=50, dpo=30, rloo=12, eval_per_kind=15, n=4, k=5, batch=8, seq=192,
                  tokenizer="vqvae-f4-k512-32px", image_size=32, tokenizer_steps=150, train_scenes=3000, test_scenes=400),
    "full": dict(pretrain=1500, sft=1000, reward=300, dpo=200, rloo=100, eval_per_kind=100, n=8, k=8, batch=16, seq=384,
                 tokenizer="vqvae-f4-k512-32px", image_size=32, tokenizer_steps=1200, train_scenes=20000, test_scenes=2000),
    # Checks that the script runs end to end (seconds; the numbers mean nothing).
    "smoke": dict(pretrain=2, sft=2, reward=2, dpo=2, rloo=2, eval_per_kind=1, n=2, k=2, batch=2, seq=192,
                  tokenizer="vqvae-debug", image_size=16, tokenizer_steps=20, train_scenes=300, test_scenes=100),
}
COLUMNS = ("instruction_accuracy", "reasoning_accuracy", "inaccuracy_rate", "hedging_accuracy", "refusal_rate",
           "over_refusal_rate", "rm_win_rate_vs_sft", "training_tokens")


def _train_cfg(steps: int, eval_every: int = 0) -> TrainConfig:
    return TrainConfig(steps=steps, log_every=max(1, steps // 10), eval_every=eval_every, checkpoint_every=max(1, steps // 2),
                       progress=False, tensorboard=False, device="cpu")


def _corpus_cfg(p: dict) -> CorpusConfig:
    return CorpusConfig(image_size=p["image_size"], train_scenes=p["train_scenes"], test_scenes=p["test_scenes"], glyph_train_renders=1,
                        glyph_test_renders=1, mixture={"caption": 0.3, "vqa": 0.4, "generate": 0.2, "text": 0.1})


def _pretrain_tokens(cfg: LMRunConfig, corpus, vocab) -> float:
    """Target tokens the base model was trained on (its batches are a pure function of the step)."""
    from tessera.lm.data import PackedBatches

    b = PackedBatches(corpus, vocab, cfg.seq_len, cfg.batch_size, seed=cfg.data.seed)
    return float(sum(PackedBatches.weight(b(s)) for s in range(cfg.train.steps)))


def run_preset(preset: str, p: dict, runs: Path, log) -> dict:
    data = _corpus_cfg(p)
    tok = TokenizerSpec(preset=p["tokenizer"], steps=p["tokenizer_steps"])
    stage_dir = {s: runs / preset / s for s in ("base", "sft", "reward", "dpo", "rloo")}
    t0 = time.time()
    times: dict[str, float] = {}

    # 1. the base model: next-token pretraining on the embedded corpus (no chat turns at all)
    base_cfg = LMRunConfig(preset=preset, tokenizer=tok, data=data, seq_len=p["seq"], batch_size=p["batch"], eval_batches=1,
                           train=_train_cfg(p["pretrain"]),
                           optim=OptimConfig(lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=max(1, p["pretrain"] // 10)))
    t = time.time()
    train_lm(base_cfg, stage_dir["base"], resume=True)
    times["base"] = time.time() - t
    log(f"{preset}: base trained ({times['base']:.0f}s)")

    def post(init: Path, steps: int, lr: float, **kw) -> PostTrainConfig:
        return PostTrainConfig(init=str(init / "final"), data=data, seq_len=p["seq"], batch_size=p["batch"],
                               eval_per_kind=4, train=_train_cfg(steps),
                               optim=OptimConfig(lr=lr, weight_decay=0.0, warmup_steps=max(1, steps // 10)), **kw)

    for stage, fn in (
        ("sft", lambda: run_sft(post(stage_dir["base"], p["sft"], 1e-3), stage_dir["sft"], resume=True)),
        ("reward", lambda: run_reward(post(stage_dir["sft"], p["reward"], 3e-4), stage_dir["reward"], resume=True)),
        ("dpo", lambda: run_prefer(post(stage_dir["sft"], p["dpo"], 1e-4), stage_dir["dpo"], "dpo", resume=True)),
        ("rloo", lambda: run_prefer(post(stage_dir["sft"], p["rloo"], 5e-5, reward_model=str(stage_dir["reward"] / "final")),
                                    stage_dir["rloo"], "rloo", resume=True)),
    ):
        t = time.time()
        fn()
        times[stage] = time.time() - t
        log(f"{preset}: {stage} trained ({times[stage]:.0f}s)")

    # 2. evaluation on held-out compositions
    t = time.time()
    _, processor, corpus = load_start(post(stage_dir["sft"], 1, 1e-3))
    vocab = processor.vocab
    enc = ChatEncoder(corpus, vocab)
    examples = eval_examples(corpus, p["eval_per_kind"], "test", 0, REPLY_KINDS)
    prompts = [enc(e.prompt, add_generation_prompt=True).ids for e in examples]
    rm = RewardModel.from_pretrained(stage_dir["reward"] / "final").eval()
    record = json.loads((stage_dir["reward"] / "final" / "posttrain.json").read_text())
    tokens = {"base": _pretrain_tokens(base_cfg, corpus, vocab)}
    for s, before in (("sft", "base"), ("dpo", "sft"), ("rloo", "sft")):
        tokens[s] = tokens[before] + json.loads((stage_dir[s] / "final" / "posttrain.json").read_text())["tokens_stage"]

    replies: dict[str, list[list[int]]] = {}
    models = {}
    for s in ("base", "sft", "dpo", "rloo"):
        model, _ = load_pretrained(stage_dir[s] / "final")
        models[s] = model.eval()
        replies[s] = [r[0] for r in sample_replies(models[s], vocab, prompts, max_new_tokens=64)]
    policy = models["rloo"]
    gen = torch.Generator().manual_seed(0)
    bon = best_of_n(policy, rm, vocab, prompts, n=p["n"], sampling=SamplingConfig(temperature=0.7), max_new_tokens=64, generator=gen)
    replies["best_of_n"] = [b.reply for b in bon]

    # Routed CoT on the reasoning prompts: threshold tuned on validation prompts (train-split scenes, other seeds).
    val = eval_examples(corpus, p["eval_per_kind"], "train", 1, ("reasoning",))
    val_prompts = [enc(e.prompt, add_generation_prompt=True).ids for e in val]
    val_routed = routed_cot(policy, vocab, val_prompts, final_answer, k=p["k"], threshold=0.0, max_new_tokens=64,
                            generator=torch.Generator().manual_seed(1))
    val_greedy = [final_answer(vocab.decode_text(r[0])) for r in sample_replies(policy, vocab, val_prompts, max_new_tokens=64)]
    threshold, val_acc = tune_threshold([r.agreement for r in val_routed],
                                        [r.answer == e.answer for r, e in zip(val_routed, val, strict=True)],
                                        [g == e.answer for g, e in zip(val_greedy, val, strict=True)])
    idx = [i for i, e in enumerate(examples) if e.kind == "reasoning"]
    routed = routed_cot(policy, vocab, [prompts[i] for i in idx], final_answer, k=p["k"], threshold=threshold,
                        max_new_tokens=64, generator=torch.Generator().manual_seed(2))
    replies["routed_cot"] = list(replies["best_of_n"])
    for i, r in zip(idx, routed, strict=True):
        replies["routed_cot"][i] = r.reply
    routed_share = float(np.mean([r.route == "majority" for r in routed])) if routed else float("nan")

    sft_scores = rm.score(list(zip(prompts, [r or [vocab.token_id("<end_of_turn>")] for r in replies["sft"]],
                                   strict=True)))
    rows = {}
    names = {"base": "base", "sft": "SFT", "dpo": "SFT+DPO", "rloo": "SFT+RL (RLOO)",
             "best_of_n": f"SFT+RL + best-of-{p['n']}", "routed_cot": f"SFT+RL + best-of-{p['n']} + routed CoT@{p['k']}"}
    for s, rs in replies.items():
        texts = [vocab.decode_text(r) for r in rs]
        m = evaluate_replies(examples, texts)
        scores = rm.score(list(zip(prompts, [r or [vocab.token_id("<end_of_turn>")] for r in rs], strict=True)))
        m["rm_win_rate_vs_sft"] = float(((scores > sft_scores).float() + 0.5 * (scores == sft_scores).float()).mean())
        m["training_tokens"] = tokens.get(s, tokens["rloo"])
        m["example_reply"] = next((t for e, t in zip(examples, texts, strict=True) if e.kind == "count"),
                                  "")[:120].replace("\n", "\\n")
        rows[names[s]] = m

    # 3. the safety layer in front of the RL model, on held-out policy compositions and benign prompts
    safety = SafetyFilter.load(stage_dir["rloo"] / "final" / "safety")
    pol = [(e, t) for e, t in zip(examples, replies["rloo"], strict=True) if e.kind == "policy"]
    ben = [(e, t) for e, t in zip(examples, replies["rloo"], strict=True) if e.kind == "benign"]

    def layered(e, t) -> bool:
        text = e.prompt[-1]["content"][-1]
        return safety.check(text).blocked or check_reply(e, vocab.decode_text(t))["refused"] or \
            safety.check(vocab.decode_text(t), "output").blocked

    held = policy_texts("test")
    probs = safety.classifier.predict_proba([t for t, _ in held])
    labels = torch.tensor([y for _, y in held]).bool()
    safety_rows = {
        "model alone (SFT+RL)": {"refusal_rate": rows[names["rloo"]]["refusal_rate"],
                                 "over_refusal_rate": rows[names["rloo"]]["over_refusal_rate"]},
        "model + safety layer": {"refusal_rate": float(np.mean([layered(e, t) for e, t in pol])),
                                 "over_refusal_rate": float(np.mean([layered(e, t) for e, t in ben]))},
        "classifier alone, held-out labelled texts": {
            "refusal_rate": float((probs[labels] >= safety.config.input_threshold).float().mean()),
            "over_refusal_rate": float((probs[~labels] >= safety.config.input_threshold).float().mean())},
    }
    times["eval"] = time.time() - t
    log(f"{preset}: evaluated ({times['eval']:.0f}s)")
    n_params = sum(x.numel() for x in policy.parameters())
    return {
        "rows": rows,
        "row_order": list(rows),  # JSON files sort their keys
        "safety_order": list(safety_rows),
        "reward_model": record["eval"],
        "safety": safety_rows,
        "routed_cot": {"threshold": threshold, "validation_accuracy": val_acc, "test_majority_share": routed_share},
        "stage_eval_during_training": {s: json.loads((stage_dir[s] / "final" / "posttrain.json").read_text())["eval"]
                                       for s in ("sft", "dpo", "rloo")},
        "parameters": n_params,
        "seconds": {**times, "total": time.time() - t0},
        "eval_items": len(examples),
        "runs": {s: str(d) for s, d in stage_dir.items()},
    }


def _ensure_order(r: dict) -> None:
    """Row order for results written before the order was stored (JSON sorts keys)."""
    def rank(name: str) -> tuple[int, str]:
        fixed = {"base": 0, "SFT": 1, "SFT+DPO": 2, "SFT+RL (RLOO)": 3}
        return (fixed.get(name, 5 if "routed" in name else 4), name)

    r.setdefault("row_order", sorted(r["rows"], key=rank))
    r.setdefault("safety_order", sorted(r["safety"], key=lambda n: (n.startswith("classifier"), n.startswith("model +"), n)))


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:,.0f}" if v > 10 else f"{v:.3f}"
    return str(v)


def render(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# Post-training, stage by stage",
        "",
        f"Produced by `{meta['command']}` on {meta['date']} ({meta['machine']}; torch {meta['torch']}, "
        f"{meta['threads']} thread(s)). The machine was **shared and loaded** (several other jobs on 2 cores), which "
        "affects the seconds below, not the accuracies.",
        "",
        f"Profile **{meta['profile']}**: {json.dumps(meta['settings'])}. "
        + ("This is the *quick* profile: every stage is short (hundreds of steps of a tiny model), so absolute "
           "accuracies are low and differences of a few points are within noise "
           f"({results['presets'][next(iter(results['presets']))]['eval_items']} held-out items, "
           f"{meta['settings']['eval_per_kind']} per kind). The full profile is `--profile full`."
           if meta["profile"] == "quick" else ""),
        "",
        "Columns: instruction accuracy = exact match on describe/count/compare/locate/answer/multi-turn prompts about "
        "held-out test scenes; reasoning = final answer of arithmetic-over-counted-objects prompts; inaccuracy = "
        "answerable prompts answered wrongly (not correct, not a hedge, not a refusal); hedging = unanswerable prompts "
        "answered with the hedge; refusal = policy-violating prompts refused by the model alone; over-refusal = benign "
        "prompts refused; RM win rate = reward-model preference over the SFT reply to the same prompt (ties 0.5); "
        "tokens = target tokens of training up to that stage (pretraining included; the reward model's own "
        "training is not counted).",
        "",
    ]
    for preset, r in results["presets"].items():
        lines += [f"## {preset} ({r['parameters'] / 1e6:.2f}M parameters)", "",
                  "| stage | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
        for name in r.get("row_order", list(r["rows"])):
            m = r["rows"][name]
            lines.append(f"| {name} | " + " | ".join(_fmt(m[c]) for c in COLUMNS) + " |")
        rc = r["routed_cot"]
        lines += ["", "Reward model, held-out pairwise accuracy: " + ", ".join(
            f"{k.split('/')[-1]} {v:.2f}" for k, v in r["reward_model"].items()) + ".",
            f"Routed CoT: threshold {rc['threshold']:.2f} tuned on validation prompts (accuracy {rc['validation_accuracy']:.2f}); "
            f"on the test prompts the majority was used for {_fmt(rc['test_majority_share'])} of them.", "",
            "| safety | refusal on policy prompts | over-refusal on benign prompts |", "|---|---|---|"]
        for name in r.get("safety_order", list(r["safety"])):
            s = r["safety"][name]
            lines.append(f"| {name} | {_fmt(s['refusal_rate'])} | {_fmt(s['over_refusal_rate'])} |")
        lines += ["", "Seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()) + ".",
                  f"Example SFT+RL reply to a count prompt: `{r['rows'][next(k for k in r['rows'] if k.startswith('SFT+RL'))]['example_reply']}`", ""]
    lines += ["## Reading the table", "", results.get("notes", ""), ""]
    return "\n".join(lines)


def notes(results: dict) -> str:
    """Plain statements computed from the numbers (which stages helped, which did not)."""
    out = []
    for preset, r in results["presets"].items():
        rows = [(k, r["rows"][k]) for k in r.get("row_order", list(r["rows"]))]
        base, sft = r["rows"]["base"], r["rows"]["SFT"]
        out.append(f"- {preset}: SFT moves instruction accuracy {base['instruction_accuracy']:.2f} -> {sft['instruction_accuracy']:.2f} "
                   f"and hedging {base['hedging_accuracy']:.2f} -> {sft['hedging_accuracy']:.2f}.")
        for name, m in rows[2:]:
            deltas = {c: m[c] - sft[c] for c in COLUMNS[:6]}
            better = [c for c, d in deltas.items() if (d > 0.02 if c not in ("inaccuracy_rate", "over_refusal_rate") else d < -0.02)]
            worse = [c for c, d in deltas.items() if (d < -0.02 if c not in ("inaccuracy_rate", "over_refusal_rate") else d > 0.02)]
            out.append(f"- {preset}, {name} vs SFT: better on {', '.join(better) or 'nothing'}; worse on {', '.join(worse) or 'nothing'} "
                       f"(differences over 0.02).")
            if m["rm_win_rate_vs_sft"] > 0.6 and deltas["instruction_accuracy"] < -0.02:
                out.append(f"  The reward model prefers these replies to SFT's ({m['rm_win_rate_vs_sft']:.2f}) although the exact "
                           f"checker scores them lower: the reward model is weak where it matters (held-out correct-vs-wrong "
                           f"pair accuracy {r['reward_model'].get('pairwise_accuracy/correct_vs_wrong', float('nan')):.2f}), "
                           "and selecting against it exploits that.")
        if r["rows"]["SFT+DPO"]["refusal_rate"] < sft["refusal_rate"] - 0.2:
            out.append(f"- {preset}: DPO lowered the refusal rate on policy prompts from {sft['refusal_rate']:.2f} to "
                       f"{r['rows']['SFT+DPO']['refusal_rate']:.2f}; the safety layer still refuses "
                       f"{r['safety']['model + safety layer']['refusal_rate']:.2f} of them in front of the RL model.")
        base_win = r["rows"]["base"]["rm_win_rate_vs_sft"]
        if base_win > 0.5:
            out.append(f"- {preset}: the reward model even prefers the untuned base model's replies to SFT's ({base_win:.2f}), "
                       "another sign that its scores are not a reliable measure of quality at this scale.")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--presets", nargs="+", default=["nano", "pro"])
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "post_training"))
    ap.add_argument("--runs", default=None, help="run folders (default runs/bench/post_training/<profile>)")
    ap.add_argument("--model-card", action="store_true", help="also write docs/model_card.md from the first preset's RL run")
    ap.add_argument("--merge", nargs="+", default=None,
                    help="instead of running: merge JSON files of runs made per preset (in parallel) into --out")
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        results = {"meta": {**parts[0]["meta"], "command": " && ".join(x["meta"]["command"] for x in parts)
                            + f" && python benchmarks/post_training.py --merge {' '.join(args.merge)}"},
                   "presets": {k: v for x in parts for k, v in x["presets"].items()}}
        for r in results["presets"].values():
            _ensure_order(r)
        results["notes"] = notes(results)
        atomic_write_json(Path(args.out + ".json"), results)
        atomic_write_text(Path(args.out + ".md"), render(results))
        if args.model_card:
            from tessera.recipes.model_card import write_model_card

            first = next(iter(results["presets"].values()))
            write_model_card(Path(first["runs"]["rloo"]), Path(args.out + ".json"), ROOT / "docs" / "model_card.md")
        return 0
    p = PROFILES[args.profile]
    runs = Path(args.runs) if args.runs else ROOT / "runs" / "bench" / "post_training" / args.profile
    torch.manual_seed(0)
    log = lambda msg: print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {msg}", flush=True)  # noqa: E731
    results = {"meta": {
        "command": "OMP_NUM_THREADS=1 python benchmarks/post_training.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores visible, CPU only",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "profile": args.profile, "settings": p,
    }, "presets": {}}
    for preset in args.presets:
        results["presets"][preset] = run_preset(preset, p, runs, log)
        results["notes"] = notes(results)
        atomic_write_json(Path(args.out + ".json"), results)
        atomic_write_text(Path(args.out + ".md"), render(results))
        log(f"wrote {args.out}.md/.json")
    if args.model_card:
        from tessera.recipes.model_card import write_model_card

        first = args.presets[0]
        write_model_card(runs / first / "rloo", Path(args.out + ".json"), ROOT / "docs" / "model_card.md")
        log("wrote docs/model_card.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
