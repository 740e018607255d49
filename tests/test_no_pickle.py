"""No pickle loads of user files anywhere in the package (and benchmarks/): safetensors and JSON only (static scan of the source).

Refused: `pickle.load(s)` / `cPickle` / `dill` / `joblib.load`, `torch.load` without `weights_only=True`,
`np.load(..., allow_pickle=True)` (NumPy's default refuses pickles), `pickle.Unpickler(...)` used directly, and any
`pickle.Unpickler` subclass that does not override `find_class` (a restricted unpickler that can only rebuild an
allow-list of types is allowed: tessera/data/folders.py reads CIFAR's NumPy-only batch files that way).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "tessera"
SOURCES = sorted(PKG.rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))


def _name(node: ast.AST) -> str:
    """Dotted name of a call target, e.g. 'torch.load', 'pickle.Unpickler'."""
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def pickle_loads(source: str, filename: str = "<src>") -> list[str]:
    """The pickle-loading call sites of a Python source (line: reason)."""
    tree = ast.parse(source, filename=filename)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            if name in ("pickle.load", "pickle.loads", "cPickle.load", "cPickle.loads", "dill.load", "dill.loads",
                        "joblib.load", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "pd.read_pickle",
                        "pandas.read_pickle"):
                found.append(f"{node.lineno}: {name}")
            elif name == "torch.load" or name.endswith(".torch.load"):
                if not _is_true(kw.get("weights_only")):
                    found.append(f"{node.lineno}: torch.load without weights_only=True")
            elif name in ("np.load", "numpy.load") and _is_true(kw.get("allow_pickle")):
                found.append(f"{node.lineno}: np.load(allow_pickle=True)")
        elif isinstance(node, ast.ImportFrom) and node.module in ("pickle", "cPickle", "_pickle", "dill"):
            bad = [a.name for a in node.names if a.name in ("load", "loads")]
            if bad:
                found.append(f"{node.lineno}: from {node.module} import {', '.join(bad)}")
        elif isinstance(node, ast.ClassDef):
            bases = {_name(b) for b in node.bases}
            if bases & {"pickle.Unpickler", "Unpickler"}:
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                if "find_class" not in methods:
                    found.append(f"{node.lineno}: Unpickler subclass {node.name} without a restricting find_class")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pickle_loads(path):
    found = pickle_loads(path.read_text(), str(path))
    assert not found, f"{path.relative_to(ROOT)} loads pickles: {found}"


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.load(f)",
        "import pickle\nx = pickle.loads(b)",
        "from pickle import load\nload(f)",
        "import torch\ntorch.load('m.pt')",
        "import torch\ntorch.load('m.pt', weights_only=False)",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "import pickle\nclass U(pickle.Unpickler):\n    pass",
        "import pickle\npickle.Unpickler(f).load()",
    ],
)
def test_the_scan_catches_each_pattern(snippet):
    assert pickle_loads(snippet)


def test_the_scan_allows_safe_forms():
    safe = (
        "import torch, numpy as np, pickle\n"
        "torch.load('m.pt', map_location='cpu', weights_only=True)\n"
        "np.load('a.npy')\nnp.load('a.npy', allow_pickle=False, mmap_mode='r')\n"
        "class R(pickle.Unpickler):\n    def find_class(self, m, n):\n        raise pickle.UnpicklingError(n)\n"
        "pickle.dumps(1)\n"
    )
    assert pickle_loads(safe) == []
