"""The IPython magics: parse options, compile user code, call the engine, display.

Each magic reads like a table of contents; measuring lives in
:mod:`ipymem.engine`, formatting in :mod:`ipymem.render`, and the IPython
plumbing shared by all magics in :mod:`ipymem.shell`.
"""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand

from . import engine
from .models import AllocResult, MemitResult
from .render import alloc_html, alloc_text, memit_html, memit_text
from .shell import (
    Opt,
    compile_user_code,
    identifier,
    make_doc,
    non_negative_int,
    parse,
    positive_float,
    positive_int,
    publish,
    require_statement,
)

MEMIT_TAIL = "statement"
MEMIT_OPTS = (
    Opt("r", "Run the statement N times; the report gives the worst increment and the best.", "N", positive_int, 1),
    Opt("t", "Time budget in seconds for the repeats: no new run starts once it is spent.", "SECONDS", positive_float),
    Opt("i", "Sampling interval of the timeline in seconds (default 0.01).", "SECONDS", positive_float, 0.01),
    Opt("c", "Include the memory of child processes (sampled)."),
    Opt("o", "Return the MemitResult object."),
    Opt("q", "Quiet: print nothing."),
    Opt("v", "Store the MemitResult in the user namespace under NAME.", "NAME", identifier),
    Opt("heap", "Also trace the Python heap with tracemalloc and report its peak (slows allocation-heavy code)."),
    Opt("precision", "Decimal places of the MiB figures (default 2).", "N", non_negative_int, 2),
)

MEMTRACE_TAIL = "statement"
GROUPINGS = ("lineno", "filename", "traceback")


def grouping(text: str) -> str:
    if text not in GROUPINGS:
        raise ValueError(f"expected one of {', '.join(GROUPINGS)}, got {text!r}")
    return text


def frame_depth(text: str) -> int:
    value = positive_int(text)
    if value > 1000:
        raise ValueError(f"expected a frame count from 1 to 1000, got {text!r}")
    return value


MEMTRACE_OPTS = (
    Opt("n", "Show the top N locations (default 10).", "N", positive_int, 10),
    Opt("g", "Group by lineno (default), filename or traceback.", "GROUP", grouping, "lineno"),
    Opt(
        "d",
        "Frames kept per allocation (default 1); deeper attributes library allocations to your line but costs more.",
        "DEPTH",
        frame_depth,
        1,
    ),
    Opt("all", "Include library and IPython frames (default: only your code)."),
    Opt(
        "r",
        "Run N times and flag the locations whose retained memory grows with every run (a leak finder).",
        "N",
        positive_int,
        1,
    ),
    Opt("o", "Return the AllocResult object."),
    Opt("q", "Quiet: print nothing."),
    Opt("v", "Store the AllocResult in the user namespace under NAME.", "NAME", identifier),
    Opt("precision", "Decimal places of the MiB figures (default 2).", "N", non_negative_int, 2),
)


