"""Memory line by line: which line of a function costs memory.

:func:`profile_lines` runs a callable while line events of the chosen code
objects (and only those) are observed: ``sys.monitoring`` on Python 3.12+
(local events on the profiled code objects, a registered tool id),
``sys.settrace`` before that or when no tool id is free (chaining any trace
function already installed, and restoring it afterwards).

The books
---------
Memory is read at *line boundaries* (a line event, a call's entry, return,
yield or resume), always when entering profiled code from outside and when
leaving it to the outside, but otherwise not at every boundary: reading costs ~3 µs against ~0.1 µs
for a line event, so a boundary reads memory only when at least
``min_interval`` of run time has passed since the last reading.  Every
boundary still gets a value, the last reading, so the books stay exact: a
line's increment is the value at its end minus the value at its start,
summed over its occurrences, and the increments of a function add up to its
value at return minus its value at entry, per call, summed.  What a skipped
reading would have shown is seen at the next one and goes to the line that
ends that stretch; the stretch lasted less than ``min_interval`` (default
50 µs, or 20 times the cost of a reading if that is more), and memory cannot
grow faster than pages are faulted in (~9 KiB/µs), so the error is bounded
and in practice nil.

Peaks lose nothing to the gate: each reading also takes the kernel's
high-water mark since the previous reading (``ru_maxrss`` after a reset
through ``/proc/self/clear_refs``), or tracemalloc's peak for the heap
backend.  A window's peak goes to the line that ends it and to the lines of
the callers that contain it (a call's peak is merged into its caller's
current line when it returns or yields).

Occurrences count how often control *entered* a line: repeated events of
the same line (a one-line loop, an inlined comprehension on 3.12+) are
coalesced, and nested code objects (comprehensions before 3.12, lambdas,
generator expressions, nested functions) are not traced at all, so their
cost lands on the line that contains them.

Only the calling thread is profiled.  This module knows nothing of IPython.
"""

from __future__ import annotations

import ast
import contextlib
import dis
import functools
import inspect
import linecache
import os
import signal
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from types import CodeType
from typing import Any, ClassVar

from ..models import outcome_of
from ..models.lines import FunctionProfile, LineStats, MprunParams, MprunResult
from . import peaks
from .probes import Probe, shared_probe
from .sampler import ThreadActivity

MONITORING = "sys.monitoring"
SETTRACE = "sys.settrace"
DEFAULT_MIN_INTERVAL = 50e-6

_GEN_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
_SUSPEND_OPS = {dis.opmap[n] for n in ("YIELD_VALUE", "YIELD_FROM") if n in dis.opmap}
_RESUME_OP = dis.opmap.get("RESUME")
_LOAD_CONST = dis.opmap["LOAD_CONST"]


# -- what to profile -------------------------------------------------------------


def code_of(obj: Any) -> CodeType:
    """The code object to profile for ``obj``; ``TypeError`` saying what was given otherwise.

    Accepts code objects, functions (generator, coroutine and async
    generator functions included), bound methods, ``staticmethod`` /
    ``classmethod`` objects, ``functools.partial`` objects and wrappers made
    with ``functools.wraps`` (the wrapped function is profiled: its lines are
    the ones that matter).
    """
    return _resolve(obj)[0]


def _resolve(obj: Any) -> tuple[CodeType, str]:
    """``(code, qualified name)`` for :func:`code_of`."""
    seen = 0
    current = obj
    while seen < 100:
        seen += 1
        if isinstance(current, CodeType):
            return current, getattr(current, "co_qualname", current.co_name)
        if isinstance(current, (staticmethod, classmethod)) or inspect.ismethod(current):
            current = current.__func__
            continue
        if isinstance(current, functools.partial):
            current = current.func
            continue
        wrapped = getattr(current, "__wrapped__", None) if inspect.isfunction(current) else None
        if wrapped is not None and wrapped is not current:
            current = wrapped
            continue
        code = getattr(current, "__code__", None)
        if inspect.isfunction(current) and isinstance(code, CodeType):
            return code, getattr(current, "__qualname__", code.co_name)
        break
    raise TypeError(
        f"{describe(obj)} is not a Python function; expected a function, method, generator or coroutine "
        "function defined in Python (in a module or a cell)"
    )


def describe(obj: Any) -> str:
    """A short human description of ``obj`` for error messages."""
    if inspect.isbuiltin(obj):
        return f"{getattr(obj, '__qualname__', obj)!s} (a built-in function)"
    if isinstance(obj, type):
        return f"{obj.__qualname__} (a class)"
    kind = type(obj).__name__
    text = repr(obj)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} (a {kind})"


# -- memory meters: (value, peak since the previous reading) ----------------------------


