"""The IPython magics: parse options, compile user code, call the engine, display.

Each magic reads like a table of contents; measuring lives in
:mod:`ipymem.engine`, formatting in :mod:`ipymem.render`, and the IPython
plumbing shared by all magics in :mod:`ipymem.shell`.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from traitlets import Bool, Float

from . import engine
from .live import MemWatch, live_view
from .models import MemitResult
from .render import memit_html, memit_text
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
    Opt("no-live", "No live chart while the statement runs (see also %config MemoryMagics.live)."),
)


@magics_class
class MemoryMagics(Magics):
    """ipymem's magics: ``%memit``, ``%memwatch``."""

    live = Bool(
        True,
        help="Show a live memory chart while a magic runs, in frontends that display widgets. "
        "Set False where detection is wrong (e.g. jupyter console) or to keep notebooks small.",
    ).tag(config=True)
    live_refresh = Float(0.5, help="Fastest redraw of the live chart, in seconds.").tag(config=True)

    _memwatch: MemWatch | None = None

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
        sampler = engine.Sampler(engine.shared_probe(), interval=args.i, include_children=args.c)
        with self._live("%memit", args, sampler=sampler) as view:
            result, error = engine.memit(
                run,
                repeat=args.r,
                timeout=args.t,
                interval=args.i,
                include_children=args.c,
                trace_heap=args.heap,
                statement=statement,
                setup=setup,
                sampler=sampler,
            )
            if not result.ok:
                view.note(result.outcome)
        return self._finish(result, error, args, memit_text, memit_html)

    def _live(self, title: str, args: Any, **kwargs: Any) -> Any:
        """The live view for one run of a magic (a no-op view when off or unsupported).

        Any magic adopts it with an ``Opt("no-live", ...)`` in its table and
        ``with self._live("%name", args) as view: ...`` around its engine call;
        ``view.mark(label, "start"/"end")`` marks moments on the chart.  Honours
        ``--no-live``, ``-q`` and ``--heap`` when the magic has them.
        """
        enabled = self.live and not getattr(args, "no_live", False) and not getattr(args, "q", False)
        heap = bool(getattr(args, "heap", False))
        return live_view(self.shell, title=title, enabled=enabled, heap=heap, refresh=self.live_refresh, **kwargs)

    @line_magic
    def memwatch(self, line: str = "") -> None:
        """Watch memory in every cell: ``%memwatch on`` / ``%memwatch off``.

        While on, every cell shows a live memory chart as it runs (in frontends
        that display widgets) and one line afterwards::

          used +12.00 MiB, peak +40.00 MiB above start, 1.52 s

        There is no fixed delay per cell.  ``%memwatch`` alone says whether it is on.
        """
        arg = line.strip().lower()
        if arg == "on":
            if self._memwatch is None:
                self._memwatch = MemWatch(self.shell, live=lambda: self.live, refresh=self.live_refresh)
                self._memwatch.on()
        elif arg == "off":
            self.close_memwatch()
        elif arg:
            raise UsageError(f"%memwatch: expected 'on' or 'off', got {line.strip()!r}\nUsage: %memwatch on|off")
        else:
            print(f"memwatch is {'on' if self._memwatch is not None else 'off'}")

    def close_memwatch(self) -> None:
        watch, self._memwatch = self._memwatch, None
        if watch is not None:
            watch.off()

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
          peak memory: 245.61 MiB, increment: 200.02 MiB

          In [2]: %%memit import numpy as np
             ...: a = np.ones(10**7)
        """,
    )
