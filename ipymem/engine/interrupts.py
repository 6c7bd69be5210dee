"""Keep Ctrl-C out of ipymem's own bookkeeping.

A KeyboardInterrupt may land on any bytecode of the main thread.  Inside the
user's code that is what the user wants; inside ipymem's setup or teardown
(starting a thread, restoring tracemalloc or a trace function) it could
leave the session half-restored.  :func:`deferred_interrupts` holds SIGINT
for the few microseconds of such a section and replays it afterwards, so an
interrupt is never lost and never lands mid-restore.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Deferred:
    """Whether an interrupt arrived while deferred (``received``)."""

    received = False


@contextmanager
def deferred_interrupts() -> Iterator[Deferred]:
    """Defer SIGINT within the block; the caller decides what to do with ``state.received``.

    Only the default Python handler is swapped, and only on the main thread
    (the only place a handler can be installed); elsewhere this is a no-op.
    """
    state = Deferred()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    try:
        previous = signal.getsignal(signal.SIGINT)
    except (ValueError, OSError):  # pragma: no cover - exotic embeddings
        yield state
        return
    if previous is not signal.default_int_handler:
        yield state  # someone else's handler (a debugger, a test runner): leave it alone
        return

    def hold(signum: int, frame: object) -> None:
        state.received = True

    signal.signal(signal.SIGINT, hold)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
