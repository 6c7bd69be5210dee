"""``%memwatch on``: a live view while every cell runs and one compact line after it.

The per-cell cost is one RSS reading and one high-water-mark reset before
the cell and one of each after it (microseconds on Linux): there is no fixed
delay per cell.  In a widget-capable frontend a live view also runs; it
draws its first frame only after ~0.25 s, so quick cells pay nothing for
drawing, and at the end it is replaced by the compact line.

The peak is the larger of the sampled maximum and the kernel high-water mark
since the cell started; a ``%memit`` inside the cell resets that mark, so the
cell's peak is then a lower bound.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from ..engine import cluster as cluster_engine
from ..engine.probes import shared_probe

MiB = 1024 * 1024


def compact_line(used: int, peak: int, seconds: float) -> str:
    return f"used {used / MiB:+,.2f} MiB, peak {peak / MiB:+,.2f} MiB above start, {seconds:.2f} s"


class MemWatch:
    """Registered on ``pre_run_cell`` / ``post_run_cell`` while on; :meth:`off` removes everything."""

    def __init__(self, shell: Any, live: Any = True, refresh: float = 0.5, frontend: Any = None) -> None:
        self.shell = shell
        self.frontend = frontend  # a factory of frontends, for tests; None: widgets when supported
        self.live = live  # bool, or a callable read per cell (the magics' trait)
        self.refresh = refresh
        self.probe = shared_probe()
        self.view: Any = None
        self.chart: Any = None
        self._start: tuple[int, float] | None = None
        self.lines: list[str] = []
        self.cluster: Any = None  # the Dask workers' measurement of the running cell, when a client is active

    def on(self) -> None:
        from .view import widgets_supported

        live = self.live() if callable(self.live) else self.live
        if live and (self.frontend is not None or widgets_supported(self.shell)):
            # Import matplotlib and build the figure now, in the %memwatch cell, so no watched cell pays for it.
            try:
                from .chart import Chart

                self.chart = Chart()
                self.chart.live_png()
            except Exception:
                self.chart = None  # each view will try, and turn itself off with a message if it cannot
        events = self.shell.events
        events.register("pre_run_cell", self.pre_run_cell)
        events.register("post_run_cell", self.post_run_cell)

    def off(self) -> None:
        events = self.shell.events
        for name, callback in (("pre_run_cell", self.pre_run_cell), ("post_run_cell", self.post_run_cell)):
            if callback in events.callbacks[name]:
                events.unregister(name, callback)
        self._close_view(None)
        self._start = None
        self.chart = None
        self._stop_cluster()

    # -- events -------------------------------------------------------------------
    def pre_run_cell(self, info: Any = None) -> None:
        from .view import live_view

        self._close_view(None)  # a view left by a cell whose post_run_cell never came
        live = self.live() if callable(self.live) else self.live
        self.view = live_view(
            self.shell,
            title="cell",
            enabled=bool(live),
            first_frame=False,
            refresh=self.refresh,
            interval=0.05,
            frontend=self.frontend() if self.frontend is not None else None,
            chart=self.chart,
        )
        if not self.view.enabled:
            self.view = None
        self._stop_cluster()  # a cell whose post_run_cell never came
        client = cluster_engine.default_client()
        if client is not None:  # Dask workers too: two calls to the cluster per cell, each bounded
            clock = self.view.sampler.elapsed if self.view is not None else None
            self.cluster = cluster_engine.start(client, clock=clock)
            if self.view is not None:
                self.view.cluster = self.cluster
        baseline = self.probe.rss()
        self.probe.reset_peak()
        self._start = (baseline, time.perf_counter())
        if self.view is not None:
            self.view.__enter__()

    def post_run_cell(self, result: Any = None) -> None:
        if self._start is None:  # the cell that turned the watch on
            return
        baseline, t0 = self._start
        self._start = None
        seconds = time.perf_counter() - t0
        now = self.probe.rss()
        exact, _ = self.probe.peak()
        sampled = None
        if self.view is not None:
            sampled = self.view.sampler.timeline.max_value
        peak = max(now, baseline, exact or 0, sampled or 0)
        line = compact_line(now - baseline, peak - baseline, seconds)
        line += self._cluster_line()
        self.lines.append(line)
        del self.lines[:-100]
        html = f"<div style='font-family:monospace;font-size:11px;color:#555'>{escape(line)}</div>"
        bundle = {"text/plain": line, "text/html": html}
        if self.view is not None and self.view.shown and self.view.error is None:
            self._close_view(bundle)
        else:
            self._close_view(None)
            from IPython.display import display

            display(bundle, raw=True)

    def _stop_cluster(self) -> dict[str, Any]:
        handle, self.cluster = self.cluster, None
        if handle is None:
            return {}
        workers = handle.stop()
        self.cluster_notes = list(handle.notes)
        return workers

    def _cluster_line(self) -> str:
        """`` · Dask 2 workers ...`` for the cell's line ("" without a cluster)."""
        if self.cluster is None:
            return ""
        from ..render.cluster import workers_line

        workers = self._stop_cluster()
        parts = [workers_line(workers)] if workers else []
        parts += self.cluster_notes
        return "".join(f" · {p}" for p in parts if p)

    def _close_view(self, replace_with: dict[str, Any] | None) -> None:
        view, self.view = self.view, None
        if view is not None:
            view.close(replace_with=replace_with if replace_with is not None else {"text/plain": ""})