class _ProcfsMeter:
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
        self._ledger = peaks.rss_peaks
        self.exact_peaks = peaks.rss_peak_resettable()
        self.method = (
            "RSS from /proc/self/statm, peaks from the kernel high-water mark"
            if self.exact_peaks
            else "RSS from /proc/self/statm, peaks from the readings (and new lifetime maxima)"
        )
        self._window: peaks.Window | None = self._ledger.open()
        self._take = self._ledger.take

    def read(self) -> tuple[int, int]:
        value = int(os.pread(self._statm, 128, 0).split(None, 2)[1]) * self._page
        peak = self._take(self._window)[0]
        # The high-water mark is folded in lazily and can read a little below current RSS.
        return value, (peak if peak is not None and peak > value else value)

    def close(self) -> None:
        window, self._window = self._window, None
        if window is not None:
            self._ledger.close(window)
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


class _HeapMeter:
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
        self._ledger = peaks.heap_peaks
        self.exact_peaks = peaks.heap_tracing.resettable()
        if not self.exact_peaks:
            self.method = "Python heap from tracemalloc (your tracing: peaks from the readings and new maxima)"
        self._window: peaks.Window | None = self._ledger.open()
        self._take = self._ledger.take
        self._get = tracemalloc.get_traced_memory

    def read(self) -> tuple[int, int]:
        value = self._get()[0]
        peak = self._take(self._window)[0]
        return value, (peak if peak is not None and peak > value else value)

    def close(self) -> None:
        window, self._window = self._window, None
        if window is not None:
            self._ledger.close(window)


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


# -- the books ---------------------------------------------------------------------


class _Stats:
    """Per profiled code object: per-line sums over all its activations.

    ``count`` is a list indexed by line number (the hot path increments it);
    ``snap`` is its copy at the last reading, so a reading knows which lines
    were entered since (their "memory after" is the value of that stretch).
    """

    __slots__ = (
        "activations",
        "active",
        "after",
        "calls",
        "code",
        "count",
        "first",
        "fresh",
        "inc",
        "last",
        "lmap",
        "peak",
        "snap",
        "top_peak",
    )

    def __init__(self, code: CodeType) -> None:
        self.code = code
        self.fresh = _fresh_lasti(code)
        lines = {line for _, _, line in code.co_lines() if line is not None} or {code.co_firstlineno}
        self.first, self.last = min(lines), max(lines)
        self.count = [0] * (self.last + 1)
        self.snap = [0] * (self.last + 1)
        #: physical line -> first line of its statement (None when every statement is on one line)
        self.lmap = _statement_map(code, self.last)
        # Per-line books as lists made up front: a dict growing while the heap backend reads would put
        # ipymem's own allocations on the user's lines.
        n = self.last + 1
        self.inc: list[int] = [0] * n
        self.peak: list[int] = [-1] * n
        self.after: list[int | None] = [None] * n
        self.calls = 0  # outermost calls: a call made while this code already runs is part of that call
        self.activations = 0  # every call, recursive ones included
        self.active: list[_Act] = []  # live activations of this code on the books' stack, innermost last
        self.top_peak: int | None = None  # highest (peak - entry) over activations


class _Act:
    """One activation (call) of a profiled code object; generators keep theirs while suspended."""

    __slots__ = ("apeak", "code", "credit", "entry", "line", "lpeak", "outer", "since", "start", "stats")

    def __init__(self, stats: _Stats, value: int) -> None:
        self.stats = stats
        self.code = stats.code
        self.line: int | None = None  # current line while not on top (on top: _Books.cur)
        #: the enclosing live activation of the same code (recursion), or None
        self.outer: _Act | None = None
        #: memory already booked to this code's lines by nested activations of it during the current line:
        #: the line's increment leaves it out, so recursion is counted once
        self.credit = 0
        self.since = value  # book value when this activation last came on the stack (call or resume)
        self.start = value  # book value at the start of the current line
        self.lpeak = value  # highest value known while the current line runs
        self.apeak = value  # highest value known during this activation
        self.entry = value


