"""Memory limits as data: which limit binds, and how close a run came to it."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class LimitSource:
    """Where a limit comes from.

    ``kind`` is ``"cgroup v2"``, ``"cgroup v1"``, ``"MEM_LIMIT"`` or
    ``"host"``; ``directory`` is the cgroup directory whose usage is compared
    with the limit (the ancestor that sets it, for a nested limit); ``file`` is
    the file that holds the figure.
    """

    kind: str
    limit: int
    file: str = ""
    directory: str = ""
    high: int | None = None  # cgroup v2 memory.high: throttled (not killed) above it
    swap: int | None = None  # swap the cgroup (or host) may use on top of the limit, when known

    @property
    def label(self) -> str:
        """Words a reader takes at a glance: ``container limit (cgroup v2 memory.max)``."""
        if self.kind.startswith("cgroup"):
            return f"container limit ({self.kind} {os.path.basename(self.file)})"
        if self.kind == "MEM_LIMIT":
            return "MEM_LIMIT"
        return "host RAM"

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "limit": self.limit, "file": self.file, "label": self.label, "high": self.high}


@dataclass(frozen=True)
class LimitUse:
    """A run against the binding limit: the container's working set at its start, end and highest reading.

    ``usage_*`` is the memory the limit is compared with (for a cgroup, every
    process of the container less its reclaimable file cache: not this
    kernel's RSS); the highest reading is sampled by the guard or read from
    the cgroup's own high-water mark where one exists (``peak_exact``).
    """

    source: LimitSource
    usage_start: int
    usage_end: int
    usage_peak: int
    peak_exact: bool = False

    @property
    def shown(self) -> bool:
        """Worth a line in a report: a container's limit always; the host's RAM once a run used half of it."""
        return self.source.kind != "host" or self.usage_peak >= self.source.limit // 2

    @property
    def headroom(self) -> int:
        """Bytes left below the limit at the highest reading."""
        return self.source.limit - self.usage_peak

    def to_dict(self) -> dict[str, object]:
        return {
            **self.source.to_dict(),
            "usage_start": self.usage_start,
            "usage_end": self.usage_end,
            "usage_peak": self.usage_peak,
            "peak_exact": self.peak_exact,
        }


__all__ = ["LimitSource", "LimitUse"]
