"""%memit: ipymem against memory_profiler, side by side in one IPython shell.

    python benchmarks/bench_memit.py [--runs 10]

1. Spike: `bytearray(200 MiB)` allocated and freed at once, N times each:
   the increment each tool reports (the truth is 200 MiB).
2. Cost: the wall time of `%memit pass` per call, in a shell holding 10^6 live
   container objects (`--objects`), as a kernel with a few DataFrames of
   strings does: a full garbage collection per call would cost ~90 ms here.
   The two tools' calls are interleaved and each figure is a median, since
   the machine is shared.
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
    parser.add_argument("--objects", type=int, default=10**6, help="live objects in the shell for the cost")
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

    shell.user_ns["_live_objects"] = [[i] for i in range(args.objects)]  # containers: the collector walks them
    ours.memit("-q pass")  # warm up both
    theirs.memit("-q pass")
    ours_calls, theirs_calls = [], []
    for i in range(args.calls):  # interleaved: one of each, so a busy moment hits both
        t0 = time.perf_counter()
        ours.memit("-q pass")
        ours_calls.append(time.perf_counter() - t0)
        if i % 4 == 0:  # the incumbent forks a process per call: fewer of its calls
            t0 = time.perf_counter()
            theirs.memit("-q pass")
            theirs_calls.append(time.perf_counter() - t0)
    ours_t, theirs_t = statistics.median(ours_calls), statistics.median(theirs_calls)
    del shell.user_ns["_live_objects"]

    def row(name: str, incs: list[float], t: float) -> str:
        within = sum(abs(x - 200) <= 10 for x in incs)
        return (
            f"{name:<16} {min(incs):8.1f} {statistics.median(incs):8.1f} {max(incs):8.1f}"
            f"   {within:>2}/{len(incs)}   {t * 1e3:9.1f}"
        )

    print(f"spike: {spike} allocated and freed, {args.runs} runs per tool; truth = 200.0 MiB increment")
    print(
        f"{'tool':<16} {'min':>8} {'median':>8} {'max':>8}   {'±5%':>5}   {'ms/call':>9}"
        f"  (`%memit pass`, median, {args.objects:,} live objects)"
    )
    print(row("ipymem", ours_inc, ours_t))
    print(row("memory_profiler", theirs_inc, theirs_t))
    print("increments reported (MiB):")
    print("  ipymem         ", " ".join(f"{x:.1f}" for x in ours_inc))
    print("  memory_profiler", " ".join(f"{x:.1f}" for x in theirs_inc))
    print(f"ratio of time per `%memit pass` call, memory_profiler / ipymem: {theirs_t / ours_t:.1f}x")


if __name__ == "__main__":
    main()
