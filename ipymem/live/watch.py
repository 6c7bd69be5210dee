"""``%memwatch on``: a live view while every cell runs and one compact line after it.

The per-cell cost is one RSS reading and one high-water-mark reset before
the cell and one of each after it (microseconds on Linux): there is no fixed
delay per cell.  In a widget-capable frontend a live view also runs; it
draws its first frame only after ~0.25 s, so quick cells pay nothing for
drawing, and at the end it is replaced by the compact line.

The peak is the larger of the sampled maximum and the kernel high-water mark
since the cell started, read through a window of :data:`ipymem.engine.peaks.rss_peaks`,
so a ``%memit`` inside the cell (which resets the mark for itself) takes
nothing away from the cell's peak.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from ..engine import cluster as cluster_engine
from ..engine import peaks
from ..engine.limits.cgroups import LimitWindow
from ..engine.probes import shared_probe
from ..engine.rssparts import allocator_free, retained_hint
from ..render.limits import against_limit

MiB = 1024 * 1024


def compact_line(used: int, peak: int, seconds: float) -> str:
    """``RSS: used +12.00 MiB, peak +40.00 MiB above start, 1.52 s``: the line names its memory."""
    return f"RSS: used {used / MiB:+,.2f} MiB, peak {peak / MiB:+,.2f} MiB above start, {seconds:.2f} s"


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
        self._window: peaks.Window | None = None
        self._free: int | None = None  # allocator-free bytes at the cell's start, for the retained-RSS hint
        self.lines: list[str] = []
        self._limit: LimitWindow | None = None  # the container's usage against its limit, around the running cell
        self.cluster: Any = None  # the Dask workers' measurement of the running cell, when a client is active

    def on(self) -> None:
        from .view import widgets_supported

        live = self.live() if callable(self.live) else self.live
        if live and (self.frontend is not None or widgets_supported(self.shell)):
            # Import matplotlib and build the figure now, in the %memwatch cell, so no watched cell pays for it.
            try:
                from ..render.chart import Chart

                self.chart = Chart()
                self.chart.live_png()
            except Exception:
                self.chart = None  # each view will try, and turn itself off with a message if it cannot
        events = self.shell.events
        events.register("pre_run_cell", self.pre_run_cell)
        events.register("post_run_cell", self.post_run_cell)

    def off(self, say: str | None = None) -> bool:
        """Unregister everything and close the running view.

        Called from a watched cell (``%memwatch off``), the cell's own view is
        running: ``say`` (one line) replaces it through its display id, so the
        cell keeps no empty output, and True is returned; otherwise the caller
        prints ``say`` itself.
        """
        events = self.shell.events
        for name, callback in (("pre_run_cell", self.pre_run_cell), ("post_run_cell", self.post_run_cell)):
            if callback in events.callbacks[name]:
                events.unregister(name, callback)
        view = self.view
        replaced = say is not None and view is not None and view.shown and view.error is None
        self._close_view({"text/plain": say} if replaced else None)
        self._start = None
        self._drop_window()
        self.chart = None
        self._stop_cluster()
        return replaced

    # -- events -------------------------------------------------------------------
    def pre_run_cell(self, info: Any = None) -> None:
        from .view import live_view

        self._close_view(None)  # a view left by a cell whose post_run_cell never came
        self._drop_window()
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
        self._free = allocator_free()
        self._stop_cluster()  # a cell whose post_run_cell never came
        client = cluster_engine.default_client()
        if client is not None:  # Dask workers too: two calls to the cluster per cell, each bounded
            clock = self.view.sampler.elapsed if self.view is not None else None
            self.cluster = cluster_engine.start(client, clock=clock)
            if self.view is not None:
                self.view.cluster = self.cluster
        self._limit = LimitWindow(self.probe.rss)
        baseline = self.probe.rss()
        self._window = peaks.rss_peaks.open()  # shared with any magic the cell runs: each keeps its peak
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
        window, self._window = self._window, None
        exact = peaks.rss_peaks.close(window)[0] if window is not None else None
        sampled = None
        if self.view is not None:
            sampled = self.view.sampler.timeline.max_value
        peak = max(now, baseline, exact or 0, sampled or 0)
        line = compact_line(now - baseline, peak - baseline, seconds)
        if self._free is not None:
            hint = retained_hint(now - baseline, (allocator_free() or 0) - self._free)
            line += f" ({hint})" if hint else ""
        line += self._cluster_line()
        limit, self._limit = self._limit, None
        use = limit.finish(peak - baseline) if limit is not None else None
        if use is not None and use.shown:
            line += f" · limit: {'' if use.peak_exact else 'at least '}{against_limit(use.usage_peak, use.source)}"
        self.lines.append(line)
        del self.lines[:-100]
        html = (  # the theme's secondary text colour, inherited where the frontend has no JupyterLab variables
            "<div style='font-family:var(--jp-code-font-family, monospace);font-size:11px;"
            f"color:var(--jp-content-font-color2, inherit);text-align:left'>{escape(line)}</div>"
        )
        bundle = {"text/plain": line, "text/html": html}
        if self.view is not None and self.view.shown and self.view.error is None:
            self._close_view(bundle)
        else:
            self._close_view(None)
            from IPython.display import display

            display(bundle, raw=True)

    def _drop_window(self) -> None:
        window, self._window = self._window, None
        if window is not None:
            peaks.rss_peaks.close(window)

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
