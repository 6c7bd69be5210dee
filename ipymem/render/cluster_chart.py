"""The Dask workers on a kernel chart: the highest worker and all workers summed, beside the kernel's RSS.

Two lines, whatever the number of workers, so a cluster of hundreds draws as
cheaply as one of two (per-worker lines would be unreadable past a few).
They come from the scheduler's heartbeats (``ClusterSample``), so they are
the workers' RSS as each last reported it: a step line, not a peak; the
exact per-worker peaks are in the report's table.

The lines are added to a :class:`~ipymem.render.chart.Chart` after its
``update()``: they join its animated artists (so live frames draw them on the
saved background) and the y axis is widened to hold them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models.cluster import ClusterSample

MiB = 1024 * 1024

_HIGHEST_COLOR = "#2ca02c"
_TOTAL_COLOR = "#9467bd"


def draw_cluster(chart: Any, samples: Sequence[ClusterSample]) -> None:
    """Set the cluster lines of ``chart`` to ``samples`` (none: the lines are hidden)."""
    lines = getattr(chart, "_ipymem_cluster_lines", None)
    if lines is None:
        if not samples:
            return
        ax = chart.ax
        (highest,) = ax.plot(
            [], [], color=_HIGHEST_COLOR, linewidth=1.1, drawstyle="steps-post", label="highest Dask worker"
        )
        (total,) = ax.plot(
            [], [], color=_TOTAL_COLOR, linewidth=1.0, linestyle="--", drawstyle="steps-post", label="all workers"
        )
        lines = chart._ipymem_cluster_lines = (highest, total)
        chart._dynamic = (*chart._dynamic, highest, total)
    highest, total = lines
    if samples and (chart._legend is None or getattr(chart, "_ipymem_cluster_legend", None) is not chart._legend):
        # Name the kernel's line as the kernel's, and leave out an empty heap line.
        handles = [chart._rss] + ([chart._heap] if chart._heap.get_visible() else []) + [highest, total]
        labels = ["kernel RSS"] + (["kernel Python heap"] if chart._heap.get_visible() else [])
        labels += ["highest Dask worker RSS (heartbeats)", "all workers (heartbeats)"]
        if chart._legend is not None:
            chart._legend.remove()
        chart._legend = chart._ipymem_cluster_legend = chart.ax.legend(
            handles, labels, loc="upper left", fontsize=7, frameon=False
        )
    xs = [s.t for s in samples]
    highest.set_data(xs, [s.highest / MiB for s in samples])
    total.set_data(xs, [s.total / MiB for s in samples])
    for line in lines:
        line.set_visible(bool(samples))
    if not samples:
        return
    # Widen the axes (set by update() from the kernel's series) to hold the workers, with headroom
    # so a slowly growing cluster does not change the limits, and so the background, every frame.
    top = max(s.total for s in samples) / MiB
    y0, y1 = chart.ax.get_ylim()
    if top > y1 or y0 > 0:
        chart.ax.set_ylim(0.0, max(y1, top * 1.25))
    x0, x1 = chart.ax.get_xlim()
    if xs[-1] > x1:
        chart.ax.set_xlim(x0, xs[-1] * 1.02)
