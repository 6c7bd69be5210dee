"""Sizing a namespace: ipymem's census beside ``pympler.asizeof``, for time and for truth.

Run: ``python benchmarks/bench_memwho.py`` (about a minute; needs the bench
extra: pympler, numpy, pandas).

The namespace holds the types ``%memwho`` has to get right: a list of
strings, a dict of bytes, a numpy array and a view of it, two names for
one array, a DataFrame with an object column, an instance holding a list,
and a closure.  For each name the truth is the drop of the traced Python
heap (tracemalloc, running from before the objects were made) when the name
is deleted.  Printed per name: that drop, ipymem's "freed if deleted" and
"size", pympler's ``asizeof(obj)``, and each one's error against the drop.
Times are for sizing the whole namespace, without tracemalloc: ipymem's
census (one walk for every name, sharing and the RSS breakdown included)
against ``asizeof`` called on each name, best of ``REPEAT``.
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ipymem, not an installed one

REPEAT = 3
N = 100_000

SETUP = f"""
import numpy as np, pandas as pd
strings = [str(i) * 3 for i in range({N})]
blobs = {{i: bytes(100) + str(i).encode() for i in range({N} // 2)}}
array = np.ones(({N} // 100, 1000))
view = array[10:]
same = np.zeros({N} * 5)
alias = same
frame = pd.DataFrame({{"n": np.arange({N}), "s": pd.Series([str(i) * 2 for i in range({N})], dtype=object)}})
class Model:
    def __init__(self):
        self.weights = [float(i) for i in range({N})]
model = Model()
def make():
    big = list(range({N} * 2))
    def size():
        return len(big)
    return size
closure = make()
"""
NAMES = ["strings", "blobs", "array", "view", "same", "alias", "frame", "model", "closure"]


def build() -> dict:
    ns: dict = {"__name__": "bench_namespace"}  # classes and functions of a module, as in a notebook
    exec(SETUP, ns)
    return ns


def truth() -> dict[str, int]:
    """Heap drop on deleting each name from a fresh namespace (the others still defined)."""
    out = {}
    tracemalloc.start()
    try:
        for name in NAMES:
            ns = build()
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            del ns[name]
            gc.collect()
            out[name] = before - tracemalloc.get_traced_memory()[0]
            del ns
            gc.collect()
    finally:
        tracemalloc.stop()
    return out


def best(func) -> float:
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        func()
        times.append(time.perf_counter() - t)
    return min(times)


def error(value: int, true: int) -> str:
    if true < 64 * 1024:
        return f"{(value - true) / 2**20:+.2f} MiB"
    return f"{100 * (value - true) / true:+.1f}%"


def main() -> None:
    from pympler import asizeof

    from ipymem.engine import census

    drops = truth()
    ns = build()
    gc.collect()
    # No second dict of the values: it would be a holder outside the namespace, and nothing would be freed.
    result = census(ns, budget=600)
    sizes = {name: asizeof.asizeof(ns[name]) for name in NAMES}
    mib = 2**20
    print(f"{'name':8} {'heap drop':>10} {'freed':>9} {'err':>8} {'size':>9} {'asizeof':>9} {'err':>9}   (MiB)")
    for name in NAMES:
        row = result.row(name)
        d = drops[name]
        print(
            f"{name:8} {d / mib:10.2f} {row.freed_if_deleted / mib:9.2f} {error(row.freed_if_deleted, d):>8}"
            f" {row.size / mib:9.2f} {sizes[name] / mib:9.2f} {error(sizes[name], d):>9}"
        )
    t_ipymem = best(lambda: census(ns, budget=600))
    t_pympler = best(lambda: [asizeof.asizeof(ns[name]) for name in NAMES])
    t_pympler_all = best(lambda: asizeof.asizeof(*(ns[name] for name in NAMES)))
    print(f"\nobjects walked: {result.objects:,}")
    print(f"ipymem census (all names, sharing, RSS parts):  {t_ipymem:.3f} s")
    print(
        f"pympler asizeof per name:                      {t_pympler:.3f} s  (ipymem takes {t_ipymem / t_pympler:.2f}x)"
    )
    print(
        f"pympler asizeof(*all) once (no per-name split): {t_pympler_all:.3f} s"
        f"  (ipymem takes {t_ipymem / t_pympler_all:.2f}x)"
    )


if __name__ == "__main__":
    main()
