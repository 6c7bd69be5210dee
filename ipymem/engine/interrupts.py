"""Keep Ctrl-C out of ipymem's own bookkeeping.

A KeyboardInterrupt may land on any bytecode of the main thread.  Inside the
user's code that is what the user wants; inside ipymem's setup or teardown
(starting a thread, restoring tracemalloc or a trace function) it could
leave the session half-restored.  :func:`deferred_interrupts` holds SIGINT
for the few microseconds of such a section and replays it afterwards, so an
interrupt is never lost and never lands mid-restore.  :func:`interrupts_between_turns`
does the same for the kernel's tasks while a magic turns the kernel's loop.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Deferred:
    """Whether an interrupt arrived while deferred (``received``)."""

    received = False


def _python_handler_here() -> bool:
    """Whether ipymem may swap SIGINT's handler here: on the main thread (the only place a handler can be
    installed), and only Python's default one (someone else's, a debugger's or a test runner's, is left
    alone)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        return signal.getsignal(signal.SIGINT) is signal.default_int_handler
    except (ValueError, OSError):  # pragma: no cover - exotic embeddings
        return False


@contextmanager
def deferred_interrupts() -> Iterator[Deferred]:
    """Defer SIGINT within the block; the caller decides what to do with ``state.received``.

    Only the default Python handler is swapped, and only on the main thread
    (the only place a handler can be installed); elsewhere this is a no-op.
    """
    state = Deferred()
    if not _python_handler_here():
        yield state
        return

    def hold(signum: int, frame: object) -> None:
        state.received = True

    signal.signal(signal.SIGINT, hold)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Pending:
    """Whether a Ctrl-C is waiting for the loop's turn to end (``hit``), and how many came."""

    hit = False
    count = 0


@contextmanager
def interrupts_between_turns(loop: Any, task: Any) -> Iterator[Pending]:
    """While ipymem turns the kernel's loop, Ctrl-C reaches the user's task or ipymem, never a bystander.

    The loop also runs the kernel's own tasks and callbacks (messages, comms, output), in this thread.
    A KeyboardInterrupt raised in one of their steps would end that task (asyncio sets it as the task's
    exception) and leave the kernel unable to answer, so the magic's cell would never reply.  So:
    SIGINT while the user's task is stepping raises there, as a plain cell's Ctrl-C would; anywhere
    else (the loop idle in ``select()``, another task's step, a callback) it is noted (``pending.hit``)
    and the loop is woken, and the caller, which turns the loop, raises it between two turns.  A second
    Ctrl-C before that turn ends raises at once, wherever it lands (a step that never yields must stay
    interruptible).
    """
    import asyncio

    pending = Pending()
    if not _python_handler_here():
        yield pending
        return
    wake = getattr(loop, "_write_to_self", None)

    def on_sigint(signum: int, frame: Any) -> None:
        pending.count += 1
        if pending.count > 1 or asyncio.tasks.current_task(loop) is task:
            raise KeyboardInterrupt
        pending.hit = True
        if wake is not None:
            wake()  # select() returns now: the turn ends and the interrupt is raised

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pending
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
