"""``python -m ipymem``: memory_profiler's script runner and ``mprof run`` / ``mprof plot``.

``python -m ipymem [--backend B] [--precision N] [-o FILE] script.py [args...]``
runs the script with ``profile`` in its builtins, as ``python -m
memory_profiler`` does: each function it decorates with a bare ``@profile``
is profiled line by line (see :func:`ipymem.profile`), and every report is
printed when the script ends (or written to FILE), occurrences summed over
all calls.

``python -m ipymem --timeline [--plot FILE.png] [-c] script.py [args...]``
records the RSS timeline of the whole script with ipymem's sampler and its
exact peak (the kernel's high-water mark where there is one), prints them,
and draws the chart of a result's ``plot()`` with the peak marked.  There
``profile`` marks each call of a decorated function on the chart instead.

``--guard [--stop LEVEL]`` runs either under :func:`ipymem.guard`: the
script gets ``ipymem.MemoryLimitError`` at the stop level instead of being
killed by the container's OOM killer, and its reports are still printed.

The script sees ``sys.argv`` as ``[script.py, args...]`` and its own
directory first on ``sys.path``; its exit code and exception are the
process's, with the reports printed first.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import functools
import os
import runpy
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from . import api
from .files import writable_file
from .units import precision_int


def _precision(text: str) -> int:
    try:
        return precision_int(text)
    except ValueError as exc:  # argparse shows this message, not the function's name
        raise argparse.ArgumentTypeError(str(exc)) from None


USAGE = (
    "python -m ipymem [--backend B] [--precision N] [-o FILE] [--timeline [--plot FILE.png] [-c]]"
    " [--guard [--stop LEVEL]] script.py [args...]"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ipymem",
        usage=USAGE,
        description="Run a Python script under ipymem: its @profile functions line by line (memory_profiler's "
        "`python -m memory_profiler`), or with --timeline its RSS over time and exact peak (`mprof run`/`plot`).",
    )
    p.add_argument(
        "--backend",
        default="rss",
        help="line backend: rss (process RSS, default; memory_profiler's psutil, posix) "
        "or heap (Python heap by tracemalloc; memory_profiler's tracemalloc)",
    )
    p.add_argument("--precision", type=_precision, default=None, help="decimal places of the MiB figures (default 1)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the reports to FILE instead of stdout")
    p.add_argument("--timeline", action="store_true", help="record the RSS timeline and exact peak (mprof run)")
    p.add_argument("--plot", metavar="FILE.png", help="with --timeline: save the chart, peak marked (mprof plot)")
    p.add_argument("-c", "--include-children", action="store_true", help="with --timeline: add child processes")
    p.add_argument(
        "--interval", type=float, default=0.01, help="with --timeline: sampling interval in seconds (default 0.01)"
    )
    p.add_argument(
        "--guard",
        action="store_true",
        help="stop the script with ipymem.MemoryLimitError before the memory limit (cgroup, MEM_LIMIT, host) "
        "kills it (see %%memguard)",
    )
    p.add_argument("--stop", metavar="LEVEL", help="with --guard: the stop level, e.g. 90%% or 7.5G (default 95%%)")
    p.add_argument("script", help="the Python script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    return p


class ScriptProfile:
    """The ``profile`` a script finds in its builtins under ``python -m ipymem``.

    ``@profile`` and ``@profile(precision=..., backend=...)`` as
    :func:`ipymem.profile`, but quiet: the runner prints every report at the
    end.  ``with profile:``, ``profile.enable_by_count()`` and
    ``profile.disable_by_count()`` (memory_profiler's ways of switching its
    global profiler on) are accepted and change nothing: decorated functions
    are profiled whenever they run.
    """

    def __init__(self, backend: str, precision: int | None) -> None:
        self.backend = api.line_backend(backend)
        self.precision = precision
        self.wrappers: list[tuple[Any, int]] = []

    def __call__(
        self, func: Any = None, /, *, precision: int | None = None, backend: str | None = None, **_: Any
    ) -> Any:
        def decorate(f: Any) -> Any:
            digits = self.precision if self.precision is not None else (precision if precision is not None else 1)
            wrapper = api.profile(f, precision=digits, backend=backend or self.backend, quiet=True)
            self.wrappers.append((getattr(wrapper, "__func__", wrapper), digits))
            return wrapper

        return decorate(func) if func is not None else decorate

    def enable_by_count(self) -> None:
        pass

    def disable_by_count(self) -> None:
        pass

    enable = disable = enable_by_count

    def __enter__(self) -> ScriptProfile:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def report(self, out: TextIO) -> None:
        """Every decorated function's report, in the order they were decorated."""
        from .render.lines import mprun_text

        for w, digits in self.wrappers:
            result = w.profile
            if result is None:
                out.write(f"{w.__qualname__}: never called\n\n")
            else:
                out.write(mprun_text(result, digits) + "\n\n")


