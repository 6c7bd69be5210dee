"""Per-worker figures of a Dask cluster measured alongside the kernel (``MemitResult.workers``).

Each worker is a separate process with its own RSS; its figures are that
process's RSS in bytes, with the same meaning as the kernel's: ``baseline``
when the measurement started, ``peak`` the highest RSS during it, ``end``
when it stopped.  ``method`` says where the peak came from (the worker's
kernel high-water mark, exact; or the scheduler's heartbeats, sampled: a
lower bound).  Workers that joined, left or restarted during the statement
have the figures that could be known (``None`` elsewhere) and a ``status``
saying what happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

#: Values of :attr:`WorkerMemory.status`.
OK = "ok"
JOINED = "joined"
LEFT = "left"
RESTARTED = "restarted"
UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class WorkerMemory:
    """One Dask worker's RSS during a measurement (bytes; ``None`` where it could not be known).

    ``managed`` and ``unmanaged`` are Dask's own split of the worker's memory
    at the end (managed: the sizes of the task results it holds; unmanaged:
    the rest of its RSS), as of the scheduler's last heartbeat.
    """

    address: str
    name: str = ""
    baseline: int | None = None
    peak: int | None = None
    end: int | None = None
    method: str = ""
    status: str = OK
    managed: int | None = None
    unmanaged: int | None = None
    pid: int | None = None
    detail: str = ""

    @property
    def exact(self) -> bool:
        """True when the peak comes from the worker's kernel high-water mark."""
        return "high-water" in self.method

    @property
    def increment(self) -> int | None:
        """Peak above the baseline: what the statement needed on this worker (``None`` if unknown)."""
        if self.peak is None or self.baseline is None:
            return None
        return self.peak - self.baseline

    @property
    def retained(self) -> int | None:
        """End above the baseline (``None`` if unknown)."""
        if self.end is None or self.baseline is None:
            return None
        return self.end - self.baseline


class ClusterSample(NamedTuple):
    """One reading of the cluster through the scheduler: seconds on the kernel timeline's clock,
    the summed RSS of all workers and the highest worker's RSS (bytes, as of their last heartbeats)."""

    t: float
    total: int
    highest: int
