"""Side-by-side comparison of results of one kind (``ipymem.compare(a, b)`` or ``a.compare(b)``).

The question after two measurements is nearly always "which needs less, and
by how much": the comparison keeps each result's headline figures (each
named with its metric), and the ratio of every result's first figure to the
first result's, so "0.48x" reads as "needs half the memory".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .alloc import AllocResult
from .lines import MprunResult
from .memit import MemitResult
from .memwho import MemwhoResult

BYTES = "bytes"
SECONDS = "seconds"


@dataclass(frozen=True)
class Metric:
    """One compared figure: ``name`` says which memory it is; ``unit`` is ``"bytes"`` or ``"seconds"``.

    ``signed`` figures (net changes) can be negative and show their sign.
    """

    name: str
    unit: str
    signed: bool = False


@dataclass(frozen=True)
class Comparison:
    """Results side by side: ``values[i][j]`` is metric ``j`` of result ``i`` (``None`` where not measured).

    The first metric is the headline: :meth:`ratios` divide it by the first
    result's, the baseline of the comparison.
    """

    kind: str
    labels: tuple[str, ...]
    metrics: tuple[Metric, ...]
    values: tuple[tuple[int | float | None, ...], ...]
    outcomes: tuple[str, ...]

    def ratios(self) -> tuple[float | None, ...]:
        """Each result's headline figure over the first result's (``None`` when undefined)."""
        base = self.values[0][0] if self.values else None
        out: list[float | None] = []
        for row in self.values:
            value = row[0]
            out.append(None if value is None or not base or base <= 0 or value < 0 else value / base)
        return tuple(out)

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per result: label, each metric by name, ratio and outcome (for DataFrames or CSV)."""
        rows = []
        for label, values, ratio, outcome in zip(self.labels, self.values, self.ratios(), self.outcomes, strict=True):
            row: dict[str, Any] = {"label": label}
            row.update({m.name: v for m, v in zip(self.metrics, values, strict=True)})
            row.update(ratio=ratio, outcome=outcome)
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return {
            "kind": self.kind,
            "metrics": [dataclasses.asdict(m) for m in self.metrics],
            "results": self.records(),
        }

    def __str__(self) -> str:
        from ..render.compare import compare_text

        return compare_text(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        from ..render.compare import compare_html

        return compare_html(self)


Result = MemitResult | MprunResult | AllocResult | MemwhoResult


def compare(*results: Result | Mapping[str, Result], labels: list[str] | tuple[str, ...] | None = None) -> Comparison:
    """Compare results of one kind side by side; the first one is the baseline of the ratios.

    ``compare(a, b)`` labels each result by its statement; ``compare(a, b,
    labels=["loop", "numpy"])`` or ``compare({"loop": a, "numpy": b})`` names them.
    """
    if len(results) == 1 and isinstance(results[0], Mapping):
        if labels is not None:
            raise TypeError("compare: give labels either as the mapping's keys or as labels=, not both")
        mapping = results[0]
        labels, results = tuple(str(k) for k in mapping), tuple(mapping.values())
    if not results:
        raise TypeError("compare: give at least one result")
    kinds = {type(r) for r in results}
    if len(kinds) > 1 or not kinds <= _KINDS.keys():
        names = ", ".join(sorted(type(r).__name__ for r in results))
        raise TypeError(
            "compare: expected results of one kind (MemitResult, MprunResult, AllocResult or MemwhoResult), "
            f"got {names}"
        )
    if labels is not None and len(labels) != len(results):
        raise ValueError(f"compare: {len(results)} results but {len(labels)} labels")
    magic, headlines = _KINDS[type(results[0])]
    metrics, extract = headlines(results)
    return Comparison(
        kind=magic,
        labels=tuple(labels) if labels is not None else tuple(_label(r) for r in results),
        metrics=tuple(metrics),
        values=tuple(tuple(extract(r)) for r in results),
        outcomes=tuple(r.outcome for r in results),
    )


def _label(result: Result) -> str:
    text = " ".join(line.strip() for line in result.statement.strip().splitlines())
    return text if len(text) <= 48 else text[:47] + "…"


def _memit(results: Any) -> tuple[list[Metric], Any]:
    children = {r.params.include_children for r in results}
    if len(children) > 1:
        raise ValueError("compare: these %memit results measured different memory (with and without -c)")
    what = "RSS incl. children" if children == {True} else "RSS"
    heap = any(r.heap_increment is not None for r in results)
    metrics = [
        Metric(f"Increment ({what}, peak − baseline)", BYTES),
        Metric(f"Peak ({what})", BYTES),
        Metric(f"Retained ({what})", BYTES, signed=True),
    ]
    if heap:
        metrics.append(Metric("Python heap peak (tracemalloc, above start)", BYTES))
    cluster = any(r.workers for r in results)
    if cluster:  # Dask workers: the highest worker's need, and the cluster's summed need
        metrics.append(Metric("Highest worker increment (Dask, RSS)", BYTES))
        metrics.append(Metric("Workers' increments summed (Dask, RSS)", BYTES))
    metrics.append(Metric("Time", SECONDS))

    def extract(r: MemitResult) -> list[int | float | None]:
        if not r.runs:
            return [None] * len(metrics)
        row: list[int | float | None] = [r.increment, r.peak, r.runs[-1].retained]
        if heap:
            row.append(r.heap_increment)
        if cluster:
            increments = [w.increment for w in r.workers.values() if w.increment is not None]
            row += [max(increments), sum(increments)] if increments else [None, None]
        return [*row, r.duration]

    return metrics, extract


def _mprun(results: Any) -> tuple[list[Metric], Any]:
    metric = results[0].params.metric
    if any(r.params.metric != metric for r in results):
        raise ValueError("compare: these %mprun results measured different memory (use one --backend for all)")
    metrics = [
        Metric(f"Peak above entry ({metric})", BYTES),
        Metric(f"Net change ({metric})", BYTES, signed=True),
        Metric("Time", SECONDS),
    ]

    def extract(r: MprunResult) -> list[int | float | None]:
        return [r.peak, r.total_increment, r.duration]

    return metrics, extract


def _memtrace(results: Any) -> tuple[list[Metric], Any]:
    metrics = [
        Metric("Heap peak (Python heap, above start)", BYTES),
        Metric("Retained (Python heap)", BYTES, signed=True),
        Metric("RSS change", BYTES, signed=True),
        Metric("Time", SECONDS),
    ]

    def extract(r: AllocResult) -> list[int | float | None]:
        return [r.peak_increment, r.retained, r.rss_increment, r.duration]

    return metrics, extract


#: Short names of the RSS parts (their full labels are in each result's breakdown).
_RSS_SHORT = {
    "objects": "held by the names",
    "heap_other": "other heap",
    "malloc_free": "free in malloc",
    "pymalloc_free": "free in pymalloc",
    "file": "file-backed and shared",
    "rest": "the rest",
}


def _memwho(results: Any) -> tuple[list[Metric], Any]:
    """Total held, RSS and its parts, then each name that is among the largest in any result: what grew."""
    keys = [p.key for p in results[0].breakdown.parts]
    metrics = [Metric("Held by the names (walked, each object once)", BYTES), Metric("RSS", BYTES)]
    metrics += [Metric(f"RSS: {_RSS_SHORT.get(k, k)}", BYTES, signed=k == "rest") for k in keys]
    names: list[str] = []
    for r in results:
        for row in r.rows[:10]:
            if row.name not in names:
                names.append(row.name)
    metrics += [Metric(f"{name} (size)", BYTES) for name in names]

    def extract(r: MemwhoResult) -> list[int | float | None]:
        sizes = {row.name: row.size for row in r.rows}
        return [r.total, r.breakdown.rss, *(r.breakdown.part(k) for k in keys), *(sizes.get(n) for n in names)]

    return metrics, extract


#: Each result class: the magic that makes it, and its headline figures (metrics and how to read them).
_KINDS = {
    MemitResult: ("%memit", _memit),
    MprunResult: ("%mprun", _mprun),
    AllocResult: ("%memtrace", _memtrace),
    MemwhoResult: ("%memwho", _memwho),
}