class TimelineProfile:
    """``profile`` under ``--timeline``: marks the start and end of each call on the chart (mprof's markers)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.marks: list[tuple[float, str, str]] = []

    def __call__(self, func: Any = None, /, **_: Any) -> Any:
        def decorate(f: Any) -> Any:
            name = getattr(f, "__qualname__", repr(f))

            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                __tracebackhide__ = True
                self.marks.append((self.clock(), name, "start"))
                try:
                    return f(*args, **kwargs)
                finally:
                    self.marks.append((self.clock(), name, "end"))

            return wrapper

        return decorate(func) if func is not None else decorate

    def enable_by_count(self) -> None:
        pass

    disable_by_count = enable = disable = enable_by_count

    def __enter__(self) -> TimelineProfile:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@contextlib.contextmanager
def _as_script(path: str, args: Sequence[str], profile: Any) -> Iterator[None]:
    """``sys.argv``, ``sys.path[0]`` and ``builtins.profile`` as the script expects; restored afterwards."""
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    had, old = hasattr(builtins, "profile"), getattr(builtins, "profile", None)
    sys.argv = [path, *args]
    folder = os.path.dirname(os.path.abspath(path))
    if sys.path:
        sys.path[0] = folder
    else:
        sys.path.insert(0, folder)
    builtins.profile = profile  # type: ignore[attr-defined]
    try:
        yield
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None:
            sys.path[0] = saved_path0
        if had:
            builtins.profile = old  # type: ignore[attr-defined]
        else:
            with contextlib.suppress(AttributeError):
                del builtins.profile


def _run(path: str) -> None:
    __tracebackhide__ = True
    runpy.run_path(path, run_name="__main__")


def _print_script_error(exc: BaseException, path: str) -> None:
    """The script's traceback as Python would print it, without the runner's or ipymem's frames."""
    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    runner = {os.path.abspath(runpy.__file__), "<frozen runpy>"}
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    seen: set[int] = set()
    pending = [te]
    while pending:
        t = pending.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        kept = [
            f
            for f in t.stack
            if not os.path.abspath(f.filename).startswith(here)
            and f.filename not in runner
            and os.path.abspath(f.filename) not in runner
        ]
        t.stack = traceback.StackSummary.from_list(kept)
        pending += [c for c in (t.__cause__, t.__context__) if c is not None]
    sys.stderr.write("".join(te.format()))


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _outcome(exc: BaseException | None, path: str) -> int:
    if exc is None:
        return 0
    if isinstance(exc, SystemExit):
        return _exit_code(exc)
    _print_script_error(exc, path)
    return 130 if isinstance(exc, KeyboardInterrupt) else 1


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        with open(path, "w", encoding="utf-8") as out:
            yield out
    except OSError as exc:  # checked before the run; if it still fails, the reports go to the screen
        print(f"ipymem: could not write {path}: {exc}; the reports follow", file=sys.stderr)
        yield sys.stdout


def _lines(options: argparse.Namespace) -> int:
    profile = ScriptProfile(options.backend, options.precision)
    error: BaseException | None = None
    with _as_script(options.script, options.args, profile):
        try:
            _run(options.script)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt included: the reports come first
            error = exc
    sys.stdout.flush()
    with _output(options.output) as out:
        profile.report(out)
    if options.output:
        print(f"*** Profile printout saved to text file {options.output}.")
    return _outcome(error, options.script)


def _timeline(options: argparse.Namespace) -> int:
    from . import engine
    from .render.chart import Marker, memit_peak, plot_timeline
    from .render.memit import memit_text

    sampler = engine.Sampler(
        engine.shared_probe(), interval=options.interval, include_children=options.include_children
    )
    profile = TimelineProfile(sampler.elapsed)
    error: BaseException | None = None
    with _as_script(options.script, options.args, profile):
        result, error = engine.memit(
            functools.partial(_run, options.script),
            interval=options.interval,
            include_children=options.include_children,
            statement=f"python {' '.join([options.script, *options.args])}",
            sampler=sampler,
        )
    sys.stdout.flush()
    with _output(options.output) as out:
        out.write(memit_text(result) + "\n")
    if options.plot:
        samples = result.timeline
        markers = [Marker(*m) for m in profile.marks[:1000]]
        title = f"python -m ipymem --timeline · {os.path.basename(options.script)} · RSS"
        end = samples[-1].t if samples else None
        figure = plot_timeline(samples, markers=markers, title=title, peak=memit_peak(result), end=end)
        try:
            figure.savefig(options.plot)
        except OSError as exc:
            print(f"ipymem: could not write {options.plot}: {exc}", file=sys.stderr)
        else:
            print(f"*** Chart saved to {options.plot}.")
    return _outcome(error, options.script)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the script, print the reports; returns the script's exit code."""
    parser = _parser()
    options = parser.parse_args(argv)
    try:
        api.line_backend(options.backend)
        if options.precision is not None and options.precision < 0:
            raise ValueError(f"--precision must be 0 or more, got {options.precision}")
        if not options.interval > 0:
            raise ValueError(f"--interval must be positive, got {options.interval}")
        if not os.path.isfile(options.script):
            raise ValueError(f"no such script: {options.script!r}")
        for flag, path in (("-o", options.output), ("--plot", options.plot)):
            if path is not None:
                try:
                    writable_file(path)
                except ValueError as exc:
                    raise ValueError(f"{flag}: {exc}") from None
        if options.stop is not None:
            if not options.guard:
                raise ValueError("--stop needs --guard")
            from .engine.limits.guard import parse_level

            parse_level(options.stop)
        if (options.plot or options.include_children) and not options.timeline:
            if options.include_children:
                raise ValueError("-c needs --timeline (line profiles count this process only)")
            options.timeline = True  # --plot implies the timeline
    except ValueError as exc:
        parser.error(str(exc))
    run = _timeline if options.timeline else _lines
    if not options.guard:
        return run(options)
    with api.guard(stop=options.stop):  # the script's MemoryLimitError is its error, reported like any other
        return run(options)


if __name__ == "__main__":
    sys.exit(main())
