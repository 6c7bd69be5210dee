"""The ``%memit`` result."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ._comparable import Comparable
from .cluster import ClusterSample, WorkerMemory
from .limits import LimitUse

#: Values of a result's ``outcome`` other than ``"ok"``.
INTERRUPTED = "interrupted"
ERROR = "error"


def outcome_of(error: BaseException | None) -> tuple[str, str | None]:
    """``(outcome, error text)`` of a measurement that ended with ``error`` (``None``: it finished)."""
    if error is None:
        return "ok", None
    text = str(error)
    name = type(error).__name__
    return (INTERRUPTED if isinstance(error, KeyboardInterrupt) else ERROR), (f"{name}: {text}" if text else name)


class Sample(NamedTuple):
    """One reading of the timeline: seconds since the measurement started and RSS in bytes."""

    t: float
    rss: int


@dataclass(frozen=True)
class MemitParams:
    """The options a ``%memit`` measurement ran with."""

    repeat: int = 1
    timeout: float | None = None
    interval: float = 0.01
    include_children: bool = False
    trace_heap: bool = False


@dataclass(frozen=True)
class MemitRun:
    """One execution of the measured statement.

    All memory figures are process RSS in bytes (plus children's RSS when the
    measurement included children), except the ``heap_*`` figures, which are
    the Python heap as traced by :mod:`tracemalloc` (``None`` when it was not
    traced).
    """

    baseline: int
    peak: int
    end: int
    duration: float
    samples: int
    heap_baseline: int | None = None
    heap_peak: int | None = None
    #: False when tracemalloc's peak could not be read exactly for this run (the user's own tracing,
    #: whose peak ipymem never resets, set no new maximum): ``heap_peak`` is then a lower bound.
    heap_exact: bool = True

    @property
    def increment(self) -> int:
        """Peak above the memory at the start of the run: what the statement needed."""
        return self.peak - self.baseline

    @property
    def retained(self) -> int:
        """Memory at the end of the run above its start: what the statement kept (or the allocator did)."""
        return self.end - self.baseline

    @property
    def heap_increment(self) -> int | None:
        """Python-heap peak above the heap at the start of the run."""
        if self.heap_peak is None or self.heap_baseline is None:
            return None
        return self.heap_peak - self.heap_baseline


@dataclass(frozen=True)
class MemitResult(Comparable):
    """What ``%memit`` measured.

    ``peak_method`` says where :attr:`peak` came from: the kernel's
    high-water mark (exact, no spike can be missed) or the sampler (a lower
    bound: spikes shorter than the interval can be missed).  ``outcome`` is
    ``"ok"``, ``"interrupted"`` (KeyboardInterrupt) or ``"error"`` (the
    statement raised ``error``); the runs that finished, and the partial one,
    are kept either way.

    ``limit`` is the container's working set against the binding limit
    (cgroup, ``MEM_LIMIT`` or host RAM) at the start, the end, and at least
    at the peak.  ``workers`` (when a Dask client was active) maps each worker's address
    to its :class:`~ipymem.models.cluster.WorkerMemory` over the whole
    measurement (all runs); ``cluster_timeline`` is the cluster as the
    scheduler reported it meanwhile (total and highest worker).
    """

    statement: str
    runs: tuple[MemitRun, ...]
    params: MemitParams = field(default_factory=MemitParams)
    peak_method: str = "sampled"
    setup: str | None = None
    timeline: tuple[Sample, ...] = ()
    outcome: str = "ok"
    error: str | None = None
    timed_out: bool = False
    notes: tuple[str, ...] = ()
    workers: dict[str, WorkerMemory] = field(default_factory=dict, hash=False)
    cluster_timeline: tuple[ClusterSample, ...] = ()
    limit: LimitUse | None = None  # the container's usage against the limit that kills this kernel

    # -- derived figures -------------------------------------------------
    @property
    def peak(self) -> int:
        """Highest RSS reached in any run (bytes)."""
        return max((r.peak for r in self.runs), default=0)

    @property
    def increment(self) -> int:
        """Worst (largest) increment over the runs: the figure to budget for."""
        return max((r.increment for r in self.runs), default=0)

    @property
    def best_increment(self) -> int:
        """Smallest increment over the runs."""
        return min((r.increment for r in self.runs), default=0)

    @property
    def baseline(self) -> int:
        """RSS before the first run (bytes)."""
        return self.runs[0].baseline if self.runs else 0

    @property
    def duration(self) -> float:
        """Seconds spent running the statement, over all runs."""
        return sum(r.duration for r in self.runs)

    @property
    def samples(self) -> int:
        """Number of sampler readings taken, over all runs."""
        return sum(r.samples for r in self.runs)

    @property
    def heap_increment(self) -> int | None:
        """Worst Python-heap peak above its start, or ``None`` if the heap was not traced."""
        values = [r.heap_increment for r in self.runs if r.heap_increment is not None]
        return max(values) if values else None

    @property
    def exact(self) -> bool:
        """True when the peak comes from a kernel high-water mark rather than sampling."""
        return "high-water" in self.peak_method

    @property
    def worker_increment(self) -> int | None:
        """The largest increment of any Dask worker (RSS, bytes), or ``None`` without a cluster."""
        values = [w.increment for w in self.workers.values() if w.increment is not None]
        return max(values) if values else None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    # -- memory_profiler compatibility -----------------------------------
    # memory_profiler's ``%memit -o`` returned an object with these attributes; notebooks read
    # them.  They are aliases of ipymem's own fields, in memory_profiler's units.  Its
    # ``baseline`` (MiB) is the one name ipymem already uses differently: here it is bytes,
    # like every other memory figure (``r.baseline / 2**20`` is memory_profiler's value).
    @property
    def mem_usage(self) -> list[float]:
        """memory_profiler's ``mem_usage``: the peak RSS of each run, in MiB (ipymem: ``[r.peak for r in runs]``)."""
        return [r.peak / 2**20 for r in self.runs]

    @property
    def repeat(self) -> int:
        """memory_profiler's ``repeat``: the runs asked for (``params.repeat``; ``len(runs)`` ran)."""
        return self.params.repeat

    @property
    def timeout(self) -> float | None:
        """memory_profiler's ``timeout`` in seconds (``params.timeout``)."""
        return self.params.timeout

    @property
    def interval(self) -> float:
        """memory_profiler's ``interval``: the sampling interval in seconds (``params.interval``)."""
        return self.params.interval

    @property
    def include_children(self) -> bool:
        """memory_profiler's ``include_children`` (``params.include_children``)."""
        return self.params.include_children

    # -- export -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) with the stored fields and the main derived figures."""
        data = dataclasses.asdict(self)
        data["timeline"] = [list(s) for s in self.timeline]
        for name in ("peak", "increment", "best_increment", "baseline", "duration", "samples", "heap_increment"):
            data[name] = getattr(self, name)
        for run, raw in zip(self.runs, data["runs"], strict=True):
            raw.update(increment=run.increment, retained=run.retained, heap_increment=run.heap_increment)
        data["cluster_timeline"] = [list(s) for s in self.cluster_timeline]
        data["worker_increment"] = self.worker_increment
        data["limit"] = self.limit.to_dict() if self.limit is not None else None
        for address, worker in self.workers.items():
            data["workers"][address].update(increment=worker.increment, retained=worker.retained)
        return data

    # -- display ----------------------------------------------------------
    def plot(self, title: str | None = None) -> Any:
        """The timeline as a new matplotlib ``Figure`` (made without pyplot), to style or ``savefig``.

        Needs matplotlib.  The heap is not in the timeline (only its peak is
        kept), so the chart shows RSS, with the result's peak (exact when the
        table says so) as a labelled line: the figure the table states, which
        a short spike can hide from the samples; with Dask workers, also the highest
        worker's and all workers' RSS as the scheduler's heartbeats reported them.
        The same chart as the static image the live view leaves in the notebook.
        """
        from ..render.chart import memit_peak, memit_title, plot_timeline

        metric = "RSS incl. children" if self.params.include_children else "RSS"
        figure = plot_timeline(
            self.timeline,
            title=memit_title(self) if title is None else title,
            peak=memit_peak(self),
            metric=metric,
        )
        if self.cluster_timeline:  # the Dask workers beside the kernel: highest worker and all of them
            from ..render.cluster_chart import draw_cluster

            chart = figure._ipymem_chart if hasattr(figure, "_ipymem_chart") else None
            if chart is not None:
                draw_cluster(chart, self.cluster_timeline)
        return figure

    def __str__(self) -> str:
        from ..render.memit import memit_text

        return memit_text(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        from ..render.memit import memit_html

        return memit_html(self)
