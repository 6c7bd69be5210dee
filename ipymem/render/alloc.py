"""The ``%memtrace`` report as aligned text (terminals) and an HTML table (notebooks)."""

from __future__ import annotations

from ..models.alloc import ROW_MIN, AllocResult
from ..units import fmt_bytes, fmt_number, fmt_seconds
from ._html import CODE_STYLE, FG2, e, footer, head, notice, table
from ._html import caption_for as _caption_for
from ._html import code as _code

PEAK_HEADER = "Held at heap peak"
RETAINED_HEADER = "Retained after"
GROWTH_HEADER = "Growth/run"
WHAT = {"lineno": "lines", "filename": "files", "traceback": "tracebacks"}


def _scope(result: AllocResult) -> str:
    p = result.params
    where = "all code" if p.all_frames else "your code"
    how = ""
    if p.depth > 1:
        how = f", {p.depth} frames per allocation"
    if not p.all_frames and result.lines_watched:
        how += ", library allocations booked on your line that called them"
    runs = f", {result.runs} of {p.repeat} runs" if p.repeat > 1 else ""
    shown = f"top {len(result.entries)} of {result.groups} {WHAT[p.group_by]} in {where}"
    return f"Python heap (tracemalloc), {shown}{how}{runs}"


#: RSS growth beyond the Python heap's that earns the "tracemalloc cannot see it" line (bytes) ...
UNSEEN_MIN = 16 * 2**20


