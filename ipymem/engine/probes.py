"""Memory probes: one interface over the fast Linux paths and psutil.

A probe answers three questions, each as cheaply as the platform allows:

* ``rss()``: resident set size of this process now, in bytes.  On Linux a
  kept-open ``/proc/self/statm`` read with ``os.pread`` (~1 µs); elsewhere a
  kept :class:`psutil.Process` (~12 µs).  Creating a new ``psutil.Process``
  per reading, as the incumbent does, costs ~30 µs and is avoided.
* ``hwm()`` / ``clear_hwm()``: the kernel's high-water mark of RSS and its
  reset.  On Linux the kernel keeps a high-water mark (``VmHWM``) that
  writing ``5`` to ``/proc/self/clear_refs`` resets; it cannot miss a spike,
  however short.  Where that file is missing or not writable,
  ``getrusage().ru_maxrss`` (the lifetime maximum) is the mark, never reset.
  Nothing calls these but :mod:`ipymem.engine.peaks`, the one owner of the
  mark, which folds it into every open measurement before a reset.
* ``children_rss()``: summed RSS of child processes (psutil; only with ``-c``).

Probes never raise on the hot path for a platform quirk: they are chosen once,
at construction, by trying the fast path and keeping what worked.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Protocol

try:  # POSIX only
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

#: ``ru_maxrss`` is KiB on Linux and the BSDs, bytes on macOS.
_RU_MAXRSS_SCALE = 1 if sys.platform == "darwin" else 1024

PEAK_HWM = "kernel high-water mark (VmHWM)"
PEAK_RU_MAXRSS = "lifetime high-water mark (ru_maxrss)"
PEAK_SAMPLED = "sampled"


class Probe(Protocol):
    """What the engine needs from a memory probe (see the module docstring)."""

    rss_method: str
    can_reset_peak: bool

    def rss(self) -> int: ...

    def hwm(self) -> int | None: ...

    def clear_hwm(self) -> bool: ...

    def children_rss(self) -> int: ...

    def close(self) -> None: ...


class _BaseProbe:
    """Shared parts: psutil for children, ``ru_maxrss`` as the peak of last resort."""

    _process = None
    _process_pid = -1

    def rss(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @staticmethod
    def _ru_maxrss() -> int | None:
        if resource is None:
            return None
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RU_MAXRSS_SCALE

    def hwm(self) -> int | None:
        """The lifetime maximum of RSS (``ru_maxrss``); never reset here."""
        return self._ru_maxrss()

    def clear_hwm(self) -> bool:
        return False

    def _psutil_process(self):
        import psutil

        pid = os.getpid()
        if self._process is None or self._process_pid != pid:  # new process after a fork
            self._process = psutil.Process(pid)
            self._process_pid = pid
        return self._process

    def children_rss(self) -> int:
        """Summed RSS of all live descendants; processes that vanish mid-read count as 0."""
        import psutil

        total = 0
        try:
            children = self._psutil_process().children(recursive=True)
        except psutil.Error:
            return 0
        for child in children:
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total


class ProcfsProbe(_BaseProbe):
    """Linux: ``/proc/self/statm`` for RSS, ``VmHWM`` + ``clear_refs`` for the exact peak.

    The file descriptors are opened once (close-on-exec, as ``os.open`` does
    by default) and read with ``os.pread``, which is thread-safe.  After a
    fork the descriptors still point at the parent's ``/proc`` entry, so every
    non-hot-path call checks the pid and reopens when it changed.
    """

    rss_method = "/proc/self/statm"

    def __init__(self, proc: str = "/proc/self") -> None:
        self._proc = proc
        self._lock = threading.Lock()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._open()

    def _open(self) -> None:
        self._pid = os.getpid()
        self._statm = os.open(f"{self._proc}/statm", os.O_RDONLY)
        self._status = os.open(f"{self._proc}/status", os.O_RDONLY)
        try:
            # Opening for writing proves the permission; nothing is written here (a reset would
            # destroy the lifetime mark before the ledger recorded it).
            self._clear_refs: int | None = os.open(f"{self._proc}/clear_refs", os.O_WRONLY)
        except OSError:
            self._clear_refs = None
        try:  # prove a reading works too: a /proc that opens but reads empty or odd is not usable
            if self.rss() <= 0:
                raise ValueError("no resident pages in statm")
            hwm = self._hwm()
        except (OSError, ValueError, IndexError) as exc:
            self.close()
            raise OSError(f"{self._proc}/statm is not readable here: {exc!r}") from None
        self.can_reset_peak = self._clear_refs is not None and hwm is not None
        # ru_maxrss (~0.8 µs) is the mm's mark, reset with it, unless the process inherited a larger
        # maximum across exec; then only VmHWM (a /proc/self/status read) follows the reset.
        ru = self._ru_maxrss()
        self._ru_is_hwm = ru is not None and hwm is not None and abs(ru - hwm) <= 2 * 2**20

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:
            self.close()
            self._open()

    def rss(self) -> int:
        # statm: size resident shared text lib data dt, in pages.
        data = os.pread(self._statm, 128, 0)
        return int(data.split(None, 2)[1]) * self._page

    def _hwm(self) -> int | None:
        data = os.pread(self._status, 4096, 0)
        start = data.find(b"VmHWM:")
        if start < 0:
            return None
        return int(data[start + 6 : data.index(b"kB", start)]) * 1024

    def hwm(self) -> int | None:
        """The kernel's high-water mark of RSS since the last :meth:`clear_hwm` (or the lifetime one)."""
        if not self.can_reset_peak:
            return self._ru_maxrss()
        if self._ru_is_hwm:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RU_MAXRSS_SCALE
        return self._hwm()

    def clear_hwm(self) -> bool:
        """Reset the mark to the current RSS; only :mod:`ipymem.engine.peaks` calls this."""
        self._check_pid()
        fd = self._clear_refs
        if fd is None:
            return False
        with self._lock:
            os.write(fd, b"5")
        return True

    def close(self) -> None:
        """Close the descriptors once (a second close could hit a number reused by another file)."""
        fds = (getattr(self, "_statm", None), getattr(self, "_status", None), getattr(self, "_clear_refs", None))
        self._statm = self._status = self._clear_refs = None  # type: ignore[assignment]
        for fd in fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.can_reset_peak = False

    def __del__(self) -> None:
        try:  # at interpreter exit, module globals (contextlib, os) may already be gone
            self.close()
        except Exception:
            return


