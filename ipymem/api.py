"""The plain Python API, for scripts and tests outside IPython.

Same engines and result objects as the magics, without IPython.  Unlike
the magics, which show a partial report before re-raising, these functions
simply let the exception of the measured code propagate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import engine
from .models import MemitResult


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
    name = getattr(func, "__qualname__", None) or repr(func)
    result, error = engine.memit(
        lambda: func(*args, **kwargs),
        repeat=repeat,
        timeout=timeout,
        interval=interval,
        include_children=include_children,
        trace_heap=trace_heap,
        statement=f"{name}(...)" if args or kwargs else f"{name}()",
    )
    if error is not None:
        try:
            raise error
        finally:
            error = None
    return result
