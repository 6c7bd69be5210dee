"""Slowdown of %memtrace on an allocation-heavy workload, beside plain tracemalloc use.

Run: ``python benchmarks/bench_memtrace.py`` (under a minute).  Prints
the best of ``REPEAT`` wall-clock times for:

* the workload alone;
* plain tracemalloc as a user would use it: ``start(depth)``, run,
  ``take_snapshot()``, ``stop()``, ``statistics("lineno")`` (depth 1 and 10);
* ``%memtrace -q -d 1`` and ``-d 10`` through a real IPython shell.

The workload builds 50,000 small dicts (a str, a list and two ints each)
in a notebook cell's function and keeps them: about 350,000 live Python
blocks, the case where tracemalloc itself dominates.  Ratios are against
the plain run and against plain tracemalloc at the same depth.
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
N = 50_000

CELL = f"""
def workload():
    out = []
    for i in range({N}):
        out.append({{"id": i, "name": str(i) * 3, "tags": [i, i + 1]}})
    return out
"""


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
    ip.run_cell(CELL)

    # Every variant runs the same statement through IPython's run_cell, so the
    # stack above the workload (which tracemalloc walks, up to ``depth`` frames)
    # is a notebook's stack in all of them.
    def plain() -> None:
        ip.run_cell("kept = workload()")
        ip.user_ns.pop("kept", None)

    def traced(depth: int):
        def run() -> None:
            tracemalloc.start(depth)
            try:
                ip.run_cell("kept = workload()")
                snapshot = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            snapshot.statistics("lineno")
            ip.user_ns.pop("kept", None)
            del snapshot

        return run

    def magic(depth: int):
        def run() -> None:
            ip.run_cell(f"%memtrace -q -d {depth} kept = workload()")
            ip.user_ns.pop("kept", None)

        return run

    rows = [("plain run", best(plain))]
    for depth in (1, 10):
        rows.append((f"tracemalloc depth {depth} (start, run, snapshot, stop, stats)", best(traced(depth))))
    for depth in (1, 10):
        rows.append((f"%memtrace -d {depth}", best(magic(depth))))
    base = rows[0][1]
    plain_tm = {1: rows[1][1], 10: rows[2][1]}
    print(f"Python {sys.version.split()[0]}, workload: {N:,} dicts kept (~{7 * N:,} live blocks), best of {REPEAT}")
    for name, t in rows:
        extra = ""
        for depth in (1, 10):
            if name == f"%memtrace -d {depth}":
                extra = f"   {t / plain_tm[depth]:.2f}x plain tracemalloc depth {depth}"
        print(f"  {name:<58} {t:8.3f} s  {t / base:6.1f}x plain{extra}")
    r = ip.run_line_magic("memtrace", "-q -o -d 1 kept = workload()")
    print(f"  (one %memtrace -d 1 run took {r.snapshots} snapshot(s) while running; notes: {'; '.join(r.notes)})")


if __name__ == "__main__":
    main()
