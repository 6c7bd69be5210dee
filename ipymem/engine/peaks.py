"""One owner for each process-wide peak counter: the kernel's high-water mark and tracemalloc's peak.

Both counters belong to the whole process.  The kernel keeps one high-water
mark of RSS (``VmHWM``, which ``ru_maxrss`` follows on Linux), reset by
writing ``5`` to ``/proc/self/clear_refs``; tracemalloc keeps one peak,
reset by :func:`tracemalloc.reset_peak`.  Every ipymem measurement wants its
own exact peak, and measurements nest (``%memit`` inside ``%%mprun``), overlap
(``@ipymem.profile`` in another thread), and share the process with the user's
own tracemalloc.  If each one reset the counter for itself, the one that
started earlier would lose what it had seen.

So nothing in ipymem resets a counter directly.  A measurement opens a
:class:`Window` on the counter's :class:`PeakLedger`; before any reset the
ledger *folds* the counter's value into every window still open, in any
thread, so each window's peak is exact whatever happens inside it:

* :meth:`PeakLedger.open` starts a window (resetting the counter, after folding);
* :meth:`PeakLedger.peek` gives the window's peak so far;
* :meth:`PeakLedger.take` gives the peak since the previous ``take`` and starts
  a new stretch (the line tracers call it at every reading);
* :meth:`PeakLedger.close` gives the final peak and forgets the window.

Where resetting is not allowed (``%config MemoryMagics.reset_hwm = False``,
or tracemalloc started by the user, whose own peak must survive) or not
possible (no writable ``clear_refs``), the counter is read but never reset: a
window's peak is then exact when the window set a new maximum of the counter,
and unknown otherwise (``exact=False``; callers say "at least" and use their
own readings).

The kernel's lifetime high-water mark cannot be restored after a reset, so the
ledger records it first: :func:`lifetime_peak` is the process's highest RSS
as it would have read without ipymem.
"""

from __future__ import annotations

import contextlib
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any


class Window:
    """One open measurement over a shared counter (see :class:`PeakLedger`).

    ``high`` is the highest counter value folded in since the window's
    current stretch began; ``mark`` is the counter's value when the stretch
    began if the counter has not been reset since (its value then still holds
    history from before the window), else ``None``; ``gap`` says that part
    of the stretch is not covered exactly (a reset happened while the counter
    still held older history, so what the window saw before it is unknown).
    """

    __slots__ = ("gap", "high", "mark", "reset", "thread")

    def __init__(self, mark: int | None) -> None:
        self.high: int | None = None
        self.mark = mark
        #: whether the counter was reset when the window opened (else: exact only at a new maximum)
        self.reset = mark is None
        self.gap = False
        self.thread = threading.get_ident()

    def _fold(self, value: int) -> None:
        """The counter read ``value`` and is about to be reset."""
        if self.mark is None or value > self.mark:
            if self.high is None or value > self.high:
                self.high = value
        else:
            self.gap = True
        self.mark = None


