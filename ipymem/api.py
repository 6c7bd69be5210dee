"""The plain Python API, for scripts and tests outside IPython.

Same engines and result objects as the magics, without IPython.  Unlike
the magics, which show a partial report before re-raising, these functions
simply let the exception of the measured code propagate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from . import engine
from .models import AllocResult, MemitResult, MemwhoResult, MprunResult

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
    result, error = engine.profile_lines(
        lambda: func(*args, **kwargs),
        list(targets) if targets else [func],
        backend=backend,
        include_children=include_children,
        statement=f"{_name(func)}(...)",
    )
    _reraise(error)
    return result


def profile(func: F | None = None, /, *, backend: str = "rss", print_report: bool = False) -> Any:
    """Decorator: profile every call of the function line by line.

    The function returns what it always did; the last call's
    :class:`MprunResult` is kept as ``wrapper.last_profile`` (and printed
    as text with ``print_report=True``, like memory_profiler's ``@profile``).

    >>> @profile
    ... def build(n):
    ...     return [0] * n
    >>> _ = build(10)
    >>> build.last_profile.functions[0].name
    'build'
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out: list[Any] = []
            result, error = engine.profile_lines(
                lambda: out.append(f(*args, **kwargs)),
                [f],
                backend=backend,
                statement=f"{_name(f)}(...)",
            )
            wrapper.last_profile = result  # type: ignore[attr-defined]
            if print_report:
                print(result)
            _reraise(error)
            return out[0]

        wrapper.last_profile = None  # type: ignore[attr-defined]
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
    namespace: Mapping[str, Any] | None = None,
    /,
    pattern: str | None = None,
    *,
    top: int | None = None,
    show_all: bool = False,
    budget: float = 5.0,
    trim: bool = False,
) -> MemwhoResult:
    """Which names of ``namespace`` hold memory, what ``del`` would free, and what RSS is made of (``%memwho``).

    ``namespace`` defaults to the caller's globals.  Names starting with
    ``_`` are hidden (``show_all=True`` lists them); ``pattern`` is a glob on
    the names shown.  The walk stops after ``budget`` seconds and says so.
    ``trim=True`` first runs a garbage collection and ``malloc_trim(0)``.

    >>> big = bytearray(10**6)
    >>> round(memwho({"big": big}).row("big").freed_if_deleted / 1e6)  # doctest: +SKIP
    1
    """
    if namespace is None:
        import sys

        namespace = sys._getframe(1).f_globals
    result = engine.census(namespace, pattern=pattern, top=top, show_all=show_all, budget=budget, trim=trim)
    if result.outcome == "interrupted":
        raise KeyboardInterrupt
    return result


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


def _reraise(error: BaseException | None) -> None:
    if error is not None:
        try:
            raise error
        finally:
            error = None
