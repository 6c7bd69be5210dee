"""The plain Python API, for scripts and tests outside IPython.

Same engines and result objects as the magics, without IPython.  Unlike
the magics, which show a partial report before re-raising, these functions
simply let the exception of the measured code propagate.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import inspect
import os
import sys
import threading
import time
import tracemalloc
import types
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import CodeType
from typing import Any, TypeVar

from . import engine
from .engine.codes import nested_functions, stand_in
from .engine.linetrace import DEFAULT_MIN_INTERVAL, code_of, make_meter
from .models import AllocResult, MemitResult, MemwhoResult, MprunResult
from .models.lines import merge_results, merge_steps
from .render.lines import mprun_text

F = TypeVar("F", bound=Callable[..., Any])


def memit(
    func: Callable[..., Any],
    /,
    *args: Any,
    repeat: int = 1,
    timeout: float | None = None,
    interval: float = 0.01,
    include_children: bool = False,
    trace_heap: bool = False,
    **kwargs: Any,
) -> MemitResult:
    """Measure the peak and increment of RSS while ``func(*args, **kwargs)`` runs.

    >>> r = memit(bytearray, 50 * 2**20)
    >>> round(r.increment / 2**20)  # doctest: +SKIP
    50

    Keyword arguments not listed above go to ``func``.  The options mean
    what the ``%memit`` flags mean (``-r``, ``-t``, ``-i``, ``-c``, ``--heap``).
    """
    __tracebackhide__ = True  # IPython and pytest show the user's frames of a re-raised error, not this one
    name = _name(func)
    result, error = engine.memit(
        lambda: func(*args, **kwargs),
        repeat=repeat,
        timeout=timeout,
        interval=interval,
        include_children=include_children,
        trace_heap=trace_heap,
        statement=f"{name}(...)" if args or kwargs else f"{name}()",
    )
    _reraise(error)
    return result


def mprun(
    func: Callable[..., Any],
    /,
    *args: Any,
    targets: Sequence[Callable[..., Any]] | None = None,
    backend: str = "rss",
    include_children: bool = False,
    **kwargs: Any,
) -> MprunResult:
    """Call ``func(*args, **kwargs)`` and profile memory line by line.

    ``targets`` are the functions to profile (default: ``func`` itself);
    ``backend`` is ``"rss"`` or ``"heap"``, as ``%mprun --backend``.  The
    function's return value is not kept: use :func:`profile` for that.
    """
    __tracebackhide__ = True
    result, error = engine.profile_lines(
        lambda: func(*args, **kwargs),
        list(targets) if targets else [func],
        backend=backend,
        include_children=include_children,
        statement=f"{_name(func)}(...)",
    )
    _reraise(error)
    return result


#: memory_profiler's backend names -> ipymem's line backends.
BACKENDS = {"rss": "rss", "psutil": "rss", "posix": "rss", "heap": "heap", "tracemalloc": "heap"}
#: Reports kept per decorated function, one per call (the oldest are dropped beyond this).
KEPT_CALLS = 1000

_local = threading.local()  # .codes: the code objects the profile running in this thread traces
_records: list[weakref.ref[_Record]] = []  # every decorated function, in decoration order


def line_backend(name: str) -> str:
    """ipymem's line backend for ``name`` (its own or memory_profiler's); ``ValueError`` naming those that exist."""
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown backend {name!r}: ipymem profiles lines by 'rss' (process RSS; memory_profiler's "
            "'psutil' and 'posix' mean it too) or 'heap' (the Python heap by tracemalloc; memory_profiler's "
            "'tracemalloc'); memory_profiler's 'psutil_pss' and 'psutil_uss' have no line backend here"
        ) from None


class _Record:
    """The books of one decorated function over its calls: its own code and the functions defined in it."""

    def __init__(self, func: Callable[..., Any], backend: str, precision: int, stream: Any, quiet: bool) -> None:
        self.func = func
        self.code = code_of(func)
        found = nested_functions(self.code, getattr(func, "__qualname__", None))
        self.nested = [code for code, _ in found]
        self.stand_ins = [stand_in(code, name) for code, name in found]  # named as Python names them
        self.codes = [self.code, *self.nested]
        self.backend = backend
        self.precision = precision
        self.stream = stream
        self.quiet = quiet
        self.calls = 0
        self.profile: MprunResult | None = None
        self.profiles: collections.deque[MprunResult] = collections.deque(maxlen=KEPT_CALLS)
        self.wrapper: Any = None
        self.keys = {(c.co_filename, c.co_firstlineno) for c in self.codes}

    def tracing(self, code: CodeType) -> bool:
        """Whether ``code`` runs inside a profile already running in this thread (a recursive call)."""
        codes = getattr(_local, "codes", None)
        return codes is not None and code in codes

    def session(self, run: Callable[[], object]) -> tuple[MprunResult, BaseException | None]:
        """Profile ``run()``: this function and every other decorated one with the same backend.

        So a decorated function called by another (or by itself) is part of
        the running profile, not a profiler of its own: one tracer, and each
        function's lines go to its own books afterwards (:meth:`finish`).
        """
        __tracebackhide__ = True
        records = _live_records()
        targets: list[Any] = [self.func, *self.stand_ins]
        for rec in records:
            if rec is not self and rec.backend == self.backend:
                targets += [rec.func, *rec.stand_ins]
        previous = getattr(_local, "codes", None)
        _local.codes = {code_of(t) for t in targets}
        try:
            return engine.profile_lines(
                run,
                targets,
                backend=self.backend,
                statement=_name(self.func) + "(...)",
                label=_cell_label(),
                # The heap is read at every line boundary, as memory_profiler did: tracemalloc counts a
                # buffer when it is allocated, not when its pages are touched, so a fast line can take
                # megabytes and the time gate (sound for RSS, which grows only as fast as pages fault)
                # would hand them to a later line.  A reading costs ~1 µs next to tracemalloc's own cost.
                min_interval=0.0 if self.backend == "heap" else _rss_gate(),
            )
        finally:
            _local.codes = previous

    def finish(self, parts: Sequence[MprunResult]) -> None:
        """One call is over (its steps, for a generator or coroutine): book it to every function that ran."""
        if not parts:
            return
        merged = merge_steps(parts)
        for rec in _live_records():
            mine = tuple(
                f for f in merged.functions if (f.filename, f.firstlineno) in rec.keys and (f.calls or _ran(f))
            )
            if mine:
                notes = tuple(n for n in merged.notes if not n.startswith("never called"))
                rec.add(dataclasses.replace(merged, functions=mine, notes=notes))

    def add(self, result: MprunResult) -> None:
        self.calls += 1
        self.profiles.append(result)
        self.profile = result if self.profile is None else merge_results([self.profile, result])
        wrapper = self.wrapper
        if wrapper is not None:
            wrapper.last_profile = result
            wrapper.profile = self.profile
            wrapper.profiles = tuple(self.profiles)
        if not self.quiet:
            stream = self.stream if self.stream is not None else sys.stdout
            stream.write(mprun_text(result, self.precision) + "\n\n")
            with contextlib.suppress(Exception):
                stream.flush()


def _cell_label() -> Callable[[str], str] | None:
    """In IPython, cells named ``Cell In[N]`` as the magics name them; elsewhere ``None`` (IPython not imported)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return None
    from .shell import cell_label

    return functools.partial(cell_label, shell)


