"""`tessera demo`: the tokenizer, CAML and multimodal stages, their cache, and a self-contained HTML report."""

from __future__ import annotations

import re

import pytest

from tessera.recipes.demo import DEMO_SECTIONS, run_demo
from tessera.recipes.html_report import HtmlReport

# What the issue asks the report to show, as the text each section writes (headings, figure and table captions).
REPORT_SECTIONS = {
    "tokenizer heading": "Tokenizer: straight-through vs rotation trick",
    "reconstruction grids": "rotation-trick reconstructions",
    "codebook usage histograms": "Codebook usage histograms",
    "tokenizer training curves": "<figcaption>Training curves.</figcaption>",
    "few-shot heading": "Few-shot classification: CAML vs baselines",
    "few-shot accuracy with CIs vs baselines": "ProtoNet",
    "CAML training curves": "CAML training curves",
    "multimodal heading": "Multimodal model: captions, generated images, in-context classification",
    "generated images": "images the model generated from each scene",
    "captions": "Generated captions of the held-out scenes",
    "in-context classification": "in-context classification, 2-way 1-shot",
    "decoder training curves": "Decoder training curves",
    "versions and settings": "Exact versions on the machine that made this report",
}


def check_report(html: str) -> None:
    missing = [name for name, marker in REPORT_SECTIONS.items() if marker not in html]
    assert not missing, f"report sections missing: {missing}"
    assert re.search(r"<td>\d+\.\d ± \d+\.\d</td>", html), "few-shot accuracies need a 95% interval"
    assert html.count("data:image/png;base64,") >= 6
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # self-contained


def test_html_report_is_self_contained(tmp_path):
    report = HtmlReport("t")
    sec = report.section("A <section>")
    sec.paragraph("x < y").table(["a", "b"], [[1, "<2>"]]).image(b"\x89PNG fake", caption="c")
    html = report.write(tmp_path / "r.html").read_text()
    assert "x &lt; y" in html and "&lt;2&gt;" in html and "data:image/png;base64," in html
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # no external references


@pytest.mark.integration
def test_demo_writes_a_report_with_both_estimators(tmp_path, capsys):
    results = run_demo(quick=True, steps=3, num_val=32, num_train=128, out_dir=tmp_path, source="skimage", parts=("tokenizer",),
                       progress=False)
    assert [r.estimator for r in results] == ["ste", "rotation"]
    out = capsys.readouterr().out
    assert "val MSE" in out and "usage" in out and "quant. err" in out  # the issue-2 table
    report = tmp_path / "report.html"
    assert f"report: {report.resolve()}" in out
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 3 and "rotation" in html and "<table>" in html
    assert [name for name, _ in DEMO_SECTIONS][0] == "tokenizer"
    # A rerun with the same settings reuses the checkpoints.
    run_demo(quick=True, steps=3, num_val=32, num_train=128, out_dir=tmp_path, source="skimage", parts=("tokenizer",), progress=False)
    assert "reusing the rotation tokenizer" in capsys.readouterr().out


def test_cached_stage_reruns_only_when_settings_change(tmp_path):
    from tessera.recipes.demo_stages import cached_stage

    calls = []

    def work(folder):
        calls.append(folder)
        (folder / "model.bin").write_bytes(b"x")
        return {"value": len(calls)}

    first, reused = cached_stage(tmp_path / "s", {"steps": 3}, work)
    assert not reused and first["value"] == 1 and "seconds" in first
    again, reused = cached_stage(tmp_path / "s", {"steps": 3}, work)
    assert reused and again == first and len(calls) == 1
    changed, reused = cached_stage(tmp_path / "s", {"steps": 4}, work)
    assert not reused and changed["value"] == 2
    (tmp_path / "s" / "stage.json").unlink()  # an interrupted stage is never reused
    _, reused = cached_stage(tmp_path / "s", {"steps": 4}, work)
    assert not reused and len(calls) == 3


def test_episode_accuracy_interval():
    from tessera.recipes.demo_icl import episode_accuracy

    out = episode_accuracy([0.5, 0.7, 0.6, 0.8])
    assert out["mean"] == pytest.approx(65.0) and out["episodes"] == 4
    assert out["ci95"] == pytest.approx(1.96 * 12.909944 / 2, rel=1e-5)


@pytest.mark.slow
@pytest.mark.integration
def test_demo_quick_cli_writes_every_report_section(tmp_path, capsys):
    """`tessera demo --quick` end to end, as a newcomer runs it."""
    from tessera.cli import main

    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and "icl: finished" in out and "lm: finished" in out
    check_report((tmp_path / "report.html").read_text())
