"""Universal few-shot evaluation of CAML and its baselines on the embedded suite (and paper benchmarks if present).

    PYTHONPATH=. python benchmarks/icl_universal.py                      # full: 1000 episodes per setting
    PYTHONPATH=. python benchmarks/icl_universal.py --quick              # 100 episodes, no P>M>F (minutes)
    PYTHONPATH=. python benchmarks/icl_universal.py --train-missing      # first train models that have no run yet
    PYTHONPATH=. python benchmarks/icl_universal.py --paper-root DIR     # also the paper's benchmark folders

Writes docs/results/icl_universal.md and .json. Protocol (papers-digest B3, adapted):
- 5-way 1-shot and 5-way 5-shot; `--episodes` episodes per (dataset, shot) drawn from the dataset's *test* classes
  with a fixed seed, so every method sees the same episodes; `--queries` queries per class (icon classes have 6-8
  drawings: they contribute their remaining drawings); mean accuracy with 95% confidence interval
  1.96 * std / sqrt(n) over episodes (the official `get_score`).
- Frozen features: `tessera-resnet-s` (pretrained on the base datasets' train classes only) for every method.
- Universal setting: trained methods (CAML, SNAIL, GPICL, MetaQDA) were meta-trained on the base datasets only;
  held-out datasets (glyphs-eval, icons, art) are never seen before test time. Base datasets are evaluated on their
  unseen test classes.
- In-domain reference (P>M>F-style): the feature network meta-trained as a ProtoNet on the held-out dataset's own
  train classes (`tessera/recipes/pmf_reference.py`), then evaluated like ProtoNet.
- Cross-check: easyfsl's PrototypicalNetworks and SimpleShot on the identical episodes (agreement of predictions).
- Ablations: ELMES vs learned labels; exact vs amortized attention (accuracy and measured speed); feature extractor
  (tessera-resnet-s vs its untrained architecture vs raw pixels, each with ProtoNet and a CAML trained on it with
  the same small budget).
Trained models are read from `runs/<name>/final` (train them with `tessera icl train --config configs/icl/<name>.yaml`
or pass `--train-missing`). A method whose model is missing is reported as missing, never silently dropped.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tessera.features import load_extractor  # noqa: E402
from tessera.icl import baselines as bl  # noqa: E402
from tessera.icl.embeddings import EmbeddedSet, embed_dataset, embed_images  # noqa: E402
from tessera.icl.episodes import Episode, fixed_episodes  # noqa: E402
from tessera.icl.suite import BASE_DATASETS, DATASETS, HELDOUT_DATASETS, SuiteConfig, load_suite_dataset, suite_manifest  # noqa: E402
from tessera.icl.zoo import load_model  # noqa: E402

Method = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

# (display name, run folder, config file) of every trained model the benchmark uses.
TRAINED = {
    "CAML": ("caml-s", "caml_s.yaml"),
    "CAML (amortized)": ("caml-s-amortized", "caml_s_amortized.yaml"),
    "CAML (learned labels)": ("caml-s-learned", "caml_s_learned.yaml"),
    "SNAIL": ("snail", "snail.yaml"),
    "GPICL": ("gpicl", "gpicl.yaml"),
    "MetaQDA": ("metaqda", "metaqda.yaml"),
}
EXTRACTOR_ABLATION = {
    "tessera-resnet-s": ("caml-xs-tessera-resnet-s", "caml_xs_tessera_resnet_s.yaml"),
    "tessera-resnet-s-untrained": ("caml-xs-tessera-resnet-s-untrained", "caml_xs_tessera_resnet_s_untrained.yaml"),
    "pixels-8": ("caml-xs-pixels-8", "caml_xs_pixels_8.yaml"),
}


def mean_ci(accs: np.ndarray) -> tuple[float, float]:
    """Mean and 95% CI half-width in percent (1.96 * std / sqrt(n), as the official get_score)."""
    accs = 100.0 * np.asarray(accs, dtype=np.float64)
    return float(accs.mean()), float(1.96 * np.sqrt(accs.var() / len(accs)))


def run_method(fn: Method, es: EmbeddedSet, episodes: list[Episode]) -> np.ndarray:
    """Per-episode accuracy of a per-episode method."""
    feats = es.features
    out = np.empty(len(episodes))
    with torch.inference_mode():
        for i, ep in enumerate(episodes):
            s = torch.from_numpy(np.asarray(feats[ep.support], dtype=np.float32))
            q = torch.from_numpy(np.asarray(feats[ep.query], dtype=np.float32))
            pred = fn(s, torch.from_numpy(ep.support_labels), q, ep.way).argmax(1).numpy()
            out[i] = (pred == ep.query_labels).mean()
    return out


def run_caml(model, es: EmbeddedSet, episodes: list[Episode], attention: str | None = None, batch: int = 16) -> tuple[np.ndarray, float]:
    """Per-episode accuracy of a CAML model, episodes of equal shapes batched together; also seconds spent."""
    feats = es.features
    out = np.empty(len(episodes))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, ep in enumerate(episodes):
        groups.setdefault((len(ep.support), len(ep.query)), []).append(i)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for idx in groups.values():
            for j in range(0, len(idx), batch):
                eps = [episodes[k] for k in idx[j : j + batch]]
                s = torch.from_numpy(np.stack([np.asarray(feats[e.support], dtype=np.float32) for e in eps]))
                q = torch.from_numpy(np.stack([np.asarray(feats[e.query], dtype=np.float32) for e in eps]))
                sl = torch.from_numpy(np.stack([e.support_labels for e in eps]))
                pred = model(s, sl, q, attention=attention).logits.argmax(-1).numpy()
                for k, e, p in zip(idx[j : j + batch], eps, pred, strict=True):
                    out[k] = (p == e.query_labels).mean()
    return out, time.perf_counter() - t0


def easyfsl_crosscheck(es: EmbeddedSet, episodes: list[Episode], center: torch.Tensor) -> dict:
    """easyfsl ProtoNet/SimpleShot on the same episodes: their accuracy and agreement with ours."""
    try:
        from easyfsl.methods import PrototypicalNetworks, SimpleShot
    except ImportError:
        return {"available": False}
    from torch import nn

    pn = PrototypicalNetworks(backbone=nn.Identity())
    ss = SimpleShot(backbone=nn.Identity(), feature_centering=center, feature_normalization=2)
    res = {"available": True}
    for name, ef, ours in (("ProtoNet", pn, bl.protonet),
                           ("SimpleShot", ss, lambda s, y, q, w: bl.simpleshot(s, y, q, w, center))):
        accs, agree, total = [], 0, 0
        with torch.no_grad():
            for ep in episodes:
                s = torch.from_numpy(np.asarray(es.features[ep.support], dtype=np.float32))
                q = torch.from_numpy(np.asarray(es.features[ep.query], dtype=np.float32))
                sl = torch.from_numpy(ep.support_labels)
                ef.process_support_set(s, sl)
                p_ef = ef(q).argmax(1).numpy()
                p_us = ours(s, sl, q, ep.way).argmax(1).numpy()
                accs.append((p_ef == ep.query_labels).mean())
                agree += int((p_ef == p_us).sum())
                total += len(p_us)
        m, ci = mean_ci(np.asarray(accs))
        res[name] = {"mean": m, "ci95": ci, "prediction_agreement": agree / total}
    return res


def _load_trained(run: str, config: str, train_missing: bool, quick: bool):
    folder = ROOT / "runs" / run / "final"
    if run == "caml-s" and not folder.is_dir():
        asset = ROOT / "tessera" / "assets" / "icl" / "caml-s"
        if (asset / "model.safetensors").is_file():
            folder = asset
    if not (folder / "config.json").is_file():
        if not train_missing:
            return None, f"missing: train with `tessera icl train --config configs/icl/{config}`"
        from tessera.recipes.train_icl import main as train_main

        over = ["train.progress=false"] + (["train.steps=50", "train.eval_every=0", "export_to=null"] if quick else [])
        train_main(str(ROOT / "configs" / "icl" / config), over, run_dir=str(ROOT / "runs" / run))
    model, doc = load_model(folder)
    return (model, doc), str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder)


def main() -> None:  # noqa: C901 - a report script, read top to bottom
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 episodes, no P>M>F reference")
    ap.add_argument("--episodes", type=int, default=None, help="episodes per (dataset, shot); default 1000 (quick: 100)")
    ap.add_argument("--queries", type=int, default=10, help="queries per class")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--train-missing", action="store_true")
    ap.add_argument("--pmf-steps", type=int, default=300)
    ap.add_argument("--paper-root", help="folder holding the paper's benchmark folders (see tessera.icl.benchmarks)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shared-machine", action="store_true", help="record that other jobs were running (timings)")
    ap.add_argument("--skip-cross-exact", action="store_true",
                    help="do not also run the amortized-trained CAML in exact mode (an extra ablation row; a third of "
                         "the CAML evaluation time)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_eps = args.episodes or (100 if args.quick else 1000)
    t_start = time.time()
    suite_cfg = SuiteConfig()
    ext = load_extractor("tessera-resnet-s")
    sets: dict[str, EmbeddedSet] = {}
    for name in args.datasets:
        try:
            sets[name] = embed_dataset(ext, load_suite_dataset(name, "all", cfg=suite_cfg))
        except ValueError as exc:
            print(f"skipping {name}: {exc}")
    manifest = suite_manifest(suite_cfg)
    base_train = np.concatenate([np.asarray(sets[n].split("train").features) for n in BASE_DATASETS if n in sets])
    center = torch.from_numpy(base_train.mean(0)).float()  # SimpleShot's centring vector: mean base-train feature

    methods: dict[str, Method] = {
        "ProtoNet": bl.protonet,
        "SimpleShot": lambda s, y, q, w: bl.simpleshot(s, y, q, w, center),
        "1-NN": bl.knn,
        "MetaOpt (SVM-CS)": bl.metaopt_svm,
    }
    trained, provenance = {}, {}
    for label, (run, cfgfile) in TRAINED.items():
        got, where = _load_trained(run, cfgfile, args.train_missing, args.quick)
        provenance[label] = where
        if got is not None:
            trained[label] = got

    results: dict = {}
    timing: dict = {}
    episodes_by: dict = {}
    for name, es in sets.items():
        test = es.split("test")
        for shot in (1, 5):
            key = f"{name}/5w{shot}s"
            eps = fixed_episodes(test.labels, 5, shot, args.queries, n_eps, seed=args.seed + shot, min_query=1)
            episodes_by[key] = (test, eps)
            row = {}
            for mname, fn in methods.items():
                row[mname] = run_method(fn, test, eps)
            for mname, (model, doc) in trained.items():
                if doc["kind"] == "caml":
                    row[mname], secs = run_caml(model, test, eps)
                    timing[(mname, key)] = secs
                else:
                    row[mname] = run_method(lambda s, y, q, w, m=model: m(s, y, q, w), test, eps)
            if "CAML" in trained:  # cross-mode: the exact-trained model run with the amortized mask, and vice versa
                row["CAML run amortized (exact-trained)"], timing[("CAML amortized-run", key)] = run_caml(trained["CAML"][0], test, eps, "amortized")
            if "CAML (amortized)" in trained and not args.skip_cross_exact:
                row["CAML (amortized) run exact"], _ = run_caml(trained["CAML (amortized)"][0], test, eps, "exact")
            results[key] = row
            print(key, {k: round(100 * float(v.mean()), 1) for k, v in row.items()}, flush=True)

    # In-domain meta-trained reference on held-out datasets (P>M>F-style).
    pmf = {}
    if not args.quick:
        from tessera.recipes.pmf_reference import finetune_protonet

        for name in HELDOUT_DATASETS:
            if name not in sets:
                continue
            full = load_suite_dataset(name, "all", cfg=suite_cfg)
            tuned, losses = finetune_protonet(ext, full.split("train"), steps=args.pmf_steps, seed=0)
            emb = embed_images(tuned, full.to_tensor, len(full), progress=False)
            tuned_set = EmbeddedSet(name, emb, np.asarray(full.labels), list(full.class_names), list(full.meta["class_split"])).split("test")
            for shot in (1, 5):
                key = f"{name}/5w{shot}s"
                _, eps = episodes_by[key]
                results[key]["P>M>F-style (in-domain)"] = run_method(bl.protonet, tuned_set, eps)
            pmf[name] = {"steps": args.pmf_steps, "loss_first_50": float(np.mean(losses[:50])), "loss_last_50": float(np.mean(losses[-50:]))}

    crosscheck = {key: easyfsl_crosscheck(test, eps, center) for key, (test, eps) in episodes_by.items()}

    # Feature-extractor ablation on held-out datasets: ProtoNet and a small CAML per extractor.
    extractor_rows = {}
    for ename, (run, cfgfile) in EXTRACTOR_ABLATION.items():
        e = ext if ename == "tessera-resnet-s" else load_extractor(ename)
        got, where = _load_trained(run, cfgfile, args.train_missing, args.quick)
        for name in HELDOUT_DATASETS:
            if name not in sets:
                continue
            es_e = embed_dataset(e, load_suite_dataset(name, "all", cfg=suite_cfg)).split("test")
            for shot in (1, 5):
                key = f"{name}/5w{shot}s"
                _, eps = episodes_by[key]
                cell = {"ProtoNet": mean_ci(run_method(bl.protonet, es_e, eps))}
                cell["CAML-xs"] = mean_ci(run_caml(got[0], es_e, eps)[0]) if got else None
                extractor_rows.setdefault(ename, {"model": where})[key] = cell

    # Paper benchmarks, when their folders are present.
    paper = {}
    if args.paper_root:
        from tessera.icl.benchmarks import PAPER_BENCHMARKS, load_benchmark

        for bname in PAPER_BENCHMARKS:
            try:
                bimg = load_benchmark(bname, args.paper_root, "test")
            except FileNotFoundError as exc:
                paper[bname] = {"available": False, "reason": str(exc)}
                continue
            feats = embed_images(ext, bimg.loader(ext.input_size, ext.crop_pct), len(bimg), progress=False)
            bes = EmbeddedSet(bname, feats, bimg.labels, bimg.class_names)
            paper[bname] = {"available": True, "layout": bimg.layout}
            for shot in (1, 5):
                eps = fixed_episodes(bes.labels, 5, shot, 16, n_eps, seed=args.seed + shot)
                cell = {m: mean_ci(run_method(fn, bes, eps)) for m, fn in methods.items()}
                for mname, (model, doc) in trained.items():
                    cell[mname] = mean_ci(run_caml(model, bes, eps)[0] if doc["kind"] == "caml"
                                          else run_method(lambda s, y, q, w, m=model: m(s, y, q, w), bes, eps))
                paper[bname][f"5w{shot}s"] = cell

    # -- report -----------------------------------------------------------------------------------------------------
    summary = {key: {m: mean_ci(v) for m, v in row.items()} for key, row in results.items()}
    gap_rows = []
    for key, row in results.items():
        if "CAML" in row and "CAML (amortized)" in row:
            d = 100 * (row["CAML (amortized)"] - row["CAML"])
            gap_rows.append({"setting": key, "exact": 100 * row["CAML"].mean(), "amortized": 100 * row["CAML (amortized)"].mean(),
                             "paired_ci95": float(1.96 * d.std() / np.sqrt(len(d)))})
    speed = {}
    for key in results:
        if ("CAML", key) in timing and ("CAML (amortized)", key) in timing:
            speed[key] = {"exact_s": timing[("CAML", key)], "amortized_s": timing[("CAML (amortized)", key)]}
    doc = {
        "command": "python benchmarks/icl_universal.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads, "shared": args.shared_machine},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "protocol": {"way": 5, "shots": [1, 5], "episodes": n_eps, "queries_per_class": args.queries, "seed": args.seed, "split": "test classes"},
        "suite": {"key": suite_cfg.key(), "reduced": manifest["reduced"], "missing_debian_packages": manifest["missing_debian_packages"],
                  "datasets": manifest["datasets"]},
        "extractor": ext.name,
        "models": provenance,
        "results": summary,
        "exact_vs_amortized": {"rows": gap_rows, "eval_seconds": speed},
        "easyfsl_crosscheck": crosscheck,
        "pmf_reference": pmf,
        "extractor_ablation": extractor_rows,
        "paper_benchmarks": paper,
        "wall_seconds": round(time.time() - t_start, 1),
    }
    out = ROOT / "docs" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "icl_universal.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "icl_universal.md").write_text(render(doc))
    print(render(doc))


def render(doc: dict) -> str:
    p = doc["protocol"]
    s = doc["suite"]
    lines = [
        "# Universal few-shot evaluation on the embedded suite",
        "",
        f"Command: `{doc['command'].strip()}` · wall {doc['wall_seconds']} s · torch {doc['versions']['torch']} · "
        f"{doc['machine']['threads']} CPU threads{' (shared machine)' if doc['machine']['shared'] else ''}.",
        f"Protocol: 5-way, {p['episodes']} episodes per setting from the test classes, {p['queries_per_class']} queries "
        f"per class (fewer for icon classes with 6-8 drawings), seed {p['seed']}; the same episodes for every method; "
        "mean accuracy (%) ± 95% CI (1.96·std/√n). Frozen features: `" + doc["extractor"] + "`.",
        f"Suite `{s['key']}`" + (" — **REDUCED build, missing " + ", ".join(s["missing_debian_packages"]) + "**" if s["reduced"] else " (full build)") + ".",
        "",
        "| dataset | role | classes (test) | images |",
        "|---|---|---|---|",
    ]
    for name, d in s["datasets"].items():
        if d.get("available"):
            lines.append(f"| {name} | {d['role']} | {d['classes']} ({d['classes_per_split']['test']}) | {d['images']} |")
    keys = list(doc["results"])
    methods = []
    for key in keys:
        for m in doc["results"][key]:
            if m not in methods:
                methods.append(m)
    main_methods = [m for m in methods if " run " not in m]
    for shot in (1, 5):
        ks = [k for k in keys if k.endswith(f"5w{shot}s")]
        lines += ["", f"## 5-way {shot}-shot", "", "| method | " + " | ".join(k.split("/")[0] + (" †" if DATASETS.get(k.split('/')[0]) and DATASETS[k.split('/')[0]].role == 'heldout' else "") for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for m in main_methods:
            cells = []
            for k in ks:
                v = doc["results"][k].get(m)
                cells.append(f"{v[0]:.1f} ± {v[1]:.1f}" if v else "—")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "† held-out dataset: never seen by the feature network or any meta-trained model before test time. "
              "P>M>F-style is the in-domain upper line (meta-trained on that dataset's own train classes); — = not applicable.", ""]
    lines += ["## Models", ""] + [f"- {k}: {v}" for k, v in doc["models"].items()] + [""]
    gap = doc["exact_vs_amortized"]
    if gap["rows"]:
        lines += ["## Ablation: exact vs amortized attention", "", "| setting | exact | amortized | difference | paired 95% CI |", "|---|---|---|---|---|"]
        for r in gap["rows"]:
            lines.append(f"| {r['setting']} | {r['exact']:.2f} | {r['amortized']:.2f} | {r['amortized'] - r['exact']:+.2f} | ±{r['paired_ci95']:.2f} |")
        if gap["eval_seconds"]:
            tot_e = sum(v["exact_s"] for v in gap["eval_seconds"].values())
            tot_a = sum(v["amortized_s"] for v in gap["eval_seconds"].values())
            lines += ["", f"Evaluation time over all settings: exact {tot_e:.1f} s, amortized {tot_a:.1f} s ({tot_e / max(tot_a, 1e-9):.1f}x); "
                      "see docs/results/icl_speed.md for controlled timings."]
        cross = [m for m in methods if " run " in m]
        if cross:
            lines += ["", "Cross-mode (a model run with the other mask, untrained for it):", "", "| setting | " + " | ".join(cross) + " |", "|---|" + "---|" * len(cross)]
            for k in keys:
                lines.append(f"| {k} | " + " | ".join(f"{doc['results'][k][c][0]:.1f}" if c in doc["results"][k] else "—" for c in cross) + " |")
        lines.append("")
    if any("CAML (learned labels)" in doc["results"][k] for k in keys):
        lines += ["## Ablation: ELMES vs learned label embeddings", "", "| setting | ELMES | learned |", "|---|---|---|"]
        for k in keys:
            r = doc["results"][k]
            if "CAML" in r and "CAML (learned labels)" in r:
                lines.append(f"| {k} | {r['CAML'][0]:.1f} ± {r['CAML'][1]:.1f} | {r['CAML (learned labels)'][0]:.1f} ± {r['CAML (learned labels)'][1]:.1f} |")
        lines.append("")
    if doc["extractor_ablation"]:
        lines += ["## Ablation: feature extractor (held-out datasets)", "", "| extractor | setting | ProtoNet | CAML-xs (same budget) |", "|---|---|---|---|"]
        for ename, rows in doc["extractor_ablation"].items():
            for k, cell in rows.items():
                if k == "model":
                    continue
                c = cell["CAML-xs"]
                lines.append(f"| {ename} | {k} | {cell['ProtoNet'][0]:.1f} ± {cell['ProtoNet'][1]:.1f} | " + (f"{c[0]:.1f} ± {c[1]:.1f}" if c else "missing") + " |")
        lines.append("")
    cc = doc["easyfsl_crosscheck"]
    if cc and any(v.get("available") for v in cc.values()):
        lines += ["## Cross-check with easyfsl (identical episodes)", "", "| setting | easyfsl ProtoNet | agreement | easyfsl SimpleShot | agreement |", "|---|---|---|---|---|"]
        for k, v in cc.items():
            if v.get("available"):
                lines.append(f"| {k} | {v['ProtoNet']['mean']:.1f} | {100 * v['ProtoNet']['prediction_agreement']:.2f}% | {v['SimpleShot']['mean']:.1f} | {100 * v['SimpleShot']['prediction_agreement']:.2f}% |")
        lines.append("")
    if doc["paper_benchmarks"]:
        lines += ["## Paper benchmarks", ""]
        for b, v in doc["paper_benchmarks"].items():
            lines.append(f"- {b}: " + ("available" if v.get("available") else "not found"))
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