_gate: list[float] = []


def _rss_gate() -> float:
    """The RSS time gate, chosen once (the engine's rule: 50 µs, or twenty readings' cost if more).

    A generator or coroutine is profiled one resumption at a time; timing the
    meter again for each would cost more than many resumptions themselves.
    """
    if not _gate:
        meter = make_meter("rss")
        try:
            meter.read()
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(10):
                    meter.read()
                best = min(best, (time.perf_counter() - t0) / 10)
        finally:
            meter.close()
        _gate.append(max(DEFAULT_MIN_INTERVAL, 20 * best))
    return _gate[0]


_heap_holds = [0, False]  # [calls holding tracemalloc on, whether ipymem.profile started it]


@contextlib.contextmanager
def _heap_kept(rec: _Record) -> Any:
    """For the heap backend, tracemalloc stays on from a generator's or coroutine's first step to its last.

    Each step is a profile of its own, and a profile that starts tracemalloc
    stops it, which forgets every allocation: a buffer made in one step and
    freed in the next would not be seen leaving.  If tracemalloc was off, it
    is started here and stopped when the last such call ends.
    """
    if rec.backend != "heap":
        yield
        return
    if _heap_holds[0] == 0 and not tracemalloc.is_tracing():
        tracemalloc.start()
        _heap_holds[1] = True
    _heap_holds[0] += 1
    try:
        yield
    finally:
        _heap_holds[0] -= 1
        if _heap_holds[0] == 0 and _heap_holds[1]:
            _heap_holds[1] = False
            tracemalloc.stop()


