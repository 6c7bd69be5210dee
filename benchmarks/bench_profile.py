"""``@ipymem.profile`` on a recursive function, beside ``%mprun`` on it and memory_profiler's ``@profile``.

    python benchmarks/bench_profile.py [--quick]

``fib(n)`` calls itself ~2.6x per level: a decorator that started a
profiler per call (ipymem before it joined recursive calls to the running
profile) cost 10,000x and more.  Rows, each timed against the unprofiled
call at the same size:

* ``ipymem @profile``: the decorated function, report not printed;
* ``ipymem %mprun -f fib``: the same function under the magic (one profile);
* ``memory_profiler @profile``: its decorator, which starts a new
  ``LineProfiler`` (and prints a report) on every call, recursive ones
  included, so it runs on a smaller ``n``;
* ``memory_profiler %mprun -f fib``: its magic.

Times are CPU times of this process, the best of a few repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's ipymem first
sys.path.insert(0, HERE)

from bench_mprun import best  # noqa: E402  (one timing helper for both benchmarks)

WORKLOAD = """
def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)
"""


def _module(name: str, tmp: str):
    """A fresh copy of the workload module (each profiler decorates its own ``fib``)."""
    import importlib

    with open(os.path.join(tmp, f"{name}.py"), "w") as f:
        f.write(textwrap.dedent(WORKLOAD))
    return importlib.import_module(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs (a smoke test)")
    opts = parser.parse_args()
    n = 18 if opts.quick else 22
    n_inc = 8 if opts.quick else 11

    from IPython.core.interactiveshell import InteractiveShell

    import ipymem

    tmp = tempfile.mkdtemp(prefix="ipymem-bench-")
    sys.path.insert(0, tmp)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ipymem")
    try:
        import memory_profiler

        incumbent = memory_profiler.MemoryProfilerMagics(shell)
    except Exception as exc:  # memory_profiler < 3.12 needs distutils (setuptools provides it)
        print(f"memory_profiler unavailable ({type(exc).__name__}: {exc}); its rows are skipped")
        memory_profiler = incumbent = None

    rows = []
    plain = _module("fib_plain", tmp)
    for size in sorted({n, n_inc}):
        rows.append(("unprofiled", size, best(lambda size=size: plain.fib(size), 5)))

    mine = _module("fib_ipymem", tmp)
    mine.fib = ipymem.profile(mine.fib, quiet=True)
    rows.append(("ipymem @profile", n, best(lambda: mine.fib(n), 3)))
    assert len(mine.fib.profiles) == 3 and mine.fib.profile.function("fib").activations == 3 * (2 * _fib(n + 1) - 1)

    magic = _module("fib_magic", tmp)
    shell.user_ns["fm"] = magic
    rows.append(
        ("ipymem %mprun -f fib", n, best(lambda: shell.run_line_magic("mprun", f"-q -f fm.fib fm.fib({n})"), 3))
    )

    if memory_profiler is not None:
        theirs = _module("fib_mp", tmp)
        theirs.fib = memory_profiler.profile(theirs.fib, stream=io.StringIO())
        rows.append(("memory_profiler @profile", n_inc, best(lambda: theirs.fib(n_inc), 1)))
        shell.user_ns["fmp"] = _module("fib_mp_magic", tmp)

        def run() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                incumbent.mprun(f"-f fmp.fib fmp.fib({n_inc})")

        rows.append(("memory_profiler %mprun", n_inc, best(run, 1)))

    base = {size: t for who, size, t in rows if who == "unprofiled"}
    r = shell.run_line_magic("mprun", "-q -o -f fm.fib fm.fib(5)")
    print(f"Python {sys.version.split()[0]}; ipymem tracer: {r.params.tracer}")
    head = f"{'profiler':<28}{'n':>4}{'calls':>9}{'time':>12}{'slowdown':>11}"
    print(head)
    print("-" * len(head))
    for who, size, t in rows:
        calls = 2 * _fib(size + 1) - 1
        print(f"{who:<28}{size:>4}{calls:>9,}{t * 1e3:>9.2f} ms{t / base[size]:>10.0f}x")
    shell.run_line_magic("unload_ext", "ipymem")


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


if __name__ == "__main__":
    main()
