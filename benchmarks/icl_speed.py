"""CAML inference speed: episodes per second for 5-way 5-shot with 75 queries.

    PYTHONPATH=. python benchmarks/icl_speed.py            # full: caml-s and the official caml-large size
    PYTHONPATH=. python benchmarks/icl_speed.py --quick    # caml-s only, fewer repetitions (about a minute)

Writes docs/results/icl_speed.md and .json. Compared, on the same weights and the same random episodes:
- `official`: the official `meta_test` scheme re-created: the support (and its label embeddings) `.repeat`-ed once
  per query, a torchvision-style encoder with `nn.MultiheadAttention` blocks (weights copied from ours; the
  logits are checked equal);
- `copied`: the same copying scheme on Tessera's blocks (fused scaled-dot-product attention);
- `exact`: Tessera's batched exact mode (layer-1 support projections shared, no support copies);
- `amortized`: support encoded once per episode, queries attend to the support and themselves (a different model,
  trained with its own mask; its accuracy cost comes from benchmarks/icl_universal.py).
Frozen-feature extraction is excluded (features are cached once per dataset). Weights are random: speed does not
depend on their values. Timings are medians over episodes after warm-up, under `torch.inference_mode()`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tessera.icl.model import CAML, CAMLConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class _OfficialBlock(nn.Module):
    """The official encoder block layout (torchvision ViT EncoderBlock with nn.MultiheadAttention)."""

    def __init__(self, ours) -> None:
        super().__init__()
        w = ours.qkv.in_features
        self.ln_1, self.ln_2 = ours.ln_1, ours.ln_2
        self.self_attention = nn.MultiheadAttention(w, ours.num_heads, batch_first=True)
        with torch.no_grad():
            self.self_attention.in_proj_weight.copy_(ours.qkv.weight)
            self.self_attention.in_proj_bias.copy_(ours.qkv.bias)
            self.self_attention.out_proj.weight.copy_(ours.proj.weight)
            self.self_attention.out_proj.bias.copy_(ours.proj.bias)
        self.mlp = ours.mlp

    def forward(self, inp):
        x = self.ln_1(inp)
        x, _ = self.self_attention(query=x, key=x, value=x, need_weights=False)
        x = x + inp
        return x + self.mlp(self.ln_2(x))


class OfficialScheme(nn.Module):
    """`CAML.meta_test` + `TransformerEncoder.forward` of the official code, re-created on our weights."""

    def __init__(self, model: CAML) -> None:
        super().__init__()
        self.m = model
        self.blocks = nn.Sequential(*[_OfficialBlock(b) for b in model.blocks])

    def forward(self, support, labels, query):  # (N, D), (N,), (Q, D)
        m = self.m
        support, query = m.feature_norm(support), m.feature_norm(query)  # Tessera's fixed preprocessing (identity for "none")
        b, d = query.shape
        sup = support.reshape(1, -1, d).repeat(b, 1, 1)  # the support copied once per query
        seqs = torch.cat([query.reshape(-1, 1, d), sup], dim=1)
        lab = torch.nn.functional.one_hot(labels.unsqueeze(0), num_classes=m.cfg.max_way).float() @ (m.elmes_scale * m.label_vectors)
        lab = torch.cat([m.unk_emb.view(1, 1, -1), lab], dim=1).repeat(b, 1, 1)
        x = self.blocks(torch.cat([seqs, lab], dim=-1))
        return m.head(m.norm(x)[:, 0])

    def forward_many(self, support, labels, query):  # (B, N, D), (B, N), (B, Q, D)
        """Several episodes in one call: every episode's per-query copies concatenated into one batch (the official
        scheme at its most efficient; `meta_test` itself takes one episode at a time)."""
        m = self.m
        b, nq, d = query.shape
        support, query = m.feature_norm(support), m.feature_norm(query)
        sup = support.repeat_interleave(nq, dim=0)  # (B*Q, N, D)
        seqs = torch.cat([query.reshape(b * nq, 1, d), sup], dim=1)
        lab = torch.nn.functional.one_hot(labels, num_classes=m.cfg.max_way).float() @ (m.elmes_scale * m.label_vectors)
        lab = torch.cat([m.unk_emb.view(1, 1, -1).expand(b, 1, -1), lab], dim=1).repeat_interleave(nq, dim=0)
        x = self.blocks(torch.cat([seqs, lab], dim=-1))
        return m.head(m.norm(x)[:, 0]).view(b, nq, -1)


def _time(fn, episodes, warmup: int = 2) -> float:
    for ep in episodes[:warmup]:
        fn(*ep)
    times = []
    for ep in episodes[warmup:]:
        t = time.perf_counter()
        fn(*ep)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(preset: str, reps: int, way: int = 5, shot: int = 5, queries: int = 75, per_call: int = 1) -> dict:
    """Time every scheme on the same random episodes. With per_call > 1, that many episodes are stacked into one
    (B, ...) call for every scheme (an evaluation loop runs them so); times are per call, reported per episode."""
    torch.manual_seed(0)
    exact = CAML(CAMLConfig.from_name(preset)).eval()
    official = OfficialScheme(exact).eval()
    d = exact.cfg.feature_dim
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(way).repeat_interleave(shot)
    eps = [(torch.randn(way * shot, d, generator=g), labels, torch.randn(queries, d, generator=g)) for _ in range(reps + 2)]
    if per_call == 1:
        calls, run_official, warmup = eps, official, 2
    else:
        calls = [tuple(torch.stack([e[i] for e in eps[j : j + per_call]]) for i in range(3)) for j in range(0, len(eps) - per_call + 1, per_call)]
        run_official, warmup = official.forward_many, 1
    with torch.inference_mode():
        s, lab, q = calls[0]
        ref = run_official(s, lab, q)
        ours = exact(s, lab, q).logits.reshape(ref.shape)
        parity = float((ref[..., :way] - ours[..., :way]).abs().max())
        timings = {
            "official": _time(lambda s, lab, q: run_official(s, lab, q), calls, warmup),
            "copied": _time(lambda s, lab, q: exact.forward_copied(s, lab, q), calls, warmup),
            "exact": _time(lambda s, lab, q: exact(s, lab, q, attention="exact"), calls, warmup),
            "amortized": _time(lambda s, lab, q: exact(s, lab, q, attention="amortized"), calls, warmup),
        }
    timings = {k: v / per_call for k, v in timings.items()}
    params = sum(p.numel() for p in exact.parameters())
    return {
        "preset": preset,
        "params_millions": round(params / 1e6, 2),
        "width": exact.cfg.width,
        "layers": exact.cfg.num_layers,
        "episode": f"{way}-way {shot}-shot, {queries} queries",
        "episodes_per_call": per_call,
        "repetitions": len(calls) - warmup,
        "seconds_per_episode": timings,
        "episodes_per_second": {k: 1.0 / v for k, v in timings.items()},
        "speedup_vs_official": {k: timings["official"] / v for k, v in timings.items()},
        "max_abs_logit_diff_official_vs_exact": parity,
    }


def _accuracy_gap() -> dict | None:
    path = ROOT / "docs" / "results" / "icl_universal.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return doc.get("exact_vs_amortized")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="caml-s only, 10 episodes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-call", type=int, default=16, help="episodes per call in the batched rows")
    ap.add_argument("--shared-machine", action="store_true", help="record that other jobs were running")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    runs = [bench("caml-s", 10 if args.quick else 40)]
    if not args.quick:
        runs.append(bench("caml-large", 6))
    # Many episodes per call (caml-s only: caml-large's official scheme would take minutes per call).
    runs.append(bench("caml-s", 2 * args.per_call if args.quick else 10 * args.per_call, per_call=args.per_call))
    gap = _accuracy_gap()
    doc = {
        "command": "python benchmarks/icl_speed.py" + (" --quick" if args.quick else ""),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_threads": args.threads, "shared": args.shared_machine},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "seed": 0,
        "runs": runs,
        "exact_vs_amortized_accuracy": gap,
        "wall_seconds": round(time.time() - t0, 1),
    }
    out = ROOT / "docs" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "icl_speed.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# CAML inference speed (frozen features cached; 5-way 5-shot, 75 queries)",
        "",
        f"Command: `{doc['command']}` · torch {torch.__version__} · {args.threads} CPU threads · {platform.processor() or platform.machine()}"
        + (" · **machine shared with other jobs: absolute numbers are pessimistic**" if args.shared_machine else ""),
        f"· wall {doc['wall_seconds']} s. Weights random (speed does not depend on them); medians over episodes.",
        "",
        "| model | params | episodes per call | scheme | s / episode | episodes / s | speed-up vs official |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        for k in ("official", "copied", "exact", "amortized"):
            lines.append(
                f"| {r['preset']} (width {r['width']}, {r['layers']} layers) | {r['params_millions']} M | {r.get('episodes_per_call', 1)} | {k} | "
                f"{r['seconds_per_episode'][k]:.4f} | {r['episodes_per_second'][k]:.1f} | {r['speedup_vs_official'][k]:.2f}x |"
            )
    lines += ["", "Parity: max |logit difference| between the re-created official scheme and Tessera's exact mode: "
              + ", ".join(f"{r['preset']} ({r.get('episodes_per_call', 1)} per call) {r['max_abs_logit_diff_official_vs_exact']:.2e}" for r in runs) + "."]
    lines += [
        "",
        "- `official`: support `.repeat`-ed per query, `nn.MultiheadAttention` blocks (the official `meta_test`).",
        "- `copied`: the same copies on Tessera's fused-attention blocks.",
        "- `exact`: Tessera's batched exact mode; identical predictions (tested against a per-query loop).",
        "- `amortized`: support encoded once per episode; a different model trained with its own mask.",
        "- episodes per call > 1: that many episodes stacked into one call for every scheme (how an evaluation loop",
        "  runs them; the official scheme gets all episodes' copies in one batch, its most efficient form). Small",
        "  matrices use two CPU threads poorly, so one-episode calls understate the amortized mode's gain.",
        "",
    ]
    if gap and gap.get("rows"):
        lines.append("Accuracy of the two trained models on the universal suite (from docs/results/icl_universal.md):")
        lines.append("")
        lines.append("| setting | exact | amortized | difference (points) |")
        lines.append("|---|---|---|---|")
        for row in gap["rows"]:
            lines.append(f"| {row['setting']} | {row['exact']:.2f} | {row['amortized']:.2f} | {row['amortized'] - row['exact']:+.2f} |")
        lines.append("")
    else:
        lines.append("Accuracy difference: run benchmarks/icl_universal.py first (it trains/evaluates both models).")
    (out / "icl_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
