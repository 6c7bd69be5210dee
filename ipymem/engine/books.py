"""The books of ``%mprun``: per-line sums over every activation of each profiled code object.

Both tracers (:mod:`.tracers`) feed the same :class:`_Books`: line events,
calls, returns, yields and resumptions.  See :mod:`.linetrace` for how the
time gate keeps the books exact, how recursion is counted once, and the heap
backend's own gate (:func:`_heap_quiet`).
"""

from __future__ import annotations

import ast
import dis
import inspect
import linecache
import textwrap
import time
import tracemalloc
from collections.abc import Callable
from types import CodeType
from typing import Any

_GEN_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
_SUSPEND_OPS = {dis.opmap[n] for n in ("YIELD_VALUE", "YIELD_FROM") if n in dis.opmap}
_RESUME_OP = dis.opmap.get("RESUME")
_LOAD_CONST = dis.opmap["LOAD_CONST"]


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
        #: the highest memory reached while profiled code ran (the windows' peaks), or None
        self.high: int | None = None
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
        high = peak if peak > old else old
        if self.stack and (self.high is None or high > self.high):  # a window that ran inside profiled code
            self.high = high
        return high

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
            a.start = a.lpeak = value
        self.count[line] += 1
        self.cur = line
        if self.quiet is not None and cur is not None:  # last, after every object the booking made
            a.start = a.lpeak = self.rebase()
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
