"""Dask workers: ipymem's %memit against distributed's own MemorySampler, side by side in one run.

    python benchmarks/bench_dask.py [--runs 10] [--calls 20]

A LocalCluster of two process workers on 127.0.0.1 (no dashboard).

1. Transient: a task that allocates and touches 300 MiB on one worker and
   frees it (a few tens of ms), N times, measured alternately by
   ``MemorySampler().sample()`` (its default: the cluster total every 0.5 s)
   and by ``%memit`` (each worker's VmHWM, reset and read through
   ``client.run``).  The truth is a 300 MiB increment on that worker.
2. Cost per cell: the wall time of measuring a cell that does nothing:
   ``%memit pass`` with the cluster and without it (``--no-cluster``; both
   are mostly the ``gc.collect()`` before the baseline, which grows with
   the objects distributed keeps), a ``with MemorySampler().sample(): pass``
   block, a cell under ``%memwatch on`` with the client, and ipymem's
   cluster part alone (``start(client).stop()``: four calls to the cluster
   and a thread).
"""

from __future__ import annotations

import argparse
import statistics
import time

MiB = 2**20
SPIKE = 300 * MiB

SPIKE_SOURCE = """
def spike(n):
    block = b"x" * n  # every page touched
    del block
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=20, help="measured empty cells per variant")
    args = parser.parse_args()

    import distributed
    from distributed.diagnostics import MemorySampler
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    client = distributed.Client(cluster)
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.display_pub = CapturingDisplayPublisher()  # %memwatch's per-cell lines are not printed
    shell.run_line_magic("load_ext", "ipymem")
    shell.user_ns["client"] = client
    shell.run_cell(SPIKE_SOURCE)  # defined in the user namespace: sent by value, nothing installed
    spike = shell.user_ns["spike"]
    target = sorted(client.scheduler_info()["workers"])[0]
    shell.user_ns["target"] = target
    statement = f"client.submit(spike, {SPIKE}, workers=[target], pure=False).result()"

    def by_sampler() -> float:
        ms = MemorySampler()
        with ms.sample("x", client=client):
            client.submit(spike, SPIKE, workers=[target], pure=False).result()
        values = [v for _, v in ms.samples["x"]]
        return (max(values) - values[0]) / MiB

    def by_ipymem() -> float:
        r = shell.run_line_magic("memit", f"-q -o --no-live {statement}")
        return r.workers[target].increment / MiB

    ours, theirs = [], []
    by_ipymem(), by_sampler()  # warm up: the function reaches the workers, imports settle
    for _ in range(args.runs):
        theirs.append(by_sampler())
        ours.append(by_ipymem())

    def per_call(fn, n: int) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    n = args.calls
    t_cluster = per_call(lambda: shell.run_line_magic("memit", "-q --no-live pass"), n)
    t_kernel = per_call(lambda: shell.run_line_magic("memit", "-q --no-live --no-cluster pass"), n)

    def sampler_block() -> None:
        with MemorySampler().sample("x", client=client):
            pass

    t_sampler = per_call(sampler_block, n)

    from ipymem.engine import cluster as cluster_engine

    t_handle = per_call(lambda: cluster_engine.start(client).stop(), n)  # the cluster part alone, no gc.collect
    shell.run_line_magic("memwatch", "on")
    try:
        t_watch_cluster = per_call(lambda: shell.run_cell("pass"), n)
    finally:
        shell.run_line_magic("memwatch", "off")

    def row(name: str, incs: list[float]) -> str:
        within = sum(abs(x * MiB - SPIKE) <= 0.05 * SPIKE for x in incs)
        return f"{name:<26} {min(incs):8.1f} {statistics.median(incs):8.1f} {max(incs):8.1f}   {within:>2}/{len(incs)}"

    print(f"transient: {SPIKE // MiB} MiB allocated and freed by one task on one of 2 workers, {args.runs} runs each")
    print("truth: a 300.0 MiB increment on that worker")
    print(f"{'tool (what it reports)':<26} {'min':>8} {'median':>8} {'max':>8}   {'±5%':>5}")
    print(row("MemorySampler (total)", theirs))
    print(row("ipymem %memit (worker)", ours))
    print("increments reported (MiB):")
    print("  MemorySampler", " ".join(f"{x:.1f}" for x in theirs))
    print("  ipymem       ", " ".join(f"{x:.1f}" for x in ours))
    print(f"\ncost per measured empty cell (wall, {n} calls each):")
    print(f"  %memit pass, kernel only (--no-cluster)      {t_kernel * 1e3:8.1f} ms")
    print(f"  %memit pass, kernel + 2 workers               {t_cluster * 1e3:8.1f} ms")
    print(f"  with MemorySampler().sample(): pass           {t_sampler * 1e3:8.1f} ms")
    print(f"  cell under %memwatch on, with the client      {t_watch_cluster * 1e3:8.1f} ms")
    print(f"  ipymem's cluster part alone (start + stop)    {t_handle * 1e3:8.1f} ms")
    print(f"ratio ipymem's cluster part / MemorySampler block: {t_handle / t_sampler:.1f}x")
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
