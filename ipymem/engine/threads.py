"""Which threads are the user's: housekeeping threads recognised by what they are, and thread activity.

RSS is the whole process's, so a report says when another thread ran during a
measurement.  A kernel is never single-threaded: ipykernel runs an IOPub
thread, a heartbeat, a control thread, a shell-channel thread, a parent
poller (which wakes every second) and one ``_watch_pipe_fd`` thread per
captured file descriptor; IPython saves history in a thread; a Dask client
adds an IO loop, queue feeders and process watchers.  None of them holds the
user's data, so naming them would make the note false on every measurement
longer than a second, and a note that is always there is never read.

They are recognised by the code they run, not by their names (names are
chosen by whoever starts a thread, and ``Thread-1`` is anyone's): a
``Thread`` subclass by the module of its class, a plain ``Thread`` by the
module of its target.  Threads that run the user's work in a library's pool
(``concurrent.futures``, Dask's task executor) are the user's.  Nothing here
calls user code: types are read with ``type()``, attributes from the
instance dictionary, and weak references are only dereferenced.
"""

from __future__ import annotations

import sys
import threading
import types
import weakref
from typing import Any

THREAD_PREFIX = "ipymem-"

#: Top-level packages whose threads are housekeeping: they move messages, poll a parent, save
#: history or watch processes, and never hold the user's data.
HOUSEKEEPING_PACKAGES = frozenset(
    {
        "ipymem",
        "ipykernel",
        "IPython",
        "jupyter_client",
        "zmq",
        "tornado",
        "comm",
        "ipywidgets",
        "debugpy",
        "_pydevd_bundle",
        "pydevd",
        "_pydev_bundle",
        "prompt_toolkit",
    }
)

#: Modules of a package that is otherwise the user's (its threads run the user's tasks) whose
#: threads are only its plumbing.
HOUSEKEEPING_MODULES = frozenset(
    {
        "distributed.utils",  # the client's IO loop
        "distributed.process",  # nanny process watchers
        "distributed.comm.tcp",
        "distributed.profile",  # the worker's sampling profiler, in-process clusters
        "distributed.system_monitor",
        "multiprocessing.queues",  # a Queue's feeder thread only moves pickled bytes to a pipe
    }
)


def _own(obj: Any, name: str) -> Any:
    """``obj.name`` from the instance dictionary only (no property, no ``__getattr__``)."""
    try:
        return object.__getattribute__(obj, "__dict__").get(name)
    except Exception:
        return None


def _module_of(func: Any) -> str | None:
    for _ in range(8):  # unwrap bound methods and functools.partial, never call anything
        if isinstance(func, types.MethodType):
            func = func.__func__
        elif type(func).__name__ == "partial" and type(func).__module__ == "functools":
            func = func.func
        else:
            break
    if isinstance(func, (types.FunctionType, types.BuiltinFunctionType)):
        module = func.__module__
        return module if isinstance(module, str) else None
    return type(func).__module__


def _is_housekeeping_module(module: str | None) -> bool:
    if not module:
        return False
    return module.partition(".")[0] in HOUSEKEEPING_PACKAGES or module in HOUSEKEEPING_MODULES


def _dask_offload(thread: threading.Thread) -> bool:
    """A worker of Dask's offload executor (it (de)serialises messages for the client)."""
    utils = sys.modules.get("distributed.utils")
    executor = getattr(utils, "_offload_executor", None) if utils is not None else None
    args = _own(thread, "_args")
    if executor is None or not isinstance(args, tuple) or not args:
        return False
    ref = args[0]
    return type(ref) is weakref.ReferenceType and ref() is executor


def is_housekeeping(thread: threading.Thread) -> bool:
    """Whether ``thread`` is the kernel's, IPython's, a library's plumbing or ipymem's own (see the module doc)."""
    cls = type(thread)
    if cls is threading._MainThread or cls is threading._DummyThread:  # type: ignore[attr-defined]
        return False
    if cls is not threading.Thread and cls.__module__ != "threading":
        return _is_housekeeping_module(cls.__module__)
    target = _own(thread, "_target")
    if target is None:  # a plain Thread whose run() ended: it keeps its verdict from an earlier look
        name = _own(thread, "_name")
        return isinstance(name, str) and name.startswith(THREAD_PREFIX)
    return _is_housekeeping_module(_module_of(target)) or _dask_offload(thread)


class ThreadActivity:
    """Which of the user's other threads ran Python code between :meth:`start` and :meth:`stop`.

    A thread is seen running when its innermost Python frame or instruction
    changed between two looks (``sys._current_frames()``), when it started or
    when it ended in between.  A thread that did work and came back to the
    very instruction it was blocked on between two looks is missed, so
    :meth:`poll` can be called in between (the sampler does, at its ticks) to
    look more often.  Housekeeping threads (:func:`is_housekeeping`) are left
    out, each judged once.  No frame is kept, only numbers: the frames dict is
    cleared before each look returns, so the caller's stack is never pinned
    (the dict holds the looking thread's own frame, which would otherwise make
    a cycle through the caller's locals until the next collection).
    """

    def __init__(self) -> None:
        self._me = threading.get_ident()
        self._lock = threading.Lock()
        self._last: dict[int, tuple[str, int, int]] = {}
        self._verdict: dict[int, tuple[threading.Thread, bool]] = {}
        self.ran: dict[int, str] = {}

    def _user_threads(self) -> dict[int, str]:
        out = {}
        for thread in threading.enumerate():
            ident = thread.ident
            if ident is None or ident == self._me:
                continue
            known = self._verdict.get(ident)
            if known is None or known[0] is not thread:  # idents are reused by new threads
                known = (thread, is_housekeeping(thread))
                self._verdict[ident] = known
            if not known[1]:
                out[ident] = thread.name
        return out

    def _look(self) -> dict[int, tuple[str, int, int]]:
        names = self._user_threads()
        out = {}
        frames = sys._current_frames()
        try:
            for ident, name in names.items():
                frame = frames.get(ident)
                if frame is not None:
                    out[ident] = (name, id(frame.f_code) ^ id(frame), frame.f_lasti)
        finally:
            frames.clear()
            frame = None
        return out

    def start(self) -> ThreadActivity:
        self._last = self._look()
        self.ran = {}
        return self

    def poll(self) -> None:
        with self._lock:
            now = self._look()
            for ident, state in now.items():
                before = self._last.get(ident)
                if before is None or before != state:
                    self.ran[ident] = state[0]
            for ident, state in self._last.items():
                if ident not in now:
                    self.ran[ident] = state[0]
            self._last = now

    def stop(self) -> list[str]:
        """Names of the user's threads that ran, sorted."""
        self.poll()
        self._verdict.clear()
        return sorted(set(self.ran.values()))
