"""Timeline -> matplotlib chart: one drawing routine for the live view's frames, the final image and ``plot()``.

This is rendering, not live view: results' ``plot()`` (``models/``) and the
live view (``live/``) both draw through it, so plain-data results never
import the widget layer.

The chart is drawn for any notebook theme: figure and axes are transparent,
and text, ticks and spines are a mid grey (#808080) that keeps a contrast of
about 4:1 on white and 4.8:1 on JupyterLab's dark background (#111111), so
the image is neither a white box in a dark theme nor faint in a light one.
The y axis names its metric (``RSS (MiB)``), the x axis spans the run, and
the final chart draws the result's exact peak (:class:`Peak`) as a labelled
line, with a dot at its moment when a sample reached it, so the chart and the
table under it state the same figure.

Only the object-oriented matplotlib API is used (``Figure`` +
``FigureCanvasAgg``): no pyplot, so the user's current figure, backend and
``plt.show()`` are never touched.  matplotlib is imported when a chart is
first built, not when this module is imported.

A :class:`Chart` keeps its figure and artists between frames and only
replaces their data.  Live frames are cheaper still: the axes keep their
limits while the data fits (growing with headroom when it does not), so the
background (axes, ticks, labels, marks) is drawn once per change of limits
and restored otherwise; only the lines are drawn on it, and the PNG uses fast
compression.  A full 600x200 render costs ~20-35 ms of CPU here, a frame on a
restored background a fraction of that.  (A filled area under the line cost
~8 ms a frame and was dropped.)  Series are downsampled to about two points per pixel
column before drawing, keeping each column's minimum and maximum, so the
drawn line shows every peak however many samples there are.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, NamedTuple

MiB = 1024 * 1024

#: Pixel size of the chart (width, height) at :data:`DPI`.
SIZE = (600, 200)
DPI = 100

_RSS_COLOR = "#3d85c6"
_HEAP_COLOR = "#e8891c"
_PEAK_COLOR = "#d9534f"
#: Text, ticks, spines and marks: readable on light and dark backgrounds alike (see the module docstring).
FOREGROUND = "#808080"
_MARK_COLOR = FOREGROUND


class Peak(NamedTuple):
    """The result's peak, to state on the final chart: ``value`` bytes, ``how`` it was known
    (``"exact"``, ``"sampled"``...), ``baseline`` for the ``+increment`` and ``t`` its moment when known."""

    value: int
    how: str = ""
    baseline: int | None = None
    t: float | None = None
    what: str = ""

    def text(self) -> str:
        """``peak 238.4 MiB (+200.0, exact)``: the figure the title and the line's label state."""
        extra = [f"+{(self.value - self.baseline) / MiB:,.1f}"] if self.baseline is not None else []
        extra += [self.how] if self.how else []
        head = f"{self.what} peak" if self.what else "peak"
        return f"{head} {self.value / MiB:,.1f} MiB" + (f" ({', '.join(extra)})" if extra else "")


class Marker(NamedTuple):
    """A moment on the chart: ``kind`` is ``"start"``, ``"end"`` or ``"point"``."""

    t: float
    label: str
    kind: str = "point"


def downsample(points: Sequence[tuple[float, int]], buckets: int) -> list[tuple[float, int]]:
    """At most ``2 * buckets`` points: each bucket's minimum and maximum, in time order.

    The highest and the lowest reading of the input are always kept, as are the
    first and the last, so the chart's peak is the timeline's peak.
    """
    n = len(points)
    if n <= 2 * buckets or buckets < 1:
        return list(points)
    out: list[tuple[float, int]] = []
    step = n / buckets
    for b in range(buckets):
        chunk = points[int(b * step) : int((b + 1) * step)]
        if not chunk:
            continue
        lo = min(range(len(chunk)), key=lambda i: chunk[i][1])
        hi = max(range(len(chunk)), key=lambda i: chunk[i][1])
        for i in sorted({lo, hi}):
            out.append(chunk[i])
    if out[0] != points[0]:
        out.insert(0, points[0])
    if out[-1] != points[-1]:
        out.append(points[-1])
    return out


