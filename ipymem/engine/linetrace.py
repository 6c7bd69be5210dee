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

import contextlib
import functools
import inspect
import linecache
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from types import CodeType
from typing import Any

from ..models import outcome_of
from ..models.lines import FunctionProfile, LineStats, MprunParams, MprunResult
from . import peaks
from .books import _Books, _heap_quiet, _Stats  # noqa: F401  (re-exported: tests patch _Books here)
from .meters import _read_cost, make_meter
from .probes import Probe
from .sampler import ThreadActivity
from .tracers import (
    _free_tool_id,
    _MonitoringTracer,
    _SettraceTracer,
    _SigintGuard,
    _ThreadWatch,
)

DEFAULT_MIN_INTERVAL = 50e-6


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
        peak_value=books.high,
        peak_exact=bool(getattr(meter, "exact_peaks", False)),
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
