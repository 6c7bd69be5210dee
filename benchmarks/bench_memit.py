"""%memit: ipymem against memory_profiler, side by side in one IPython shell.

    python benchmarks/bench_memit.py [--runs 10]

1. Spike: `bytearray(200 MiB)` allocated and freed at once, N times each:
   the increment each tool reports (the truth is 200 MiB).
2. Cost: the wall time of `%memit pass` per call.
Both magics are called through the same InteractiveShell (the incumbent's
magics class is instantiated directly, since both register `%memit`).
"""

from __future__ import annotations

import argparse
import statistics
import time

from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

MiB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=20, help="calls of `%%memit pass` per tool")
    args = parser.parse_args()

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    from memory_profiler import MemoryProfilerMagics

    from ipymem.magics import MemoryMagics

    ours = MemoryMagics(shell)
    theirs = MemoryProfilerMagics(shell)

    spike = "bytearray(200 * 2**20)"
    ours_inc, theirs_inc = [], []
    for _ in range(args.runs):
        r = ours.memit(f"-q -o {spike}")
        ours_inc.append(r.increment / MiB)
        t = theirs.memit(f"-q -o {spike}")
        theirs_inc.append(max(t.mem_usage) - t.baseline)

    def per_call(fn, line: str, n: int) -> float:
        fn(line)  # warm up
        t0 = time.perf_counter()
        for _ in range(n):
            fn(line)
        return (time.perf_counter() - t0) / n

    ours_t = per_call(ours.memit, "-q pass", args.calls)
    theirs_t = per_call(theirs.memit, "-q pass", max(3, args.calls // 4))

    def row(name: str, incs: list[float], t: float) -> str:
        within = sum(abs(x - 200) <= 10 for x in incs)
        return (
            f"{name:<16} {min(incs):8.1f} {statistics.median(incs):8.1f} {max(incs):8.1f}"
            f"   {within:>2}/{len(incs)}   {t * 1e3:9.1f}"
        )

    print(f"spike: {spike} allocated and freed, {args.runs} runs per tool; truth = 200.0 MiB increment")
    print(f"{'tool':<16} {'min':>8} {'median':>8} {'max':>8}   {'±5%':>5}   {'ms/call':>9}  (`%memit pass`)")
    print(row("ipymem", ours_inc, ours_t))
    print(row("memory_profiler", theirs_inc, theirs_t))
    print("increments reported (MiB):")
    print("  ipymem         ", " ".join(f"{x:.1f}" for x in ours_inc))
    print("  memory_profiler", " ".join(f"{x:.1f}" for x in theirs_inc))
    print(f"ratio of time per `%memit pass` call, memory_profiler / ipymem: {theirs_t / ours_t:.1f}x")


if __name__ == "__main__":
    main()
