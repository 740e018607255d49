"""`tessera <part> <verb> [--config X.yaml] [a.b=c ...]`: the command-line entry point.

Each part registers its own verbs from a module in `tessera/recipes/` (`register(subparsers)`), so this file only
lists the modules. Modules are imported when the CLI starts; heavy imports inside them belong in the handler
functions so `tessera --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "build_parser"]

# Each module defines `register(subparsers: argparse._SubParsersAction) -> None`.
_COMMAND_MODULES = (
    "tessera.recipes.demo",
    "tessera.recipes.data_cli",
    "tessera.recipes.tokenizer_cli",
    "tessera.recipes.icl_cli",
    "tessera.recipes.features_cli",
    "tessera.recipes.lm_cli",
    "tessera.recipes.serve_cli",
)


def build_parser() -> argparse.ArgumentParser:
    from tessera import __version__

    parser = argparse.ArgumentParser(
        prog="tessera",
        description="Multimodal in-context learning on discrete visual tokens.",
    )
    parser.add_argument("--version", action="version", version=f"tessera {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # this part is not built in this version
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        # Clear one-line errors for bad input; `-v` shows the traceback.
        if args.verbose:
            raise
        print(f"tessera: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
