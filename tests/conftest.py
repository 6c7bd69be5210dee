"""Shared fixtures: a fresh IPython shell per test and a check that nothing leaks.

Every test gets a new ``InteractiveShell`` with ipymem loaded and a
capturing display publisher, so assertions read what a user would see
(``text/plain`` and ``text/html``).  The autouse ``no_leaks`` fixture fails
any test after which an ipymem thread is alive, the trace function changed,
a ``sys.monitoring`` tool id is still held, or tracemalloc's state differs.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys
import threading
import time
import tracemalloc

import pytest
from IPython.core.displaypub import CapturingDisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config


def _monitoring_tools() -> tuple:
    mon = getattr(sys, "monitoring", None)
    if mon is None:
        return ()
    return tuple(mon.get_tool(i) for i in range(6))


def _ipymem_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ipymem-") and t.is_alive()]


def _state() -> dict:
    return {
        "trace": sys.gettrace(),
        "tracemalloc": tracemalloc.is_tracing(),
        "frames": tracemalloc.get_traceback_limit() if tracemalloc.is_tracing() else None,
        "monitoring": _monitoring_tools(),
        "sigint": signal.getsignal(signal.SIGINT),
    }


@pytest.fixture(autouse=True)
def no_leaks():
    malloc_trim()  # every test starts from a trimmed C heap: see malloc_trim
    before = _state()
    yield
    deadline = time.monotonic() + 2.0
    while _ipymem_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _ipymem_threads() == [], "ipymem threads left running"
    assert _state() == before, "tracer, tracemalloc, monitoring or SIGINT handler state changed"


@pytest.fixture
def python_sigint_handler():
    """SIGINT raises KeyboardInterrupt, as in any IPython session, even when pytest runs as a background job.

    A shell starts background jobs with SIGINT ignored, and Python then keeps it ignored.
    """
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def sigint_timer(delay: float) -> tuple[threading.Timer, threading.Event]:
    """A timer (not yet started) that sends SIGINT to this process after `delay` s, then sets the event."""
    fired = threading.Event()

    def fire():
        os.kill(os.getpid(), signal.SIGINT)
        fired.set()

    timer = threading.Timer(delay, fire)
    timer.daemon = True
    return timer, fired


class Shell:
    """A test shell: the real InteractiveShell plus helpers to read what was displayed."""

    def __init__(self, ip: InteractiveShell) -> None:
        self.ip = ip

    def __getattr__(self, name):
        return getattr(self.ip, name)

    @property
    def outputs(self) -> list[dict]:
        return [o["data"] for o in self.ip.display_pub.outputs]

    def texts(self) -> list[str]:
        return [o["text/plain"] for o in self.outputs if "text/plain" in o]

    def htmls(self) -> list[str]:
        return [o["text/html"] for o in self.outputs if "text/html" in o]

    def clear(self) -> None:
        self.ip.display_pub.outputs.clear()

    def line(self, magic: str, line: str = ""):
        return self.ip.run_line_magic(magic, line)

    def cell(self, magic: str, line: str, cell: str):
        return self.ip.run_cell_magic(magic, line, cell)


@pytest.fixture
def ip():
    InteractiveShell.clear_instance()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.display_pub = CapturingDisplayPublisher()
    shell.run_line_magic("load_ext", "ipymem")
    gc.collect()  # the previous test's shell and namespace are garbage now: free them before this test measures
    malloc_trim()
    try:
        yield Shell(shell)
    finally:
        if "ipymem" in shell.extension_manager.loaded:
            shell.run_line_magic("unload_ext", "ipymem")
        InteractiveShell.clear_instance()
        # Each shell registers its exit cleanup with atexit, which would keep every test's shell and
        # namespace alive (the heap grew to 1 GiB over a run, every collection slowed down, and the exit
        # ran hundreds of full collections: 1.5 min). The shell's history is in memory: nothing to save.
        atexit.unregister(shell.atexit_operations)


MiB = 1024 * 1024


def malloc_trim() -> None:
    """Give the C allocator's free memory back to the OS (glibc), so a test's allocation raises RSS.

    glibc keeps up to twice its (dynamic) mmap threshold free at the top of its heap, and serves a
    later request from there whatever its size: after earlier tests, a 48 MiB array can then come
    from memory that is already resident and raise RSS by nothing.  That is true RSS; tests that
    check an allocation of known size start from a trimmed heap instead.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