class _Books:
    """The accounting shared by both tracers.

    Hot state for the top activation lives in plain attributes the tracers
    read directly: ``code`` (its code object), ``count`` (its line counts),
    ``cur`` (its current line) and ``deadline``: before that time
    (``perf_counter_ns``) a line event has nothing to do but count, because
    no reading is due and nothing happened to the current line that needs
    booking.  Everything else goes through :meth:`line_slow`.
    """

    def __init__(
        self,
        stats: dict[CodeType, _Stats],
        meter: Any,
        gate_ns: int,
        on_call: Callable[[str, str], None] | None = None,
    ) -> None:
        self.stats = stats
        self.on_call = on_call  # told when profiled code is entered from outside ("start") and left ("end")
        self.all_stats = list(stats.values())
        self.meter = meter
        self.gate = gate_ns
        self.value, _ = meter.read()
        self.time = time.perf_counter_ns()
        self.readings = 1
        self.stack: list[_Act] = []
        self.top: _Act | None = None
        self.suspended: dict[int, _Act] = {}
        self.foreign = 0  # events from other threads, ignored
        #: The heap backend's gate (see :func:`_heap_quiet`), or None: the time gate.
        self.quiet: Callable[[], int] | None = _heap_quiet(self) if getattr(meter, "per_line", False) else None
        #: memory at each return to unprofiled code minus at the entry from it, summed: the net change of
        #: all profiled code together, in which no nested function is counted twice
        self.net = 0
        self.outside_entry = self.value
        self.code: CodeType | None = None
        self.count: list[int] = []
        # Multi-line statements: events of their continuation lines are folded onto the first line.
        self.mapped = any(st.lmap is not None for st in self.all_stats)
        for st in self.all_stats:
            if st.lmap is None and self.mapped:
                st.lmap = list(range(st.last + 1))
        self.lmap: list[int] = []
        self.cur: int | None = None
        self.deadline = 0

    # -- readings --------------------------------------------------------------
    def read(self) -> int:
        """Read memory now; fold the lines entered since the last reading; returns the window's peak."""
        value, peak = self.meter.read()
        old = self.value
        for st in self.all_stats:
            count, snap = st.count, st.snap
            if count != snap:
                after = st.after
                for line in range(st.first, st.last + 1):
                    if count[line] != snap[line]:
                        after[line] = old
                snap[:] = count
        self.value = value
        self.readings += 1
        self.time = time.perf_counter_ns()
        return peak if peak > old else old

    def _due(self) -> bool:
        return time.perf_counter_ns() - self.time >= self.gate

    def _arm(self) -> None:
        """Set the deadline: the fast path is allowed while the top's current line has nothing booked."""
        a = self.top
        value = self.value
        if a is None or (a.start == value and a.lpeak == value and not a.credit):
            self.deadline = 1 if self.quiet is not None else self.time + self.gate
        else:
            self.deadline = 0

    @staticmethod
    def close(a: _Act, line: int | None, end: int, lpeak: int) -> None:
        """End ``line`` of ``a`` at book value ``end``."""
        if line is None:
            return
        st = a.stats
        st.inc[line] += end - a.start - a.credit
        a.credit = 0
        high = lpeak if lpeak > end else end
        above = high - a.start
        if above > st.peak[line]:
            st.peak[line] = above
        st.after[line] = end
        if high > a.apeak:
            a.apeak = high

    # -- events ----------------------------------------------------------------
    def line_slow(self, code: CodeType, line: int) -> None:
        """A line event off the fast path: a reading is due, or the ending line has something to book."""
        a = self.top
        if a is None or a.code is not code:
            return
        if self.mapped and line < len(self.lmap):
            line = self.lmap[line]
        cur = self.cur
        if line == cur:
            return
        if self._due():
            peak = self.read()
            if peak > a.lpeak:
                a.lpeak = peak
        if cur is not None:
            value = self.value
            self.close(a, cur, value, a.lpeak)
            if self.quiet is not None:
                value = self.rebase()
            a.start = a.lpeak = value
        self.count[line] += 1
        self.cur = line
        self._arm()

    def rebase(self) -> int:
        """Heap backend: take the heap as it is after booking, so ipymem's own objects (the ints and
        entries of the books, a few dozen bytes a line) are nobody's increment."""
        value = self.value = tracemalloc.get_traced_memory()[0]
        return value

    def _enter(self, a: _Act) -> None:
        if not self.stack or self._due():  # always read when entering profiled code from outside
            peak = self.read()
            top = self.top
            if top is not None and peak > top.lpeak:  # the window ran inside the caller's line
                top.lpeak = peak
        top = self.top
        if top is not None:
            top.line = self.cur
        active = a.stats.active
        a.outer = active[-1] if active else None
        active.append(a)
        if not self.stack:
            self.outside_entry = self.value
        a.since = self.value
        self.stack.append(a)
        self.top = a
        self.code = a.code
        self.count = a.stats.count
        self.lmap = a.stats.lmap
        self.cur = a.line

    def start(self, stats: _Stats) -> None:
        if self.on_call is not None and not self.stack:
            self.on_call(stats.code.co_name, "start")
        a = _Act(stats, self.value)
        stats.activations += 1
        if not stats.active:
            stats.calls += 1
        self._enter(a)
        self._rebase_entry(a)
        a.start = a.lpeak = a.apeak = a.entry = self.value
        self._arm()

    def resume(self, a: _Act | None, stats: _Stats) -> None:
        if a is None:  # suspended before profiling began
            a = _Act(stats, self.value)
        self._enter(a)
        self._rebase_entry(a)
        a.start = a.lpeak = self.value
        self._arm()

    def _rebase_entry(self, a: _Act) -> None:
        """Heap backend: the activation starts after ipymem's own objects for it (the books' entries)."""
        if self.quiet is None:
            return
        before = self.value
        value = self.rebase()
        a.since = value
        if len(self.stack) == 1:
            self.outside_entry = value
        else:
            caller = self.stack[-2]  # what the caller's line saw before the call is its own; the rest is ours
            caller.credit += value - before

    def leave(self) -> _Act | None:
        """Return, unwind or yield of the top activation: close its line, merge its peak into the caller."""
        a = self.top
        if a is None:
            return None
        lpeak = a.lpeak
        if len(self.stack) == 1 or self._due():  # always read when leaving profiled code to the outside
            peak = self.read()
            if peak > lpeak:
                lpeak = peak
        value = self.value
        a.line = self.cur
        self.close(a, a.line, value, lpeak)
        if a.line is None:  # nothing ran: book the stretch nowhere, but keep the peak
            a.apeak = max(a.apeak, lpeak)
        high = max(a.apeak, lpeak, value)
        st = a.stats
        if st.top_peak is None or high - a.entry > st.top_peak:
            st.top_peak = high - a.entry
        active = st.active
        if active and active[-1] is a:
            active.pop()
        elif a in active:
            active.remove(a)
        outer, a.outer = a.outer, None
        if outer is not None:  # recursion: what this activation booked is not the enclosing line's too
            outer.credit += value - a.since
        self.stack.pop()
        if not self.stack:
            self.net += value - self.outside_entry
        top = self.top = self.stack[-1] if self.stack else None
        if top is not None and self.quiet is not None:  # heap backend: leaving costs ipymem a few objects
            top.credit += self.rebase() - value
        if top is not None:
            if high > top.lpeak:
                top.lpeak = high
            self.code, self.count, self.cur, self.lmap = top.code, top.stats.count, top.line, top.stats.lmap
        else:
            self.code, self.count, self.cur, self.lmap = None, [], None, []
            if self.on_call is not None:
                self.on_call(st.code.co_name, "end")
        self._arm()
        return a

    def finish(self) -> None:
        """Close whatever is still open (an interrupted run) and fold the counts."""
        while self.stack:
            self.leave()
        self.read()