class PeakLedger:
    """The owner of one resettable process-wide peak counter.

    ``read()`` returns the counter (``None`` when it cannot be read now);
    ``reset()`` resets it and returns whether it did; ``resettable()`` says
    whether a reset is allowed and possible now.  Thread-safe: one lock
    around every read-fold-reset, so two measurements in two threads never
    lose each other's peaks.
    """

    def __init__(
        self,
        read: Callable[[], int | None],
        reset: Callable[[], bool],
        resettable: Callable[[], bool],
    ) -> None:
        self._read = read
        self._reset = reset
        self._resettable = resettable
        self._lock = threading.Lock()
        self._open: list[Window] = []
        #: the highest counter value ever read before a reset (what a reset would have destroyed)
        self.lifetime: int | None = None
        self.resets = 0

    # -- internals (lock held) ------------------------------------------------
    def _fold_and_reset(self, value: int | None) -> bool:
        if value is None or not self._resettable():
            return False
        if self.lifetime is None or value > self.lifetime:
            self.lifetime = value
        for w in self._open:
            w._fold(value)
        if not self._reset():
            return False
        self.resets += 1
        return True

    @staticmethod
    def _peak(w: Window, value: int | None) -> tuple[int | None, bool]:
        high = w.high
        if value is not None and (w.mark is None or value > w.mark):
            high = value if high is None or value > high else high
            return high, not w.gap
        # The counter still holds history from before the stretch and set no new maximum:
        # what the stretch reached is unknown (at most the mark), only folded values are known.
        return high, False

    # -- public -----------------------------------------------------------------
    def open(self) -> Window:
        """Start a window: fold the counter into the open windows, then reset it if allowed."""
        with self._lock:
            value = self._read()
            reset = self._fold_and_reset(value)
            w = Window(None if reset else (value if value is not None else 0))
            if reset:
                for other in self._open:
                    other.mark = None
            self._open.append(w)
            return w

    def peek(self, w: Window) -> tuple[int | None, bool]:
        """``(peak so far, exact)``; ``peak`` is ``None`` when nothing is known."""
        with self._lock:
            return self._peak(w, self._read())

    def take(self, w: Window) -> tuple[int | None, bool]:
        """``(peak since the previous take, exact)``, then start a new stretch for ``w``.

        With resets allowed the counter is reset (after folding it into the
        other windows); otherwise the window just moves its mark.
        """
        with self._lock:
            value = self._read()
            out = self._peak(w, value)
            others = [o for o in self._open if o is not w]
            saved = self._open
            self._open = others
            try:
                reset = self._fold_and_reset(value)
            finally:
                self._open = saved
            w.high, w.gap = None, False
            if reset:
                for other in self._open:
                    other.mark = None
            elif value is not None:
                w.mark = value if w.mark is None or value > w.mark else w.mark
            return out

    def close(self, w: Window) -> tuple[int | None, bool]:
        """The window's final ``(peak, exact)``; the window is forgotten."""
        with self._lock:
            out = self._peak(w, self._read())
            with contextlib.suppress(ValueError):
                self._open.remove(w)
            return out

    def reset_now(self) -> bool:
        """Reset the counter for a caller that owns it (folding it into every open window first)."""
        with self._lock:
            reset = self._fold_and_reset(self._read())
            if reset:
                for other in self._open:
                    other.mark = None
            return reset

    @property
    def open_windows(self) -> int:
        return len(self._open)

    def current(self) -> int | None:
        """The counter now (its value since the last reset, by anyone)."""
        with self._lock:
            return self._read()


# -- the kernel high-water mark of RSS ---------------------------------------------


class _KernelHwm:
    """The counter behind :data:`rss_peaks`: the shared probe's ``hwm()`` and ``clear_hwm()``.

    The probe is fetched lazily and dropped by :func:`refresh` (extension
    unload, tests that take ``/proc`` away), so the next reading uses the probe
    chosen then.  ``allow_reset`` is the ``reset_hwm`` switch.
    """

    def __init__(self) -> None:
        self.allow_reset = True
        self._probe: Any = None

    def probe(self) -> Any:
        probe = self._probe
        if probe is None:
            from .probes import shared_probe

            probe = self._probe = shared_probe()
        return probe

    def refresh(self) -> None:
        self._probe = None

    def read(self) -> int | None:
        try:
            return self.probe().hwm()
        except (OSError, ValueError):
            return None

    def reset(self) -> bool:
        try:
            return bool(self.probe().clear_hwm())
        except OSError:
            return False

    def resettable(self) -> bool:
        return self.allow_reset and bool(getattr(self.probe(), "can_reset_peak", False))


_hwm = _KernelHwm()
rss_peaks = PeakLedger(_hwm.read, _hwm.reset, _hwm.resettable)


def refresh() -> None:
    """Forget the probe the RSS ledger reads (the next reading takes the shared probe chosen then)."""
    _hwm.refresh()


def ledger_for(probe: Any) -> PeakLedger:
    """The ledger to use with ``probe``: the process-wide one for ipymem's own probes, a private one for others.

    A probe of another kind (a test's fake, a custom probe) keeps its own
    counter through its ``reset_peak()`` / ``peak()`` protocol, so a private
    ledger around it touches nothing process-wide.
    """
    from .probes import ProcfsProbe, PsutilProbe

    if probe is None or isinstance(probe, (ProcfsProbe, PsutilProbe)):
        return rss_peaks

    def reset() -> bool:
        probe.reset_peak()
        return True

    return PeakLedger(lambda: probe.peak()[0], reset, lambda: bool(getattr(probe, "can_reset_peak", False)))


