"""Limits in words: ``612 MiB of the 1.00 GiB container limit``, the guard's status, a dead kernel's story.

Pure functions of plain data (the limit source, the guard's cell watch, a
flight record); nothing here measures or prints.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..models.limits import LimitSource
from ..units import glance as mib


def against_limit(used: int, source: LimitSource) -> str:
    """``612 MiB of the 1.00 GiB container limit (60%)``: usage against the binding limit, in one phrase."""
    if not source.limit:
        return ""
    what = "container limit" if source.kind.startswith("cgroup") else source.label
    return f"{mib(used)} of the {mib(source.limit)} {what} ({used / source.limit:.0%})"


def use_line(use: Any) -> str:
    """``limit: at least 612 MiB of the 1.00 GiB container limit (60%) at the peak, 420 MiB at the end · ...``."""
    src = use.source
    peak = against_limit(use.usage_peak, src)
    words = "" if use.peak_exact else "at least "
    where = f" · {src.kind} {os.path.basename(src.file)}" if src.kind.startswith("cgroup") else ""
    return f"limit: {words}{peak} at the peak, {mib(use.usage_end)} at the end{where} · {usage_words(src)}"


def usage_words(source: LimitSource) -> str:
    """Which memory the usage is: for a cgroup, the whole container's, not this kernel's RSS."""
    if source.kind.startswith("cgroup"):
        return "container working set: every process of the cgroup, less the file cache it can reclaim"
    if source.kind == "MEM_LIMIT":
        return "this kernel's RSS against MEM_LIMIT (set by the server; the kernel itself is not killed at it)"
    return "host memory in use (MemTotal - MemAvailable), every process of the machine"


def limit_line(used: int, source: LimitSource) -> str:
    """The line reports append: ``limit: 612 MiB of the 1.00 GiB container limit (60%) · cgroup v1 ...``."""
    phrase = against_limit(used, source)
    if not phrase:
        return ""
    where = f" · {source.kind} {source.file}" if source.kind.startswith("cgroup") else ""
    high = f"; throttled above memory.high {mib(source.high)}" if source.high else ""
    return f"limit: {phrase}{where}{high} · {usage_words(source)}"


def status_text(guard: Any, recorder: Any = None, found: list[LimitSource] | None = None) -> str:
    """What ``%memguard status`` prints for a running guard."""
    src = guard.source
    lines = [
        f"memguard is on: stops the running cell at {guard.stop_level} ({mib(guard.stop_bytes)}) of the "
        f"{mib(src.limit)} {src.label}"
        + (f", warns at {guard.warn_level} ({mib(guard.warn_bytes)})" if guard.warn_level is not None else "")
        + (" · hard mode: RLIMIT_DATA while a cell runs" if guard.hard else ""),
        f"  now: {against_limit(guard.usage, src)} ({usage_words(src)})",
        f"  reads: every {guard.interval:g} s, faster near the stop level; {guard.reads:,} so far",
    ]
    if src.file:
        lines.append(f"  binding limit: {src.kind} {src.file}")
    if src.swap:
        lines.append(
            f"  swap: up to {mib(src.swap)} beyond the limit before the OOM killer (slower, not counted above)"
        )
    for other in found or ():
        if other != src:
            lines.append(f"  also found: {other.label} {mib(other.limit)} (does not bind)")
    if recorder is not None:
        lines.append(f"  flight record: {recorder.path}")
    return "\n".join(lines)


def warn_text(guard: Any, watch: Any) -> str:
    text = (
        f"memguard warning: {against_limit(watch.peak_usage, guard.source)}, over the warning level "
        f"{guard.warn_level}; the code is stopped at {mib(guard.stop_bytes)}"
    )
    if watch.holders:
        text += "; largest names: " + ", ".join(f"{n} {mib(s)}" for n, s in watch.holders[:3])
    return text


def stop_text(guard: Any, watch: Any, rows: list[tuple[str, int, int | None]] = ()) -> str:
    """After a stopped cell: what was stopped, that the kernel lives, and what ``del`` would give back."""
    phrase = against_limit(watch.peak_usage, guard.source)[:-1]  # "... limit (88%" : the level joins the brackets
    text = (
        f"memguard stopped {watch.label or 'the code'} at {phrase}; stop level {mib(guard.stop_bytes)});"
        " the kernel and the variables made before are intact."
    )
    if rows:
        text += "\n  largest names now: " + ", ".join(f"{name} {mib(size)}" for name, size, _ in rows)
        if any(freed is not None and freed < size for _, size, freed in rows):
            # The stopped frame, kept by the error's traceback (for %debug), still refers to what its line used.
            text += "\n  (the stopped line's frame, kept by the traceback, holds part of it until the next error)"
    return text


def death_text(record: dict[str, Any], how: str, now: float | None = None) -> str:
    """The post-mortem of a kernel that died, from its flight record."""
    now = time.time() if now is None else now
    written = record.get("written")
    when = ""
    if isinstance(written, (int, float)):
        ago = max(0.0, now - written)
        ago_text = f"{ago:.0f} s" if ago < 120 else (f"{ago / 60:.0f} min" if ago < 7200 else f"{ago / 3600:.0f} h")
        when = f" at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(written))} ({ago_text} ago)"
    lines = [f"ipymem: the previous kernel of this notebook (pid {record.get('pid')}) died{when}: {how}."]
    cell = record.get("cell")
    line, source = record.get("line"), record.get("line_source")
    if cell is not None:
        where = f"It was running In[{cell}]"
        if line:
            where += f", line {line}" + (f": {source}" if source else "")
        lines.append("  " + where)
    elif record.get("cell_source"):
        first = str(record["cell_source"]).strip().splitlines()[0][:120]
        lines.append(f"  It was running the cell that starts: {first}")
    usage, limit = record.get("usage"), record.get("limit")
    if isinstance(usage, int) and isinstance(limit, int) and limit:
        lines.append(
            f"  at the last record: {mib(usage)} of the {mib(limit)} {record.get('limit_label', 'limit')}"
            f" ({usage / limit:.0%}); RSS of the kernel {mib(int(record.get('rss') or 0))}"
        )
    holders = record.get("holders") or []
    if holders:
        lines.append("  largest names then: " + ", ".join(f"{n} {mib(int(s))}" for n, s in holders[:5]))
    return "\n".join(lines)


__all__ = [
    "against_limit",
    "death_text",
    "limit_line",
    "status_text",
    "stop_text",
    "usage_words",
    "use_line",
    "warn_text",
]
