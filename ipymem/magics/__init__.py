"""The IPython magics: parse options, compile user code, call the engine, display.

Each magic reads like a table of contents; measuring lives in
:mod:`ipymem.engine`, formatting in :mod:`ipymem.render`, and the IPython
plumbing shared by all magics in :mod:`ipymem.shell`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from collections.abc import Iterator
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from traitlets import Bool, Float, TraitError, observe, validate

from .. import engine
from ..engine import cluster as cluster_engine
from ..engine.codes import nested_functions, stand_in
from ..engine.interrupts import Deferred, deferred_interrupts
from ..engine.limits.cgroups import LimitWindow
from ..engine.linetrace import code_of, profile_lines
from ..files import writable_file
from ..live import MemWatch, live_view
from ..models import AllocResult, MemitResult, MemwhoResult, MprunResult
from ..render import alloc_html, alloc_text, memit_html, memit_text, memwho_html, memwho_text, mprun_html, mprun_text
from ..render.chart import alloc_peak, alloc_title, memit_peak, memit_title, mprun_peak, mprun_title
from ..shell import (
    Opt,
    ProgressLine,
    call_engine,
    cell_files,
    cell_label,
    compile_user_code,
    make_doc,
    output_bookkeeping,
    output_holders,
    parse,
    positive_float,
    positive_int,
    publish,
    require_statement,
    resolve_function,
    store_name,
    usage_line,
)
from ..units import precision_int

MEMIT_TAIL = "statement"
MEMIT_OPTS = (
    Opt("r", "Run the statement N times; the report gives the worst increment and the best.", "N", positive_int, 1),
    Opt("t", "Time budget in seconds for the repeats: no new run starts once it is spent.", "SECONDS", positive_float),
    Opt("i", "Sampling interval of the timeline in seconds (default 0.01).", "SECONDS", positive_float, 0.01),
    Opt("c", "Include the memory of child processes (sampled)."),
    Opt("o", "Return the MemitResult object."),
    Opt("q", "Quiet: print nothing."),
    Opt("v", "Store the MemitResult in the user namespace under NAME.", "NAME", store_name),
    Opt("heap", "Also trace the Python heap with tracemalloc and report its peak (slows allocation-heavy code)."),
    Opt("precision", "Decimal places of the MiB figures (default 2).", "N", precision_int, 2),
    Opt("no-live", "No live chart while the statement runs (see also %config MemoryMagics.live)."),
    Opt("cluster", "Measure the workers of this distributed.Client (default: the default client, if any).", "NAME"),
    Opt("no-cluster", "Do not measure Dask workers, even when a client is active."),
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
        "Frames kept per allocation (default 1; library allocations are booked on your line at any depth);"
        " with -g traceback, deeper shows the chain of your frames but costs more.",
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
    Opt("v", "Store the AllocResult in the user namespace under NAME.", "NAME", store_name),
    Opt("no-live", "No live memory chart while the statement runs."),
    Opt("precision", "Decimal places of the MiB figures (default 2).", "N", precision_int, 2),
)

MPRUN_TAIL = "statement"

#: Sampling interval of the RSS timeline that %mprun and %memtrace keep for the chart and plot().
#: 20 Hz draws the same chart as 100 Hz, and every wake of a thread costs a line-traced loop
#: ~0.7 ms of GIL hand-over (measured on 3.12: 100 Hz slowed %mprun of a bubble sort by ~7%).
TIMELINE_INTERVAL = 0.05


def _backend(text: str) -> str:
    if text not in ("rss", "heap"):
        raise ValueError(f"expected rss or heap, got {text!r}")
    return text


MPRUN_OPTS = (
    Opt(
        "f", "Profile this function: any expression naming a function or method (repeatable).", "FUNC", repeatable=True
    ),
    Opt(
        "T",
        "Write the text report to FILE and print only where it went (checked before anything runs).",
        "FILE",
        writable_file,
    ),
    Opt("r", "Return the MprunResult object (memory_profiler's letter; same as -o)."),
    Opt("o", "Return the MprunResult object."),
    Opt("v", "Store the MprunResult in the user namespace under NAME.", "NAME", store_name),
    Opt("no-live", "No live memory chart while the statement runs."),
    Opt("q", "Quiet: print nothing."),
    Opt("c", "Include the memory of child processes (sampled at the readings)."),
    Opt("precision", "Decimal places of the MiB figures (default 2).", "N", precision_int, 2),
    Opt(
        "backend",
        "rss (process RSS, the default) or heap (Python heap by tracemalloc, per line).",
        "NAME",
        _backend,
        "rss",
    ),
)


MEMWHO_TAIL = "[PATTERN]"
MEMWHO_OPTS = (
    Opt("n", "Show the N largest names only.", "N", positive_int),
    Opt("a", "Also list IPython's own and _-prefixed names, and every hidden holder however small."),
    Opt("o", "Return the MemwhoResult object."),
    Opt("q", "Quiet: print nothing."),
    Opt("v", "Store the MemwhoResult in the user namespace under NAME.", "NAME", store_name),
    Opt("trim", "First collect garbage and return free memory to the OS (malloc_trim); report how much RSS came back."),
    Opt("precision", "Decimal places of the MiB figures (default 2).", "N", precision_int, 2),
)


@contextlib.contextmanager
def _sampling(sampler: engine.Sampler) -> Iterator[Deferred]:
    """Run ``sampler`` for the duration of the block; Ctrl-C is held while it starts and stops.

    Held, not dropped: one that arrived while the sampler started stops the
    magic before the user's code runs; one that arrived while it stopped is
    in the yielded state's ``received``, for the magic to raise after its report.
    """
    with deferred_interrupts() as held:
        sampler.start()
    if held.received:
        with deferred_interrupts():
            sampler.stop()
        raise KeyboardInterrupt
    state = Deferred()
    try:
        yield state
    finally:
        with deferred_interrupts() as held:
            sampler.stop()
        state.received = held.received


def _write_report(path: str, text: str) -> tuple[str | None, bool]:
    """Write ``text`` to ``path``: (memory_profiler's saved-to line or ``None``, whether Ctrl-C came meanwhile).

    The path was checked before the run; if the write still fails (a full
    disk, a vanished directory), say so on stderr and return ``None``: the
    caller then shows the report instead, and the user's exception, if any,
    stays the one that propagates.  Ctrl-C is held during the write.
    """
    line: str | None = None
    with deferred_interrupts() as held:
        try:
            with open(path, "w", encoding="utf-8") as out:
                out.write(text + "\n")
            line = f"*** Profile printout saved to text file {path}."
        except OSError as exc:
            print(f"%mprun: could not write {path}: {exc}; the report is shown instead", file=sys.stderr)
    return line, held.received


def _without_idle_nested(result: MprunResult, asked: int) -> MprunResult:
    """Drop the nested functions that never ran (the first ``asked`` functions were asked for by -f)."""
    idle = [f.name for f in result.functions[asked:] if f.calls == 0]
    keep = result.functions[:asked] + tuple(f for f in result.functions[asked:] if f.calls)
    notes = []
    for note in result.notes:
        if note.startswith("never called: "):
            names = [n for n in note[len("never called: ") :].split(", ") if n not in idle]
            if not names:
                continue
            note = "never called: " + ", ".join(names)
        notes.append(note)
    return dataclasses.replace(result, functions=keep, notes=tuple(notes))


class _ClusterMeasurement(Deferred):
    """What :func:`_measuring_cluster` yields: the handle (``None`` without a client) and, after, its figures."""

    handle: Any = None

    def into(self, result: MemitResult) -> MemitResult:
        """``result`` with the workers' figures, timeline and notes (unchanged without a cluster)."""
        handle = self.handle
        if handle is None:
            return result
        return dataclasses.replace(
            result,
            workers=dict(getattr(handle, "workers", {})),
            cluster_timeline=tuple(handle.samples),
            notes=(*result.notes, *handle.notes),
        )


@contextlib.contextmanager
def _measuring_cluster(client: Any, sampler: engine.Sampler) -> Iterator[_ClusterMeasurement]:
    """Measure every worker of ``client`` during the block (nothing without a client).

    Ctrl-C is held while the workers are read (each call bounded by a
    timeout), as for the sampler: see :func:`_sampling`.
    """
    state = _ClusterMeasurement()
    if client is None:
        yield state
        return
    with deferred_interrupts() as held:
        state.handle = cluster_engine.start(client, clock=sampler.elapsed)
    if held.received:
        with deferred_interrupts():
            state.handle.stop()
        raise KeyboardInterrupt
    try:
        yield state
    finally:
        with deferred_interrupts() as held:
            state.handle.stop()
        state.received = held.received


@magics_class
class MemoryMagics(Magics):
    """ipymem's magics: ``%memit``, ``%mprun``, ``%memtrace``, ``%memwatch``."""

    live = Bool(
        True,
        help="Show a live memory chart while a magic runs, in frontends that display widgets. "
        "Set False where detection is wrong (e.g. jupyter console) or to keep notebooks small.",
    ).tag(config=True)
    live_refresh = Float(0.5, help="Fastest redraw of the live chart, in seconds.").tag(config=True)
    reset_hwm = Bool(
        True,
        help="Reset the kernel's high-water mark of RSS (/proc/self/clear_refs) to get an exact peak per "
        "measurement. This lowers the process's ru_maxrss / VmHWM as seen by /usr/bin/time or batch accounting "
        "(ipymem.lifetime_peak() keeps the true lifetime figure). False: never reset; a peak is then exact only "
        "when it sets a new lifetime maximum, and sampled otherwise (reports say which).",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        engine.peaks.set_reset_hwm(self.reset_hwm)

    @observe("reset_hwm")
    def _reset_hwm_changed(self, change: Any) -> None:
        engine.peaks.set_reset_hwm(change["new"])

    memwho_budget = Float(
        5.0, help="Seconds %memwho may spend walking the namespace; a walk cut short says what it covered."
    ).tag(config=True)

    @validate("memwho_budget")
    def _valid_budget(self, proposal: Any) -> float:
        value = proposal["value"]
        if not (0 < value < float("inf")):  # nan would make the walk unbounded, -1 would stop it at once
            raise TraitError(f"memwho_budget must be a positive number of seconds, got {value!r}")
        return value

    _memwatch: MemWatch | None = None

    @no_var_expand
    @line_cell_magic
    def memit(self, line: str = "", cell: str | None = None) -> MemitResult | None:
        __tracebackhide__ = True
        args, run, statement, setup = self._statement_and_setup("memit", line, cell, MEMIT_OPTS, MEMIT_TAIL)
        sampler = engine.Sampler(engine.shared_probe(), interval=args.i, include_children=args.c)
        measure = functools.partial(
            engine.memit,
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
        client = self._cluster_client(args)
        window = LimitWindow(engine.shared_probe().rss)
        with _measuring_cluster(client, sampler) as cluster, self._live("%memit", args, sampler=sampler) as view:
            if cluster.handle is not None:
                view.cluster = cluster.handle  # the live chart shows the workers too
            result, error = call_engine(measure, run)
            if not result.ok:
                view.note(result.outcome)
            view.conclude(memit_title(result), memit_peak(result))  # the final chart states the table's peak
        result = cluster.into(result)
        result = dataclasses.replace(result, limit=window.finish(result.peak - result.baseline if result.runs else 0))
        if cluster.received and error is None:
            error = KeyboardInterrupt()
        return self._finish(result, error, args, memit_text, memit_html)

    def _cluster_client(self, args: Any) -> Any:
        """The client whose workers ``%memit`` measures: ``--cluster NAME``, else the default client, else None."""
        if args.no_cluster:
            return None
        if args.cluster is None:
            return cluster_engine.default_client()
        if not args.cluster.isidentifier() or args.cluster not in self.shell.user_ns:
            raise UsageError(
                f"%memit: --cluster {args.cluster!r} names no variable of this session\n"
                f"Usage: %memit --cluster NAME statement"
            )
        client = self.shell.user_ns[args.cluster]
        if not cluster_engine.is_client(client):
            raise UsageError(
                f"%memit: --cluster {args.cluster} is a {type(client).__name__}, not a distributed.Client\n"
                f"Usage: %memit --cluster NAME statement"
            )
        return client

    @no_var_expand
    @line_cell_magic
    def memtrace(self, line: str = "", cell: str | None = None) -> AllocResult | None:
        __tracebackhide__ = True
        args, run, statement, setup = self._statement_and_setup("memtrace", line, cell, MEMTRACE_OPTS, MEMTRACE_TAIL)
        measure = functools.partial(
            engine.alloctrace,
            run,
            top=args.n,
            group_by=args.g,
            depth=args.d,
            all_frames=args.all,
            repeat=args.r,
            cell_files=cell_files(self.shell),
            statement=statement,
            setup=setup,
        )
        sampler = engine.Sampler(engine.shared_probe(), interval=TIMELINE_INTERVAL)  # the chart and plot()
        with self._live("%memtrace", args, sampler=sampler, heap=True) as view, _sampling(sampler) as sampling:
            result, error = call_engine(measure, run)
            if not result.ok:
                view.note(result.outcome)
            view.conclude(alloc_title(result), alloc_peak(result))
        if sampling.received and error is None:
            error = KeyboardInterrupt()
        result = dataclasses.replace(result, timeline=sampler.timeline.samples())
        return self._finish(result, error, args, alloc_text, alloc_html)

    @no_var_expand
    @line_cell_magic
    def mprun(self, line: str = "", cell: str | None = None) -> MprunResult | None:
        __tracebackhide__ = True
        args = parse("mprun", line, MPRUN_OPTS, MPRUN_TAIL)
        args["o"] = args.o or args.r
        if cell is None:
            statement = args.rest
            require_statement("mprun", statement, MPRUN_OPTS, MPRUN_TAIL)
            if not args.f:
                raise UsageError(
                    "%mprun: give the function(s) to profile with -f FUNC\nUsage: %mprun -f FUNC statement"
                )
        else:  # as memory_profiler: the rest of the first line is prepended to the cell
            statement = f"{args.rest}\n{cell}" if args.rest else cell
            require_statement("mprun", statement, MPRUN_OPTS, MPRUN_TAIL)
        targets = [resolve_function(self.shell, "mprun", expr, code_of) for expr in args.f]
        # As memory_profiler: functions defined inside a profiled one are profiled too (shown if they ran).
        asked = {code_of(t) for t in targets}
        nested = [
            stand_in(code, name)
            for t in targets
            for code, name in nested_functions(code_of(t), getattr(t, "__qualname__", None))
            if code not in asked
        ]
        run, _ = compile_user_code(self.shell, statement)
        if not targets:  # %%mprun without -f: the cell body itself, line by line
            targets = [run.code]
        sampler = engine.Sampler(engine.shared_probe(), interval=TIMELINE_INTERVAL)  # the chart and plot()
        calls: list[tuple[float, str, str]] = []
        heap = args.backend == "heap"  # the chart shows the metric the table is in
        with self._live("%mprun", args, sampler=sampler, heap=heap) as view, _sampling(sampler) as sampling:

            def on_call(name: str, kind: str) -> None:  # each profiled call's start and end, on the chart
                calls.append((sampler.elapsed(), name, kind))
                view.mark(name, kind)

            profile = functools.partial(
                profile_lines,
                run,
                targets + nested,
                backend=args.backend,
                include_children=args.c,
                statement=statement,
                label=self._label,
                on_call=on_call,
            )
            result, error = call_engine(profile, run)
            if result.outcome != "ok":
                view.note(result.outcome)
            if not heap:  # the final chart states the profiled code's peak (the heap chart's series is its own)
                view.conclude(mprun_title(result), mprun_peak(result))
            if nested:
                result = _without_idle_nested(result, len(targets))
            saved = None
            if args.T:  # as memory_profiler: the report to the file, only where it went to the screen
                saved, interrupted = _write_report(args.T, mprun_text(result, args.precision))
                if interrupted and error is None:
                    error = KeyboardInterrupt()
                if saved and not args.q and getattr(view, "shown", False):
                    view.close(replace_with={"text/plain": saved})  # the live chart's place takes the line
                    saved = ""
        if sampling.received and error is None:
            error = KeyboardInterrupt()
        result = dataclasses.replace(result, timeline=sampler.timeline.samples(), calls=tuple(calls[:1000]))
        if saved is not None:
            if saved and not args.q:
                print(saved)
            args["q"] = True  # the report is in the file: -o and -v still give the result
        return self._finish(result, error, args, mprun_text, mprun_html)

    @line_magic
    def memwho(self, line: str = "") -> MemwhoResult | None:
        __tracebackhide__ = True
        args = parse("memwho", line, MEMWHO_OPTS, MEMWHO_TAIL)
        pattern = args.rest or None
        if pattern is not None and len(pattern.split()) > 1:
            raise UsageError(
                f"%memwho: expected one name pattern, got {pattern!r}\nUsage: "
                + usage_line("memwho", MEMWHO_OPTS, MEMWHO_TAIL)
            )
        progress = ProgressLine()
        try:
            result = engine.census(
                self.shell.user_ns,
                hidden=self.shell.user_ns_hidden,
                holders=output_holders(self.shell),
                bookkeeping=output_bookkeeping(self.shell),
                pattern=pattern,
                top=args.n,
                show_all=args.a,
                budget=self.memwho_budget,
                trim=args.trim,
                progress=None if args.q else progress,
            )
        finally:
            progress.close()
        result = dataclasses.replace(result, limit=LimitWindow(engine.shared_probe().rss).finish())
        error = KeyboardInterrupt() if result.outcome == "interrupted" else None
        return self._finish(result, error, args, memwho_text, memwho_html)

    def _label(self, filename: str) -> str:
        return cell_label(self.shell, filename)

    def _statement_and_setup(
        self, magic: str, line: str, cell: str | None, opts: Any, tail: str
    ) -> tuple[Any, Any, str, str | None]:
        """Parse the options; compile the statement (line) or cell body, then run the setup (cell line).

        As with ``%timeit``, a cell magic's line after the options is setup code,
        run first and not measured.  Compiling first means a syntax error in the
        body stops everything before the setup has any effect.
        """
        __tracebackhide__ = True
        args = parse(magic, line, opts, tail)
        setup, statement = (None, args.rest) if cell is None else (args.rest or None, cell)
        require_statement(magic, statement, opts, tail)
        run, _ = compile_user_code(self.shell, statement)
        if setup:
            run_setup, _ = compile_user_code(self.shell, setup)
            run_setup()
        return args, run, statement, setup

    def _live(self, title: str, args: Any, **kwargs: Any) -> Any:
        """The live view for one run of a magic (a no-op view when off or unsupported).

        Any magic adopts it with an ``Opt("no-live", ...)`` in its table and
        ``with self._live("%name", args) as view: ...`` around its engine call;
        ``view.mark(label, "start"/"end")`` marks moments on the chart.  Honours
        ``--no-live``, ``-q`` and ``--heap`` when the magic has them.
        """
        enabled = self.live and not getattr(args, "no_live", False) and not getattr(args, "q", False)
        kwargs.setdefault("heap", bool(getattr(args, "heap", False)))
        return live_view(self.shell, title=title, enabled=enabled, refresh=self.live_refresh, **kwargs)

    @line_magic
    def memwatch(self, line: str = "") -> None:
        """Watch memory in every cell: ``%memwatch on`` / ``%memwatch off``.

        While on, every cell shows a live memory chart as it runs (in frontends
        that display widgets) and one line afterwards::

          RSS: used +12.00 MiB, peak +40.00 MiB above start, 1.52 s

        There is no fixed delay per cell.  ``%memwatch`` alone says whether it is on.
        """
        arg = line.strip().lower()
        if arg == "on":
            if self._memwatch is None:
                self._memwatch = MemWatch(self.shell, live=lambda: self.live, refresh=self.live_refresh)
                self._memwatch.on()
                print("memwatch on: each cell shows its memory (RSS) while it runs and in one line after it")
            else:
                print("memwatch is already on")
        elif arg == "off":
            said = "memwatch off" if self._memwatch is not None else "memwatch is already off"
            if not self.close_memwatch(say=said):
                print(said)
        elif arg:
            raise UsageError(f"%memwatch: expected 'on' or 'off', got {line.strip()!r}\nUsage: %memwatch on|off")
        else:
            print(f"memwatch is {'on' if self._memwatch is not None else 'off'}")

    def close_memwatch(self, say: str | None = None) -> bool:
        """Turn the watch off; True if ``say`` took the place of this cell's live view (nothing to print)."""
        watch, self._memwatch = self._memwatch, None
        return watch.off(say=say) if watch is not None else False

    def _finish(self, result: Any, error: BaseException | None, args: Any, text: Any, html: Any) -> Any:
        """Show, store, then re-raise the user's exception or return the result for ``-o``."""
        __tracebackhide__ = True
        # Ctrl-C while rendering is held until the report is out, then reaches the user: the
        # measurement is complete, and losing its report to a keypress would waste the run.
        with deferred_interrupts() as held:
            if not args.q:
                publish(text(result, args.precision), html(result, args.precision))
            if args.v:
                self.shell.user_ns[args.v] = result
        if held.received and error is None:
            error = KeyboardInterrupt()
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

        With a Dask ``distributed.Client`` active (the default client, or
        ``--cluster NAME``), every worker is measured too, the same way: each
        worker's high-water mark is reset and read through ``client.run``,
        and the report gets one row per worker (baseline, peak, increment,
        end, Dask's managed / unmanaged split); workers that joined, left or
        restarted are reported.  Every call to the cluster has a 5 s timeout.

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

        * held at heap peak: what the line's allocations held at the moment
          the traced heap was highest (tracemalloc's exact peak); the rows and
          "outside your code" add up to that peak;
        * retained after: what they still hold after the run and a garbage
          collection: the leak suspects.

        Memory is booked on the line of your code that was running when it
        was allocated, however deep inside numpy, pandas or any library
        (inside your functions: the line that called the library); "outside
        your code" is what was allocated while none of your lines ran.  The
        total row gives the exact Python-heap peak, the net retained heap and
        the process RSS change beside it; when RSS grew much more than the
        heap, a line says that is memory tracemalloc cannot see.  With
        ``-r N`` the report also gives each location's retained growth per
        run and flags the ones that grew in every run.

        tracemalloc is restored exactly: if it was running it keeps running
        with its frame count, traces and peak (ipymem never resets a peak
        that is yours: the report then says "at least"); otherwise it is
        stopped.

        Examples::

          In [1]: %memtrace data = [str(i) for i in range(10**5)]

          In [2]: %%memtrace -r 3 -n 5
             ...: handle_request()
        """,
    )

    mprun.__doc__ = make_doc(
        "Memory line by line: which line of a function (or of the cell) costs memory.",
        "mprun",
        MPRUN_OPTS,
        MPRUN_TAIL,
        """
        Line mode profiles the functions given with -f while the statement
        runs.  Cell mode (%%mprun) profiles the cell body itself, line by
        line, or, with -f, those functions while the cell runs; text after
        the options on the first line is prepended to the cell, as in
        memory_profiler.  -f takes functions defined in modules or in cells,
        methods, functools.wraps-decorated functions (the wrapped function is
        profiled), generator and coroutine functions.

        Columns: Mem usage (after the line), Increment (net change attributed
        to the line, summed over its occurrences; a function's increments add
        up to its memory at return minus at entry), Peak (the highest memory
        while the line ran, above its start), Occurrences.  Comprehensions
        and lambdas count on the line that contains them; functions defined
        inside a -f function get a table of their own when they ran (as in
        memory_profiler), and their cost is also in the line that called them.
        Memory is read at line boundaries at most every ~50 µs of run time
        (the books stay exact; peaks come from the kernel's high-water mark),
        so profiled code runs a few times slower, not hundreds.  Only the
        calling thread is profiled.

        Examples::

          In [1]: def f(n):
             ...:     a = [0] * n
             ...:     del a
          In [2]: %mprun -f f f(10**7)

          In [3]: %%mprun
             ...: import numpy as np
             ...: x = np.ones(10**7)
        """,
    )

    memwho.__doc__ = make_doc(
        "Which of your variables hold memory, what del would give back, and what RSS is made of.",
        "memwho",
        MEMWHO_OPTS,
        MEMWHO_TAIL,
        """
        One row per name (matching the glob PATTERN), largest first: Size is
        the bytes of everything reachable from the name, each object once
        (numpy arrays by their data buffer, pandas by its blocks, pyarrow and
        CPU torch by their buffers, containers, instances and closures deep);
        "Freed if deleted" is the part nothing else alive reaches, what
        `del name` gives back.  Names that share memory say so.  Hidden
        holders (the output cache Out[N] and _N, sys.last_traceback) are
        listed when they alone keep 1 MiB or more alive.

        The footer splits process RSS: objects the names hold, other Python
        heap (tracemalloc when tracing, else the allocator's statistics),
        free memory glibc malloc and pymalloc keep for reuse, file-backed and
        shared pages, and the rest (never forced to zero).  --trim runs
        gc.collect() and malloc_trim(0) first and says how much RSS came back.

        The walk calls no user code and stops after
        %config MemoryMagics.memwho_budget seconds (default 5), saying what it covered.

        Examples::

          In [1]: %memwho
          In [2]: %memwho -n 5 df*
          In [3]: %memwho --trim
        """,
    )
