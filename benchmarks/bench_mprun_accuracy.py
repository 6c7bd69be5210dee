"""What each tool's %mprun says about the classic sum_of_lists example.

    python benchmarks/bench_mprun_accuracy.py [--n 100000]

The comprehension line builds a list of N ints five times; the truth is a
peak of roughly the list's size and increments that add up to the
function's net change.  Both magics run in one IPython shell on the same
module function (the incumbent cannot profile cell functions).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's ipymem first

SOURCE = """
def sum_of_lists(N):
    for i in range(5):
        L = [j ^ (j >> i) for j in range(N)]
    del L
    return None
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "sol_workload.py"), "w") as f:
        f.write(SOURCE)
    sys.path.insert(0, folder)
    shell.run_cell("from sol_workload import sum_of_lists")

    from ipymem.magics import MemoryMagics

    r = MemoryMagics(shell).mprun(f"-q -o -f sum_of_lists sum_of_lists({args.n})")
    (fn,) = r.functions
    print(f"sum_of_lists(N={args.n:,}), Python {sys.version.split()[0]}")
    print("ipymem %mprun (MiB): line: increment / peak / occurrences")
    for line in fn.lines:
        if line.occurrences:
            inc, top = line.increment / 2**20, line.peak / 2**20
            print(f"  {line.lineno:>3} {inc:+10.2f} {top:8.2f} {line.occurrences:>4}  {line.source.strip()}")
    total = sum(line.increment for line in fn.lines if line.occurrences)
    net, peak = fn.increment / 2**20, fn.peak / 2**20
    print(f"  sum of increments {total / 2**20:+.2f} MiB = net change {net:+.2f} MiB; peak {peak:.2f} MiB")

    try:
        from memory_profiler import MemoryProfilerMagics
    except ImportError:
        print("memory_profiler is not installed")
        return
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        MemoryProfilerMagics(shell).mprun(f"-f sum_of_lists sum_of_lists({args.n})")
    print("memory_profiler %mprun (its own table):")
    for row in out.getvalue().splitlines():
        if re.match(r"\s+\d+\s", row) or row.startswith("Line #"):
            print("  " + row)


if __name__ == "__main__":
    main()
