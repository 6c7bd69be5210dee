"""The ``%mprun`` report: aligned text (terminals, ``-T`` files) and an HTML table with bars."""

from __future__ import annotations

from ..models.lines import FunctionProfile, LineStats, MprunResult
from ..units import fmt_bytes, fmt_seconds
from ._html import CELL_STYLE, NUM_STYLE, TABLE_STYLE, bar_style, code, e, notice

_STATUS = {
    "interrupted": "! interrupted (KeyboardInterrupt): the figures cover what ran",
    "error": "! the statement raised {error}: the figures cover what ran",
}


def headers(result: MprunResult) -> list[str]:
    """Column headers, memory_profiler's order plus ``Peak``; each memory column names its metric."""
    m = result.params.metric
    return ["Line #", f"Mem usage ({m})", f"Increment ({m})", f"Peak ({m})", "Occurrences", "Line Contents"]


def _cells(line: LineStats, precision: int) -> tuple[str, str, str, str]:
    if not line.executed:
        return "", "", "", ""
    return (
        fmt_bytes(line.mem_after, precision),
        fmt_bytes(line.increment, precision, sign=True),
        fmt_bytes(line.peak, precision),
        str(line.occurrences),
    )


def function_summary(f: FunctionProfile, result: MprunResult, precision: int = 2) -> str:
    calls = f"{f.calls} call" + ("" if f.calls == 1 else "s")
    if f.calls == 0:
        return f"{f.name}: never called"
    if f.recursive:
        calls += f" ({f.activations} with recursion, counted once)"
    parts = [f"{f.name}: {calls}", f"net {fmt_bytes(f.increment, precision, sign=True)}"]
    if f.peak is not None:
        parts.append(f"peak {fmt_bytes(f.peak, precision)} above entry")
    return " · ".join(parts)


def footer(result: MprunResult) -> list[str]:
    p = result.params
    when = f"line events from {p.tracer}"
    if p.min_interval:
        when += f"; memory read at most every {fmt_seconds(p.min_interval)} of run time ({result.readings} readings)"
    lines = [f"{p.metric}: {p.memory_method}; {fmt_seconds(result.duration)}", when]
    status = _STATUS.get(result.outcome)
    if status:
        lines.append(status.format(error=result.error))
    lines.extend(f"note: {n}" for n in result.notes)
    return lines


def mprun_text(result: MprunResult, precision: int = 2) -> str:
    """memory_profiler's layout (``Line #  Mem usage  Increment  Occurrences  Line Contents``) plus Peak."""
    heads = headers(result)
    out: list[str] = []
    for f in result.functions:
        rows = [(str(line.lineno), *_cells(line, precision), line.source) for line in f.lines]
        widths = [max(len(heads[i]), *(len(r[i]) for r in rows)) if rows else len(heads[i]) for i in range(5)]
        head = "  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=False)) + "   " + heads[5]
        out.append(f"Filename: {f.where}")
        out.append(function_summary(f, result, precision))
        out.append("")
        out.append(head)
        out.append("=" * len(head))
        for r in rows:
            out.append(("  ".join(c.rjust(w) for c, w in zip(r[:5], widths, strict=False)) + "   " + r[5]).rstrip())
        if not f.lines:
            out.append("(source not available)")
        out.append("")
    if not result.functions:
        out.append("(nothing was profiled)")
    out.extend(footer(result))
    return "\n".join(out)


def mprun_html(result: MprunResult, precision: int = 2) -> str:
    """One table per function; bars in Increment (red gain, green release) and Peak, scaled to the largest."""
    heads = headers(result)
    parts = ['<div class="ipymem-mprun">']
    for f in result.functions:
        executed = [line for line in f.lines if line.executed]
        scale = max([abs(line.increment or 0) for line in executed] + [line.peak or 0 for line in executed] + [0])
        caption = f"{code(f.where, 120)} · {e(function_summary(f, result, precision))}"
        rows = []
        for line in f.lines:
            mem, inc, peak, occ = (e(c) for c in _cells(line, precision))
            inc_color = "rgba(220,60,40,.35)" if (line.increment or 0) > 0 else "rgba(40,160,80,.35)"
            rows.append(
                "<tr>"
                f'<td style="{NUM_STYLE};color:#888">{line.lineno}</td>'
                f'<td style="{NUM_STYLE}">{mem}</td>'
                f'<td style="{bar_style(line.increment, scale, inc_color)}">{inc}</td>'
                f'<td style="{bar_style(line.peak, scale, "rgba(230,140,20,.35)")}">{peak}</td>'
                f'<td style="{NUM_STYLE}">{occ}</td>'
                f'<td style="{CELL_STYLE};font-family:monospace;white-space:pre">{e(line.source)}</td>'
                "</tr>"
            )
        aligns = ["right"] * 5 + ["left"]
        head = "".join(
            f'<th style="{CELL_STYLE};text-align:{a}">{e(h)}</th>' for a, h in zip(aligns, heads, strict=True)
        )
        parts.append(
            f'<table class="ipymem" style="{TABLE_STYLE}">'
            f'<caption style="caption-side:top;text-align:left;font-weight:bold">{caption}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    if not result.functions:
        parts.append(notice("%mprun: nothing was profiled"))
    for i, line in enumerate(footer(result)):
        parts.append(notice(line, color="#555" if i < 2 or line.startswith("note") else "#a40"))
    parts.append("</div>")
    return "".join(parts)


__all__ = ["headers", "mprun_html", "mprun_text"]
