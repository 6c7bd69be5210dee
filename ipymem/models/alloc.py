"""The ``%memtrace`` result: which lines of user code allocated memory, and what is still held.

All sizes are Python-heap bytes as traced by :mod:`tracemalloc` (the RSS
figures of the total are the exception and say so).  Two columns per entry:

* **held at the heap peak** (``peak_size`` / ``peak_count``): what the
  blocks allocated during the run while this line was running (in it or
  in any library it called) held at the moment the traced Python heap was
  highest (tracemalloc's exact peak).  The rows, the rest and "outside your
  code" sum to that peak.  ``peak_count`` is at least the blocks alive then
  (blocks allocated and freed inside the peak line are in its size only).
* **retained after the run** (``retained_size`` / ``retained_count``):
  blocks allocated during the run and still alive after it (and after a
  garbage collection): the leak suspects.

With ``repeat > 1`` each entry also carries ``retained_by_run``, the
cumulative retained size after each run, from which the growth per run and
whether it grew in every run are derived.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ._comparable import Comparable
from .memit import Sample

#: Values of :attr:`AllocResult.outcome` other than ``"ok"`` (same as ``%memit``'s).
INTERRUPTED = "interrupted"
ERROR = "error"

GROUPINGS = ("lineno", "filename", "traceback")

#: Smallest size (bytes, held at the peak or retained) that makes a row: below it a row reads 0.00 MiB.
ROW_MIN = 5243  # 0.005 MiB


@dataclass(frozen=True)
class AllocFrame:
    """One frame of a location: a display label (``Cell In[3], line 2`` or a short path), file, line, source."""

    label: str
    filename: str
    lineno: int
    source: str = ""


@dataclass(frozen=True)
class AllocEntry:
    """One group of allocations (a line, a file or a traceback) and what it held at the peak and after the run.

    ``frames`` is innermost first; for ``lineno`` and ``filename`` grouping it
    has one frame (the user's line the allocation is attributed to).  For
    ``filename`` grouping ``lineno`` is 0 and ``source`` is empty.
    """

    frames: tuple[AllocFrame, ...]
    peak_size: int
    peak_count: int
    retained_size: int
    retained_count: int
    retained_by_run: tuple[int, ...] = ()

    @property
    def location(self) -> str:
        return self.frames[0].label if self.frames else "?"

    @property
    def filename(self) -> str:
        return self.frames[0].filename if self.frames else ""

    @property
    def lineno(self) -> int:
        return self.frames[0].lineno if self.frames else 0

    @property
    def source(self) -> str:
        return self.frames[0].source if self.frames else ""

    @property
    def growth_per_run(self) -> float | None:
        """Average growth of the retained size per run after the first (bytes), or ``None`` for a single run."""
        r = self.retained_by_run
        if len(r) < 2:
            return None
        return (r[-1] - r[0]) / (len(r) - 1)

    @property
    def grows(self) -> bool:
        """True when the retained size rose in every run (from nothing before the first): a leak suspect."""
        r = self.retained_by_run
        if len(r) < 2:
            return False
        return all(b > a for a, b in zip((0, *r), r, strict=False))


@dataclass(frozen=True)
class AllocParams:
    """The options a ``%memtrace`` measurement ran with; ``depth`` is the frame count actually used."""

    top: int = 10
    group_by: str = "lineno"
    depth: int = 1
    requested_depth: int = 1
    all_frames: bool = False
    repeat: int = 1


@dataclass(frozen=True)
class AllocResult(Comparable):
    """What ``%memtrace`` measured.

    ``entries`` are the top groups (at most ``params.top``), largest first
    (with ``repeat > 1``, lines that grew in every run first).  ``rest_*``
    sum the user-code groups beyond the top; ``outside_*`` sum the blocks
    that could not be attributed to user code (library or interpreter
    allocations whose traceback holds no user frame; zero with ``--all``).

    Heap figures (``heap_*``) are the whole traced Python heap in bytes;
    ``heap_peak`` is exact (tracemalloc's peak) unless ``peak_exact`` is
    False; ``observed_peak`` is the heap of the state the "held at peak"
    column describes (the peak itself, or the end of the run when the lines
    could not be watched).  RSS figures are process memory.
    """

    statement: str
    entries: tuple[AllocEntry, ...]
    params: AllocParams = field(default_factory=AllocParams)
    setup: str | None = None
    runs: int = 0
    duration: float = 0.0
    heap_start: int = 0
    heap_peak: int = 0
    heap_end: int = 0
    observed_peak: int = 0
    rss_start: int = 0
    rss_end: int = 0
    groups: int = 0
    rest_peak_size: int = 0
    rest_retained_size: int = 0
    outside_peak_size: int = 0
    outside_retained_size: int = 0
    snapshots: int = 0
    #: Growth of tracemalloc's own memory during the run (``tracemalloc.get_tracemalloc_memory``): part of
    #: the RSS change, none of the Python heap's (about 50-100 bytes per traced block).
    tracemalloc_memory: int = 0
    #: False when tracemalloc was already tracing with a higher peak of the user's: ``heap_peak`` is then a
    #: lower bound (the highest heap seen at the user's line boundaries), not tracemalloc's exact peak.
    peak_exact: bool = True
    #: False when another trace function was set, so the user's lines could not be watched: library
    #: allocations are then outside the user's code and the "held at peak" column is the end state.
    lines_watched: bool = True
    outcome: str = "ok"
    error: str | None = None
    notes: tuple[str, ...] = ()
    #: RSS over the run, sampled by the magic (empty from the plain engine); see :meth:`plot`.
    timeline: tuple[Sample, ...] = ()

    # -- derived figures -------------------------------------------------
    @property
    def peak_increment(self) -> int:
        """Python-heap peak during the run(s) above the heap at the start (bytes, exact)."""
        return self.heap_peak - self.heap_start

    @property
    def retained(self) -> int:
        """Net Python-heap change over the run(s): traced bytes still held afterwards minus freed."""
        return self.heap_end - self.heap_start

    @property
    def rss_increment(self) -> int:
        """Process RSS after the run(s) minus before: compare with :attr:`retained`."""
        return self.rss_end - self.rss_start

    @property
    def unobserved_peak(self) -> int:
        """Part of the heap peak in no row: only when the lines could not be watched (``lines_watched``)."""
        return max(0, self.heap_peak - self.observed_peak)

    @property
    def leak_suspects(self) -> tuple[AllocEntry, ...]:
        """Entries whose retained size grew in every run (``repeat > 1``)."""
        return tuple(e for e in self.entries if e.grows)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    # -- export -----------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """The entries as plain dicts, one per row, ready for ``pandas.DataFrame(result.records())``."""
        out = []
        for e in self.entries:
            rec: dict[str, Any] = {
                "location": e.location,
                "filename": e.filename,
                "lineno": e.lineno,
                "source": e.source,
                "peak_size": e.peak_size,
                "peak_count": e.peak_count,
                "retained_size": e.retained_size,
                "retained_count": e.retained_count,
            }
            if self.params.group_by == "traceback":
                rec["traceback"] = [f.label for f in e.frames]
            if self.params.repeat > 1:
                rec["retained_by_run"] = list(e.retained_by_run)
                rec["growth_per_run"] = e.growth_per_run
                rec["grows"] = e.grows
            out.append(rec)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) with the stored fields and the main derived figures."""
        data = dataclasses.asdict(self)
        for name in ("peak_increment", "retained", "rss_increment", "unobserved_peak"):
            data[name] = getattr(self, name)
        data["records"] = self.records()
        return data

    # -- display ----------------------------------------------------------
    def plot(self, title: str | None = None) -> Any:
        """The RSS timeline of the run as a matplotlib ``Figure`` (no pyplot); the heap is not sampled,
        so its exact peak is in the title only."""
        from ..render.chart import alloc_title, plot_timeline

        return plot_timeline(self.timeline, title=alloc_title(self) if title is None else title)

    def __str__(self) -> str:
        from ..render.alloc import alloc_text

        return alloc_text(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        from ..render.alloc import alloc_html

        return alloc_html(self)
