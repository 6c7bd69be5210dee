"""The ``%mprun`` result: memory line by line, for each profiled function.

Every figure is integer bytes of one metric, named by :attr:`MprunParams.backend`:
process RSS (``"rss"``) or the Python heap as traced by tracemalloc
(``"heap"``).  Each line keeps its source text, so a result renders without
the file (notebook cells included) long after the cell ran.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._comparable import Comparable
from .memit import Sample

MiB = 2**20

#: Metric names by backend, for headers and notes.
METRICS = {"rss": "RSS", "heap": "Python heap"}


@dataclass(frozen=True)
class LineStats:
    """One source line of a profiled function.

    ``occurrences`` counts how often control entered the line (a loop jumping
    back within the line, or a comprehension, lambda or nested function on
    it, does not count again).  For a line never executed, the memory
    figures are ``None`` (shown blank).

    * ``mem_after``: memory when the line last finished.
    * ``increment``: net change attributed to the line, summed over its
      occurrences.  The increments of a function add up to its memory at
      return minus its memory at entry, summed over calls.
    * ``peak``: the highest memory reached while the line was executing,
      above the memory at the start of that occurrence (the worst occurrence).
    """

    lineno: int
    source: str
    occurrences: int = 0
    mem_after: int | None = None
    increment: int | None = None
    peak: int | None = None

    @property
    def executed(self) -> bool:
        return self.occurrences > 0


@dataclass(frozen=True)
class FunctionProfile:
    """The lines of one profiled function (or of a profiled cell body).

    ``filename`` is the code object's file; ``label`` is what the reader
    recognises (``Cell In[5]`` for a notebook cell, else the file name).
    ``peak`` is the highest memory reached during any call, above the memory
    at that call's entry.  ``calls`` counts outermost calls: a call made while
    the function is already running (recursion) is part of the running call,
    so its memory is counted once; ``activations`` counts every call.
    """

    name: str
    filename: str
    firstlineno: int
    lines: tuple[LineStats, ...]
    calls: int = 0
    label: str = ""
    peak: int | None = None
    activations: int = 0

    @property
    def recursive(self) -> bool:
        """Whether the function was called while already running (its nested calls are in its outer ones)."""
        return self.activations > self.calls

    @property
    def increment(self) -> int:
        """Sum of the line increments: memory at return minus memory at entry, over all calls."""
        return sum(line.increment or 0 for line in self.lines)

    @property
    def where(self) -> str:
        return self.label or self.filename


@dataclass(frozen=True)
class MprunParams:
    """How a ``%mprun`` profile was taken.

    ``tracer`` is ``"sys.monitoring"`` or ``"sys.settrace"``;
    ``min_interval`` the time gate in seconds: memory is read at a line
    boundary only when at least that much time has passed since the last
    reading (changes within a shorter stretch go to the line that ends it;
    peaks are not lost, they come from the kernel's high-water mark).
    """

    backend: str = "rss"
    include_children: bool = False
    tracer: str = "sys.settrace"
    min_interval: float = 0.0
    memory_method: str = ""

    @property
    def metric(self) -> str:
        name = METRICS.get(self.backend, self.backend)
        return name + (" incl. children" if self.include_children else "")


@dataclass(frozen=True)
class MprunResult(Comparable):
    """What ``%mprun`` measured: one :class:`FunctionProfile` per profiled function.

    ``outcome`` is ``"ok"``, ``"interrupted"`` (KeyboardInterrupt) or
    ``"error"`` (the statement raised ``error``); the figures cover what ran.
    """

    functions: tuple[FunctionProfile, ...]
    params: MprunParams = field(default_factory=MprunParams)
    statement: str = ""
    duration: float = 0.0
    readings: int = 0
    outcome: str = "ok"
    error: str | None = None
    notes: tuple[str, ...] = ()
    #: RSS over the run, sampled by the magic (empty from the plain engine); see :meth:`plot`.
    timeline: tuple[Sample, ...] = ()
    #: ``(seconds, function name, "start" | "end")`` of each profiled call seen from outside.
    calls: tuple[tuple[float, str, str], ...] = ()
    #: Memory at each return to unprofiled code minus at the entry from it, summed: the net change of all
    #: profiled functions together, with a function called by another counted once (``None``: not known).
    net: int | None = None
    #: The highest memory (of the backend's metric) reached while profiled code ran, in bytes, and whether
    #: it is exact (the kernel's high-water mark, tracemalloc's peak) or the highest reading ("at least").
    peak_value: int | None = None
    peak_exact: bool = False

    @property
    def total_increment(self) -> int:
        """The net change of all profiled code together; never a nested function's net added to its caller's."""
        if self.net is not None:
            return self.net
        return sum(f.increment for f in self.functions)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def peak(self) -> int | None:
        values = [f.peak for f in self.functions if f.peak is not None]
        return max(values) if values else None

    # -- memory_profiler compatibility -----------------------------------
    @property
    def code_map(self) -> dict[tuple[str, int, str], dict[int, tuple[float, float, int] | None]]:
        """memory_profiler's ``LineProfiler.code_map``, by function: ``{line: (increment, mem_usage, occurrences)}``.

        A compatibility alias for notebooks written against memory_profiler
        (``%mprun -r`` returned its ``LineProfiler``).  Keys are
        ``(filename, first line, function name)`` (memory_profiler keyed by
        code object); values are in MiB of this result's metric, as
        memory_profiler's were, in its order (increment, memory after the
        line, occurrences), and ``None`` for a line that never ran.  ipymem's
        own per-line figures are :attr:`functions` ``[i].lines``.
        """
        out: dict[tuple[str, int, str], dict[int, tuple[float, float, int] | None]] = {}
        for f in self.functions:
            out[(f.filename, f.firstlineno, f.name)] = {
                line.lineno: (
                    (line.increment or 0) / MiB,
                    (line.mem_after or 0) / MiB,
                    line.occurrences,
                )
                if line.executed
                else None
                for line in f.lines
            }
        return out

    def function(self, name: str) -> FunctionProfile:
        """The profile of the function called ``name`` (its qualified or plain name)."""
        for f in self.functions:
            if name in (f.name, f.name.rsplit(".", 1)[-1]):
                return f
        raise KeyError(name)

    # -- export -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) with the stored fields and the derived totals."""
        data = dataclasses.asdict(self)
        for f, raw in zip(self.functions, data["functions"], strict=True):
            raw["increment"] = f.increment
        data["peak"] = self.peak
        data["total_increment"] = self.total_increment
        data["params"]["metric"] = self.params.metric
        return data

    # -- display ----------------------------------------------------------
    def plot(self, title: str | None = None) -> Any:
        """The RSS timeline with each profiled call's start and end, as a matplotlib ``Figure`` (no pyplot)."""
        from ..render.chart import Marker, mprun_peak, mprun_title, plot_timeline

        return plot_timeline(
            self.timeline,
            markers=[Marker(*c) for c in self.calls],
            title=mprun_title(self) if title is None else title,
            peak=mprun_peak(self) if self.params.backend == "rss" else None,
        )

    def __str__(self) -> str:
        from ..render.lines import mprun_text

        return mprun_text(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        from ..render.lines import mprun_html

        return mprun_html(self)


def _merge_lines(a: LineStats, b: LineStats) -> LineStats:
    if not b.executed:
        return a
    if not a.executed:
        return b
    return LineStats(
        lineno=a.lineno,
        source=a.source,
        occurrences=a.occurrences + b.occurrences,
        mem_after=b.mem_after,
        increment=(a.increment or 0) + (b.increment or 0),
        peak=max(a.peak or 0, b.peak or 0),
    )


def _merge_functions(a: FunctionProfile, b: FunctionProfile) -> FunctionProfile:
    by_line = {line.lineno: line for line in a.lines}
    for line in b.lines:
        by_line[line.lineno] = _merge_lines(by_line[line.lineno], line) if line.lineno in by_line else line
    peaks = [p for p in (a.peak, b.peak) if p is not None]
    return dataclasses.replace(
        a,
        lines=tuple(by_line[n] for n in sorted(by_line)),
        calls=a.calls + b.calls,
        activations=a.activations + b.activations,
        peak=max(peaks) if peaks else None,
    )


def function_key(f: FunctionProfile) -> tuple[str, int, str]:
    """What identifies a profiled function across results: file, first line, qualified name."""
    return (f.filename, f.firstlineno, f.name)


def merge_results(results: Sequence[MprunResult], statement: str | None = None) -> MprunResult:
    """One :class:`MprunResult` for several runs of the same functions (``@profile`` over calls).

    Per line, occurrences and increments add up (so a function's increments
    still sum to its net change, over all the runs), the peak is the worst
    run's, and "memory after" is the latest run's that executed the line.
    Functions appear in the order first seen.  The outcome is the last
    non-``"ok"`` run's (with a note saying how many runs did not finish),
    else ``"ok"``.  Timelines and call marks are per run and are not merged.
    """
    if not results:
        raise ValueError("nothing to merge")
    merged: dict[tuple[str, int, str], FunctionProfile] = {}
    notes: list[str] = []
    for r in results:
        for f in r.functions:
            key = function_key(f)
            merged[key] = _merge_functions(merged[key], f) if key in merged else f
        for n in r.notes:
            if n not in notes and not n.startswith("never called"):
                notes.append(n)
    never = [f.name for f in merged.values() if f.calls == 0]
    if never:
        notes.append("never called: " + ", ".join(never))
    failed = [r for r in results if r.outcome != "ok"]
    outcome, error = ("ok", None) if not failed else (failed[-1].outcome, failed[-1].error)
    if failed and len(results) > 1:
        notes.append(f"{len(failed)} of {len(results)} runs did not finish ({outcome}): their figures cover what ran")
    first = results[0]
    return dataclasses.replace(
        first,
        functions=tuple(merged.values()),
        statement=first.statement if statement is None else statement,
        duration=sum(r.duration for r in results),
        readings=sum(r.readings for r in results),
        outcome=outcome,
        error=error,
        notes=tuple(notes),
        timeline=(),
        calls=(),
        net=None if any(r.net is None for r in results) else sum(r.net for r in results),  # type: ignore[misc]
        peak_value=max((r.peak_value for r in results if r.peak_value is not None), default=None),
        peak_exact=all(r.peak_exact for r in results),
    )


def merge_steps(steps: Sequence[MprunResult]) -> MprunResult:
    """One call of a generator or coroutine from the profiles of its resumptions, in order.

    Like :func:`merge_results`, except that each function's peak is taken
    above the call's entry rather than above each resumption's: a
    resumption's peak is raised by what the function had gained in the
    resumptions before it.  (What happened while it was suspended belongs to
    other code and is in neither its increments nor its peak.)
    """
    gained: dict[tuple[str, int, str], int] = {}
    shifted = []
    for r in steps:
        functions = []
        for f in r.functions:
            key = function_key(f)
            before = gained.get(key, 0)
            if f.peak is not None and before:
                f = dataclasses.replace(f, peak=f.peak + before)
            gained[key] = before + f.increment
            functions.append(f)
        shifted.append(dataclasses.replace(r, functions=tuple(functions)))
    return merge_results(shifted)