@magics_class
class MemoryMagics(Magics):
    """ipymem's magics: ``%memit``, ``%memtrace``."""

    @no_var_expand
    @line_cell_magic
    def memit(self, line: str = "", cell: str | None = None) -> MemitResult | None:
        __tracebackhide__ = True
        args = parse("memit", line, MEMIT_OPTS, MEMIT_TAIL)
        setup, statement = (None, args.rest) if cell is None else (args.rest or None, cell)
        require_statement("memit", statement, MEMIT_OPTS, MEMIT_TAIL)
        run, _ = compile_user_code(self.shell, statement)
        if setup:
            run_setup, _ = compile_user_code(self.shell, setup)
            run_setup()
        result, error = engine.memit(
            run,
            repeat=args.r,
            timeout=args.t,
            interval=args.i,
            include_children=args.c,
            trace_heap=args.heap,
            statement=statement,
            setup=setup,
        )
        return self._finish(result, error, args, memit_text, memit_html)

    @no_var_expand
    @line_cell_magic
    def memtrace(self, line: str = "", cell: str | None = None) -> AllocResult | None:
        __tracebackhide__ = True
        args = parse("memtrace", line, MEMTRACE_OPTS, MEMTRACE_TAIL)
        setup, statement = (None, args.rest) if cell is None else (args.rest or None, cell)
        require_statement("memtrace", statement, MEMTRACE_OPTS, MEMTRACE_TAIL)
        run, _ = compile_user_code(self.shell, statement)
        if setup:
            run_setup, _ = compile_user_code(self.shell, setup)
            run_setup()
        result, error = engine.alloctrace(
            run,
            top=args.n,
            group_by=args.g,
            depth=args.d,
            all_frames=args.all,
            repeat=args.r,
            cell_files=getattr(self.shell.compile, "_filename_map", None),
            statement=statement,
            setup=setup,
        )
        return self._finish(result, error, args, alloc_text, alloc_html)

    def _finish(self, result: Any, error: BaseException | None, args: Any, text: Any, html: Any) -> Any:
        """Show, store, then re-raise the user's exception or return the result for ``-o``."""
        __tracebackhide__ = True
        if not args.q:
            publish(text(result, args.precision), html(result, args.precision))
        if args.v:
            self.shell.user_ns[args.v] = result
        if error is not None:
            try:
                raise error
            finally:
                error = None  # break the frame <-> traceback cycle
        return result if args.o else None

    memit.__doc__ = make_doc(
        "Measure the peak and increment of memory (RSS) while a statement or cell runs.",
        "memit",
        MEMIT_OPTS,
        MEMIT_TAIL,
        """
        In cell mode the first line (after the options) is setup code: it runs
        first and is not measured.  The statement runs through IPython's
        transforms in your namespace, so magics and ``!`` lines work and names
        it defines stay defined.

        The peak is exact on Linux: the kernel's high-water mark of RSS
        (VmHWM) is reset before each run and read after it, so no spike is
        missed however short.  A background sampler records the timeline and
        is the fallback where no high-water mark can be reset; the report
        says which method produced the peak.

        Examples::

          In [1]: %memit bytearray(200 * 2**20)
          peak memory: 238.37 MiB, increment: 200.00 MiB
            RSS, exact peak from the kernel high-water mark (VmHWM) · baseline 38.37 MiB · ...

          In [2]: %%memit import numpy as np
             ...: a = np.ones(10**7)
        """,
    )

    memtrace.__doc__ = make_doc(
        "Show which lines of your code allocated Python memory (tracemalloc) and what is still held afterwards.",
        "memtrace",
        MEMTRACE_OPTS,
        MEMTRACE_TAIL,
        """
        In cell mode the first line (after the options) is setup code: it runs
        first and is not traced.

        Per location (a cell line ``Cell In[N], line L`` or a file) the report
        gives two Python-heap figures, size and number of blocks:

        * held at heap peak: blocks the location allocated during the run that
          were alive when the traced heap was highest, as observed at the
          lines of your code (memory allocated and freed within one line is
          in the exact peak of the total row, not in a row);
        * retained after: blocks allocated during the run still alive after
          it and a garbage collection: the leak suspects.

        The total row gives the exact Python-heap peak (tracemalloc), the net
        retained heap and the process RSS change beside it.  Allocations made
        inside libraries are attributed to your line that called them when
        the traceback is deep enough (``-d``); the rest is "outside your code".
        With ``-r N`` the report also gives each location's retained growth per
        run and flags the ones that grew in every run.

        tracemalloc is restored exactly: if it was running it keeps running
        with its frame count and traces (only its peak is reset); otherwise it
        is stopped.

        Examples::

          In [1]: %memtrace data = [str(i) for i in range(10**5)]

          In [2]: %%memtrace -r 3 -n 5
             ...: handle_request()
        """,
    )