def _ran(f: Any) -> bool:
    return any(line.executed for line in f.lines)


def _live_records() -> list[_Record]:
    alive = [rec for rec in (ref() for ref in _records) if rec is not None]
    if len(alive) < len(_records):
        _records[:] = [weakref.ref(rec) for rec in alive]
    return alive


def _step(rec: _Record, parts: list[MprunResult], fn: Callable[[Any], Any], arg: Any) -> tuple[str, Any]:
    """One resumption of a generator, coroutine or awaitable, profiled: ``("yield" | "return" | "stop", value)``."""
    __tracebackhide__ = True
    box: list[tuple[str, Any]] = []

    def run() -> None:
        __tracebackhide__ = True
        try:
            box.append(("yield", fn(arg)))
        except StopIteration as stop:
            box.append(("return", stop.value))
        except StopAsyncIteration:
            box.append(("stop", None))

    if rec.tracing(rec.code):  # resumed inside a running profile: already traced
        run()
        return box[0]
    result, error = rec.session(run)
    parts.append(result)
    _reraise(error)
    return box[0]


def _drive(rec: _Record, parts: list[MprunResult], it: Any) -> Any:
    """Run a generator or awaitable to its end, each resumption profiled; a generator itself.

    It speaks the generator protocol both ways (``send``, ``throw``,
    ``close``), so it stands in for a generator and, wrapped by
    :func:`types.coroutine`, is awaitable for a coroutine: what the inner one
    yields (values, or futures for the event loop) passes through unchanged.
    """
    __tracebackhide__ = True
    value: Any = None
    exc: BaseException | None = None
    while True:
        if exc is None:
            kind, out = _step(rec, parts, it.send, value)
        else:
            kind, out = _step(rec, parts, it.throw, exc)
        if kind == "return":
            return out
        if kind == "stop":
            raise StopAsyncIteration
        try:
            value, exc = (yield out), None
        except GeneratorExit:
            _step(rec, parts, lambda _: it.close(), None)
            raise
        except BaseException as thrown:
            value, exc = None, thrown


_await = types.coroutine(_drive)


