"""Memory meters for the line tracers: ``read() -> (value now, peak since the previous reading)``.

One reading is on the hot path of line tracing, so each meter is the
cheapest way to answer on its platform: a kept-open ``/proc/self/statm`` and
the kernel's high-water mark (through :data:`.peaks.rss_peaks`, the one owner
of that process-wide counter), psutil elsewhere, tracemalloc for the heap.
"""

from __future__ import annotations

import contextlib
import os
import time
import tracemalloc
from typing import Any

from . import peaks
from .probes import Probe, shared_probe

# -- memory meters: (value, peak since the previous reading) ----------------------------


class _WindowMeter:
    """A meter whose peaks come from a window on a shared counter (:class:`.peaks.PeakLedger`)."""

    def _open_window(self, ledger: peaks.PeakLedger) -> None:
        self._ledger = ledger
        self._window: peaks.Window | None = ledger.open()
        self._take = ledger.take

    def _with_peak(self, value: int) -> tuple[int, int]:
        """``(value, peak since the previous reading)``; the counter may lag a little below ``value``."""
        peak = self._take(self._window)[0]
        return value, (peak if peak is not None and peak > value else value)

    def _close_window(self) -> None:
        window, self._window = self._window, None
        if window is not None:
            self._ledger.close(window)


class _ProcfsMeter(_WindowMeter):
    """Linux: RSS from a kept-open ``statm``; window peaks from the kernel high-water mark.

    The mark is shared by the whole process, so it is read and reset through a
    window of :data:`.peaks.rss_peaks` (which first folds it into every other
    open measurement).  Where the mark cannot or may not be reset (``reset_hwm``
    off), a window's peak is known only when it sets a new lifetime maximum;
    otherwise the readings themselves are the peaks.
    """

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._statm = os.open("/proc/self/statm", os.O_RDONLY)
        self.exact_peaks = peaks.rss_peak_resettable()
        self.method = (
            "RSS from /proc/self/statm, peaks from the kernel high-water mark"
            if self.exact_peaks
            else "RSS from /proc/self/statm, peaks from the readings (and new lifetime maxima)"
        )
        self._open_window(peaks.rss_peaks)

    def read(self) -> tuple[int, int]:
        return self._with_peak(int(os.pread(self._statm, 128, 0).split(None, 2)[1]) * self._page)

    def close(self) -> None:
        self._close_window()
        fd, self._statm = getattr(self, "_statm", None), None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class _ProbeMeter:
    """Portable: the probe's RSS; peaks are the readings themselves (no high-water mark)."""

    def __init__(self, probe: Probe) -> None:
        self._probe = probe
        self.method = f"RSS from {probe.rss_method}, peaks from the readings only"

    def read(self) -> tuple[int, int]:
        value = self._probe.rss()
        return value, value

    def close(self) -> None:
        pass


class _ChildrenMeter:
    """Adds the summed RSS of child processes (psutil, sampled at the readings)."""

    def __init__(self, inner: Any, probe: Probe) -> None:
        self._inner, self._probe = inner, probe
        self.method = inner.method + "; child processes sampled at the readings"

    def read(self) -> tuple[int, int]:
        value, peak = self._inner.read()
        children = self._probe.children_rss()
        return value + children, peak + children

    def close(self) -> None:
        self._inner.close()


class _HeapMeter(_WindowMeter):
    """The Python heap as traced by tracemalloc: exact current and peak.

    tracemalloc's peak is shared (the user's own tracing, an outer ``%memit
    --heap``), so it is read and reset through a window of
    :data:`.peaks.heap_peaks`; if the user was tracing, it is never reset
    and a window's peak is known only when it sets a new maximum.
    """

    method = "Python heap from tracemalloc (current and peak)"
    #: read at every line boundary where the heap moved (see :func:`_heap_quiet`), not on a time gate
    per_line = True

    def __init__(self) -> None:
        self.exact_peaks = peaks.heap_tracing.resettable()
        if not self.exact_peaks:
            self.method = "Python heap from tracemalloc (your tracing: peaks from the readings and new maxima)"
        self._open_window(peaks.heap_peaks)
        self._get = tracemalloc.get_traced_memory

    def read(self) -> tuple[int, int]:
        return self._with_peak(self._get()[0])

    def close(self) -> None:
        self._close_window()


def make_meter(backend: str = "rss", include_children: bool = False, probe: Probe | None = None) -> Any:
    """The cheapest meter for ``backend`` (``'rss'`` or ``'heap'``)."""
    if backend == "heap":
        return _HeapMeter()
    if backend != "rss":
        raise ValueError(f"unknown backend {backend!r}; expected 'rss' or 'heap'")
    probe = probe or shared_probe()
    meter: Any
    try:
        meter = _ProcfsMeter() if getattr(probe, "rss_method", "") == "/proc/self/statm" else _ProbeMeter(probe)
    except OSError:
        meter = _ProbeMeter(probe)
    return _ChildrenMeter(meter, probe) if include_children else meter


def _read_cost(meter: Any, n: int = 10, batches: int = 3) -> float:
    """Seconds per reading: the best of a few batches (other processes make single timings noisy)."""
    best = float("inf")
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(n):
            meter.read()
        best = min(best, (time.perf_counter() - t0) / n)
    return best
