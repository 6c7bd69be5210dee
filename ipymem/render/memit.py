"""The ``%memit`` report as text (terminals, ``text/plain``) and HTML (notebooks)."""

from __future__ import annotations

from ..models import MemitResult
from ..units import fmt_bytes, fmt_seconds
from ._html import caption_for, e, footer, head, notice, table
from .cluster import workers_html, workers_text
from .limits import use_line


def memit_text(result: MemitResult, precision: int = 2) -> str:
    """The ``%memit`` report.

    The first line keeps the incumbent's ``peak memory: X MiB, increment: Y
    MiB`` so habits and notebooks still read naturally; the second says which
    memory that is and how the peak was obtained.
    """

    def b(n: int | None, sign: bool = False) -> str:
        return fmt_bytes(n, precision, sign=sign)

    runs = result.runs
    if not runs:
        return f"peak memory: n/a, increment: n/a ({result.outcome}: {result.error or 'nothing ran'})"
    head = f"peak memory: {b(result.peak)}, increment: {b(result.increment)}"
    if len(runs) > 1:
        head += f" (worst of {len(runs)} runs; best {b(result.best_increment)})"
    details = [
        peak_source(result),
        f"baseline {b(result.baseline)}",
        f"retained {b(runs[-1].retained, sign=True)}",
        fmt_seconds(result.duration) + ("" if len(runs) == 1 else " total"),
        f"{result.samples} samples",
    ]
    lines = [head, "  " + " · ".join(details)]
    heap = result.heap_increment
    if heap is not None:
        lines.append(f"  Python heap (tracemalloc) peak: {b(heap, sign=True)} above its start")
    if result.limit is not None and result.limit.shown:
        lines.append("  " + use_line(result.limit))
    lines.extend(workers_text(result, precision))
    lines.extend(status_lines(result))
    lines.extend(f"  note: {n}" for n in notes(result))
    return "\n".join(lines)


def peak_source(result: MemitResult) -> str:
    """Which memory the figures are and where the peak came from, in a few words."""
    if result.params.include_children:
        # The high-water mark covers this process only; children are sampled, so the sum is a lower bound.
        own = f"exact from the {result.peak_method}" if result.exact else result.peak_method
        return f"RSS incl. child processes, peak at least this: own RSS {own}, children sampled"
    if result.exact:
        return f"RSS, exact peak from the {result.peak_method}"
    return f"RSS, peak {result.peak_method}"


def notes(result: MemitResult) -> list[str]:
    """The result's notes, less what :func:`peak_source` already says (each thing once)."""
    said = "child processes are sampled" if result.params.include_children else None
    return [n for n in result.notes if not (said and n.startswith(said))]


def status_lines(result: MemitResult) -> list[str]:
    lines = []
    n, of = len(result.runs), result.params.repeat
    where = f"run {n} of {of}" if of > 1 else "the run"
    if result.outcome == "interrupted":
        lines.append(f"  ! interrupted (KeyboardInterrupt) during {where}: figures cover what ran")
    elif result.outcome == "error":
        lines.append(f"  ! the statement raised {result.error} during {where}: figures cover what ran")
    if result.timed_out:
        lines.append(f"  timeout of {result.params.timeout:g} s reached after {n} of {of} runs")
    return lines


def memit_html(result: MemitResult, precision: int = 2) -> str:
    """A small table: peak, increment, baseline, retained, heap, time; one row per run when repeated.

    The caption says what was measured (the statement, or "cell of N lines", and the setup as
    setup); the value column's header names the memory; how the peak was obtained is the first
    footer line, said once.
    """

    def b(n: int | None, sign: bool = False) -> str:
        return e(fmt_bytes(n, precision, sign=sign))

    what = "RSS incl. children" if result.params.include_children else "RSS"
    caption = caption_for("memit", result.statement, result.setup)
    parts = ['<div class="ipymem-memit">']
    if result.runs:
        worst = f" (worst of {len(result.runs)} runs)" if len(result.runs) > 1 else ""
        rows = [
            ("Peak", b(result.peak)),
            (f"Increment{worst}", b(result.increment)),
        ]
        if len(result.runs) > 1:
            rows.append(("Best increment", b(result.best_increment)))
        rows += [
            ("Baseline", b(result.baseline)),
            ("Retained after the run", b(result.runs[-1].retained, sign=True)),
        ]
        if result.heap_increment is not None:
            rows.append(("Python heap peak (tracemalloc, above start)", b(result.heap_increment, sign=True)))
        rows += [
            ("Time" + (" (all runs)" if len(result.runs) > 1 else ""), e(fmt_seconds(result.duration))),
            ("Samples", e(result.samples)),
        ]
        headers = [
            head("", title="increment = peak − baseline; retained = end − baseline"),
            head("Value", what, f"{what} in MiB unless the row says otherwise", numeric=True),
        ]
        parts.append(table(headers, [(e(k), v) for k, v in rows], numeric=[False, True], caption=caption))
        if len(result.runs) > 1:
            heap = result.params.trace_heap
            run_heads = [
                head("Run", numeric=True),
                head("Baseline", what, numeric=True),
                head("Peak", what, numeric=True),
                head("Increment", what, numeric=True),
                head("Retained", what, numeric=True),
            ]
            run_heads += (
                [head("Heap peak", "Python heap", "tracemalloc peak above its start", numeric=True)] if heap else []
            )
            run_heads += [head("Time", numeric=True)]
            run_rows = []
            for i, r in enumerate(result.runs, 1):
                row = [e(i), b(r.baseline), b(r.peak), b(r.increment), b(r.retained, sign=True)]
                row += [b(r.heap_increment, sign=True)] if heap else []
                row.append(e(fmt_seconds(r.duration)))
                run_rows.append(row)
            parts.append(table(run_heads, run_rows, numeric=[True] * len(run_heads)))
        parts.append(footer(peak_source(result)))
        if result.limit is not None and result.limit.shown:
            parts.append(footer(use_line(result.limit)))
    else:
        parts.append(notice(f"%memit: nothing was measured ({result.outcome})"))
    parts.append(workers_html(result, precision))
    for line in status_lines(result):
        parts.append(notice(line.strip()))
    for n in notes(result):
        parts.append(footer("note: " + n))
    parts.append("</div>")
    return "".join(parts)
