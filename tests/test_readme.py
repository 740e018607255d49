"""The README's Python examples run as written, and its Quickstart has exactly the two promised commands."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python examples"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})  # noqa: S102 - our own README


def test_quickstart_has_demo_and_test_commands():
    text = README.read_text()
    for marker in ("<!-- demo-command -->", "<!-- test-command -->"):
        block = re.search(re.escape(marker) + r"\s*```bash\n(.*?)```", text, flags=re.S)
        assert block and len(block.group(1).strip().splitlines()) == 1, marker
    assert "tessera demo" in text and "pytest" in text
