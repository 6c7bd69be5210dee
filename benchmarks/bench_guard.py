"""The memory guard: what its watchdog costs, and where it stops a runaway loop in a real 1 GiB cgroup.

    python benchmarks/bench_guard.py [--seconds 5] [--rounds 3] [--runs 20]

1. Cost of the watchdog at 10 Hz (``Guard()`` with its defaults: the binding
   limit that ``find_limit()`` finds here, armed on the main thread):
   a. main thread asleep: the process's CPU time over ``--seconds`` with the
      guard running and without it, interleaved (the order alternates each
      round), ``--rounds`` times; the difference is the guard thread's cost.
   b. main thread busy in a pure-Python loop: the loop's wall time with and
      without the guard, interleaved the same way; the ratio is the slowdown.
2. Stop accuracy: ``--runs`` fresh interpreters, each moved into a child
   memory cgroup of 1 GiB (tests/cgroups.py) before it allocates anything,
   run ``keep = bytearray(100 MiB)`` and then ``with ipymem.guard():`` around
   ``while True: chunks.append(bytearray(8 MiB))``.  Per run: whether
   ``MemoryLimitError`` stopped it, the usage the guard saw at the stop, the
   cgroup's own high-water mark (reset before each run) and whether the OOM
   killer fired.  Skipped, with the reason, where no cgroup can be made.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # this checkout's ipymem first, and tests.cgroups

from ipymem.engine.limits.guard import Guard  # noqa: E402

MiB = 2**20
GiB = 2**30

CHILD = """
import sys, time
sys.stdin.readline()  # moved into the cgroup by now: everything from here on is charged to it
import ipymem
keep = bytearray(100 * 2**20)
chunks = []
stop = None
t0 = time.perf_counter()
try:
    with ipymem.guard() as g:
        stop = g.stop_bytes
        while True:
            chunks.append(bytearray(8 * 2**20))
except ipymem.MemoryLimitError as e:
    print("STOP", e.usage, e.limit, stop, len(chunks), time.perf_counter() - t0, flush=True)
    assert len(keep) == 100 * 2**20
