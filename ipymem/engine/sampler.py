"""Background memory sampler and a bounded, peak-preserving timeline.

The sampler is for the *timeline* (and the live chart); the exact peak comes
from the kernel's high-water mark (see :mod:`ipymem.engine.probes`).  It runs
in a daemon thread named ``ipymem-sampler``, wakes every ``interval`` seconds
on an :class:`threading.Event` (so ``stop()`` returns within microseconds,
not an interval), and keeps at most ``max_points`` points however long the
cell runs: when the buffer fills, neighbouring points are merged two by two
keeping the higher one, so a downsampled chart still shows every peak.
Memory used by a sampler is therefore bounded by ``max_points`` (4096 by
default: well under 1 MiB).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from ..models import Sample
from .probes import Probe
from .threads import THREAD_PREFIX, ThreadActivity

__all__ = ["THREAD_PREFIX", "Sampler", "ThreadActivity", "Timeline"]


class Timeline:
    """At most ``max_points`` samples; merges pairs keeping the maximum when full.

    ``max_value`` and ``count`` are exact over every reading ever added, not
    just the kept ones; ``window_max`` likewise since :meth:`reset_window`.
    Thread-safe: the sampler thread appends while the main thread or a
    drawing thread reads :meth:`samples`.
    """

    def __init__(self, max_points: int = 4096) -> None:
        if max_points < 2:
            raise ValueError("max_points must be at least 2")
        self.max_points = max_points
        self._points: list[Sample] = []
        self._pending: Sample | None = None
        self._pending_n = 0
        self._stride = 1
        self._lock = threading.Lock()
        self.count = 0
        self.max_value: int | None = None
        self.window_max: int | None = None
        self.last: Sample | None = None

    def add(self, t: float, value: int) -> None:
        # Built without the NamedTuple's generated ``__new__`` (a ``<string>`` frame), so tracemalloc
        # books the block on this file: %memtrace can tell ipymem's timeline from the user's allocations.
        sample = tuple.__new__(Sample, (t, value))
        with self._lock:
            self.count += 1
            self.last = sample
            if self.max_value is None or value > self.max_value:
                self.max_value = value
            if self.window_max is None or value > self.window_max:
                self.window_max = value
            if self._pending is None or value >= self._pending.rss:
                self._pending = sample
            self._pending_n += 1
            if self._pending_n >= self._stride:
                self._points.append(self._pending)
                self._pending, self._pending_n = None, 0
                if len(self._points) >= self.max_points:
                    self._compress()

    def reset_window(self) -> None:
        """Start a new window for :attr:`window_max` (one run of a repeated measurement)."""
        with self._lock:
            self.window_max = None

    def _compress(self) -> None:
        pts = self._points
        merged = [max(pts[i], pts[i + 1], key=lambda s: s.rss) for i in range(0, len(pts) - 1, 2)]
        if len(pts) % 2:
            merged.append(pts[-1])
        self._points = merged
        self._stride *= 2

    def samples(self) -> tuple[Sample, ...]:
        """The kept points, oldest first, plus the newest reading if it is still being merged."""
        with self._lock:
            pts = list(self._points)
            if self._pending is not None:
                pts.append(self._pending)
            if self.last is not None and (not pts or pts[-1] != self.last):
                pts.append(self.last)
            return tuple(pts)


class Sampler:
    """Reads RSS every ``interval`` seconds in a background thread.

    ``start()`` takes a first reading synchronously and ``stop()`` a last one,
    so even a statement shorter than one interval has two points.  The
    probe's ``rss()`` (plus ``children_rss()`` with ``include_children``) is
    the value sampled.  ``clock`` is injectable so tests can run hours of
    sampling in milliseconds.
    """

    def __init__(
        self,
        probe: Probe,
        interval: float = 0.01,
        include_children: bool = False,
        max_points: int = 4096,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.probe = probe
        self.interval = interval
        self.include_children = include_children
        self.clock = clock
        self.timeline = Timeline(max_points)
        self.errors = 0
        #: looked at on every tick while set (see :class:`ThreadActivity`)
        self.activity: ThreadActivity | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0: float | None = None

    # -- readings ----------------------------------------------------------
    def read(self) -> int:
        """One reading of the sampled quantity (bytes)."""
        value = self.probe.rss()
        if self.include_children:
            value += self.probe.children_rss()
        return value

    def sample(self) -> int | None:
        """Take a reading now and add it to the timeline; returns it (``None`` on a probe error)."""
        try:
            value = self.read()
        except Exception:  # a vanished child or a platform hiccup must not kill the thread
            self.errors += 1
            return None
        self.timeline.add(self.elapsed(), value)
        return value

    def elapsed(self) -> float:
        """Seconds since the first reading (which starts the clock)."""
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        return now - self._t0

    # -- thread --------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Sampler:
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._run, name=THREAD_PREFIX + "sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
            activity = self.activity
            if activity is not None:
                with contextlib.suppress(Exception):  # a thread vanishing mid-look must not stop the sampling
                    activity.poll()

    def stop(self) -> None:
        """Stop the thread (returns at once: the wait is on an Event) and take a last reading."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()
        self.sample()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