#: The heap backend's slack, in bytes: a net change up to HEAP_NET_SLACK and a transient up to
#: HEAP_TRANSIENT_SLACK above the last reading may be booked on a later line of the same stretch.
#: Pure-Python code moves the traced heap by an int or two (32-64 bytes) at nearly every line, and
#: ipymem's own reading leaves a ~250-byte transient: without slack every line event would read.
HEAP_NET_SLACK = 64
HEAP_TRANSIENT_SLACK = 512


def _heap_quiet(books: _Books) -> Callable[[], int]:
    """The heap backend's gate: a line event may skip its reading only if the heap has not moved.

    A time gate is sound for RSS (pages fault in at a bounded rate) but not for
    the Python heap, where 760 MiB can appear in a microsecond.  So the heap
    backend looks at tracemalloc (~0.3 µs) at every line boundary and reads,
    booking the stretch, whenever the traced heap changed since the last
    reading by more than a few dozen bytes: the net change lands on the line
    that made it, to within :data:`HEAP_NET_SLACK` bytes, and a transient
    (allocated and freed again) above :data:`HEAP_TRANSIENT_SLACK` bytes on the
    line that made it too.  The tracers
    use the returned function in place of the clock: ``quiet() < deadline``
    (the deadline is 1 while the current line has nothing booked).
    """
    gtm = tracemalloc.get_traced_memory
    net, transient = HEAP_NET_SLACK, HEAP_TRANSIENT_SLACK
    busy = 1 << 62

    def quiet() -> int:
        current, peak = gtm()
        value = books.value
        return 0 if -net <= current - value <= net and peak - value <= transient else busy

    return quiet


# -- the tracers -------------------------------------------------------------------


def _statement_map(code: CodeType, last: int) -> list[int] | None:
    """Map each physical line of ``code`` to the first line of the statement it belongs to.

    A statement spanning lines (a call with one argument per line, a
    comprehension over two lines) emits line events for each of them; folding
    them onto the statement's first line keeps a multi-line comprehension's
    iterations from counting as occurrences.  Compound statements map only
    their header.  ``None`` when every statement fits on one line, or when
    the source cannot be parsed (then events stay per physical line).
    """
    lines = linecache.getlines(code.co_filename)
    if not lines:
        return None
    if code.co_name == "<module>":
        offset, block = 0, lines
    else:
        offset = code.co_firstlineno - 1
        try:
            block = inspect.getblock(lines[offset:])
        except Exception:
            return None
    try:
        tree = ast.parse(textwrap.dedent("".join(block)))
    except (SyntaxError, ValueError):
        return None
    mapping = list(range(max(last, offset + len(block)) + 1))
    changed = False
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            end = max(node.lineno, body[0].lineno - 1)  # the header of a compound statement
        else:
            end = node.end_lineno or node.lineno
        for line in range(node.lineno + 1, end + 1):
            if line + offset < len(mapping):
                mapping[line + offset] = node.lineno + offset
                changed = True
    return mapping if changed else None


def _fresh_lasti(code: CodeType) -> int:
    """``f_lasti`` of a frame of ``code`` that has not run yet (-1, or the first RESUME on 3.11+)."""
    if _RESUME_OP is None:
        return -1
    for instr in dis.get_instructions(code):
        if instr.opcode == _RESUME_OP:
            return instr.offset
    return -1


