"""`tessera features ...`: list extractors, pretrain Tessera's feature network."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("features", help="frozen image feature extractors")
    sub = p.add_subparsers(dest="verb", metavar="<verb>")

    ls = sub.add_parser("list", help="registered extractors and accepted name prefixes")
    ls.set_defaults(handler=_list)

    pre = sub.add_parser("pretrain", help="pretrain a Tessera feature network on the suite's base datasets")
    pre.add_argument("--config", help="YAML run file (configs/features/*.yaml)")
    pre.add_argument("--run-dir", help="run folder (default runs/<run_name>)")
    pre.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    pre.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100")
    pre.set_defaults(handler=_pretrain)


def _list(args: argparse.Namespace) -> int:
    from tessera.features import asset_folder, list_extractors

    for name in list_extractors():
        shipped = (asset_folder(name) / "model.safetensors").is_file() if ":" not in name else None
        note = "" if shipped is None else ("  (weights shipped)" if shipped else "")
        print(f"{name}{note}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from tessera.recipes.pretrain_features import main

    out = main(args.config, args.overrides, resume=args.resume, run_dir=args.run_dir)
    print(json.dumps(out, indent=2))
    return 0
