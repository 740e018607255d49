"""`tessera icl ...`: build the few-shot suite, train CAML or a baseline, classify your own images."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("icl", help="CAML in-context few-shot image classification")
    sub = p.add_subparsers(dest="verb", metavar="<verb>")

    b = sub.add_parser("build-suite", help="build the embedded few-shot suite (fonts, icons, shapes, photo/art regions)")
    b.add_argument("--datasets", nargs="*", help="subset of datasets (default: all six)")
    b.add_argument("--pip-only", action="store_true", help="use only pip-installed sources (the reduced suite)")
    b.add_argument("--force", action="store_true", help="rebuild datasets that already exist")
    b.set_defaults(handler=_build_suite)

    t = sub.add_parser("train", help="episodic pretraining on cached embeddings of the base datasets")
    t.add_argument("--config", help="YAML run file (configs/icl/*.yaml)")
    t.add_argument("--run-dir", help="run folder (default runs/<run_name>)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 model.attention=amortized")
    t.set_defaults(handler=_train)

    pr = sub.add_parser("predict", help="classify query images from a folder of labelled examples (no fine-tuning)")
    pr.add_argument("--support", required=True, help="folder with one subfolder of images per class")
    pr.add_argument("--query", required=True, nargs="+", help="query image files and/or folders")
    pr.add_argument("--checkpoint", help="CAML checkpoint folder (default: the CAML shipped with Tessera)")
    pr.add_argument("--attention", choices=("exact", "amortized"), help="override the checkpoint's attention pattern")
    pr.add_argument("--format", choices=("json", "csv"), default="json", help="format of the saved predictions")
    pr.add_argument("--output", help="where to save them (default icl_predictions.<format>)")
    pr.set_defaults(handler=_predict)


def _build_suite(args: argparse.Namespace) -> int:
    from tessera.icl.suite import SuiteConfig, build_suite, suite_manifest

    cfg = SuiteConfig(system=not args.pip_only)
    folder = build_suite(cfg, args.datasets or None, force=args.force)
    m = suite_manifest(cfg)
    print(f"suite: {folder}{'  (REDUCED: missing ' + ', '.join(m['missing_debian_packages']) + ')' if m['reduced'] else ''}")
    for name, d in m["datasets"].items():
        if d.get("available"):
            print(f"  {name:12s} {d['role']:8s} {d['classes']:5d} classes {d['images']:6d} images  splits {d['classes_per_split']}")
        else:
            print(f"  {name:12s} {d['role']:8s} unavailable in this build")
    return 0


def _train(args: argparse.Namespace) -> int:
    from tessera.recipes.train_icl import main
    from tessera.train.runtime import is_main_process, shutdown

    out = main(args.config, args.overrides, resume=args.resume, run_dir=args.run_dir)
    main_rank = is_main_process()
    shutdown()
    if main_rank:  # under torchrun only rank 0 reports
        print(json.dumps(out, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tessera.io import atomic_write_bytes
    from tessera.recipes.icl_predict import predict_folders

    result, meta = predict_folders(args.support, args.query, args.checkpoint, args.attention)
    width = max(len(str(f)) for f in result.files)
    for row in result.rows():
        probs = "  ".join(f"{c}={p:.3f}" for c, p in row["probabilities"].items())
        print(f"{row['file']:<{width}}  {row['label']:<16}  {probs}")
    acc = result.accuracy()
    if acc is not None:
        print(f"accuracy on labelled queries: {100 * acc:.1f}%")
    out = Path(args.output or f"icl_predictions.{args.format}")
    text = result.to_json(meta) if args.format == "json" else result.to_csv()
    atomic_write_bytes(out, text.encode())
    print(f"saved {len(result.files)} predictions to {out}", file=sys.stderr)
    return 0