def _is_suspension(frame: Any) -> bool:
    """Under settrace, whether a 'return' event of a generator/coroutine frame is a yield (or await)."""
    code = frame.f_code.co_code
    i = frame.f_lasti
    if i < 0 or i >= len(code):
        return False
    op = code[i]
    if op in _SUSPEND_OPS:
        return True
    if op == _LOAD_CONST and i + 2 < len(code) and code[i + 2] in _SUSPEND_OPS:  # 3.10: YIELD_FROM rewinds
        return True
    return op == _RESUME_OP and i > 0  # 3.13: f_lasti sits on the RESUME after the yield


class _SettraceTracer:
    """``sys.settrace`` (before 3.12, or when no monitoring tool id is free).

    While a trace function is set, every bytecode the interpreter runs takes
    its slow path, the tracer's own included, so the per-line path here is
    as short as Python allows: the top activation's hot state is copied into
    closure variables (:func:`pull` after anything the books change) and a
    line event that needs no reading touches nothing else.
    """

    name = SETTRACE

    def __init__(self, books: _Books) -> None:
        self.books = books
        self.active = False
        self.old: Any = None
        self.global_: Any = None
        #: what the profiled code did to the tracer, for the report (None: nothing)
        self.changed: str | None = None
        self.changed_at: str | None = None  # where a replaced trace function was first noticed
        self.seen: int | None = None  # the last line seen with ipymem's trace function in place
        self._push: Callable[[], None] = lambda: None

    def __enter__(self) -> _SettraceTracer:
        b = self.books
        stats = b.stats
        self.old = old = sys.gettrace()
        tracer = self
        ns = b.quiet or time.perf_counter_ns
        mapped = b.mapped
        count, cur, deadline, lmap = b.count, b.cur, b.deadline, b.lmap

        def pull() -> None:
            nonlocal count, cur, deadline, lmap
            count, cur, deadline, lmap = b.count, b.cur, b.deadline, b.lmap

        def push() -> None:
            b.cur = cur

        self._push = push

        def local(frame: Any, event: str, arg: Any) -> Any:
            nonlocal cur
            if event == "line":
                line = frame.f_lineno
                if mapped:
                    line = lmap[line]
                if line == cur:
                    return local
                if ns() < deadline:
                    count[line] += 1
                    cur = line
                    return local
                b.cur = cur
                if tracer.changed_at is None:
                    tracer.notice(b)
                b.line_slow(frame.f_code, frame.f_lineno)
                pull()
                return local
            if not tracer.active:
                return None
            if event == "return" and frame.f_code is b.code:
                b.cur = cur
                if tracer.changed_at is None:
                    tracer.notice(b)
                a = b.leave()
                pull()
                if a is not None and frame.f_code.co_flags & _GEN_FLAGS and _is_suspension(frame):
                    b.suspended[id(frame)] = a
            return local

        def chain(old_local: Any) -> Any:
            held = [old_local]

            def chained(frame: Any, event: str, arg: Any) -> Any:
                inner = held[0]
                if inner is not None:
                    held[0] = inner(frame, event, arg)
                local(frame, event, arg)
                return chained

            return chained

        gettrace, settrace = sys.gettrace, sys.settrace

        def global_(frame: Any, event: str, arg: Any) -> Any:
            old_local = None
            if old is not None:
                old_local = old(frame, event, arg)
                # coverage.py's C tracer, called from Python on a 'call' event, reinstalls itself
                # as the thread's trace function (its speed trick), which would silently end the
                # profile: take the thread back (only from that function, never from a settrace(None)).
                if tracer.active and gettrace() is old:
                    settrace(global_)
            code = frame.f_code
            st = stats.get(code)
            if st is None or not tracer.active:
                return old_local
            frame.f_trace_lines = True  # the old function may have turned them off (%memtrace's watcher does)
            b.cur = cur
            if code.co_flags & _GEN_FLAGS and frame.f_lasti > st.fresh:  # a generator resumed
                saved = b.suspended.pop(id(frame), None)
                b.resume(saved if saved is not None and saved.code is code else None, st)
            else:
                b.start(st)
            pull()
            return local if old_local is None else chain(old_local)

        self.active = True
        self.global_ = global_
        sys.settrace(global_)
        return self

    def notice(self, b: _Books) -> None:
        """Off the fast path: whether the profiled code replaced the trace function since the last look.

        Looking costs a call, so only the slow path looks; where it changed is then known to
        lie between the last line seen with ipymem's function in place and this one.
        """
        if sys.gettrace() is self.global_:
            self.seen = b.cur
            return
        top = b.top
        if top is None or b.cur is None:
            self.changed_at = ""
            return
        name = getattr(top.code, "co_qualname", top.code.co_name)
        since = f"after line {self.seen}, " if self.seen is not None and self.seen != b.cur else "after the call, "
        self.changed_at = f" {since}noticed at line {b.cur} of {name}"

    def __exit__(self, *exc: object) -> None:
        self.active = False
        current = sys.gettrace()
        self._push()  # the books close what is still open with the line that was running
        if current is self.global_ or (current is self.old and current is not None):  # (coverage took it back)
            sys.settrace(self.old)
        else:  # the profiled code removed or replaced the trace function: what it installed stays installed
            self.changed = _stopped_at(self.books, "the profiled code called sys.settrace", self.changed_at)