def _unseen(result: AllocResult) -> int:
    """How much more RSS grew than the Python heap held, when that is much more (else 0)."""
    heap = max(result.retained, 0)
    extra = result.rss_increment - heap
    return extra if extra >= max(UNSEEN_MIN, heap // 4) else 0


def _shown(x: int, precision: int) -> bool:
    """Whether ``x`` bytes print as something other than 0 at this precision."""
    return fmt_number(abs(x), precision) != fmt_number(0, precision)


def _outside(result: AllocResult) -> str:
    return "ipymem itself" if result.params.all_frames else "outside your code"


def _status(result: AllocResult) -> list[str]:
    p = result.params
    where = f"run {result.runs} of {p.repeat}" if p.repeat > 1 else "the run"
    if result.outcome == "interrupted":
        return [f"! interrupted (KeyboardInterrupt) during {where}: partial report"]
    if result.outcome == "error":
        return [f"! the statement raised {result.error} during {where}: partial report"]
    return []


def _totals(result: AllocResult, precision: int) -> list[str]:
    def b(n: int) -> str:
        return fmt_bytes(n, precision, sign=True)

    at_least = "" if result.peak_exact else "at least "
    lines = [
        f"Python heap peak {at_least}{b(result.peak_increment)} above its start"
        f" · net retained {b(result.retained)} · process RSS {b(result.rss_increment)} (after − before)"
    ]
    if not result.lines_watched and _shown(result.unobserved_peak, precision):
        lines.append(
            f"{fmt_bytes(result.unobserved_peak, precision)} of the peak is in no row: it was freed before the end"
            " of the run, and with another trace function set ipymem could not watch your lines"
        )
    unseen = _unseen(result)
    if unseen:
        own = min(max(result.tracemalloc_memory, 0), unseen)
        of_which = (
            f", {fmt_bytes(own, precision)} of it tracemalloc's own bookkeeping" if _shown(own, precision) else ""
        )
        lines.append(
            f"process RSS grew {fmt_bytes(unseen, precision)} more than the Python heap{of_which}: memory"
            " tracemalloc cannot see (C allocations, allocator caches); %memit and %mprun measure RSS"
        )
    return lines


def alloc_text(result: AllocResult, precision: int = 2) -> str:
    """Aligned text: one row per location, then the rest, code outside the user's, and the totals."""
    p = result.params
    repeated = p.repeat > 1

    def n(x: int | float | None, sign: bool = False) -> str:
        return fmt_number(x, precision, sign=sign)

    headers = ["Location", f"{PEAK_HEADER} MiB", "blocks", f"{RETAINED_HEADER} MiB", "blocks"]
    if repeated:
        headers.append(f"{GROWTH_HEADER} MiB")
    headers.append("Source" if p.group_by != "traceback" else "Source / traceback (innermost first)")
    rows = []
    for entry in result.entries:
        row = [
            entry.location,
            n(entry.peak_size),
            f"{entry.peak_count:,}",
            n(entry.retained_size),
            f"{entry.retained_count:,}",
        ]
        if repeated:
            growth = entry.growth_per_run
            row.append((n(growth, sign=True) if growth is not None else "") + (" !" if entry.grows else ""))
        src = entry.source
        if p.group_by == "traceback" and len(entry.frames) > 1:
            src = (src + "  ← " if src else "") + " ← ".join(f.label for f in entry.frames[1:])
        row.append(src)
        rows.append(row)
    extra = len(headers) - 5
    if _shown(result.rest_peak_size, precision) or _shown(result.rest_retained_size, precision):
        rows.append(
            ["other " + WHAT[p.group_by], n(result.rest_peak_size), "", n(result.rest_retained_size), ""] + [""] * extra
        )
    if not p.all_frames and (
        _shown(result.outside_peak_size, precision) or _shown(result.outside_retained_size, precision)
    ):
        rows.append(
            ["outside your code", n(result.outside_peak_size), "", n(result.outside_retained_size), ""] + [""] * extra
        )
    lines = [f"%memtrace: {_scope(result)}"]
    if rows:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        last = len(headers) - 1

        def fmt(cells: list[str]) -> str:
            out = []
            for i, c in enumerate(cells):
                if i == last:
                    out.append(c)
                elif i == 0:
                    out.append(c.ljust(widths[i]))
                else:
                    out.append(c.rjust(widths[i]))
            return "  " + "  ".join(out).rstrip()

        lines.append(fmt(headers))
        lines.extend(fmt(r) for r in rows)
    else:
        lines.append(
            f"  no {WHAT[p.group_by][:-1]} of "
            + ("any code" if p.all_frames else "your code")
            + f" held {fmt_bytes(ROW_MIN, 3)} or more"
        )
    lines.extend("  " + t for t in _totals(result, precision))
    lines.append(
        f"  {_legend(result)}"
        + (f"; {GROWTH_HEADER}: retained growth per run, '!' = grew in every run" if repeated else "")
    )
    suspects = result.leak_suspects
    if repeated and suspects:
        lines.append("  leak suspects (retained grew in every run): " + ", ".join(s.location for s in suspects))
    lines.append(f"  {fmt_seconds(result.duration)}" + (" total" if result.runs > 1 else ""))
    lines.extend("  " + s for s in _status(result))
    lines.extend(f"  note: {t}" for t in result.notes)
    return "\n".join(lines)


#: A sentence in the (monospace, unwrapped) source column: prose that wraps instead of widening it.
_PROSE = '<span style="white-space:normal;font-family:var(--jp-content-font-family, sans-serif)">{}</span>'
_PEAK_BAR = "#4c78a8"
_RETAINED_BAR = "#f58518"


def _legend(result: AllocResult) -> str:
    what = WHAT[result.params.group_by][:-1]
    return (
        f"{PEAK_HEADER}: what the {what}'s allocations held when the traced heap was highest"
        f" (tracemalloc's {'exact ' if result.peak_exact else ''}peak); {RETAINED_HEADER}: still held after the run"
        " and a gc"
    )


def _bar(size: int, scale: int, color: str) -> str:
    """A bar of ``size / scale``; nothing for a size that reads as 0.00 MiB (no bar for empty rows)."""
    width = 0 if scale <= 0 or size < 0.005 * 2**20 else max(1, round(100 * size / scale))
    return (
        f'<div style="background:{color};height:0.55em;width:{min(width, 100)}%;min-width:{1 if width else 0}px"></div>'
    )


def alloc_html(result: AllocResult, precision: int = 2) -> str:
    """A table with the source line and size bars (peak: blue, retained: orange); escaped, no script."""
    p = result.params
    repeated = p.repeat > 1

    def n(x: int | float | None, sign: bool = False) -> str:
        return e(fmt_number(x, precision, sign=sign))

    caption = _caption_for("memtrace", result.statement, getattr(result, "setup", None))
    parts = ['<div class="ipymem-memtrace">']
    headers = [
        head("Location"),
        head("Source") if p.group_by != "traceback" else head("Source", "traceback, innermost first"),
        head(PEAK_HEADER, "Python heap, MiB", numeric=True),
        head("blocks", numeric=True),
        head(RETAINED_HEADER, "Python heap, MiB", numeric=True),
        head("blocks", numeric=True),
    ]
    numeric = [False, False, True, True, True, True]
    if repeated:
        headers.append(head(GROWTH_HEADER, "MiB", numeric=True))
        numeric.append(True)
    swatch = '<span style="display:inline-block;width:0.8em;height:0.55em;background:{}"></span>'
    headers.append(
        f'<th style="text-align:left;font-weight:normal;white-space:nowrap;color:{FG2};padding:2px 8px">'
        f"{swatch.format(_PEAK_BAR)} at peak<br>{swatch.format(_RETAINED_BAR)} retained</th>"
    )
    numeric.append(False)
    scale = max([max(x.peak_size, x.retained_size) for x in result.entries] or [0])
    rows = []
    for entry in result.entries:
        src = e(entry.source.strip()) if entry.source else ""
        if p.group_by == "traceback" and len(entry.frames) > 1:
            src += "<br>" + "<br>".join(f"← {e(f.label)} {_code(f.source, 100)}" for f in entry.frames[1:])
        row = [
            e(entry.location),
            src,
            n(entry.peak_size),
            e(f"{entry.peak_count:,}"),
            n(entry.retained_size),
            e(f"{entry.retained_count:,}"),
        ]
        if repeated:
            growth = entry.growth_per_run
            cell = n(growth, sign=True) if growth is not None else ""
            row.append(f"<b>{cell}</b> ⚠" if entry.grows else cell)
        bars = _bar(entry.peak_size, scale, _PEAK_BAR) + _bar(entry.retained_size, scale, _RETAINED_BAR)
        row.append(f'<div style="width:6em">{bars}</div>')
        rows.append(row)
    blank = [""] * (len(headers) - 6)
    if _shown(result.rest_peak_size, precision) or _shown(result.rest_retained_size, precision):
        rows.append(
            [e("other " + WHAT[p.group_by]), "", n(result.rest_peak_size), "", n(result.rest_retained_size), "", *blank]
        )
    if _shown(result.outside_peak_size, precision) or _shown(result.outside_retained_size, precision):
        rows.append(
            [
                e(_outside(result)),
                _PROSE.format(
                    e(
                        "ipymem's own bookkeeping"
                        if p.all_frames
                        else "allocated while none of your lines ran (IPython, the interpreter, ipymem)"
                        if result.lines_watched
                        else "libraries and the interpreter: no frame of yours"
                    )
                ),
                n(result.outside_peak_size),
                "",
                n(result.outside_retained_size),
                "",
                *blank,
            ]
        )
    total = [
        "<b>Total</b>",
        _PROSE.format(
            e(
                f"Python heap peak {'' if result.peak_exact else 'at least '}"
                f"{fmt_bytes(result.peak_increment, precision, sign=True)} above its start "
                f"({'exact' if result.peak_exact else 'a lower bound'}); "
                f"process RSS {fmt_bytes(result.rss_increment, precision, sign=True)} (after − before)"
            )
        ),
        f"<b>{n(result.peak_increment)}</b>",
        "",
        f"<b>{n(result.retained, sign=True)}</b>",
        "",
        *blank,
    ]
    rows.append(total)
    styles = [None, CODE_STYLE] + [None] * (len(headers) - 2)
    parts.append(table(headers, rows, numeric=numeric, caption=caption, styles=styles))
    parts.append(footer(_scope(result)))
    for t in _totals(result, precision)[1:]:
        parts.append(footer(t))
    parts.append(
        footer(
            _legend(result) + (f"; {GROWTH_HEADER}: retained growth per run, ⚠ = grew in every run" if repeated else "")
        )
    )
    for s in _status(result):
        parts.append(notice(s))
    for t in result.notes:
        parts.append(footer("note: " + t))
    parts.append("</div>")
    return "".join(parts)
