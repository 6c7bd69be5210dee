"""False refusals of ``%memguard --hard`` (RLIMIT_DATA while the code runs) on everyday workloads.

``python benchmarks/bench_guard_hard.py`` runs each workload 5 times under
``ipymem.guard(hard=True)`` in a fresh interpreter confined to a real 1 GiB
memory cgroup (a child of this process's own, removed afterwards), far below
the stop level, and counts the ``MemoryError``s: every one is a false
refusal.  polars and pyarrow are used when installed (not ipymem's
dependencies); torch is not tried.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cgroups import Unavailable, child_cgroup  # noqa: E402

CHILD = r"""
import sys, threading
sys.stdin.readline()  # moved into the cgroup before anything is allocated
import numpy as np
import ipymem

def run(name, fn, n=5):
    errors = 0
    for _ in range(n):
        try:
            with ipymem.guard(hard=True, warn=None):
                fn()
        except MemoryError as e:
            errors += 1
            print("   ", repr(e)[:160])
    print(f"{name:48s} {errors}/{n}", flush=True)

def numpy_big():
    for _ in range(5):
        a = np.ones(100 * 2**20 // 8)
        del a

def threads():
    def work():
        for _ in range(20):
            a = np.ones(10 * 2**20 // 8)
            del a
    ts = [threading.Thread(target=work) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()

run("numpy: 5 x 100 MiB arrays", numpy_big)
run("8 threads x 20 x 10 MiB numpy arrays", threads)
try:
    import pandas as pd
    def pandas_ops():
        df = pd.DataFrame({"k": np.random.randint(0, 1000, 2_000_000), "v": np.random.rand(2_000_000)})
        df.groupby("k").v.agg(["mean", "sum", "std"]); df.sort_values("v"); df.merge(df.head(1000), on="k")
    run(f"pandas {pd.__version__}: groupby, sort, merge, 2M rows", pandas_ops)
except ImportError:
    print("pandas not installed: skipped")
try:
    import polars as pl
    def polars_ops():
        df = pl.DataFrame({"k": np.random.randint(0, 1000, 2_000_000), "v": np.random.rand(2_000_000)})
        df.group_by("k").agg(pl.col("v").mean().alias("m"), pl.col("v").sum().alias("s"))
        df.sort("v"); df.join(df.head(1000), on="k")
    run(f"polars {pl.__version__}: group_by, sort, join, 2M rows", polars_ops)
except ImportError:
    print("polars not installed: skipped")
try:
    import pyarrow as pa, pyarrow.compute as pc
    def arrow_ops():
        t = pa.table({"k": np.random.randint(0, 1000, 2_000_000), "v": np.random.rand(2_000_000)})
        t.group_by("k").aggregate([("v", "mean")]); pc.sort_indices(t, sort_keys=[("v", "ascending")])
    run(f"pyarrow {pa.__version__}: group_by, sort, 2M rows", arrow_ops)
except ImportError:
    print("pyarrow not installed: skipped")
"""


def main() -> int:
    print(f"python {sys.version.split()[0]}; each workload 5 times under ipymem.guard(hard=True) in a 1 GiB cgroup")
    print(f"{'workload':48s} false MemoryErrors")
    try:
        with child_cgroup(2**30, name="ipymem-bench-hard") as group:
            env = {"PYTHONPATH": str(ROOT)}
            import os

            env = {**os.environ, **env}
            child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, text=True, env=env)
            group.add(child.pid)
            child.communicate("go\n", timeout=600)
            print(f"OOM kills in the cgroup: {group.oom_kills()}; its peak usage {(group.peak() or 0) / 2**20:.0f} MiB")
            return child.returncode
    except Unavailable as exc:
        print(f"skipped: {exc}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
