"""Small HTML building blocks shared by the renderers, designed for notebooks.

Why inline styles with CSS variables: a result's HTML must survive notebook
sanitising and nbconvert (no ``<style>``, no script), and must read in any
theme.  Colours therefore come from JupyterLab's variables (Notebook 7 has
them too), with fallbacks that inherit the frontend's own text colour where
they are missing (VS Code, nbviewer, GitHub), so nothing is ever drawn in a
fixed dark grey on a dark page.  Measured in JupyterLab 4: body text
(``--jp-content-font-color1``) reads at 15-18:1 in the light and the dark
theme, secondary text (``--jp-content-font-color2``) at 4.6-9:1 on the
output background, warnings (``--jp-warn-color0``) at 3.8-7:1.

JupyterLab styles output tables itself: cells right-aligned, wrapping,
``table-layout: fixed``, zebra rows.  Every cell here states its own
alignment and wrapping; code cells are monospace, ``white-space: pre`` (the
indentation is the code) and left-aligned; each table sits in a block that
scrolls horizontally, so a long line scrolls inside the output instead of
being clipped or wrapped into the next column; numbers are right-aligned
with tabular figures, so columns of MiB line up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

#: Text colours: body, secondary (notes, footers, line numbers, header details), warnings.
FG = "var(--jp-content-font-color1, inherit)"
FG2 = "var(--jp-content-font-color2, inherit)"
WARN = "var(--jp-warn-color0, #b35900)"
BORDER = "var(--jp-border-color2, rgba(128,128,128,.35))"
MONO = "var(--jp-code-font-family, ui-monospace, SFMono-Regular, Menlo, Consolas, monospace)"

#: Bar colours, translucent so the text on them keeps the theme's contrast in light and dark.
GAIN = "rgba(220,60,40,.30)"
RELEASE = "rgba(40,160,80,.30)"
PEAK = "rgba(230,140,20,.30)"
NEUTRAL = "rgba(76,120,168,.35)"

SCROLL_STYLE = "overflow-x:auto;max-width:100%"
TABLE_STYLE = f"border-collapse:collapse;font-size:0.9em;margin:0.3em 0;color:{FG};table-layout:auto;width:auto"
_BASE = f"padding:2px 8px;border-bottom:1px solid {BORDER};vertical-align:top;color:{FG}"
CELL_STYLE = _BASE + ";text-align:left"
NUM_STYLE = _BASE + ";text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap"
CODE_STYLE = CELL_STYLE + f";font-family:{MONO};white-space:pre"
LABEL_STYLE = CELL_STYLE + ";white-space:nowrap"
HEAD_STYLE = f"padding:2px 8px;border-bottom:1px solid {BORDER};vertical-align:bottom;white-space:nowrap;color:{FG}"
#: Captions are a block above the table, not a <caption>: a long caption must not widen a narrow table.
CAPTION_STYLE = f"text-align:left;font-weight:bold;color:{FG};margin:0.4em 0 0.1em 0"


def e(text: object) -> str:
    """Escape anything for HTML text and attribute context."""
    return escape(str(text), quote=True)


def head(name: str, detail: str = "", title: str = "", numeric: bool = False) -> str:
    """A header cell of at most two short lines: ``name`` and, smaller below it, ``detail``
    (the metric or unit); ``title`` is the tooltip with the long explanation.  Escapes its text."""
    align = "right" if numeric else "left"
    tip = f' title="{e(title)}"' if title else ""
    second = f'<br><span style="font-weight:normal;font-size:0.85em;color:{FG2}">{e(detail)}</span>' if detail else ""
    return f'<th style="{HEAD_STYLE};text-align:{align}"{tip}>{e(name)}{second}</th>'


def split_head(text: str, numeric: bool = False) -> str:
    """:func:`head` of a long name such as ``Increment (RSS, peak − baseline)``: the name on the
    first line, the part in brackets (shortened to its first phrase) below it, all of it in the
    tooltip."""
    name, _, rest = text.partition(" (")
    detail = rest.rstrip(")").split(",")[0].strip()
    return head(name, detail, text if rest else "", numeric=numeric)


def scroll(inner: str) -> str:
    """A block that scrolls horizontally when ``inner`` is wider than the output."""
    return f'<div style="{SCROLL_STYLE}">{inner}</div>'


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Sequence[bool] | None = None,
    caption: str | None = None,
    css_class: str = "ipymem",
    styles: Sequence[str | None] | None = None,
) -> str:
    """A table of already-escaped cell HTML in a horizontally scrolling block.

    ``headers`` are plain text or ready ``<th>`` cells (from :func:`head`);
    ``numeric`` right-aligns columns; ``styles`` overrides a column's cell style
    (e.g. :data:`CODE_STYLE` for source).
    """
    numeric = numeric or [False] * len(headers)
    styles = styles or [None] * len(headers)
    out = [f'<table class="{e(css_class)}" style="{TABLE_STYLE}">', "<thead><tr>"]
    for h, num in zip(headers, numeric, strict=False):
        out.append(
            h if h.startswith("<th") else f'<th style="{HEAD_STYLE};text-align:{"right" if num else "left"}">{h}</th>'
        )
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for cell, num, style in zip(row, numeric, styles, strict=False):
            out.append(f'<td style="{style or (NUM_STYLE if num else LABEL_STYLE)}">{cell}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return caption_block(caption) + scroll("".join(out))


def caption_block(caption: str | None) -> str:
    """The line above a table that says what it is (already-escaped HTML)."""
    return f'<div style="{CAPTION_STYLE}">{caption}</div>' if caption else ""


def code(text: str, limit: int = 200) -> str:
    """Escaped inline code, shortened to ``limit`` characters, on the theme's background (none of its own)."""
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f'<code style="white-space:pre;font-family:{MONO};background:transparent;color:inherit">{e(text)}</code>'