"""


# -- 1. cost ---------------------------------------------------------------------------------
def _guard() -> Guard:
    g = Guard().start()
    g.arm(label="bench")
    return g


def idle_round(seconds: float, guarded: bool) -> tuple[float, float, int]:
    """(process CPU seconds, wall seconds, guard reads) over ``seconds`` of the main thread asleep."""
    g = _guard() if guarded else None
    time.sleep(0.2)  # past the thread's start and first read
    reads0 = g.reads if g else 0
    c0, t0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    reads = (g.reads - reads0) if g else 0
    if g is not None:
        g.close()
    return cpu, wall, reads


def spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i * i % 7
    return x


def calibrate(seconds: float) -> int:
    n = 200_000
    while True:
        t0 = time.perf_counter()
        spin(n)
        dt = time.perf_counter() - t0
        if dt > 0.2:
            return max(1, int(n * seconds / dt))
        n *= 4


def busy_round(n: int, guarded: bool) -> tuple[float, float, int]:
    """(loop wall seconds, main thread CPU seconds, guard reads) of ``spin(n)``."""
    g = _guard() if guarded else None
    time.sleep(0.1)  # past the thread's start and first read
    reads0 = g.reads if g else 0
    c0, t0 = time.thread_time(), time.perf_counter()
    spin(n)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    reads = (g.reads - reads0) if g else 0
    if g is not None:
        g.close()
    return wall, cpu, reads


def cost(seconds: float, rounds: int) -> None:
    probe = Guard()
    source = probe.source
    probe.close()
    print(f"== 1. watchdog cost at 10 Hz (interval 0.1 s); binding limit here: {source.kind}")
    print(f"   {source.limit / GiB:.2f} GiB, read from {source.file}; stop level {probe.stop_bytes / GiB:.2f} GiB")
    print()
    print(f"a. main thread asleep for {seconds:g} s; process CPU time, % of one core")
    print(f"{'round':>5} {'no guard %':>11} {'guard %':>9} {'guard - none':>13} {'ratio':>7} {'reads/s':>8}")
    idle_none, idle_guard, idle_rate = [], [], []
    for r in range(rounds):
        results = {}
        for guarded in (False, True) if r % 2 == 0 else (True, False):
            results[guarded] = idle_round(seconds, guarded)
        (c0, w0, _), (c1, w1, reads) = results[False], results[True]
        p0, p1 = 100 * c0 / w0, 100 * c1 / w1
        idle_none.append(p0)
        idle_guard.append(p1)
        idle_rate.append(reads / w1)
        ratio = f"{p1 / p0:6.1f}x" if p0 > 0 else "    inf"
        print(f"{r + 1:>5} {p0:11.3f} {p1:9.3f} {p1 - p0:13.3f} {ratio:>7} {reads / w1:8.1f}")
    m0, m1 = statistics.median(idle_none), statistics.median(idle_guard)
    ratio = f"{m1 / m0:.1f}x" if m0 > 0 else "inf"
    print(
        f"median: no guard {m0:.3f}%, guard {m1:.3f}% of one core; the guard thread costs {m1 - m0:.3f}% "
        f"of one core (ratio {ratio}); {statistics.median(idle_rate):.1f} reads/s"
    )
    print()

    pairs = 5
    n = calibrate(seconds / pairs)
    print(
        f"b. main thread busy: a pure-Python loop of {n:,} iterations (~{seconds / pairs:.2g} s), {pairs} runs with"
        " and without the guard, alternating, per round; best wall time of each"
    )
    print(
        f"{'round':>5} {'no guard s':>11} {'guard s':>9} {'slowdown':>9} {'median pair':>12}"
        f" {'main CPU ratio':>15} {'reads/s':>8}"
    )
    best_ratio, pair_ratio, cpu_ratio, rates = [], [], [], []
    for r in range(rounds):
        none_w, guard_w, none_c, guard_c, round_pairs = [], [], [], [], []
        for k in range(pairs):
            results = {}
            for guarded in (False, True) if (r * pairs + k) % 2 == 0 else (True, False):
                results[guarded] = busy_round(n, guarded)
            (w0, c0, _), (w1, c1, reads) = results[False], results[True]
            none_w.append(w0)
            guard_w.append(w1)
            none_c.append(c0)
            guard_c.append(c1)
            round_pairs.append(w1 / w0)
            rates.append(reads / w1)
        best = min(guard_w) / min(none_w)
        cpu = min(guard_c) / min(none_c)
        best_ratio.append(best)
        pair_ratio.extend(round_pairs)
        cpu_ratio.append(cpu)
        print(
            f"{r + 1:>5} {min(none_w):11.3f} {min(guard_w):9.3f} {best:8.4f}x {statistics.median(round_pairs):11.4f}x"
            f" {cpu:14.4f}x {statistics.median(rates[-pairs:]):8.1f}"
        )
    print(
        f"slowdown of the loop (wall, best of {pairs} per round): median {statistics.median(best_ratio):.4f}x"
        f" (min {min(best_ratio):.4f}x, max {max(best_ratio):.4f}x); median of all {len(pair_ratio)} pairs"
        f" {statistics.median(pair_ratio):.4f}x; main thread CPU ratio {statistics.median(cpu_ratio):.4f}x;"
        f" {statistics.median(rates):.1f} reads/s under the loop"
    )


# -- 2. accuracy -------------------------------------------------------------------------------
def one_run(group, timeout: float = 120) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MEM_LIMIT", None)  # the cgroup must be the binding limit
    group.reset_peak()
    kills0 = group.oom_kills()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    group.add(proc.pid)
    t0 = time.perf_counter()
    try:
        out, err = proc.communicate("go\n", timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    run = {
        "rc": proc.returncode,
        "peak": group.peak(),
        "oom": group.oom_kills() - kills0,
        "wall": wall,
        "stopped": False,
        "err": err,
    }
    for line in out.splitlines():
        if line.startswith("STOP "):
            _, usage, limit, stop, chunks, secs = line.split()
            run.update(stopped=True, usage=int(usage), limit=int(limit), stop=int(stop))
            run.update(chunks=int(chunks), secs=float(secs))
    run["warned"] = "memguard warning" in err
    return run


def spread(label: str, values: list[float], fmt: str) -> str:
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{label:<32} min {lo:{fmt}}  median {mid:{fmt}}  max {hi:{fmt}}"


def accuracy(runs: int) -> None:
    print(f"== 2. stop accuracy: {runs} runs, each a fresh interpreter in a 1 GiB memory cgroup")
    print("   keep = bytearray(100 MiB); with ipymem.guard(): while True: chunks.append(bytearray(8 MiB))")
    try:
        from tests.cgroups import Unavailable, child_cgroup
    except ImportError as exc:
        print(f"skipped: cannot import tests.cgroups: {exc}")
        return
    results = []
    try:
        with child_cgroup(GiB, name="ipymem-bench") as group:
            print(f"   cgroup {group.version}: {group.path}")
            print()
            print(
                f"{'run':>3} {'stopped':>7} {'rc':>4} {'usage MiB':>10} {'% limit':>8} {'over stop':>10}"
                f" {'peak MiB':>9} {'peak %':>7} {'OOM':>4} {'chunks':>6} {'alloc s':>8} {'warned':>6}"
            )
            for i in range(runs):
                r = one_run(group)
                results.append(r)
                peak = r["peak"]
                peak_s = f"{peak / MiB:9.1f} {100 * peak / GiB:7.1f}" if peak is not None else f"{'-':>9} {'-':>7}"
                if r["stopped"]:
                    stop_s = (
                        f"{r['usage'] / MiB:10.1f} {100 * r['usage'] / r['limit']:8.1f}"
                        f" {(r['usage'] - r['stop']) / MiB:+10.1f}"
                    )
                    tail = f"{r['chunks']:6d} {r['secs']:8.3f}"
                else:
                    stop_s = f"{'-':>10} {'-':>8} {'-':>10}"
                    tail = f"{'-':>6} {'-':>8}"
                print(
                    f"{i + 1:>3} {'yes' if r['stopped'] else 'NO':>7} {r['rc']:>4} {stop_s} {peak_s}"
                    f" {r['oom']:>4} {tail} {'yes' if r['warned'] else 'no':>6}"
                )
                if not r["stopped"] and r["err"].strip():
                    print("    stderr: " + r["err"].strip().splitlines()[-1][:200])
    except Unavailable as exc:
        print(f"skipped: no memory cgroup can be made here: {exc}")
        return

    stopped = [r for r in results if r["stopped"]]
    ooms = sum(r["oom"] for r in results)
    print()
    print(f"stopped by MemoryLimitError: {len(stopped)}/{len(results)}; OOM kills: {ooms}")
    if stopped:
        limit, stop = stopped[0]["limit"], stopped[0]["stop"]
        pct = [100 * r["usage"] / r["limit"] for r in stopped]
        over = [(r["usage"] - r["stop"]) / MiB for r in stopped]
        print(f"limit {limit / MiB:.0f} MiB, stop level {stop / MiB:.1f} MiB ({100 * stop / limit:.1f}% of the limit)")
        print(spread("usage at stop, % of limit:", pct, "6.1f"))
        print(spread("overshoot past the stop, MiB:", over, "+6.1f"))
    peaks = [100 * r["peak"] / GiB for r in results if r["peak"] is not None]
    if peaks:
        print(spread("cgroup peak usage, % of limit:", peaks, "6.1f") + "  (raw usage, page cache included)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each timed interval of section 1")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved guard / no-guard rounds of section 1")
    parser.add_argument("--runs", type=int, default=20, help="runaway loops stopped in the cgroup, section 2")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print()
    cost(args.seconds, args.rounds)
    print()
    accuracy(args.runs)


if __name__ == "__main__":
    main()
