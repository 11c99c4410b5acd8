"""A small static HTML report: a title, sections of text, tables and pictures, links between runs."""

from __future__ import annotations

import html
from pathlib import Path

from gandissect.io import write_text

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 2px 10px; border-bottom: 1px solid #eee; }
th { text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { image-rendering: pixelated; max-width: 100%; border: 1px solid #ccc; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; margin-right: 4px; }
"""


def table(header: list[str], rows: list[list]) -> str:
    def cell(value):
        if value is None:
            return '<td class="num">-</td>'
        if isinstance(value, float):
            return f'<td class="num">{value:.4f}</td>'
        if isinstance(value, int):
            return f'<td class="num">{value}</td>'
        return f"<td>{value}</td>"  # already HTML (a swatch or a link) or plain text

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def picture(src: str, caption: str = "", width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    text = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{html.escape(src)}"{size} alt="{html.escape(caption)}">{text}</figure>'


def swatch(rgb) -> str:
    r, g, b = (int(c) for c in rgb)
    return f'<span class="swatch" style="background: rgb({r},{g},{b})"></span>'


def write_report(path: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """Write ``sections`` (heading, HTML body) as one page; returns the path."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<h2>{html.escape(heading)}</h2>\n{body}" for heading, body in sections]
    parts.append("</body></html>\n")
    return write_text(path, "\n".join(parts))
