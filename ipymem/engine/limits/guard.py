"""The memory guard: a watchdog that stops the user's code before the container's limit kills the kernel.

How it stops code
-----------------
A thread (``ipymem-guard``) reads the container's working set (see
:class:`~.cgroups.UsageMeter`): every ``interval`` seconds (10 Hz) while far
from the limit, and faster as the headroom shrinks, so that no allocation
rate the machine can sustain crosses the rest of the headroom between two
reads.  At the stop level it raises :class:`MemoryLimitError` (a
``MemoryError``, so ``except MemoryError`` in user code works) in the thread
running the user's code with ``PyThreadState_SetAsyncExc``: the exception is
raised at that thread's next bytecode, in the user's frame.

The user's coroutines (a cell with top-level ``await``) are not stopped: an
exception raised in a task step can land in the event loop's own callbacks,
which swallow it and lose the task's wake-up.  The guard still warns and
keeps the flight record there.  A cell without ``await`` runs synchronously
inside the kernel's own task and is stopped.

It fires only when the target thread's stack holds the user's code (a
frame of the watched cell, or below the ``with ipymem.guard()`` block) and
its innermost frame is not ipymem's; the check and the call run with the
GIL held and no I/O between them, so the frame seen is the frame hit.  Other
threads whose stacks hold user code are stopped too (a cell's worker
thread).  It never kills a process and never frees anything: the user's
variables stay as they were when the exception landed.

What it cannot stop: a single C call that allocates past the limit in one
step (``np.ones(10**11)``) runs no bytecode to interrupt.  The opt-in hard
mode sets ``RLIMIT_DATA`` just above the current data segment plus the
headroom while the user's code runs, so that such an allocation fails in the
user's code with the library's own ``MemoryError`` instead; it also refuses
memory that would only have been reserved, never touched, and it binds
every thread of the process, which is why it is off by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...units import glance as mib
from .cgroups import LimitSource, UsageMeter, find_limit

#: The fastest a page can be faulted in here is ~9 GiB/s; the guard assumes at least this growth rate.
MIN_RATE = 4 << 30
#: Shortest wait between two reads near the limit (the GIL hand-over costs ~5 ms under a busy main thread anyway).
MIN_INTERVAL = 0.001
#: The switch interval near the stop level (see Guard._fast_switch).
FAST_SWITCH = 0.0005
#: A delivered stop is repeated after this long if usage is still above the stop level (user code caught it).
REFIRE_AFTER = 0.25
_ASYNCIO = os.path.dirname(asyncio.__file__) + os.sep
_ASYNC_FLAGS = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR
_IPYMEM = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep


class MemoryLimitError(MemoryError):
    """Raised in the user's code by ``%memguard`` / :func:`ipymem.guard` at the stop level.

    A subclass of ``MemoryError``: code that already handles running out of
    memory handles this too.  ``usage``, ``limit`` and ``source`` say what
    was measured; ``str(e)`` says it in words.
    """

    usage: int = 0
    limit: int = 0
    source: str = ""
    _next: tuple[str, int, int, str] | None = None  # (message, usage, limit, source) of the stop being delivered
    _delivered: threading.Event | None = None

    def __init__(self, *args: object) -> None:
        pending = MemoryLimitError._next
        if not args and pending is not None:  # raised by the guard: the class is instantiated with no arguments
            MemoryLimitError._next = None
            args = (pending[0],)
            self.usage, self.limit, self.source = pending[1], pending[2], pending[3]
            if MemoryLimitError._delivered is not None:
                MemoryLimitError._delivered.set()
        super().__init__(*args)


@dataclass(frozen=True)
class Level:
    """A fraction of the limit (``0.95``) or a size in bytes."""

    fraction: float | None = None
    size: int | None = None
    margin: int | None = None  # with a fraction: at most this far below the limit (the default stop level)

    def bytes_of(self, limit: int) -> int:
        if self.fraction is None:
            return int(self.size or 0)
        level = int(self.fraction * limit)
        return min(level, limit - self.margin) if self.margin is not None and limit > 2 * self.margin else level

    def __str__(self) -> str:
        if self.fraction is None:
            return f"{(self.size or 0) / 2**20:,.0f} MiB"
        if self.margin is not None:
            return f"{self.fraction:.0%} or {self.margin / 2**20:,.0f} MiB below the limit, the lower"
        return f"{self.fraction:.0%}"


#: The default stop level.  A C call that holds the GIL cannot be interrupted, and page faults near a cgroup's
#: limit reclaim cache inside the call: 120 ms between two reads was seen there under a loop of 8 MiB
#: allocations (40 MiB of growth), so a small container keeps at least 128 MiB of headroom.
DEFAULT_STOP = Level(0.95, margin=128 << 20)
DEFAULT_WARN = Level(0.80)


@dataclass
class CellWatch:
    """What the guard saw while one cell (or ``with`` block) ran."""

    label: str = ""
    started: float = field(default_factory=time.time)
    start_usage: int = 0
    peak_usage: int = 0
    warned: bool = False
    stops: int = 0
    stop_message: str = ""
    holders: tuple[tuple[str, int], ...] = ()


MemoryLimitError.__module__ = "ipymem"  # as users import it: tracebacks say ipymem.MemoryLimitError


def _set_async_exc(ident: int, exc: Any) -> int:
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc) if exc else None)


class Guard:
    """The watchdog.  :meth:`start` once; :meth:`arm` / :meth:`disarm` around each cell.

    ``is_user_frame(frame)`` tells the user's code (a cell's file); the thread
    is only touched while armed and while such a frame is on its stack.
    ``holders()`` returns ``[(name, bytes), ...]`` of the largest user names
    (a budgeted census, run in the guard's thread at the warning level);
    ``on_warn(watch)`` and ``on_stop(watch)`` are told once per cell;
    ``on_record(guard)`` is called about every ``record_every`` seconds (the
    flight record).  ``meter`` replaces the :class:`~.cgroups.UsageMeter`
    (tests).
    """

    def __init__(
        self,
        stop: Level = DEFAULT_STOP,
        warn: Level | None = DEFAULT_WARN,
        interval: float = 0.1,
        source: LimitSource | None = None,
        is_user_frame: Callable[[Any], bool] | None = None,
        holders: Callable[[], list[tuple[str, int]]] | None = None,
        on_warn: Callable[[CellWatch], None] | None = None,
        on_stop: Callable[[CellWatch], None] | None = None,
        on_record: Callable[[Guard], None] | None = None,
        record_every: float = 0.25,
        hard: bool = False,
        rss: Callable[[], int] | None = None,
        meter: Any = None,
        label_file: Callable[[str], str] | None = None,
    ) -> None:
        self.label_file = label_file  # "Cell In[4]" for a cell's file name
        self.source = source if source is not None else find_limit()[0]
        if rss is None and meter is None:
            from ..probes import shared_probe

            rss = shared_probe().rss  # MEM_LIMIT is compared with this process's RSS
        self.meter = meter if meter is not None else UsageMeter(self.source, rss=rss)
        self.stop_level, self.warn_level = stop, warn
        self.interval = interval
        self.is_user_frame = is_user_frame or (lambda frame: True)
        self.holders, self.on_warn, self.on_stop, self.on_record = holders, on_warn, on_stop, on_record
        self.record_every = record_every
        self.hard = hard
        self.watch: CellWatch | None = None
        self.usage = 0
        self.reads = 0
        self.last_holders: tuple[tuple[str, int], ...] = ()
        self._target: int | None = None
        self._anchor: tuple[int, Any] | None = None  # (id of frame, its code): the API's with-block
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._delivered = threading.Event()
        self._fired_at = 0.0
        self._thread: threading.Thread | None = None
        self._rlimit: tuple[int, int] | None = None
        self._warner: threading.Thread | None = None
        self._switch: float | None = None  # the switch interval to restore, while the guard runs with a shorter one

    # -- levels -----------------------------------------------------------------
    @property
    def limit(self) -> int:
        return self.source.limit

    @property
    def stop_bytes(self) -> int:
        return self.stop_level.bytes_of(self.limit)

    @property
    def warn_bytes(self) -> int | None:
        return self.warn_level.bytes_of(self.limit) if self.warn_level is not None else None

    # -- the thread ---------------------------------------------------------------
    def start(self) -> Guard:
        if self._thread is None:
            self.usage = self.meter.working_set() or 0
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ipymem-guard", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread, restore any hard limit, close the meter's file."""
        self.disarm()
        self._stop.set()
        for attr in ("_thread", "_warner"):
            thread = getattr(self, attr)
            setattr(self, attr, None)
            if thread is not None and thread is not threading.current_thread():
                thread.join(5)
        self.meter.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _wait(self, used: int, rate: float) -> float:
        """Seconds until the next read: no assumed growth rate may cross the headroom in between."""
        headroom = self.stop_bytes - used
        if headroom <= 0:
            return MIN_INTERVAL
        return max(MIN_INTERVAL, min(self.interval, headroom / max(rate * 2, MIN_RATE)))

    def _run(self) -> None:
        last_t, last_used, rate, next_record = time.perf_counter(), self.usage, 0.0, 0.0
        wait = 0.0
        while not self._stop.wait(wait):
            used = self.meter.working_set()
            self.reads += 1
            now = time.perf_counter()
            if used is None:
                wait = self.interval
                continue
            if now > last_t:
                rate = max(0.0, (used - last_used) / (now - last_t)) if used > last_used else rate * 0.5
            last_t, last_used, self.usage = now, used, used
            with contextlib.suppress(Exception):  # the guard must never die of a report; the next tick tries again
                self._tick(used)
            if self.on_record is not None and now >= next_record:
                next_record = now + self.record_every
                with contextlib.suppress(Exception):
                    self.on_record(self)
            wait = self._wait(used, rate)
            if self.watch is None or (used >= self.stop_bytes and self._fired_at):
                # Not armed, or stopped and still above: nothing to catch in time; a re-fire waits REFIRE_AFTER.
                wait = max(wait, self.interval)

    def _tick(self, used: int) -> None:
        watch = self.watch
        if watch is None:
            return
        if used > watch.peak_usage:
            watch.peak_usage = used
        if used >= self.stop_bytes:
            used = self._confirm(used)
            if used >= self.stop_bytes:
                self._fire(watch, used)
                return
        if self._switch is None and used >= self.stop_bytes - (self.stop_bytes >> 2):
            self._fast_switch()
        warn = self.warn_bytes
        if warn is not None and used >= warn and not watch.warned:
            watch.warned = True
            # The census and the report run in a thread of their own: the guard keeps reading meanwhile
            # (a census of 0.2 s in this thread let a loop of 8 MiB allocations run from 80% into the OOM killer).
            self._warner = threading.Thread(target=self._warn, args=(watch,), name="ipymem-guard-census", daemon=True)
            self._warner.start()

    def _warn(self, watch: CellWatch) -> None:
        self._census()
        watch.holders = self.last_holders
        if self.on_warn is not None and self.watch is watch:
            with contextlib.suppress(Exception):
                self.on_warn(watch)

    def _confirm(self, used: int) -> int:
        """Re-read with a fresh page-cache figure: file I/O can fill the cgroup with cache the kernel reclaims."""
        self.meter.refresh_cache()
        again = self.meter.working_set()
        return used if again is None else again

    def _census(self) -> None:
        if self.holders is None:
            return
        with contextlib.suppress(Exception):
            self.last_holders = tuple(self.holders())

    # -- stopping -----------------------------------------------------------------
    def _fire(self, watch: CellWatch, used: int) -> None:
        now = time.perf_counter()
        pending = MemoryLimitError._next is not None and not self._delivered.is_set()
        if pending or (self._fired_at and now - self._fired_at < REFIRE_AFTER):
            return
        frames = sys._current_frames()
        targets = [ident for ident, frame in frames.items() if self._stoppable(ident, frame)]
        if not targets:
            frames.clear()  # it holds this frame: a cycle that would pin every thread's stack until a collection
            return
        line = running_line(frames[targets[0]], self.is_user_frame, self.label_file)
        user = _innermost(frames[targets[0]], self.is_user_frame)
        if user is not None and self.label_file is not None and self._anchor is None:
            watch.label = self.label_file(user.f_code.co_filename)  # "Cell In[4]", as the traceback says
        message = self.message(used, line, watch.holders or self.last_holders)
        self._delivered.clear()
        MemoryLimitError._delivered = self._delivered
        MemoryLimitError._next = (message, used, self.limit, self.source.label)
        # From the frame check to here: no I/O, so the GIL was not released and each target is still in its frame.
        for ident in targets:
            _set_async_exc(ident, MemoryLimitError)
        self._fired_at = now
        watch.stops += 1
        if watch.stops == 1:
            watch.stop_message = message
            if self.on_stop is not None:
                self.on_stop(watch)
        del frames

    def _stoppable(self, ident: int, frame: Any) -> bool:
        """Whether ``frame`` (a thread's innermost) is the user's code to stop: not ipymem's, user code below."""
        if ident == threading.get_ident():
            return False
        if frame.f_code.co_filename.startswith(_IPYMEM):
            return False
        main = ident == self._target
        f = frame
        found = False
        while f is not None:
            code = f.f_code
            if self._anchor is not None and main and id(f) == self._anchor[0] and code is self._anchor[1]:
                found = True
            elif self._anchor is None and self.is_user_frame(f):
                if code.co_flags & _ASYNC_FLAGS:
                    # The user's coroutine (top-level await) is never stopped: an exception raised in a task
                    # step can land in the event loop's callbacks, which swallow it and lose the task's
                    # wake-up (the cell hung in select(), seen in tests).  The guard warns and records only.
                    # A cell without await runs synchronously inside the kernel's own task: that is stopped.
                    return False
                found = found or main or not _ipymem_thread(ident)
            elif not found and code.co_filename.startswith(_ASYNCIO):
                return False  # the loop's own code runs innermost: the user's code is not running
            f = f.f_back
        return found

    def message(self, used: int, line: str, holders: tuple[tuple[str, int], ...] = ()) -> str:
        text = (
            f"ipymem memory guard stopped the code: {mib(used)} of the {mib(self.limit)} {self.source.label}"
            f" ({used / self.limit:.0%}; stop level {mib(self.stop_bytes)})"
        )
        if line:
            text += f", at {line}"
        if holders:
            text += "; largest names: " + ", ".join(f"{name} {mib(size)}" for name, size in holders[:3])
        return text + ". Variables made before this are intact; del what you no longer need."

    # -- cells ----------------------------------------------------------------------
    def arm(self, label: str = "", target: int | None = None, anchor: Any = None) -> CellWatch:
        """Watch the code that ``target`` (default: this thread) runs from now on.

        ``anchor``: a frame; only code running below it is stopped (the API's
        ``with`` block).  Only its id and code are kept, never the frame.
        """
        with self._lock:
            self._target = threading.get_ident() if target is None else target
            self._anchor = (id(anchor), anchor.f_code) if anchor is not None else None
            used = self.meter.working_set() or self.usage
            self.watch = CellWatch(label=label, start_usage=used, peak_usage=used)
            self._fired_at = 0.0
            if self.hard:
                self._set_hard_limit(used)
            return self.watch

    def disarm(self) -> CellWatch | None:
        """Stop watching; a stop still on its way to the user's code is taken back."""
        with self._lock:
            watch, self.watch = self.watch, None
            target, self._target, self._anchor = self._target, None, None
            if MemoryLimitError._next is not None and target is not None:
                _set_async_exc(target, None)  # no exception of ours may land in the code after the cell
                MemoryLimitError._next = None
            self._restore_hard_limit()
            self._restore_switch()
            if watch is not None:
                used = self.meter.working_set()
                if used is not None and used > watch.peak_usage:
                    watch.peak_usage = used
            return watch

    # -- the GIL -------------------------------------------------------------------------
    def _fast_switch(self) -> None:
        """Within a quarter of the stop level, take the GIL back within 0.5 ms instead of 5 ms.

        A busy main thread hands the GIL to a waiting thread only after the
        switch interval: at 2 GiB/s, 5 ms is 10 MiB unseen per read.  The
        shorter interval costs nothing while the guard sleeps; it is restored
        when the cell ends.
        """
        with self._lock:
            if self._switch is None and self.watch is not None:
                self._switch = sys.getswitchinterval()
                sys.setswitchinterval(min(self._switch, FAST_SWITCH))

    def _restore_switch(self) -> None:
        previous, self._switch = self._switch, None
        if previous is not None and sys.getswitchinterval() == min(previous, FAST_SWITCH):
            sys.setswitchinterval(previous)  # unless the user's code changed it meanwhile

    # -- hard mode ----------------------------------------------------------------------
    def _set_hard_limit(self, used: int) -> None:
        import resource

        data = vm_data()
        if data is None:
            return
        headroom = max(0, self.stop_bytes - used)
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        new = data + headroom
        if hard != resource.RLIM_INFINITY:
            new = min(new, hard)
        if soft != resource.RLIM_INFINITY and soft <= new:
            return  # the user's own limit is tighter already
        resource.setrlimit(resource.RLIMIT_DATA, (new, hard))
        self._rlimit = (soft, hard)

    def _restore_hard_limit(self) -> None:
        previous, self._rlimit = self._rlimit, None
        if previous is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_DATA, previous)