class PsutilProbe(_BaseProbe):
    """Portable probe: psutil for RSS, ``ru_maxrss`` for a peak when it sets a new record."""

    rss_method = "psutil"
    can_reset_peak = False

    def rss(self) -> int:
        return self._psutil_process().memory_info().rss

    def close(self) -> None:
        self._process = None


def rss_note(probe: Probe) -> str | None:
    """A note for reports whose RSS did not come from the fast path (``None`` when it did)."""
    method = getattr(probe, "rss_method", None)
    if method == ProcfsProbe.rss_method:
        return None
    return f"RSS read with {method} (/proc/self/statm is not usable here)"


def make_probe(prefer: str = "auto") -> Probe:
    """The best probe available: ``'auto'``, ``'procfs'`` or ``'psutil'``.

    ``'auto'`` tries ``/proc/self`` and silently falls back to psutil when the
    files are missing or unreadable; the chosen method is visible as
    ``probe.rss_method`` and in every result's ``peak_method``.
    """
    if prefer not in ("auto", "procfs", "psutil"):
        raise ValueError(f"unknown probe {prefer!r}")
    if prefer in ("auto", "procfs"):
        try:
            return ProcfsProbe()
        except (OSError, ValueError, IndexError):
            if prefer == "procfs":
                raise
    return PsutilProbe()


_shared: Probe | None = None
_shared_lock = threading.Lock()


def shared_probe() -> Probe:
    """One process-wide probe, so file descriptors are opened once per session."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = make_probe()
        return _shared


def close_shared_probe() -> None:
    """Let go of the process-wide probe (extension unload).

    It is not closed here: a measurement may still hold it (a cell that runs
    ``%unload_ext ipymem`` inside ``%%memit``), and closing its file
    descriptors under it would make it read a closed, or worse a reused,
    descriptor.  The probe closes its descriptors when its last user drops it
    (``ProcfsProbe.__del__``); the next :func:`shared_probe` opens a new one.
    """
    global _shared
    with _shared_lock:
        _shared = None
    from . import peaks

    peaks.refresh()
