"""The ``%memwho`` report as text and HTML: the names table, then where RSS goes."""

from __future__ import annotations

from ..models.memwho import HOLDER, MemwhoResult, MemwhoRow
from ..units import fmt_bytes, fmt_number, fmt_seconds
from ._html import e, notice, table
from .limits import limit_line

SIZE_HEAD = "Size (MiB)"
SIZE_TITLE = "Bytes of every object reachable from the name, each object once (Python heap and native buffers)"
FREED_HEAD = "Freed if deleted (MiB)"
FREED_TITLE = "Bytes that nothing else alive reaches: what del NAME gives back to the allocator"


def headline(result: MemwhoResult, precision: int = 2) -> str:
    """One line: the names shown and what they hold; when a pattern or ``-n`` leaves names out, what all hold."""
    shown = len(result.rows)
    walk = f"{result.objects:,} objects walked in {fmt_seconds(result.duration)}"
    if not result.complete:
        walk += f", cut short: {result.names_walked} of {result.names_total} names in full"
    left_out = result.rows_total - shown - result.hidden_rows
    if left_out > 0:  # the figure must be the rows' own: sizes can overlap, so their sum is "at most"
        held = sum(r.size for r in result.rows)
        overlap = any(set(r.shared_with) & {o.name for o in result.rows} for r in result.rows)
        what = f"{shown} of {result.rows_total} name{'s' if result.rows_total != 1 else ''} shown"
        filters = ", ".join(
            f
            for f in (
                result.params.pattern and f"matching {result.params.pattern}",
                result.params.top and f"top {result.params.top}",
            )
            if f
        )
        held_text = ("at most " if overlap else "") + fmt_bytes(held, precision)
        return (
            f"%memwho: {what} ({filters}), holding {held_text}; all names together hold "
            f"{fmt_bytes(result.total, precision)} · {walk}"
        )
    what = f"{shown} name{'s' if shown != 1 else ''}"
    if result.hidden_rows:
        what += f" ({result.hidden_rows} hidden)"
    return f"%memwho: {what}; the names hold {fmt_bytes(result.total, precision)} · {walk}"


def relations(row: MemwhoRow) -> str:
    """The last column: who else holds this memory."""
    parts = []
    if row.kind == HOLDER:
        parts.append("hidden holder" + (f" (also {', '.join(row.aliases)})" if row.aliases else ""))
    if row.shared_with:
        parts.append("shared with " + ", ".join(row.shared_with))
    if row.held_by:
        parts.append("also held by " + ", ".join(row.held_by))
    if row.file_backed:
        parts.append(f"+ {fmt_bytes(row.file_backed)} file-backed (mapped)")
    if not row.complete:
        parts.append("walk cut short: at least this")
    return "; ".join(parts)


def _freed(row: MemwhoRow, precision: int) -> str:
    return "?" if row.freed_if_deleted is None else fmt_number(row.freed_if_deleted, precision)


def _size(row: MemwhoRow, precision: int) -> str:
    return ("≥ " if not row.complete else "") + fmt_number(row.size, precision)


def breakdown_lines(result: MemwhoResult, precision: int = 2) -> list[str]:
    b = result.breakdown
    lines = [f"Where RSS goes: {fmt_bytes(b.rss, precision)} RSS"]
    width = max(len(p.label) for p in b.parts)
    for p in b.parts:
        value = "unavailable" if p.bytes is None else fmt_bytes(p.bytes, precision, sign=p.key == "rest")
        lines.append(f"  {p.label:<{width}}  {value:>14}   {p.source}")
    if result.trimmed is not None:
        lines.append(f"  --trim (gc.collect + malloc_trim(0)) returned {fmt_bytes(result.trimmed, precision)} of RSS")
    if result.limit is not None and result.limit.shown:
        lines.append(limit_line(result.limit.usage_end, result.limit.source))
    return lines


def memwho_text(result: MemwhoResult, precision: int = 2) -> str:
    """Table of names largest first, then the RSS breakdown and notes."""
    lines = [headline(result, precision)]
    if result.rows:
        cells = [(r.name, r.type, _size(r, precision), _freed(r, precision), relations(r)) for r in result.rows]
        heads = ("Name", "Type", SIZE_HEAD, FREED_HEAD, "Shared / held")
        w = [max(len(heads[i]), *(len(c[i]) for c in cells)) for i in range(4)]
        lines.append(f"{heads[0]:<{w[0]}}  {heads[1]:<{w[1]}}  {heads[2]:>{w[2]}}  {heads[3]:>{w[3]}}  {heads[4]}")
        for c in cells:
            lines.append(f"{c[0]:<{w[0]}}  {c[1]:<{w[1]}}  {c[2]:>{w[2]}}  {c[3]:>{w[3]}}  {c[4]}".rstrip())
    else:
        lines.append("(no names match)")
    lines.extend(breakdown_lines(result, precision))
    lines.extend(f"  note: {n}" for n in result.notes)
    return "\n".join(lines)


def memwho_html(result: MemwhoResult, precision: int = 2) -> str:
    """The same as :func:`memwho_text`, as two tables (names; where RSS goes)."""
    parts = ['<div class="ipymem-memwho">']
    caption = e(headline(result, precision))
    heads = [
        "Name",
        "Type",
        f'<span title="{e(SIZE_TITLE)}">{e(SIZE_HEAD)}</span>',
        f'<span title="{e(FREED_TITLE)}">{e(FREED_HEAD)}</span>',
        "Shared / held",
    ]
    rows = [
        (
            f"<code>{e(r.name)}</code>",
            e(r.type),
            e(_size(r, precision)),
            e(_freed(r, precision)),
            e(relations(r)),
        )
        for r in result.rows
    ]
    parts.append(table(heads, rows, numeric=[False, False, True, True, False], caption=caption))
    b = result.breakdown
    rss_rows = [
        (
            e(p.label),
            e("unavailable" if p.bytes is None else fmt_bytes(p.bytes, precision, sign=p.key == "rest")),
            f'<span style="color:var(--jp-ui-font-color2,#666)">{e(p.source)}</span>',
        )
        for p in b.parts
    ]
    parts.append(
        table(
            ["Where RSS goes", e(f"{fmt_bytes(b.rss, precision)} RSS"), "Source"],
            rss_rows,
            numeric=[False, True, False],
        )
    )
    if result.trimmed is not None:
        parts.append(
            notice(
                f"--trim (gc.collect + malloc_trim(0)) returned {fmt_bytes(result.trimmed, precision)} of RSS",
                "inherit",
            )
        )
    if result.limit is not None and result.limit.shown:
        parts.append(notice(limit_line(result.limit.usage_end, result.limit.source), "inherit"))
    for n in result.notes:
        parts.append(notice("note: " + n, color="var(--jp-ui-font-color2,#666)"))
    parts.append("</div>")
    return "".join(parts)