def _where(books: _Books) -> str:
    """`` at line N of f`` for the line the books are on, or ``""``."""
    top = books.top
    if top is None or books.cur is None:
        return ""
    return f" at line {books.cur} of {getattr(top.code, 'co_qualname', top.code.co_name)}"


def _stopped_at(books: _Books, what: str, where: str | None = None) -> str:
    """A note saying where line tracing stopped (or stopped following new calls) because of ``what``."""
    return (
        f"{what}{_where(books) if where is None else where}: from there on, lines not traced are not counted "
        "and their memory is booked on the last line seen (what the profiled code installed is left installed)"
    )


#: sys.monitoring ids ipymem may take, in order.  0, 1 and 2 are DEBUGGER_ID, COVERAGE_ID and
#: PROFILER_ID: pdb, coverage (COVERAGE_CORE=sysmon) and cProfile each claim theirs and fail if it is
#: taken, so ipymem never holds them; 5 (OPTIMIZER_ID) is free unless an optimizer claims it.
TOOL_IDS = (3, 4, 5)


def _free_tool_id() -> int | None:
    """A monitoring tool id no standard tool needs, or ``None`` (the caller falls back to settrace)."""
    mon = sys.monitoring
    for tool in TOOL_IDS:
        if mon.get_tool(tool) is None:
            return tool
    return None


_tool_lock = threading.Lock()


def _claim_tool_id(preferred: int) -> int:
    """Take ``preferred``, or another of :data:`TOOL_IDS` if a profile in another thread took it since."""
    with _tool_lock:
        for tool in (preferred, *TOOL_IDS):
            if sys.monitoring.get_tool(tool) is None:
                sys.monitoring.use_tool_id(tool, "ipymem")
                return tool
    raise RuntimeError("no free sys.monitoring tool id (ipymem uses 3, 4 or 5)")


class _MonitoringTracer:
    name = MONITORING

    def __init__(self, books: _Books, tool: int) -> None:
        self.books = books
        self.tool = tool
        self.registered: list[int] = []
        self.callbacks: dict[int, Any] = {}
        #: what the profiled code did to the tracer, for the report (None: nothing)
        self.changed: str | None = None

    def __enter__(self) -> _MonitoringTracer:
        mon = sys.monitoring
        ev = mon.events
        b = self.books
        stats = b.stats
        tid = threading.get_ident()
        get_ident = threading.get_ident
        getframe = sys._getframe
        ns = b.quiet or time.perf_counter_ns

        def on_line(code: CodeType, line: int) -> None:
            if ns() < b.deadline and code is b.code:
                b.count[line] += 1
                b.cur = line
                return
            if get_ident() != tid:
                b.foreign += 1
                return
            b.line_slow(code, line)

        def on_line_mapped(code: CodeType, line: int) -> None:
            if code is b.code:
                line = b.lmap[line]
                if line == b.cur:
                    return
                if ns() < b.deadline:
                    b.count[line] += 1
                    b.cur = line
                    return
            if get_ident() != tid:
                b.foreign += 1
                return
            b.line_slow(code, line)

        def on_start(code: CodeType, offset: int) -> None:
            if get_ident() != tid:
                b.foreign += 1
                return
            b.start(stats[code])

        def on_resume(code: CodeType, offset: int, *rest: Any) -> None:
            st = stats.get(code)  # PY_THROW is a global event
            if st is None or get_ident() != tid:
                return
            saved = b.suspended.pop(id(getframe(1)), None)
            b.resume(saved if saved is not None and saved.code is code else None, st)

        def on_return(code: CodeType, offset: int, value: Any) -> None:
            if code is b.code and get_ident() == tid:
                b.leave()

        def on_yield(code: CodeType, offset: int, value: Any) -> None:
            if code is b.code and get_ident() == tid:
                a = b.leave()
                if a is not None:
                    b.suspended[id(getframe(1))] = a

        tool = self.tool = _claim_tool_id(self.tool)
        try:
            callbacks = {
                ev.LINE: on_line_mapped if b.mapped else on_line,
                ev.PY_START: on_start,
                ev.PY_RESUME: on_resume,
                ev.PY_THROW: on_resume,
                ev.PY_RETURN: on_return,
                ev.PY_UNWIND: on_return,
                ev.PY_YIELD: on_yield,
            }
            self.callbacks = callbacks
            for event, callback in callbacks.items():
                mon.register_callback(tool, event, callback)
                self.registered.append(event)
            local = ev.LINE | ev.PY_START | ev.PY_RESUME | ev.PY_RETURN | ev.PY_YIELD
            for code in stats:
                mon.set_local_events(tool, code, local)
            mon.set_events(tool, ev.PY_UNWIND | ev.PY_THROW)  # not available as local events
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        mon = sys.monitoring
        tool = self.tool
        if mon.get_tool(tool) != "ipymem":  # the profiled code freed our id (and maybe took it): not ours to free
            self.changed = _stopped_at(self.books, f"the profiled code freed sys.monitoring tool id {tool}")
            self.registered.clear()
            return
        try:
            with contextlib.suppress(ValueError):
                mon.set_events(tool, 0)
            for code in self.books.stats:
                with contextlib.suppress(ValueError):
                    mon.set_local_events(tool, code, 0)
            replaced = False
            for event in self.registered:
                previous = mon.register_callback(tool, event, None)
                replaced = replaced or previous is not self.callbacks.get(event)
            self.registered.clear()
            if replaced:
                self.changed = _stopped_at(self.books, "the profiled code replaced ipymem's sys.monitoring callbacks")
        finally:
            mon.free_tool_id(tool)


