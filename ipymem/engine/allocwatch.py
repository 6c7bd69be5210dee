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
* ``LINE`` on a cell's (or user module's) top-level code;
* ``PY_RETURN`` / ``PY_YIELD`` on user code, and ``PY_UNWIND`` (global
  only): back on the caller's line.

User functions get no line events, as under ``sys.settrace``: their loops
run at tracemalloc's own speed, and calls to C functions (``list.append``)
cost nothing.  Code a user function runs between two boundaries is its own,
and its blocks name their line anyway.  Events from other threads are
ignored (the settrace hook only ever sees the thread that set it).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any

from .tracers import _claim_tool_id, _free_tool_id


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
        user_code: dict[Any, bool] = {}  # code object -> user code or not
        user_module: dict[Any, bool] = {}  # module name -> may be user code (then the frame decides)
        tool_box: list[int] = []
        top_events = ev.LINE | ev.PY_RETURN | ev.PY_YIELD
        function_events = ev.PY_RETURN | ev.PY_YIELD
        set_local = mon.set_local_events

        def is_user(filename: str) -> bool:
            user = known(filename)
            return classify(filename) if user is None else user

        def module_may_be_user(name: Any) -> bool:
            module = modules.get(name) if isinstance(name, str) else None
            filename = getattr(module, "__file__", None)
            # A cell's functions say "__main__", and so may a library wrapper that copied a user
            # function's __module__ (functools.wraps): "may be", the caller's frame decides.
            return name == "__main__" or not isinstance(filename, str) or is_user(filename)

        def on_start(code: Any, offset: int) -> Any:
            user = user_code.get(code)
            if user is None:
                user = user_code[code] = is_user(code.co_filename)
                if user:  # once per code object, in any thread: local events are per code, not per thread
                    codes.append(code)
                    set_local(tool_box[0], code, top_events if code.co_name == "<module>" else function_events)
            if user:
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
                key = key_of(back.f_code, back.f_lineno)
                if key is not ledger.owner:  # the same line again (a loop's calls): one interval
                    boundary(key)
            return None

        def on_line(code: Any, line: int) -> None:
            if get_ident() == tid:
                key = key_of(code, line)
                if key is not ledger.owner:
                    boundary(key)

        def back_to_caller() -> None:
            # The innermost user frame below the one leaving, not past ipymem's runner.
            f = getframe(3)
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
            if get_ident() == tid:
                back_to_caller()

        def on_unwind(code: Any, offset: int, exc: BaseException) -> None:
            if user_code.get(code) and get_ident() == tid:
                back_to_caller()

        tool = _claim_tool_id(3)
        tool_box.append(tool)
        self.tool = tool
        self.callbacks = {
            ev.PY_START: on_start,
            ev.PY_RESUME: on_start,
            ev.LINE: on_line,
            ev.PY_RETURN: on_return,
            ev.PY_YIELD: on_return,
            ev.PY_UNWIND: on_unwind,
        }
        try:
            for event, callback in self.callbacks.items():
                mon.register_callback(tool, event, callback)
            mon.set_events(tool, ev.PY_START | ev.PY_RESUME | ev.PY_UNWIND)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        mon = sys.monitoring
        tool = self.tool
        if tool is None:
            return
        self.tool = None
        if mon.get_tool(tool) != "ipymem":  # the measured code freed our id (and maybe took it): not ours
            self.changed = f"the measured code freed sys.monitoring tool id {tool}"
            return
        try:
            with contextlib.suppress(ValueError):
                mon.set_events(tool, 0)
            for code in self.codes:
                with contextlib.suppress(ValueError):
                    mon.set_local_events(tool, code, 0)
            replaced = False
            for event, callback in self.callbacks.items():
                replaced = mon.register_callback(tool, event, None) is not callback or replaced
            if replaced:
                self.changed = "the measured code replaced ipymem's sys.monitoring callbacks"
        finally:
            mon.free_tool_id(tool)