class Chart:
    """A reusable chart of RSS (and optionally the Python heap) over elapsed seconds.

    ``update()`` replaces the data; ``png()`` renders it.  Not thread-safe:
    one thread draws a given chart at a time.
    """

    def __init__(self, size: tuple[int, int] = SIZE, dpi: int = DPI) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
        self.figure.patch.set_alpha(0.0)  # transparent: the notebook's own background shows through
        self.canvas = FigureCanvasAgg(self.figure)
        self.ax = ax = self.figure.add_subplot(1, 1, 1)
        ax.patch.set_alpha(0.0)
        self.buckets = size[0] // 2  # up to two points (min and max) per two pixel columns
        ax.set_xlabel("elapsed (s)", fontsize=8, color=FOREGROUND)
        self._ylabel = ax.set_ylabel("RSS (MiB)", fontsize=8, color=FOREGROUND)
        ax.tick_params(labelsize=7, colors=FOREGROUND)
        ax.grid(True, linewidth=0.4, alpha=0.35, color=FOREGROUND)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_color(FOREGROUND)
        (self._rss,) = ax.plot([], [], color=_RSS_COLOR, linewidth=1.4, label="RSS")
        (self._heap,) = ax.plot([], [], color=_HEAP_COLOR, linewidth=1.2, label="Python heap (tracemalloc)")
        self._peak = ax.axhline(0, color=_RSS_COLOR, linewidth=0.8, linestyle=":", visible=False)
        # The result's peak (final chart only): a labelled line, and a dot where a sample reached it.
        self._exact = ax.axhline(0, color=_PEAK_COLOR, linewidth=0.9, linestyle="--", visible=False)
        (self._exact_dot,) = ax.plot([], [], "o", color=_PEAK_COLOR, markersize=4, visible=False)
        self._exact_label = ax.annotate(
            "", (1.0, 0.0), xycoords=("axes fraction", "data"), xytext=(-2, 2), textcoords="offset points",
            fontsize=7, color=_PEAK_COLOR, ha="right", va="bottom", visible=False,
        )  # fmt: skip
        self.stated_peak: Peak | None = None
        self._marks: list[Any] = []
        self._marks_drawn = 0
        self._legend: Any = None
        self._title = ax.set_title("", fontsize=9, loc="left", color=FOREGROUND)
        self._limits_set = False
        self._dynamic = (self._rss, self._heap, self._peak)
        self._background: Any = None
        self._background_key: Any = None
        self.figure.subplots_adjust(left=0.11, right=0.98, top=0.86, bottom=0.22)

    def reset(self) -> None:
        """Forget the previous series (a chart reused for a new cell)."""
        self._draw_markers(())
        self._limits_set = False
        self._background_key = None

    def update(
        self,
        samples: Sequence[tuple[float, int]],
        heap: Sequence[tuple[float, int]] | None = None,
        markers: Sequence[Marker] = (),
        title: str = "",
        sticky: bool = False,
        peak: Peak | None = None,
        end: float | None = None,
        metric: str = "RSS",
    ) -> None:
        """Replace the data.  ``sticky`` (live frames): keep the axes' limits while the data fits
        them, growing them with headroom when it does not, so most frames can reuse the background.

        ``peak`` (final chart): the result's peak, drawn as a labelled line (and a dot at its
        moment) and kept in the y range even when no sample saw it; ``end``: the run's length in
        seconds, so the x axis spans the run; ``metric``: what the RSS series is, for the y label.
        """
        ax = self.ax
        pts = downsample(samples, self.buckets)
        xs = [p[0] for p in pts]
        ys = [p[1] / MiB for p in pts]
        self._rss.set_data(xs, ys)
        if ys:  # the samples' peak, unless the result's own (exact or not) is stated
            self._peak.set_ydata([max(ys), max(ys)])
        self._peak.set_visible(bool(ys) and peak is None)
        hpts = downsample(heap, self.buckets) if heap else []
        self._heap.set_data([p[0] for p in hpts], [p[1] / MiB for p in hpts])
        self._heap.set_visible(bool(hpts))
        if heap is not None and self._legend is None:  # a heap series, even empty yet: legend from the start
            self._legend = ax.legend(loc="upper left", fontsize=7, frameon=False, labelcolor=FOREGROUND)
        self._draw_markers(markers)
        self._title.set_text(title)
        self._ylabel.set_text(f"{metric} (MiB)" if heap is None else f"{metric}, heap (MiB)")
        self._draw_peak(peak, (heap or ()) if peak is not None and peak.what == "Python heap" else samples)
        # Limits computed here, not by autoscaling (set_*lim would switch autoscaling off for good).
        right = max([xs[-1] if xs else 0.0, end or 0.0, *(m.t for m in markers)], default=0.0)
        values = ys + [p[1] / MiB for p in hpts] + ([peak.value / MiB] if peak is not None else [])
        lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
        pad = (hi - lo) * 0.08
        if hi - lo < 1:  # flat memory: keep a readable scale instead of magnifying noise
            mid = (hi + lo) / 2
            lo, hi, pad = mid - 0.5, mid + 0.5, 0.0
        x1 = right * 1.02 if right > 0 else 1.0  # the run's span, however short (no 1 s floor)
        y0, y1 = lo - pad, hi + pad
        if sticky:
            cx1 = ax.get_xlim()[1]
            cy0, cy1 = ax.get_ylim()
            x1 = cx1 if right <= cx1 and self._limits_set else max(right * 1.5, right + 5.0)
            span = max(hi - lo, 0.05 * abs(hi), 1.0)  # flat memory still gets a few % of headroom
            if heap is not None:  # two series on one axis: from 0, so the heap's arrival changes nothing
                lo, span = 0.0, max(hi, 1.0)
            if not (self._limits_set and cy0 <= lo and hi <= cy1 and (cy1 - cy0) <= 3 * span):
                # Generous headroom: memory that keeps growing (loading data) crosses the top only every
                # ~1.75x, so most frames reuse the background (a full draw is mostly tick labels: ~30 ms
                # of CPU while the user's code holds the GIL, against ~3 ms for the lines alone).
                y0, y1 = lo - 0.1 * span, hi + 0.75 * span
                if heap is not None:
                    y0 = 0.0
            else:
                y0, y1 = cy0, cy1
        ax.set_xlim(0, x1)
        ax.set_ylim(y0, y1)
        self._limits_set = True

    def _draw_peak(self, peak: Peak | None, samples: Sequence[tuple[float, int]]) -> None:
        """The result's peak as a labelled line; a dot where ``samples`` (its own metric's) reached it."""
        self.stated_peak = peak
        for artist in (self._exact, self._exact_dot, self._exact_label):
            artist.set_visible(peak is not None)
        if peak is None:
            return
        y = peak.value / MiB
        self._exact.set_ydata([y, y])
        self._exact_label.set_text(peak.text())
        self._exact_label.xy = (1.0, y)
        t = peak.t
        if t is None:  # its moment: the first sample that reached it (within 0.5%), if any did
            t = next((s[0] for s in samples if s[1] >= peak.value * 0.995), None)
        self._exact_dot.set_data([t] if t is not None else [], [y] if t is not None else [])
        self._exact_dot.set_visible(t is not None)

    def _draw_markers(self, markers: Sequence[Marker]) -> None:
        if len(markers) < self._marks_drawn:  # a new series of markers: start over
            for artist in self._marks:
                artist.remove()
            self._marks, self._marks_drawn = [], 0
        for m in markers[self._marks_drawn :]:
            style = {"start": "-", "end": "--"}.get(m.kind, ":")
            self._marks.append(self.ax.axvline(m.t, color=_MARK_COLOR, linewidth=0.8, linestyle=style))
            if m.kind != "end" and m.label:
                self._marks.append(
                    self.ax.annotate(
                        m.label,
                        (m.t, 1.0),
                        xycoords=("data", "axes fraction"),
                        xytext=(2, -2),
                        textcoords="offset points",
                        fontsize=7,
                        color=_MARK_COLOR,
                        va="top",
                        rotation=0,
                    )
                )
        self._marks_drawn = len(markers)

    def png(self) -> bytes:
        """Render everything and encode a PNG (the final, static chart)."""
        for artist in self._dynamic:
            artist.set_animated(False)
        self._background_key = None
        buf = io.BytesIO()
        self.canvas.print_png(buf)
        return buf.getvalue()

    def live_png(self) -> bytes:
        """A live frame, cheaply: the axes, ticks, labels and marks are drawn only when they change
        (limits, marks, title); otherwise the saved background is restored and only the lines are
        drawn on it, and the PNG is encoded with fast compression."""
        from PIL import Image

        key = (self.ax.get_xlim(), self.ax.get_ylim(), self._marks_drawn, self._title.get_text(),
               self._legend is not None, self.canvas.get_width_height(), self._ylabel.get_text(),
               self.stated_peak)  # fmt: skip
        if key != self._background_key:
            for artist in self._dynamic:
                artist.set_animated(True)  # left out of canvas.draw(): the background has no lines
            self.canvas.draw()
            self._background = self.canvas.copy_from_bbox(self.figure.bbox)
            self._background_key = key
        else:
            self.canvas.restore_region(self._background)
        for artist in self._dynamic:
            if artist.get_visible():
                self.ax.draw_artist(artist)
        width, height = self.canvas.get_width_height()
        image = Image.frombuffer("RGBA", (width, height), self.canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        buf = io.BytesIO()
        image.save(buf, format="png", compress_level=1)
        return buf.getvalue()


def plot_timeline(
    samples: Sequence[tuple[float, int]],
    heap: Sequence[tuple[float, int]] | None = None,
    markers: Sequence[Marker] = (),
    title: str = "",
    size: tuple[int, int] = SIZE,
    dpi: int = DPI,
    peak: Peak | None = None,
    end: float | None = None,
    metric: str = "RSS",
) -> Any:
    """A new matplotlib ``Figure`` of a timeline of ``(t, bytes)`` samples (no pyplot involved).

    ``heap`` is an optional second series (Python heap), ``markers`` are
    vertical lines at moments such as the start and end of profiled calls,
    ``peak`` the result's peak (see :meth:`Chart.update`).
    """
    chart = Chart(size, dpi)
    chart.update(samples, heap, markers, title, peak=peak, end=end, metric=metric)
    # Without pyplot, IPython has no formatter for a Figure (it would show "<Figure size ...>"):
    # the instance renders itself as the same PNG as the live view's final image.  When the
    # user's inline backend is active its own formatter, registered for the type, takes precedence.
    chart.figure._repr_png_ = chart.png
    chart.figure._ipymem_chart = chart  # extra series (Dask workers) are drawn on the same Chart
    return chart.figure


def render_png(samples: Sequence[tuple[float, int]], *args: Any, **kwargs: Any) -> bytes:
    """PNG bytes of :func:`plot_timeline`'s chart (same arguments)."""
    return plot_timeline(samples, *args, **kwargs)._ipymem_chart.png()


def mprun_peak(result: Any) -> Peak | None:
    """The highest memory an ``%mprun`` result saw while profiled code ran, as its chart states it."""
    value = getattr(result, "peak_value", None)
    if value is None:
        return None
    how = "exact" if result.peak_exact and not result.params.include_children else "at least: readings"
    return Peak(value, how, what="profiled code's" if result.params.backend == "rss" else "Python heap")


def mprun_title(result: Any) -> str:
    """``%mprun · f, g · peak ... `` for the final chart."""
    names = ", ".join(f.name.rsplit(".", 1)[-1] for f in result.functions)
    peak = mprun_peak(result)
    # The dashed line's label says whose peak it is; the title stays short enough not to be clipped.
    return f"%mprun · {names}" + (f" · {peak._replace(what='').text()}" if peak is not None else "")


def memit_peak(result: Any) -> Peak | None:
    """The peak a ``%memit`` result's table states, as the chart states it (exact or sampled)."""
    if not getattr(result, "runs", None):
        return None
    if result.params.include_children:
        how = "at least: children sampled"
    else:
        how = "exact" if result.exact else "at least: sampled"
    return Peak(result.peak, how, result.baseline)


def memit_title(result: Any) -> str:
    """The final chart's title for a ``%memit`` result: its exact peak and increment, as in its table."""
    peak = memit_peak(result)
    from ..units import fmt_seconds

    what = "RSS incl. children" if result.params.include_children else "RSS"
    if peak is None:
        return f"%memit · nothing measured ({result.outcome})"
    return f"%memit · {what} {peak.text()} · {fmt_seconds(result.duration)}"


def alloc_peak(result: Any) -> Peak:
    """A ``%memtrace`` result's exact Python-heap peak (tracemalloc), drawn against the heap series."""
    return Peak(result.heap_peak, "exact", result.heap_start, what="Python heap")


def alloc_title(result: Any) -> str:
    from ..units import fmt_seconds

    return f"%memtrace · {alloc_peak(result).text()} · {fmt_seconds(result.duration)}"