class _SigintGuard:
    """Records SIGINT instead of raising it while ipymem restores the session (main thread only)."""

    def __init__(self) -> None:
        self.hit = False
        self._old: Any = None
        self._on = False

    def start(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def record(signum: int, frame: Any) -> None:
            self.hit = True

        try:
            self._old = signal.signal(signal.SIGINT, record)
        except (ValueError, TypeError, OSError):
            return
        self._on = True

    def stop(self) -> None:
        if self._on:
            self._on = False
            signal.signal(signal.SIGINT, self._old)


class _ThreadWatch:
    """Counts threads started while it is active, through :func:`threading.setprofile`.

    A new thread calls the threading profile hook once as it starts; ours
    counts it for every active watch, then hands the thread the hook that was
    installed before ipymem's (if any), so nothing else changes for the thread.

    The hook is process-wide state with one owner: watches overlap (the
    decorator in several threads beside a ``%mprun``) and exit in any order,
    so they share one installed hook; the last to exit restores the hook that
    was there before the first, unless someone else has replaced ours since.
    """

    _lock = threading.Lock()
    _active: ClassVar[list[_ThreadWatch]] = []
    _saved: Any = None

    def __init__(self) -> None:
        self.started = 0

    @staticmethod
    def _hook(frame: Any, event: str, arg: Any) -> Any:
        cls = _ThreadWatch
        with cls._lock:
            for watch in cls._active:
                watch.started += 1
            old = cls._saved
        sys.setprofile(old)
        return old(frame, event, arg) if old is not None else None

    def __enter__(self) -> _ThreadWatch:
        cls = _ThreadWatch
        with cls._lock:
            if not cls._active:
                cls._saved = getattr(threading, "_profile_hook", None)
                threading.setprofile(cls._hook)
            cls._active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        cls = _ThreadWatch
        with cls._lock:
            if self in cls._active:
                cls._active.remove(self)
            if not cls._active:
                if getattr(threading, "_profile_hook", None) is cls._hook:
                    threading.setprofile(cls._saved)
                cls._saved = None


# -- the entry point -------------------------------------------------------------------


def profile_lines(
    func: Callable[[], object],
    targets: Iterable[Any],
    *,
    backend: str = "rss",
    include_children: bool = False,
    min_interval: float | None = None,
    tracer: str = "auto",
    probe: Probe | None = None,
    meter: Any = None,
    statement: str = "",
    label: Callable[[str], str] | None = None,
    on_call: Callable[[str, str], None] | None = None,
) -> tuple[MprunResult, BaseException | None]:
    """Run ``func()`` and measure memory line by line in ``targets``; never swallows the caller's exception.

    ``targets`` are functions, methods or code objects (see :func:`code_of`;
    a ``TypeError`` names the first one that is not Python code).
    ``backend`` is ``'rss'`` (process RSS, peaks from the kernel high-water
    mark where available) or ``'heap'`` (Python heap by tracemalloc, started
    for the run if it was off).  ``min_interval`` is the time gate in seconds
    (``0`` reads memory at every boundary; ``None`` picks 50 µs or twenty
    readings' cost, whichever is larger).  ``tracer`` is ``'auto'``,
    ``'monitoring'`` or ``'settrace'``.  ``label`` maps a code object's file
    name to what the report shows (``Cell In[5]``).  ``meter`` overrides the
    memory reader: any object with ``read() -> (value, peak_since_last_read)``.
    ``on_call(name, kind)`` is called when profiled code is entered from
    outside (``"start"``) and left again (``"end"``): the live chart marks them.

    Returns ``(result, error)``: ``error`` is what ``func`` raised
    (KeyboardInterrupt included) or ``None``; the caller re-raises it after
    showing ``result``.
    """
    __tracebackhide__ = True  # the user's traceback runs from their cell to their code (IPython, pytest)
    codes: dict[CodeType, str] = {}
    for target in targets:
        code, qualname = _resolve(target)
        codes.setdefault(code, qualname)
    if not codes:
        raise ValueError("nothing to profile: give at least one function or code object")
    if tracer not in ("auto", "monitoring", "settrace"):
        raise ValueError(f"unknown tracer {tracer!r}; expected 'auto', 'monitoring' or 'settrace'")
    if tracer == "monitoring" and not hasattr(sys, "monitoring"):
        raise ValueError("sys.monitoring needs Python 3.12 or later")
    notes: list[str] = []
    acquired_heap = False
    if backend == "heap" and meter is None:
        peaks.heap_tracing.acquire()
        acquired_heap = True
    own_meter = meter is None
    error: BaseException | None = None
    try:
        if own_meter:
            meter = make_meter(backend, include_children, probe)
        if min_interval is None:
            per_line = getattr(meter, "per_line", False)
            min_interval = 0.0 if per_line else max(DEFAULT_MIN_INTERVAL, 20 * _read_cost(meter))
        if min_interval < 0:
            raise ValueError(f"min_interval must be 0 or more, got {min_interval}")
        stats = {code: _Stats(code) for code in codes}
        tool = None
        if tracer != "settrace" and hasattr(sys, "monitoring"):
            tool = _free_tool_id()
            if tool is None:
                if tracer == "monitoring":
                    raise RuntimeError("no free sys.monitoring tool id (ipymem uses 3, 4 or 5)")
                notes.append(
                    "sys.monitoring tool ids are taken (ipymem uses 3, 4 or 5, never the debugger's,"
                    " coverage's or profiler's): fell back to sys.settrace (slower)"
                )
        books = _Books(stats, meter, int(min_interval * 1e9), on_call)
        active: Any = _MonitoringTracer(books, tool) if tool is not None else _SettraceTracer(books)
        t0 = time.perf_counter()
        guard = _SigintGuard()
        activity = ThreadActivity().start()
        try:
            with _ThreadWatch() as threads, active:
                try:
                    func()
                except BaseException as exc:
                    error = exc
                guard.start()  # from here on, Ctrl-C is recorded and acted on once the session is restored
            duration = time.perf_counter() - t0
            books.finish()
        finally:
            guard.stop()
        if guard.hit and error is None:
            error = KeyboardInterrupt()
    finally:
        if own_meter and meter is not None:
            meter.close()
        if acquired_heap:
            peaks.heap_tracing.release()
    if active.changed:
        notes.append(active.changed)
    others = activity.stop()
    if others:
        memory = "RSS" if backend == "rss" else "the Python heap"
        notes.append(
            f"{len(others)} other thread(s) ran Python code while profiled lines executed "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): {memory} is the whole process's, "
            "so their memory is in the lines that were running"
        )
    if threads.started or books.foreign:
        notes.append(
            "only the calling thread is profiled: threads started by the profiled code are not"
            + (f" ({threads.started} started)" if threads.started else "")
            + (f"; {books.foreign} events from other threads ignored" if books.foreign else "")
        )
    functions = tuple(_function_profile(st, label, codes[code]) for code, st in stats.items())
    never = [f.name for f in functions if f.calls == 0]
    if never:
        notes.append("never called: " + ", ".join(never))
    if include_children:
        notes.append("child processes are sampled at the readings: their share of the peaks is a lower bound")
    outcome, error_text = outcome_of(error)
    result = MprunResult(
        functions=functions,
        params=MprunParams(
            backend=backend,
            include_children=include_children,
            tracer=active.name,
            min_interval=min_interval,
            memory_method=getattr(meter, "method", type(meter).__name__),
        ),
        statement=statement,
        duration=duration,
        readings=books.readings,
        net=books.net,
        outcome=outcome,
        error=error_text,
        notes=tuple(notes),
    )
    return result, error


