"""Plain-text reports, for terminals, ``print`` and ``text/plain``."""

from __future__ import annotations

from ..models import MemitResult
from ..units import fmt_bytes, fmt_seconds


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
    lines.extend(status_lines(result))
    lines.extend(f"  note: {n}" for n in result.notes)
    return "\n".join(lines)


def peak_source(result: MemitResult) -> str:
    """Which memory the figures are and where the peak came from, in a few words."""
    what = "RSS incl. child processes" if result.params.include_children else "RSS"
    if result.exact:
        return f"{what}, exact peak from the {result.peak_method}"
    return f"{what}, peak {result.peak_method}"


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