def vm_data() -> int | None:
    """The process's data segment (``VmData``: private writable mappings, what ``RLIMIT_DATA`` counts), bytes."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _ipymem_thread(ident: int) -> bool:
    thread = threading._active.get(ident)  # type: ignore[attr-defined]
    return thread is not None and thread.name.startswith("ipymem-")


def _innermost(frame: Any, is_user_frame: Callable[[Any], bool]) -> Any:
    f = frame
    while f is not None and not is_user_frame(f):
        f = f.f_back
    return f


def running_line(frame: Any, is_user_frame: Callable[[Any], bool], label: Callable[[str], str] | None = None) -> str:
    """``<file>:<line>: <source>`` of the innermost user frame at or above ``frame`` (``label`` names the file)."""
    import linecache

    f = _innermost(frame, is_user_frame) or frame
    lineno = f.f_lineno or 0
    source = linecache.getline(f.f_code.co_filename, lineno).strip()
    name = label(f.f_code.co_filename) if label is not None else f.f_code.co_filename
    return f"{name}:{lineno}" + (f": {source}" if source else "")


def parse_level(text: str) -> Level:
    """``95%`` or ``0.95`` (a fraction of the limit) or ``900M`` / ``2GiB`` (a size); ``ValueError`` otherwise."""
    from .cgroups import parse_size

    t = text.strip()
    if t.endswith("%"):
        value = float(t[:-1]) / 100
    else:
        try:
            value = float(t)
        except ValueError:
            return Level(size=parse_size(t))
        if value > 1:
            return Level(size=parse_size(t))
    if not 0 < value <= 1:
        raise ValueError(f"expected a level from 1% to 100% of the limit, got {text!r}")
    return Level(fraction=value)


__all__ = [
    "DEFAULT_STOP",
    "DEFAULT_WARN",
    "CellWatch",
    "Guard",
    "Level",
    "MemoryLimitError",
    "parse_level",
    "running_line",
    "vm_data",
]
