"""Result objects: plain, frozen data (standard library only).

Memory is integer bytes, time is seconds, and the parameters that produced a
result travel with it, so a result kept with ``-o`` can be rendered, compared
or exported long after the cell ran.  Derived figures are properties.  Each
result has ``_repr_pretty_`` and ``_repr_html_``; rendering itself lives in
:mod:`ipymem.render`, imported lazily so this package needs no IPython.
"""

from .alloc import AllocEntry, AllocFrame, AllocParams, AllocResult
from .cluster import ClusterSample, WorkerMemory
from .compare import Comparison, Metric, compare
from .lines import FunctionProfile, LineStats, MprunParams, MprunResult
from .memit import ERROR, INTERRUPTED, MemitParams, MemitResult, MemitRun, Sample, outcome_of
from .memwho import MemwhoParams, MemwhoResult, MemwhoRow, RssBreakdown, RssPart

__all__ = [
    "ERROR",
    "INTERRUPTED",
    "AllocEntry",
    "AllocFrame",
    "AllocParams",
    "AllocResult",
    "ClusterSample",
    "Comparison",
    "FunctionProfile",
    "LineStats",
    "MemitParams",
    "MemitResult",
    "MemitRun",
    "MemwhoParams",
    "MemwhoResult",
    "MemwhoRow",
    "Metric",
    "MprunParams",
    "MprunResult",
    "RssBreakdown",
    "RssPart",
    "Sample",
    "WorkerMemory",
    "compare",
    "outcome_of",
]