def _code_lines(code: CodeType) -> set[int]:
    """Line numbers of ``code`` and of the code objects nested in it."""
    lines = {line for _, _, line in code.co_lines() if line is not None}
    for const in code.co_consts:
        if isinstance(const, CodeType):
            lines |= _code_lines(const)
    return lines


def _function_profile(st: _Stats, label: Callable[[str], str] | None, name: str) -> FunctionProfile:
    code = st.code
    filename = code.co_filename
    source = linecache.getlines(filename)
    count = st.count
    executed = {line for line, n in enumerate(count) if n}
    spans = _code_lines(code) | executed
    first = code.co_firstlineno
    last = max(spans, default=first)
    if code.co_name == "<module>":  # a cell body or a script: all of it
        first, last, name = 1, max(last, len(source)), "(cell body)"
    lines: list[LineStats] = []
    for lineno in range(first, last + 1):
        text = source[lineno - 1].rstrip("\r\n") if 0 < lineno <= len(source) else ""
        n = count[lineno] if lineno < len(count) else 0
        if n:
            after, inc, peak = st.after[lineno], st.inc[lineno], max(st.peak[lineno], 0)
            lines.append(LineStats(lineno, text, n, after, inc, peak))
        else:
            lines.append(LineStats(lineno, text))
    shown = filename
    if label is not None:
        with contextlib.suppress(Exception):
            shown = label(filename) or filename
    return FunctionProfile(
        name=name,
        filename=filename,
        firstlineno=code.co_firstlineno,
        lines=tuple(lines),
        calls=st.calls,
        activations=st.activations,
        label=shown,
        peak=st.top_peak,
    )


__all__: Sequence[str] = ["code_of", "make_meter", "profile_lines"]
