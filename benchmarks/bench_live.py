"""What the live view costs the user's code: a CPU-bound pure-Python loop under %memit, live view on vs off.

Runs in a real ipykernel (jupyter_client), where widgets are active, with
this checkout first on the kernel's PYTHONPATH.  Runs alternate
(off, on, off, on, ...) so drift in machine load hits both alike; the loop
times itself, so only the statement's own time is compared.  Prints the
median times, their ratio, and what the drawing thread did (frames, CPU per
frame, share of a core).

    python benchmarks/bench_live.py [--seconds 2.5] [--pairs 6]

Takes about ``2 * pairs * seconds`` plus ~10 s.  Results go in the README,
not in assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETUP = """
%load_ext ipymem
import time, json
import ipymem.live.view as _v
_stats = []
_close = _v.LiveView.close
def _recording_close(self, *a, **k):
    _stats.append((self.frames, [c for _, c, _ in self.frame_costs], self._elapsed()))
    return _close(self, *a, **k)
_v.LiveView.close = _recording_close
times = {"off": [], "on": []}

def work(n):
    t0 = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i % 7
    return time.perf_counter() - t0
"""


def run(kc, code: str, timeout: float = 300) -> str:
    msg_id = kc.execute(code)
    out = []
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"no answer to {code!r}") from None
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise RuntimeError("\n".join(msg["content"]["traceback"]))
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.5, help="length of one measured loop")
    parser.add_argument("--pairs", type=int, default=6, help="number of (off, on) pairs")
    args = parser.parse_args()

    from jupyter_client.manager import start_new_kernel

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["IPYTHONDIR"] = tempfile.mkdtemp(prefix="ipymem-bench-")
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        run(kc, SETUP)
        # calibrate n so that one loop takes about --seconds
        n = int(json.loads(run(kc, f"n = 10**6\nprint(json.dumps(n * {args.seconds!r} / work(n)))")))
        run(kc, f"N = {n}\n%memit --no-live work(N)")  # warm-up: imports, first frame, font cache
        run(kc, "%memit work(N)")
        run(kc, "_stats.clear()")
        for _ in range(args.pairs):
            run(kc, 'times["off"].append(0)\n%memit --no-live -v _r times["off"][-1] = work(N)')
            run(kc, 'times["on"].append(0)\n%memit -v _r times["on"][-1] = work(N)')
        data = json.loads(run(kc, "print(json.dumps({'times': times, 'stats': _stats}))"))
        python = run(kc, "import sys, ipymem; print(sys.version.split()[0], ipymem.__file__)").strip()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

    off, on = data["times"]["off"], data["times"]["on"]
    frames = sum(f for f, _, _ in data["stats"])
    costs = [c for _, cs, _ in data["stats"] for c in cs]
    wall = sum(e for _, _, e in data["stats"])
    print(f"kernel: {python}; loop of {n:,} iterations; {args.pairs} pairs, alternating off/on")
    print(f"live off: median {statistics.median(off):.3f} s  ({', '.join(f'{t:.3f}' for t in off)})")
    print(f"live on : median {statistics.median(on):.3f} s  ({', '.join(f'{t:.3f}' for t in on)})")
    ratio = statistics.median(on) / statistics.median(off)
    print(f"slowdown with the live view: {100 * (ratio - 1):+.1f}%  (ratio {ratio:.3f})")
    if costs:
        print(
            f"drawing thread: {frames} frames in {wall:.1f} s, {1000 * statistics.mean(costs):.1f} ms CPU per frame, "
            f"{100 * sum(costs) / wall:.1f}% of a core"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