def _wrap(func: Callable[..., Any], rec: _Record) -> Callable[..., Any]:
    """A wrapper of the same nature as ``func`` (plain, generator, coroutine, async generator function)."""
    code = code_of(func)

    def escaped(value: Any) -> Any:
        """A function defined in the profiled one and returned by it stays profiled when called later."""
        if inspect.isfunction(value) and value.__code__ in rec.nested and value.__code__ is not code:
            return _wrap(value, rec)
        return value

    if inspect.isasyncgenfunction(func):

        @functools.wraps(func)
        async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            agen = func(*args, **kwargs)
            parts: list[MprunResult] = []
            value: Any = None
            exc: BaseException | None = None
            try:
                with _heap_kept(rec):
                    while True:
                        step = agen.asend(value) if exc is None else agen.athrow(exc)
                        try:
                            out = await _await(rec, parts, step)
                        except StopAsyncIteration:
                            return
                        try:
                            value, exc = (yield out), None
                        except GeneratorExit:
                            await _await(rec, parts, agen.aclose())
                            raise
                        except BaseException as thrown:
                            value, exc = None, thrown
            finally:
                rec.finish(parts)

        return agen_wrapper

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def coro_wrapper(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            parts: list[MprunResult] = []
            try:
                with _heap_kept(rec):
                    return escaped(await _await(rec, parts, func(*args, **kwargs)))
            finally:
                rec.finish(parts)

        return coro_wrapper

    if inspect.isgeneratorfunction(func):

        @functools.wraps(func)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            parts: list[MprunResult] = []
            try:
                with _heap_kept(rec):
                    return (yield from _drive(rec, parts, func(*args, **kwargs)))
            finally:
                rec.finish(parts)

        return gen_wrapper

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        if rec.tracing(code):  # a recursive call, or one from another decorated function: already traced
            return func(*args, **kwargs)
        out: list[Any] = []

        def call() -> None:
            __tracebackhide__ = True
            out.append(func(*args, **kwargs))

        result, error = rec.session(call)
        rec.finish([result])
        _reraise(error)
        return escaped(out[0])

    return wrapper


def profile(
    func: F | None = None,
    /,
    *,
    precision: int = 1,
    stream: Any = None,
    backend: str = "rss",
    quiet: bool = False,
) -> Any:
    """memory_profiler's ``@profile``: every call profiled line by line, its report written after it.

    The call forms are memory_profiler's: ``@profile``, ``@profile(precision=4)``,
    ``@profile(stream=f)`` (default: ``sys.stdout`` at the time of the call),
    ``@profile(backend=...)`` with ipymem's backends or memory_profiler's names
    for them (see :data:`BACKENDS`; ``ValueError`` otherwise).  ``quiet=True``
    writes nothing; the figures are on the wrapper either way:

    * ``wrapper.profile``: all calls so far in one :class:`MprunResult`
      (occurrences and increments summed, peaks the worst call's), as
      memory_profiler's report accumulates in ``python -m memory_profiler``;
    * ``wrapper.last_profile``: the last call's; ``wrapper.profiles``: each
      call's, the last :data:`KEPT_CALLS`.

    Generator, coroutine and async generator functions are profiled across
    their suspensions (one report when they finish), and the wrapper keeps
    their nature (``inspect.iscoroutinefunction`` etc.).  Each resumption is
    a profile of its own, merged at the end (~0.5 ms of CPU per resumption
    here: fine for I/O-bound coroutines, noticeable for one resumed
    thousands of times).  Functions defined
    inside a decorated one are profiled in its report when they run during a
    profile, and when they are returned by it and called later.  A call made
    while the function is already being profiled (recursion, or a call from
    another decorated function) is part of the running profile, so ``fib``
    costs what ``%mprun -f fib`` costs, not a profiler per call.

    >>> @profile(quiet=True)
    ... def build(n):
    ...     return [0] * n
    >>> _ = build(10)
    >>> build.last_profile.functions[0].name
    'build'
    """
    line = line_backend(backend)
    if not isinstance(precision, int) or isinstance(precision, bool) or precision < 0:
        raise ValueError(f"precision must be a whole number of decimal places (0 or more), got {precision!r}")

    def decorate(f: F) -> F:
        if isinstance(f, (staticmethod, classmethod)):
            return type(f)(decorate(f.__func__))  # type: ignore[return-value]
        rec = _Record(f, line, precision, stream, quiet)
        wrapper = _wrap(f, rec)
        rec.wrapper = wrapper
        wrapper.profile = wrapper.last_profile = None  # type: ignore[attr-defined]
        wrapper.profiles = ()  # type: ignore[attr-defined]
        _records.append(weakref.ref(rec))
        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate


def memtrace(
    func: Callable[..., Any],
    /,
    *args: Any,
    top: int = 10,
    group_by: str = "lineno",
    depth: int = 1,
    all_frames: bool = False,
    repeat: int = 1,
    **kwargs: Any,
) -> AllocResult:
    """Trace the Python-heap allocations of ``func(*args, **kwargs)`` by line (``%memtrace``'s options)."""
    __tracebackhide__ = True
    result, error = engine.alloctrace(
        lambda: func(*args, **kwargs),
        top=top,
        group_by=group_by,
        depth=depth,
        all_frames=all_frames,
        repeat=repeat,
        statement=f"{_name(func)}(...)",
    )
    _reraise(error)
    return result


def memwho(
    namespace: Mapping[str, Any] | str | None = None,
    /,
    pattern: str | None = None,
    *,
    top: int | None = None,
    show_all: bool = False,
    budget: float = 5.0,
    trim: bool = False,
) -> MemwhoResult:
    """Which names of ``namespace`` hold memory, what ``del`` would free, and what RSS is made of (``%memwho``).

    ``namespace`` defaults to the caller's globals; a string in its place is
    the pattern (``memwho("df*")``).  Names starting with
    ``_`` are hidden (``show_all=True`` lists them); ``pattern`` is a glob on
    the names shown.  The walk stops after ``budget`` seconds and says so.
    ``trim=True`` first runs a garbage collection and ``malloc_trim(0)``.

    >>> big = bytearray(10**6)
    >>> round(memwho({"big": big}).row("big").freed_if_deleted / 1e6)  # doctest: +SKIP
    1
    """
    if type(namespace) is str:  # memwho("df*"), as %memwho df*: a pattern over the caller's globals
        if pattern is not None:
            raise TypeError("memwho(pattern) or memwho(namespace, pattern), not two patterns")
        namespace, pattern = None, namespace
    if namespace is None:
        import sys

        namespace = sys._getframe(1).f_globals
    elif not isinstance(namespace, Mapping):
        raise TypeError(
            f"memwho() expects a mapping of names (such as globals()) or a pattern, got {type(namespace).__name__}"
        )
    result = engine.census(namespace, pattern=pattern, top=top, show_all=show_all, budget=budget, trim=trim)
    if result.outcome == "interrupted":
        raise KeyboardInterrupt
    return result


@contextlib.contextmanager
def guard(
    stop: float | int | str | None = None,
    warn: float | int | str | None = 0.80,
    *,
    interval: float = 0.1,
    hard: bool = False,
    on_warn: Callable[[str], None] | None = None,
) -> Any:
    """Stop the code of the ``with`` block before the memory limit kills the process (``%memguard``).

    >>> with guard(stop="90%"):                       # doctest: +SKIP
    ...     chunks = [bytearray(2**23) for _ in range(10**6)]
    Traceback (most recent call last):
    ipymem.MemoryLimitError: ipymem memory guard stopped the code: 922 MiB of the 1.00 GiB container limit ...

    ``stop`` / ``warn``: a fraction of the binding limit (``0.95``, ``"95%"``)
    or a size (``"900M"``, or bytes as an int above 1); the default stop is
    95% of the limit or 128 MiB below it, the lower.  The block's code,
    in the calling thread, gets :class:`~ipymem.MemoryLimitError` at the stop
    level; ``on_warn(message)`` is called once at the warning level (default:
    print to stderr).  Yields the guard (``.source`` is the binding limit,
    ``.watch`` what it saw); the thread and any hard limit are gone after
    the block.
    """
    from .engine.limits.guard import DEFAULT_STOP, Guard, Level, parse_level
    from .render.limits import warn_text

    def level(value: float | int | str) -> Level:
        if isinstance(value, str):
            return parse_level(value)
        if isinstance(value, float) and 0 < value <= 1:
            return Level(fraction=value)
        if isinstance(value, int) and value > 1:
            return Level(size=value)
        raise ValueError(f"expected a fraction of the limit (0.95), a percentage ('95%') or a size, got {value!r}")

    say = on_warn or (lambda text: print(text, file=sys.stderr))
    g = Guard(
        stop=DEFAULT_STOP if stop is None else level(stop),
        warn=None if warn is None else level(warn),
        interval=interval,
        hard=hard,
    )
    g.on_warn = lambda watch: say(warn_text(g, watch))
    g.start()
    try:
        g.arm(label="the with block", anchor=sys._getframe(2))  # the caller's frame (below contextmanager's)
        yield g
    finally:
        g.close()


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without the ipymem frames it starts with (the engine's, between the catch and the user's code)."""
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE) and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def _reraise(error: BaseException | None) -> None:
    __tracebackhide__ = True
    if error is not None:
        try:
            raise error.with_traceback(_user_traceback(error.__traceback__))
        finally:
            error = None