def set_reset_hwm(allowed: bool) -> None:
    """Allow or forbid resetting the kernel's high-water mark (``%config MemoryMagics.reset_hwm``).

    Forbidden, nothing ipymem does changes what ``/usr/bin/time`` or batch
    accounting report as the process's maximum RSS; a measurement's peak is
    then exact only when it sets a new lifetime maximum, and sampled otherwise.
    """
    _hwm.allow_reset = bool(allowed)


def reset_hwm_allowed() -> bool:
    return _hwm.allow_reset


def rss_peak_resettable() -> bool:
    """Whether windows opened now get an exact RSS peak however low it is (the mark is reset)."""
    return _hwm.resettable()


def lifetime_peak() -> int | None:
    """The process's highest RSS since it started, in bytes, as if ipymem had never reset the mark.

    The kernel's ``VmHWM`` and ``ru_maxrss`` are reset by ipymem's
    measurements (unless ``reset_hwm`` is off); before each reset the value
    is folded in here, so nothing is lost.  ``None`` where the platform gives
    no high-water mark at all.
    """
    now = rss_peaks.current()
    life = rss_peaks.lifetime
    if now is None:
        return life
    return now if life is None or now > life else life


# -- tracemalloc's peak ---------------------------------------------------------------


class _HeapPeak:
    """tracemalloc's peak, and who started tracing: ipymem (resets allowed) or the user (never reset).

    :meth:`acquire` starts tracemalloc for ipymem if it is off; :meth:`release`
    stops it when the last ipymem user lets go.  If the user was already
    tracing, ipymem never starts, stops or resets anything: the user's
    ``get_traced_memory()`` peak after ipymem is never lower than before.
    """

    def __init__(self) -> None:
        self.owners = 0
        self.started_by_us = False
        self._lock = threading.Lock()

    def read(self) -> int | None:
        if not tracemalloc.is_tracing():
            return None
        return tracemalloc.get_traced_memory()[1]

    def reset(self) -> bool:
        if not self.resettable():
            return False
        tracemalloc.reset_peak()
        return True

    def resettable(self) -> bool:
        return self.started_by_us and tracemalloc.is_tracing()

    def acquire(self) -> bool:
        """Make sure tracemalloc traces for an ipymem measurement; returns whether ipymem started it now."""
        with self._lock:
            started = False
            if not tracemalloc.is_tracing():
                tracemalloc.start()
                self.started_by_us = True
                started = True
            self.owners += 1
            return started

    def adopt(self) -> None:
        """tracemalloc was just started by ipymem code itself (``%memtrace``, with its own frame count)."""
        with self._lock:
            self.started_by_us = True
            self.owners += 1

    def release(self) -> None:
        """One ipymem user is done; stop tracemalloc if ipymem started it and nobody else of ipymem uses it."""
        with self._lock:
            self.owners = max(0, self.owners - 1)
            if self.owners == 0 and self.started_by_us:
                self.started_by_us = False
                if tracemalloc.is_tracing():
                    tracemalloc.stop()

    def users_tracing(self) -> bool:
        """Whether tracemalloc is tracing for someone other than ipymem (its peak must not be reset)."""
        return tracemalloc.is_tracing() and not self.started_by_us


heap_tracing = _HeapPeak()
heap_peaks = PeakLedger(heap_tracing.read, heap_tracing.reset, heap_tracing.resettable)


@contextlib.contextmanager
def tracing_heap():
    """tracemalloc on for the block, as :meth:`_HeapPeak.acquire` / :meth:`_HeapPeak.release`."""
    heap_tracing.acquire()
    try:
        yield
    finally:
        heap_tracing.release()


USER_HEAP_NOTE = (
    "tracemalloc was already tracing (yours): its peak is never reset by ipymem, so the Python-heap peak "
    "is exact only where the run set a new maximum; otherwise it is a lower bound ('at least')"
)
NO_RESET_NOTE = (
    "the kernel high-water mark is not reset (reset_hwm is off): the peak is exact only where the run set a new "
    "lifetime maximum of RSS; otherwise it comes from the samples"
)
