"""Import direction (CONTRIBUTING.md): models never import data/train/recipes/cli; the loop never imports a model."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tessera"
MODELS = {"layers", "quantize", "features", "tokenizer", "lm", "icl"}
FORBIDDEN = {
    **{m: {"data", "train", "recipes", "cli", "serve"} for m in MODELS},
    "data": {"train", "recipes", "cli", "serve"},
    "train": {"recipes", "cli", "serve"} | (MODELS - {"quantize", "layers"}),
    "config": {"*"},
    "io": {"*"},
    "validate": {"*"},
    "paths": {"*"},
}


def _part(module_path: Path) -> str:
    rel = module_path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    parts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.startswith("tessera."):
                parts.add(name.split(".")[1])
    return parts


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_import_direction(path):
    part = _part(path)
    rules = FORBIDDEN.get(part, set())
    imported = _imported_parts(path) - {part}
    bad = imported if "*" in rules else imported & rules
    assert not bad, f"{path.relative_to(PKG)} ({part}) must not import tessera.{sorted(bad)}"
