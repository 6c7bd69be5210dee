"""A :class:`~ipymem.models.compare.Comparison` as aligned text and as an HTML table with a bar per result."""

from __future__ import annotations

from ..models.compare import BYTES, Comparison, Metric
from ..units import fmt_bytes, fmt_seconds
from ._html import LABEL_STYLE, NEUTRAL, NUM_STYLE, TABLE_STYLE, bar_style, caption_block, e, head, scroll, split_head

RATIO = "vs first"


def _cell(value: int | float | None, metric: Metric, precision: int) -> str:
    if value is None:
        return "n/a"
    return fmt_bytes(value, precision, sign=metric.signed) if metric.unit == BYTES else fmt_seconds(value)


def _ratio(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def _rows(comparison: Comparison, precision: int) -> list[list[str]]:
    rows = []
    for label, values, ratio, outcome in zip(
        comparison.labels, comparison.values, comparison.ratios(), comparison.outcomes, strict=True
    ):
        cells = [_cell(v, m, precision) for v, m in zip(values, comparison.metrics, strict=True)]
        rows.append([label + ("" if outcome == "ok" else f" ({outcome})"), cells[0], _ratio(ratio), *cells[1:]])
    return rows


def _headers(comparison: Comparison) -> list[str]:
    names = [m.name for m in comparison.metrics]
    return ["Result", names[0], RATIO, *names[1:]]


def compare_text(comparison: Comparison, precision: int = 2) -> str:
    """Aligned columns, one row per result; the ratio column divides the first figure by the first result's."""
    headers = _headers(comparison)
    rows = _rows(comparison, precision)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  " + "  ".join(cells).rstrip()

    out = [f"{comparison.kind} comparison: {RATIO} = {comparison.metrics[0].name} / the first result's", fmt(headers)]
    out.append("  " + "=" * (sum(widths) + 2 * (len(widths) - 1)))
    out.extend(fmt(r) for r in rows)
    return "\n".join(out)


def compare_html(comparison: Comparison, precision: int = 2) -> str:
    """One row per result, a bar behind the headline figure scaled to the largest; escaped, no script."""
    headers = _headers(comparison)
    rows = _rows(comparison, precision)
    headline = [v[0] for v in comparison.values]
    scale = max([abs(v) for v in headline if v is not None] + [0])
    heads = [head(headers[0])] + [
        head(h, title=f"{comparison.metrics[0].name} / the first result's", numeric=True)
        if h == RATIO
        else split_head(h, numeric=True)
        for h in headers[1:]
    ]
    body = []
    for row, value in zip(rows, headline, strict=True):
        cells = [f'<td style="{LABEL_STYLE}">{e(row[0])}</td>']
        cells.append(f'<td style="{bar_style(value, scale, NEUTRAL)}">{e(row[1])}</td>')
        cells.extend(f'<td style="{NUM_STYLE}">{e(c)}</td>' for c in row[2:])
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"{e(comparison.kind)} comparison · {e(RATIO)} = {e(comparison.metrics[0].name)} / the first result's"
    table = (
        f'<table class="ipymem" style="{TABLE_STYLE}">'
        f"<thead><tr>{''.join(heads)}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
    return f'<div class="ipymem-compare">{caption_block(caption)}{scroll(table)}</div>'
