"""Per-worker rows of a Dask cluster under the ``%memit`` report (text and HTML)."""

from __future__ import annotations

from ..models import MemitResult
from ..models.cluster import OK, WorkerMemory
from ..units import fmt_number
from ._html import code, e, notice, table

HEADERS = ("Worker", "Name", "Baseline", "Peak", "Increment", "End", "Managed", "Unmanaged")
WHAT = "RSS of each worker process, MiB"


def _method_legend(workers: list[WorkerMemory]) -> str:
    exact = sum(w.exact for w in workers)
    if exact == len(workers):
        return "exact peaks from each worker's kernel high-water mark (VmHWM, reset and read through client.run)"
    if exact == 0:
        return "peaks sampled from the scheduler's heartbeats: each is at least that (spikes between beats missed)"
    return "exact peaks from each worker's VmHWM, except rows marked ≥ (sampled from heartbeats: at least that)"


def _cells(w: WorkerMemory, precision: int) -> list[str]:
    def n(v: int | None, sign: bool = False) -> str:
        return fmt_number(v, precision, sign=sign) if v is not None else "?"

    at_least = "" if w.exact or w.peak is None else "≥ "
    increment = n(w.increment, sign=True) if w.increment is not None else "?"
    if at_least and w.increment is not None:
        increment = at_least + increment
    return [
        w.address,
        w.name,
        n(w.baseline),
        at_least + n(w.peak),
        increment,
        n(w.end),
        n(w.managed) if w.managed is not None else "",
        n(w.unmanaged) if w.unmanaged is not None else "",
    ]


def _status(w: WorkerMemory) -> str | None:
    if w.status == OK:
        return None
    return f"{w.address} ({w.name}) {w.status}: {w.detail}" if w.detail else f"{w.address} {w.status}"


def workers_text(result: MemitResult, precision: int = 2) -> list[str]:
    """Lines to append to the text report (none without workers)."""
    workers = list(result.workers.values())
    if not workers:
        return []
    runs = " (over all runs)" if len(result.runs) > 1 else ""
    lines = [f"  Dask workers{runs}: {WHAT}; {_method_legend(workers)}"]
    rows = [list(HEADERS)] + [_cells(w, precision) for w in workers]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    for r in rows:
        text = "  ".join(c.ljust(wd) if i < 2 else c.rjust(wd) for i, (c, wd) in enumerate(zip(r, widths, strict=True)))
        lines.append("    " + text.rstrip())
    lines.extend(f"    ! {s}" for w in workers if (s := _status(w)))
    if any(w.managed is not None for w in workers):
        lines.append("    managed: task results the worker holds; unmanaged: the rest of its RSS (at the end)")
    return lines


def workers_html(result: MemitResult, precision: int = 2) -> str:
    """A table with one row per worker ("" without workers)."""
    workers = list(result.workers.values())
    if not workers:
        return ""
    runs = " (over all runs)" if len(result.runs) > 1 else ""
    caption = e(f"Dask workers{runs} · {WHAT}")
    rows = [[code(c[0]), *(e(x) for x in c[1:])] for c in (_cells(w, precision) for w in workers)]
    numeric = [False, False] + [True] * (len(HEADERS) - 2)
    parts = [table([e(h) for h in HEADERS], rows, numeric=numeric, caption=caption, css_class="ipymem ipymem-workers")]
    parts.append(notice(_method_legend(workers), color="#555"))
    parts.extend(notice(s) for w in workers if (s := _status(w)))
    if any(w.managed is not None for w in workers):
        parts.append(
            notice(
                "Managed: task results the worker holds; unmanaged: the rest of its RSS (at the end)",
                color="#555",
            )
        )
    return "".join(parts)


def workers_line(workers: dict[str, WorkerMemory], precision: int = 2) -> str:
    """One compact line for ``%memwatch``: the highest worker's increment, the summed one, and changes."""
    if not workers:
        return ""
    ws = list(workers.values())
    known = [w for w in ws if w.increment is not None]
    text = f"Dask {len(ws)} worker{'s' if len(ws) != 1 else ''} (RSS"
    text += ", exact peaks)" if all(w.exact for w in known) and known else ", sampled peaks: at least)"
    if known:
        top = max(known, key=lambda w: w.increment or 0)
        label = f"{top.name} ({top.address})" if top.name and top.name != top.address else top.address
        text += (
            f": highest peak {fmt_number(top.increment, precision, sign=True)} MiB on {label}, "
            f"all workers {fmt_number(sum(w.increment or 0 for w in known), precision, sign=True)} MiB"
        )
    changed = [f"{w.name or w.address} {w.status}" for w in ws if w.status != OK]
    if changed:
        text += "; " + ", ".join(changed)
    return text
