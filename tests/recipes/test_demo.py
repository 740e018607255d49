"""`tessera demo` trains both estimators through the tokenizer recipe and writes a self-contained HTML report."""

from __future__ import annotations

import re

import pytest

from tessera.recipes.demo import DEMO_SECTIONS, run_demo
from tessera.recipes.html_report import HtmlReport


def test_html_report_is_self_contained(tmp_path):
    report = HtmlReport("t")
    sec = report.section("A <section>")
    sec.paragraph("x < y").table(["a", "b"], [[1, "<2>"]]).image(b"\x89PNG fake", caption="c")
    html = report.write(tmp_path / "r.html").read_text()
    assert "x &lt; y" in html and "&lt;2&gt;" in html and "data:image/png;base64," in html
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # no external references


@pytest.mark.integration
def test_demo_writes_a_report_with_both_estimators(tmp_path, capsys):
    results = run_demo(quick=True, steps=3, num_val=32, num_train=128, out_dir=tmp_path, source="skimage")
    assert [r.estimator for r in results] == ["ste", "rotation"]
    out = capsys.readouterr().out
    assert "val MSE" in out and "usage" in out and "quant. err" in out  # the issue-2 table
    report = tmp_path / "report.html"
    assert f"report: {report.resolve()}" in out
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 3 and "rotation" in html and "<table>" in html
    assert [name for name, _ in DEMO_SECTIONS][0] == "tokenizer"
