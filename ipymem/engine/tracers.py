"""The two line tracers of ``%mprun`` (``sys.settrace`` and ``sys.monitoring``) and what guards them.

Each tracer feeds :class:`.books._Books`; each restores what it found and
reports (``changed``) when the profiled code replaced it.  Also here: the
monitoring tool ids ipymem may take, the SIGINT guard of the teardown, and the
threading hook that counts threads started by profiled code.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType
from typing import Any, ClassVar

from .books import _GEN_FLAGS, _Books, _is_suspension
from .threads import is_housekeeping

MONITORING = "sys.monitoring"
SETTRACE = "sys.settrace"


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
        registered = {event: self.callbacks[event] for event in self.registered}
        self.registered.clear()
        what = release_tool_id(self.tool, self.books.stats, registered)
        if what is not None:
            self.changed = _stopped_at(self.books, f"the profiled code {what}")


def release_tool_id(tool: int, codes: Any, callbacks: dict[int, Any]) -> str | None:
    """Remove ipymem's events (global, and local on ``codes``) and ``callbacks`` from ``tool``, and free it.

    Returns what the measured code did to the tool meanwhile (``None``: nothing), for the report.  If it
    freed the id, ipymem takes it back for a moment: before 3.14 freeing leaves events and callbacks in
    place, and they would fire for the rest of the session (seen in atexit callbacks).  If someone else
    has taken it since, it is theirs: nothing is touched.
    """
    mon = sys.monitoring
    what = None
    holder = mon.get_tool(tool)
    if holder is None:
        what = f"freed sys.monitoring tool id {tool}"
        mon.use_tool_id(tool, "ipymem")
    elif holder != "ipymem":
        return f"freed sys.monitoring tool id {tool} and {holder!r} took it"
    try:
        with contextlib.suppress(ValueError):
            mon.set_events(tool, 0)
        for code in codes:
            with contextlib.suppress(ValueError):
                mon.set_local_events(tool, code, 0)
        replaced = False
        for event, callback in callbacks.items():
            replaced = mon.register_callback(tool, event, None) is not callback or replaced
        if replaced and what is None:
            what = "replaced ipymem's sys.monitoring callbacks"
    finally:
        mon.free_tool_id(tool)
    return what


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


_THREAD_START = threading.Thread.start.__code__


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
        self.owner = threading.get_ident()

    @staticmethod
    def _starting(frame: Any) -> bool:
        """Whether ``frame`` (a thread's innermost) is inside ``Thread.start``, waiting for the new thread."""
        depth = 0
        while frame is not None and depth < 8:
            if frame.f_code is _THREAD_START:
                return True
            frame, depth = frame.f_back, depth + 1
        return False

    @staticmethod
    def _hook(frame: Any, event: str, arg: Any) -> Any:
        cls = _ThreadWatch
        # Called in the new thread before its run(): kernel housekeeping (ipykernel 7 starts a subshell
        # thread when the widgets frontend asks for one) and ipymem's own threads are not the profiled
        # code's; a thread is the profiled code's when the watch's own thread is the one still inside
        # Thread.start() (the starter waits there until the new thread is running; the hook runs first
        # in practice, as the starter needs the GIL back to return, so a start is missed only rarely).
        if not is_housekeeping(threading.current_thread()):
            frames = sys._current_frames()
            try:
                with cls._lock:
                    for watch in cls._active:
                        if cls._starting(frames.get(watch.owner)):
                            watch.started += 1
            finally:
                frames.clear()
        with cls._lock:
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
