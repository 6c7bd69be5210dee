"""Small HTML building blocks shared by the renderers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

TABLE_STYLE = "border-collapse:collapse;font-size:0.9em;margin:0.3em 0"
CELL_STYLE = "padding:2px 8px;border-bottom:1px solid #ddd"
NUM_STYLE = CELL_STYLE + ";text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap"


def e(text: object) -> str:
    """Escape anything for HTML text and attribute context."""
    return escape(str(text), quote=True)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Sequence[bool] | None = None,
    caption: str | None = None,
    css_class: str = "ipymem",
) -> str:
    """A table of already-escaped cell HTML; ``numeric`` right-aligns columns."""
    numeric = numeric or [False] * len(headers)
    out = [f'<table class="{e(css_class)}" style="{TABLE_STYLE}">']
    if caption:
        out.append(f'<caption style="caption-side:top;text-align:left;font-weight:bold">{caption}</caption>')
    out.append("<thead><tr>")
    for h, num in zip(headers, numeric, strict=False):
        align = "right" if num else "left"
        out.append(f'<th style="{CELL_STYLE};text-align:{align}">{h}</th>')
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for cell, num in zip(row, numeric, strict=False):
            out.append(f'<td style="{NUM_STYLE if num else CELL_STYLE}">{cell}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def code(text: str, limit: int = 200) -> str:
    """Escaped inline code, shortened to ``limit`` characters."""
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f'<code style="white-space:pre-wrap">{e(text)}</code>'


def notice(text: str, color: str = "#a40") -> str:
    return f'<div style="color:{color};margin:0.2em 0">{e(text)}</div>'


def bar_style(value: int | float | None, scale: int | float, color: str) -> str:
    """Style of a numeric cell with a bar behind the number, proportional to ``|value| / scale``."""
    if value is None or scale <= 0 or value == 0:
        return NUM_STYLE
    pct = min(100.0, 100.0 * abs(value) / scale)
    return f"{NUM_STYLE};background:linear-gradient(to left,{color} {pct:.1f}%,transparent {pct:.1f}%)"