def notice(text: str, color: str = WARN) -> str:
    """One line under a table: a warning by default, ``color=FG2`` for a footer or a note."""
    return f'<div style="color:{color};margin:0.2em 0;text-align:left">{e(text)}</div>'


def footer(text: str) -> str:
    """A secondary line (what was measured, how, notes): the theme's secondary text colour."""
    return notice(text, color=FG2)


def caption_for(magic: str, statement: str, setup: str | None = None) -> str:
    """What was measured, in a few words: ``%memit <code>stmt</code>``, or for a cell of several
    lines ``%%memit cell of 3 lines``; the setup line, when there was one, is shown as setup."""
    lines = [line for line in statement.strip().splitlines() if line.strip()]
    if len(lines) > 1:
        what = f"%%{magic} cell of {len(lines)} lines"
    else:
        what = ("%%" if setup else "%") + f"{magic} " + code(lines[0] if lines else "", 120)
    if setup:
        what += f' <span style="font-weight:normal;color:{FG2}">· setup (not measured): {code(setup, 80)}</span>'
    return what


def is_blank(value: int | float | None, scale_unit: float, precision: int) -> bool:
    """True when ``value`` shows as zero at ``precision`` decimals of ``scale_unit``: nothing to draw."""
    return value is None or abs(value) / scale_unit < 0.5 * 10**-precision


def bar_style(
    value: int | float | None, scale: int | float, color: str, base: str = NUM_STYLE, precision: int = 2
) -> str:
    """Style of a numeric cell with a bar behind the number, proportional to ``|value| / scale``;
    no bar for a value that reads as zero."""
    if value is None or scale <= 0 or is_blank(value, 1024 * 1024, precision):
        return base
    pct = min(100.0, 100.0 * abs(value) / scale)
    return f"{base};background:linear-gradient(to left,{color} {pct:.1f}%,transparent {pct:.1f}%)"
