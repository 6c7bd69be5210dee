"""The ``sys.monitoring`` watcher of ``%memtrace``'s line ledger (Python 3.12 and later).

The ledger (:class:`.alloctrace._LineLedger`) needs to know, at the moments
that matter, which user line is running: each boundary reads the traced heap
and hands the interval that just ended to its line.  Before 3.12 a
``sys.settrace`` hook gives those moments cheaply: frames it returns ``None``
for run untraced.  From 3.12 on ``sys.settrace`` is built on
``sys.monitoring`` with line events on *every* code object, so each line of
numpy's, pandas' or ipymem's own Python code pays an event (about 1.5 µs
under tracemalloc, which traces the boxed line number); the ledger's own
snapshot grouping ran 70 times slower under it.

This watcher asks for few events, and none per line of library code:

* ``PY_START`` / ``PY_RESUME`` (global): a user code object, the first time
  it starts, gets its local events and its start events are disabled; a
  library function starting with a user frame as its caller (a call, an
  operator, a property, an iterator: anything that runs library Python code
  from the user's line) is a boundary owned by that line, so whatever the
  library allocates, at any depth, is booked on it.  The caller's module is
  read with ``sys._getframemodulename`` (no frame object is made, so nothing
  is allocated: this runs for every library call); a frame is looked at
  only when the caller's module is the user's;
* ``LINE`` on a cell's (or user module's) top-level code, ``CALL`` in user
  functions (a boundary when the calling line is not the one running);
* ``PY_RETURN`` / ``PY_YIELD`` on user code, and ``PY_UNWIND`` (global
  only): back on the caller's line;
* ``PY_RETURN`` / ``PY_YIELD`` on each library function once called from
  user code: its return to a user line is a boundary too, as under
  ``sys.settrace`` (a snapshot there still sees the blocks it allocated
  before the line frees them).

User functions get no line events, as under ``sys.settrace``: their loops
run near tracemalloc's own speed (a call on the line already running costs
a lookup, no heap reading).  Code a user function runs between two
boundaries is its own, and its blocks name their line anyway.  Events from other threads are
ignored (the settrace hook only ever sees the thread that set it).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from .tracers import _claim_tool_id, _free_tool_id, release_tool_id


class PerCode:
    """A dict per code object, found without hashing the code object and without allocating.

    A code object's hash is computed from its contents at every lookup (3.6 µs for pandas'
    ``DataFrame.__init__``), and ``id(code)`` makes a new int, which tracemalloc traces (with ``-d 10``,
    ten frames each): this runs for events in the user's code, so it looks up the code's bytecode
    instead (``co_code`` is a bytes object cached on the code, with its hash cached), then compares
    identity.  The code objects are kept, so none is freed during the measurement.
    """

    __slots__ = ("_first", "_others")

    def __init__(self) -> None:
        self._first: dict[bytes, tuple[Any, dict]] = {}  # the first code object with this bytecode
        self._others: dict[int, tuple[Any, dict]] = {}  # id -> (code, dict) for later ones (same bytecode)

    def of(self, code: Any) -> dict:
        entry = self._first.get(code.co_code)
        if entry is not None and entry[0] is code:
            return entry[1]
        if entry is None:
            self._first[code.co_code] = entry = (code, {})
            return entry[1]
        entry = self._others.get(id(code))
        if entry is None:
            self._others[id(code)] = entry = (code, {})
        return entry[1]


def available() -> bool:
    """Whether this interpreter has ``sys.monitoring`` and a tool id ipymem may take is free."""
    return hasattr(sys, "monitoring") and _free_tool_id() is not None


class MonitoringWatch:
    """Feeds ``ledger``'s boundaries from ``sys.monitoring`` events, while entered (one thread)."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger
        self.tool: int | None = None
        self.codes: list[Any] = []  # user code objects given local events
        self.callbacks: dict[int, Any] = {}
        self.registered: dict[int, Any] = {}  # the callbacks registered so far
        #: what the measured code did to the watcher, for the report (None: nothing)
        self.changed: str | None = None

    def __enter__(self) -> MonitoringWatch:
        mon = sys.monitoring
        ev = mon.events
        DISABLE = mon.DISABLE
        ledger = self.ledger
        boundary, key_of = ledger.boundary, ledger._key
        known, classify, is_ours = ledger._known, ledger._is_user, ledger._is_ours
        tid = threading.get_ident()
        get_ident = threading.get_ident
        getframe = sys._getframe
        module_of = sys._getframemodulename
        modules = sys.modules
        codes = self.codes
        user_module: dict[Any, bool] = {}  # module name -> may be user code (then the frame decides)
        library_returns: set[int] = set()  # ids of library code called from user code: its returns watched
        tool_box: list[int] = []
        top_events = ev.LINE | ev.PY_RETURN | ev.PY_YIELD
        user_function_events = ev.CALL | ev.PY_RETURN | ev.PY_YIELD
        function_events = ev.PY_RETURN | ev.PY_YIELD
        call_keys = PerCode()  # user function code -> call instruction offset -> line key
        set_local = mon.set_local_events

        def is_user(filename: str) -> bool:
            user = known(filename)
            return classify(filename) if user is None else user

        def module_may_be_user(name: Any) -> bool:
            module = modules.get(name) if isinstance(name, str) else None
            filename = getattr(module, "__file__", None)
            # A cell's functions say "__main__", and so may a library wrapper that copied a user
            # function's __module__ (functools.wraps): "may be", the caller's frame decides.
            if not isinstance(name, str):  # no function below (the stack's bottom, an atexit callback)
                return False
            return name == "__main__" or not isinstance(filename, str) or is_user(filename)

        def on_start(code: Any, offset: int) -> Any:
            # Runs for every library call: file names' hashes are cached, and nothing here allocates.
            user = known(code.co_filename)
            if user is None:
                user = classify(code.co_filename)
            # Once per code object, in any thread (local events are per code), then DISABLE: a disabled
            # event outlives set_events(0) and free_tool_id, but clearing the code's local events at the
            # end (__exit__) re-arms it, so the next measurement, or run of -r N, sees the code start again.
            if user:
                codes.append(code)
                set_local(tool_box[0], code, top_events if code.co_name == "<module>" else user_function_events)
                return DISABLE
            # A library function starting: is its caller the user's line?
            name = module_of(2)
            maybe = user_module.get(name)
            if maybe is None:
                maybe = user_module[name] = module_may_be_user(name)
            if not maybe or get_ident() != tid:
                return None
            back = getframe(2)
            if back is not None and is_user(back.f_code.co_filename):
                ledger.library_ran = True
                if id(code) not in library_returns:  # its returns to the user's line are boundaries too
                    library_returns.add(id(code))
                    codes.append(code)
                    set_local(tool_box[0], code, function_events)
                boundary(key_of(back.f_code, back.f_lineno))
            return None

        def on_line(code: Any, line: int) -> None:
            key = key_of(code, line)
            if key is not ledger.owner and get_ident() == tid:
                boundary(key)

        def on_call(code: Any, offset: int, callable_: Any, arg0: Any) -> None:
            # A call in a user function (which gets no line events): its line owns what follows, so a C
            # function's allocation and release (``bytes(n)``, freed before the return) is held at the peak
            # by its own line, not by the caller's.  A loop calling on one line costs a lookup per call.
            # (Nothing here allocates, so tracemalloc records nothing: the thread is asked last.)
            keys = call_keys.of(code)
            key = keys.get(offset)
            if key is None:
                key = keys[offset] = key_of(code, getframe(1).f_lineno)
            if key is not ledger.owner and get_ident() == tid:
                boundary(key)

        def back_to_caller() -> None:
            # The innermost user frame below the one leaving, not past ipymem's runner.
            f = getframe(2).f_back  # (the frame leaving is 2: this function, then the callback, are above it)
            while f is not None:
                name = f.f_code.co_filename
                if is_ours(name):
                    f = None
                    break
                if is_user(name):
                    break
                f = f.f_back
            ledger._returning = True  # a function's locals die now: the ledger may snapshot (see _record)
            try:
                boundary(None if f is None else key_of(f.f_code, f.f_lineno))  # None: outside the user's code
            finally:
                ledger._returning = False

        def on_return(code: Any, offset: int, value: Any) -> None:
            if get_ident() != tid:
                return
            if known(code.co_filename):
                back_to_caller()
                return
            # A library function that was once called from the user's code returns (or yields): the heap
            # is read again if it returns to a user line, so what it allocated and freed is told apart
            # from what the line does next (a snapshot here still sees its blocks).
            name = module_of(2)
            maybe = user_module.get(name)
            if maybe is None:
                maybe = user_module[name] = module_may_be_user(name)
            if maybe:
                back = getframe(2)
                if back is not None and is_user(back.f_code.co_filename):
                    ledger.library_ran = True
                    boundary(key_of(back.f_code, back.f_lineno))

        def on_unwind(code: Any, offset: int, exc: BaseException) -> None:
            if known(code.co_filename) and get_ident() == tid:
                back_to_caller()

        tool = _claim_tool_id(3)
        tool_box.append(tool)
        ledger.tells_library = True
        ledger.library_ran = False
        self.tool = tool
        self.callbacks = {
            ev.PY_START: on_start,
            ev.PY_RESUME: on_start,
            ev.LINE: on_line,
            ev.CALL: on_call,
            ev.PY_RETURN: on_return,
            ev.PY_YIELD: on_return,
            ev.PY_UNWIND: on_unwind,
        }
        try:
            for event, callback in self.callbacks.items():
                mon.register_callback(tool, event, callback)
                self.registered[event] = callback
            mon.set_events(tool, ev.PY_START | ev.PY_RESUME | ev.PY_UNWIND)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        tool = self.tool
        if tool is None:
            return
        self.tool = None
        self.ledger.tells_library = False  # (library_ran stays: whether the run's end still needs booking)
        what = release_tool_id(tool, self.codes, self.registered)
        self.registered = {}
        if what is not None:
            self.changed = f"the measured code {what}"
