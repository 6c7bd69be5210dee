"""Slowdown of ipymem's %mprun against memory_profiler's, in one run, inside one IPython shell.

    python benchmarks/bench_mprun.py [--quick]

Three workloads, each timed unprofiled, under ipymem's ``%mprun`` (RSS, and
``--backend heap`` beside plain code with tracemalloc on) and under
memory_profiler's ``%mprun`` (called through its magics class, since both
register the same name).  The workloads live in a module file, because the
incumbent cannot show functions defined in cells.

The incumbent reads memory through a new ``psutil.Process`` on every line
event, so it runs on smaller inputs where it would take minutes: every
slowdown is the ratio against the unprofiled time *at the same size*, and
the table says which size each row used.  Times are CPU times of this
process, the best of a few repeats (wall time swings with whatever else
shares the machine; run it twice and compare).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import sys
import tempfile
import textwrap
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's ipymem first

WORKLOADS = """
import numpy as np

def bubble(a):
    n = len(a)
    for i in range(n):
        for j in range(n - i - 1):
            if a[j] > a[j + 1]:
                a[j], a[j + 1] = a[j + 1], a[j]
    return a

def sum_of_lists(N):
    for i in range(5):
        L = [j ^ (j >> i) for j in range(N)]
    del L
    return None

def numpy_loop(n):
    total = 0.0
    for i in range(n):
        a = np.ones(4_000_000)
        total += a.sum()
        del a
    return total
"""


def best(fn, repeat: int) -> float:
    """Best CPU time (this process) of ``repeat`` runs: steadier than wall time on a shared machine."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs (a smoke test)")
    opts = parser.parse_args()

    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ipymem")
    try:
        from memory_profiler import MemoryProfilerMagics

        incumbent = MemoryProfilerMagics(shell)
    except Exception as exc:  # memory_profiler < 3.12 needs distutils (setuptools provides it)
        print(f"memory_profiler unavailable ({type(exc).__name__}: {exc}); its column is skipped")
        incumbent = None

    tmp = tempfile.mkdtemp(prefix="ipymem-bench-")
    with open(os.path.join(tmp, "mprun_workloads.py"), "w") as f:
        f.write(textwrap.dedent(WORKLOADS))
    sys.path.insert(0, tmp)
    shell.run_cell("import mprun_workloads as w; import random", store_history=False)
    random.seed(1)
    q = opts.quick
    # (name, statement template, size for unprofiled + ipymem, size for the incumbent)
    cases = [
        ("bubble sort", "w.bubble(list(data))", "bubble", 600 if q else 1500, 150 if q else 250),
        ("sum_of_lists", "w.sum_of_lists({n})", "sum_of_lists", 30_000 if q else 300_000, 3_000 if q else 10_000),
        ("numpy alloc/free", "w.numpy_loop({n})", "numpy_loop", 5 if q else 20, 5 if q else 20),
    ]
    rows = []
    for name, stmt, func, n, n_inc in cases:
        results = {}
        for who, size in (("ipymem", n), ("ipymem heap", n), ("memory_profiler", n_inc)):
            if who == "memory_profiler" and incumbent is None:
                continue
            shell.user_ns["data"] = [random.random() for _ in range(size)]
            code = stmt.format(n=size)
            base = best(lambda code=code: shell.ex(code), 3)
            if who == "ipymem":
                line = f"-q -f w.{func} {code}"
                prof = best(lambda line=line: shell.run_line_magic("mprun", line), 3)
            elif who == "ipymem heap":
                # --backend heap starts tracemalloc for the run: its cost is tracemalloc's plus ipymem's.
                line = f"-q --backend heap -f w.{func} {code}"
                prof = best(lambda line=line: shell.run_line_magic("mprun", line), 3)
                tracemalloc.start()
                try:
                    traced = best(lambda code=code: shell.ex(code), 3)
                finally:
                    tracemalloc.stop()
                results["tracemalloc alone"] = (size, base, traced)
            else:
                line = f"-f w.{func} {code}"

                def run(line=line):
                    with contextlib.redirect_stdout(io.StringIO()):
                        incumbent.mprun(line)

                prof = best(run, 1)
            results[who] = (size, base, prof)
        rows.append((name, results))

    print(f"Python {sys.version.split()[0]}; ipymem tracer: ", end="")
    r = shell.run_line_magic("mprun", "-q -o -f w.sum_of_lists w.sum_of_lists(10)")
    print(f"{r.params.tracer}, memory read at most every {r.params.min_interval * 1e6:.0f} µs")
    head = f"{'workload':<18}{'profiler':<17}{'size':>9}{'unprofiled':>13}{'profiled':>12}{'slowdown':>10}"
    print(head)
    print("-" * len(head))
    for name, results in rows:
        for who, (size, base, prof) in results.items():
            extra = ""
            if who == "ipymem heap" and "tracemalloc alone" in results:
                extra = f"   ({prof / results['tracemalloc alone'][2]:.1f}x tracemalloc alone)"
            times = f"{base * 1e3:>10.1f} ms{prof * 1e3:>9.1f} ms{prof / base:>9.1f}x"
            print(f"{name:<18}{who:<17}{size:>9,}{times}{extra}")
    shell.run_line_magic("unload_ext", "ipymem")


if __name__ == "__main__":
    main()
