"""Cost of default %memtrace beside plain tracemalloc use, on two cells, side by side in one run.

Run: ``python benchmarks/bench_memtrace.py`` (a minute or two).  For each
workload it prints the best of ``REPEAT`` wall-clock times for:

* the workload alone;
* plain tracemalloc as a user would use it: ``start(depth)``, run,
  ``take_snapshot()``, ``stop()``, ``statistics("lineno")`` (depth 1 and 10);
* ``%memtrace -q`` at its defaults (one frame per block, the line ledger
  booking library allocations on the user's line), and ``-d 10``.

Workloads, each run through IPython's ``run_cell`` so the stack above the
user's code is a notebook's:

* ``dicts``: 50,000 small dicts (a str, a list and two ints each) built in a
  notebook function and kept: about 350,000 live Python blocks, the case
  where tracemalloc itself dominates and every snapshot is expensive;
* ``numpy/pandas``: a cell of eight lines (``np.ones``, a list of
  ``np.arange``, ``np.concatenate``, a DataFrame, ``copy()``,
  ``groupby().sum()``, ``pd.concat``, a temporary), few but large blocks
  allocated deep inside the libraries.

The whole comparison runs twice (``ROUNDS``); ratios are against plain
tracemalloc at depth 1 (the issue's target: at most 2x).
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ipymem, not an installed one

from IPython.core.interactiveshell import InteractiveShell

REPEAT = 3
ROUNDS = 2
N = 50_000

SETUP = f"""
import numpy as np, pandas as pd

def workload():
    out = []
    for i in range({N}):
        out.append({{"id": i, "name": str(i) * 3, "tags": [i, i + 1]}})
    return out
"""

CELLS = {
    "dicts": "kept = workload()\n",
    "numpy/pandas": (
        "a = np.ones((1000, 1000))\n"
        "parts = [np.arange(50_000) for _ in range(20)]\n"
        "big = np.concatenate(parts)\n"
        "df = pd.DataFrame({'k': np.arange(500_000) % 100, 'v': np.random.rand(500_000)})\n"
        "df2 = df.copy()\n"
        "g = df.groupby('k').sum()\n"
        "both = pd.concat([df, df2])\n"
        "s = (df.v * 2).sum()\n"
    ),
}
NAMES = ("kept", "a", "parts", "big", "df", "df2", "g", "both", "s")


def best(run) -> float:
    times = []
    for _ in range(REPEAT):
        gc.collect()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipymem")
    ip.run_cell(SETUP)

    def clear() -> None:
        for name in NAMES:
            ip.user_ns.pop(name, None)

    def plain(cell: str):
        def run() -> None:
            ip.run_cell(cell)
            clear()

        return run

    def traced(cell: str, depth: int):
        def run() -> None:
            tracemalloc.start(depth)
            try:
                ip.run_cell(cell)
                snapshot = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            snapshot.statistics("lineno")
            clear()
            del snapshot

        return run

    def magic(cell: str, options: str):
        def run() -> None:
            ip.run_cell(f"%%memtrace -q {options}\n{cell}")
            clear()

        return run

    print(f"Python {sys.version.split()[0]}, best of {REPEAT}, {ROUNDS} rounds")
    for round_ in range(1, ROUNDS + 1):
        for name, cell in CELLS.items():
            rows = [
                ("plain run", best(plain(cell))),
                ("tracemalloc depth 1 (start, run, snapshot, stop, stats)", best(traced(cell, 1))),
                ("tracemalloc depth 10 (start, run, snapshot, stop, stats)", best(traced(cell, 10))),
                ("%memtrace (defaults)", best(magic(cell, ""))),
                ("%memtrace -d 10", best(magic(cell, "-d 10"))),
            ]
            base, tm1 = rows[0][1], rows[1][1]
            print(f"round {round_}, {name}:")
            for label, t in rows:
                print(f"  {label:<58} {t:8.3f} s  {t / base:6.1f}x plain  {t / tm1:5.2f}x tracemalloc depth 1")
    r = ip.run_cell_magic("memtrace", "-q -o", CELLS["numpy/pandas"])
    share = (sum(e.peak_size for e in r.entries) + r.rest_peak_size) / r.peak_increment
    print(f"  (numpy/pandas cell: {r.snapshots} snapshot(s) in the run; {share:.1%} of the heap peak on your lines)")


if __name__ == "__main__":
    main()
