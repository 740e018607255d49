"""A self-contained HTML report made of sections (text, tables, PNG images embedded as base64), written atomically.

    report = HtmlReport("Tessera demo")
    sec = report.section("Tokenizer: straight-through vs rotation trick")
    sec.paragraph("...")
    sec.table(["estimator", "val MSE"], [["ste", "0.0061"], ["rotation", "0.0055"]])
    sec.image(png_bytes, caption="reconstructions")     # or sec.figure(matplotlib_figure, caption=...)
    path = report.write("runs/demo/report.html")

The file has no external references (styles inline, images as data URIs), so it can be mailed or archived as is.
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["HtmlReport", "Section", "png_bytes"]

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1000px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; } th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figcaption { font-size: .88em; color: #555; }
img { image-rendering: pixelated; max-width: 100%; } .meta { color: #666; font-size: .85em; }
nav a { margin-right: 1em; }
"""


def png_bytes(figure: Any, dpi: int = 90) -> bytes:
    """PNG bytes of a matplotlib figure (closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buf.getvalue()


@dataclass
class Section:
    """One titled part of the report; blocks are rendered in the order they are added."""

    title: str
    anchor: str
    blocks: list[str] = field(default_factory=list)

    def paragraph(self, text: str) -> Section:
        """A paragraph of plain text (escaped)."""
        self.blocks.append(f"<p>{html.escape(text)}</p>")
        return self

    def html(self, raw: str) -> Section:
        """Raw HTML (trusted, produced by Tessera code)."""
        self.blocks.append(raw)
        return self

    def table(self, header: list[str], rows: list[list[Any]], caption: str = "") -> Section:
        """A table of escaped cells."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.blocks.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def image(self, png: bytes, caption: str = "", width: int | None = None) -> Section:
        """A PNG image embedded as a data URI."""
        data = base64.b64encode(png).decode("ascii")
        style = f' style="width:{width}px"' if width else ""
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}"{style}>{cap}</figure>')
        return self

    def figure(self, fig: Any, caption: str = "", dpi: int = 90) -> Section:
        """A matplotlib figure, rendered to PNG and embedded."""
        return self.image(png_bytes(fig, dpi=dpi), caption)


class HtmlReport:
    """An HTML document made of sections (see the module docstring)."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self.sections: list[Section] = []

    def section(self, title: str) -> Section:
        anchor = "".join(ch if ch.isalnum() else "-" for ch in title.lower()).strip("-") or f"s{len(self.sections)}"
        sec = Section(title, anchor)
        self.sections.append(sec)
        return sec

    def render(self) -> str:
        nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in self.sections)
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
            f'<p class="meta">{html.escape(self.subtitle)} Generated {time.strftime("%Y-%m-%d %H:%M:%S")}.</p>' if self.subtitle
            else f'<p class="meta">Generated {time.strftime("%Y-%m-%d %H:%M:%S")}.</p>',
            f"<nav>{nav}</nav>" if len(self.sections) > 1 else "",
        ]
        for s in self.sections:
            parts.append(f'<h2 id="{s.anchor}">{html.escape(s.title)}</h2>')
            parts += s.blocks
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report atomically (temporary file, then rename) and return its path."""
        from tessera.io import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, self.render().encode("utf-8"))
        return path
