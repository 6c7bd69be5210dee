"""ipymem's own footprint: the RSS it adds to the kernel it measures.

    python benchmarks/bench_footprint.py [--runs 2]

Every ``Mem usage`` and ``baseline`` figure is the RSS of the process that
runs the user's code, ipymem included, so what ipymem itself holds inflates
them.  Each scenario runs in a fresh ipykernel (started with jupyter_client,
as a notebook starts one) that has imported numpy but not matplotlib; RSS is
read from outside the kernel (psutil) after each step, once the kernel is
idle:

* ``%load_ext ipymem``;
* the first ``%memit pass`` with the live view on (ipywidgets, matplotlib, a
  first frame);
* the same with the live view off (``%config MemoryMagics.live = False``);
* for scale, what a user's own first matplotlib chart costs the same kernel
  (import ipywidgets and matplotlib's Agg canvas, draw one 600x200 figure to
  PNG), and memory_profiler's ``%load_ext`` and first ``%memit pass``.

The same steps in terminal IPython (an ``InteractiveShell`` in a subprocess)
show that neither matplotlib nor ipywidgets is imported there.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import textwrap
import time

import psutil

MiB = 2**20

MPL_CHART = textwrap.dedent(
    """\
    import io, ipywidgets
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = Figure(figsize=(6, 2), dpi=100); FigureCanvasAgg(fig); fig.add_subplot().plot([0, 1], [0, 1])
    fig.canvas.print_png(io.BytesIO())
    """
)

SCENARIOS = {
    "ipymem, live on": ["%load_ext ipymem", "%memit pass"],
    "ipymem, live off": ["%load_ext ipymem", "%config MemoryMagics.live = False\n%memit pass"],
    "a matplotlib chart of the user's": [MPL_CHART],
    "memory_profiler": ["%load_ext memory_profiler", "%memit pass"],
}


def kernel_steps(steps: list[str]) -> list[int]:
    """RSS of a fresh kernel (bytes): after ``import numpy``, then after each step."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        pid = km.provisioner.process.pid
        proc = psutil.Process(pid)

        def run(code: str) -> int:
            reply = kc.execute_interactive(code, timeout=120, output_hook=lambda msg: None)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"{code!r}: {reply['content']}")
            time.sleep(0.3)  # let threads the step started settle (the live view joins its own)
            return proc.memory_info().rss

        out = [run("import numpy, gc; gc.collect()")]
        for step in steps:
            out.append(run(step + "\nimport gc; gc.collect()"))
        modules = kc.execute_interactive(
            "import sys; print(sorted(m for m in ('matplotlib', 'ipywidgets', 'PIL') if m in sys.modules))",
            timeout=60,
            output_hook=lambda msg: (
                print("    kernel has:", msg["content"]["text"].strip()) if msg["msg_type"] == "stream" else None
            ),
        )
        assert modules["content"]["status"] == "ok"
        return out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


TERMINAL = textwrap.dedent(
    """\
    import sys, numpy, psutil
    from IPython.core.interactiveshell import InteractiveShell
    p = psutil.Process()
    ip = InteractiveShell.instance()
    r0 = p.memory_info().rss
    ip.run_line_magic("load_ext", "ipymem")
    r1 = p.memory_info().rss
    ip.run_line_magic("memit", "-q pass")
    r2 = p.memory_info().rss
    heavy = [m for m in ("matplotlib", "ipywidgets") if m in sys.modules]
    print(r0, r1, r2, ",".join(heavy) or "-")
    """
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}; RSS added (MiB) to a kernel that has imported numpy")
    for run in range(1, args.runs + 1):
        print(f"run {run}")
        for name, steps in SCENARIOS.items():
            rss = kernel_steps(steps)
            deltas = [(b - a) / MiB for a, b in itertools.pairwise(rss)]
            labels = ["%load_ext", "first %memit pass"] if len(steps) == 2 else ["import + draw one chart"]
            parts = ", ".join(f"{label} +{d:.1f}" for label, d in zip(labels, deltas, strict=True))
            print(f"  {name:34s} numpy kernel {rss[0] / MiB:.1f} MiB; {parts}; total +{sum(deltas):.1f}")
        out = subprocess.run([sys.executable, "-c", TERMINAL], capture_output=True, text=True, check=True)
        r0, r1, r2, heavy = out.stdout.split()
        print(
            f"  {'terminal IPython (ipymem)':34s} %load_ext +{(int(r1) - int(r0)) / MiB:.1f}, "
            f"first %memit +{(int(r2) - int(r1)) / MiB:.1f}; matplotlib/ipywidgets imported: {heavy}"
        )


if __name__ == "__main__":
    main()
