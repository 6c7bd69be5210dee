"""The ``%mprun`` report: aligned text (terminals, ``-T`` files) and an HTML table with bars."""

from __future__ import annotations

from ..models.lines import FunctionProfile, LineStats, MprunResult
from ..units import fmt_bytes, fmt_seconds
from ._html import (
    CODE_STYLE,
    GAIN,
    NUM_STYLE,
    PEAK,
    RELEASE,
    TABLE_STYLE,
    bar_style,
    caption_block,
    code,
    e,
    head,
    notice,
    scroll,
)
from ._html import (
    footer as footer_line,
)

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
    """What memory and how long; how lines were seen and how often memory was read; status; notes.
    Each thing once: the method already names its memory (``RSS from /proc/self/statm``)."""
    p = result.params
    when = f"line events from {p.tracer}"
    if p.min_interval:
        when += f"; memory read at most every {fmt_seconds(p.min_interval)} of run time ({result.readings} readings)"
    base = p.metric.split(" incl.")[0]
    method = p.memory_method if p.memory_method.startswith(base) else f"{base}: {p.memory_method}".rstrip(": ")
    if p.include_children:
        method += "; child processes sampled at the same readings (their peaks are at least these)"
    lines = [f"{method}; {fmt_seconds(result.duration)}", when]
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


def _heaviest(f: FunctionProfile) -> int | None:
    """Line number of the line that moved memory most (its peak or its |increment|), if any did."""
    best, weight = None, 0
    for line in f.lines:
        w = max(abs(line.increment or 0), line.peak or 0)
        if line.executed and w > weight:
            best, weight = line.lineno, w
    return best


def mprun_html(result: MprunResult, precision: int = 2) -> str:
    """One table per function, for notebooks: source monospace, left-aligned and scrolling inside
    the output; numbers right-aligned; bars in Increment (red gain, green release) and Peak,
    scaled to the function's largest figure and absent where the figure reads zero; the heaviest
    line in bold; two-line headers naming the metric, their meaning in tooltips and a legend."""
    m = result.params.metric
    heads = [
        head("Line #", numeric=True),
        head("Mem usage", m, f"{m} when the line last finished", numeric=True),
        head("Increment", m, f"net change of {m} attributed to the line, summed over its occurrences", numeric=True),
        head("Peak", m, f"highest {m} while the line ran, above its start (worst occurrence)", numeric=True),
        head("Occurrences", title="how often the line ran", numeric=True),
        head("Line Contents"),
    ]
    parts = ['<div class="ipymem-mprun">']
    for f in result.functions:
        executed = [line for line in f.lines if line.executed]
        scale = max([abs(line.increment or 0) for line in executed] + [line.peak or 0 for line in executed] + [0])
        heaviest = _heaviest(f)
        caption = f"{code(f.where, 120)} · {e(function_summary(f, result, precision))}"
        rows = []
        for line in f.lines:
            mem, inc, peak, occ = (e(c) for c in _cells(line, precision))
            bold = ";font-weight:bold" if line.lineno == heaviest else ""
            num = NUM_STYLE + bold
            inc_color = GAIN if (line.increment or 0) > 0 else RELEASE
            rows.append(
                "<tr>"
                f'<td style="{NUM_STYLE}">{line.lineno}</td>'
                f'<td style="{num}">{mem}</td>'
                f'<td style="{bar_style(line.increment, scale, inc_color, num, precision)}">{inc}</td>'
                f'<td style="{bar_style(line.peak, scale, PEAK, num, precision)}">{peak}</td>'
                f'<td style="{num}">{occ}</td>'
                f'<td style="{CODE_STYLE}{bold}">{e(line.source)}</td>'
                "</tr>"
            )
        parts.append(caption_block(caption))
        parts.append(
            scroll(
                f'<table class="ipymem" style="{TABLE_STYLE}">'
                f"<thead><tr>{''.join(heads)}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            )
        )
    if not result.functions:
        parts.append(notice("%mprun: nothing was profiled"))
    if result.functions:
        parts.append(
            footer_line(
                f"Mem usage: {m} after the line · Increment: net change, summed over occurrences"
                f" · Peak: highest while the line ran, above its start · bold: the heaviest line"
            )
        )
    for i, line in enumerate(footer(result)):
        parts.append(footer_line(line) if i < 2 or line.startswith("note") else notice(line))
    parts.append("</div>")
    return "".join(parts)


__all__ = ["headers", "mprun_html", "mprun_text"]
