"""Timeline -> matplotlib chart: one drawing routine for the live view, the final image and ``plot()``.

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

_RSS_COLOR = "#1f77b4"
_HEAP_COLOR = "#ff7f0e"
_MARK_COLOR = "#555555"


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
        self.canvas = FigureCanvasAgg(self.figure)
        self.ax = ax = self.figure.add_subplot(1, 1, 1)
        self.buckets = size[0] // 2  # up to two points (min and max) per two pixel columns
        ax.set_xlabel("elapsed (s)", fontsize=8)
        ax.set_ylabel("MiB", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, linewidth=0.4, alpha=0.5)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        (self._rss,) = ax.plot([], [], color=_RSS_COLOR, linewidth=1.4, label="RSS")
        (self._heap,) = ax.plot([], [], color=_HEAP_COLOR, linewidth=1.2, label="Python heap (tracemalloc)")
        self._peak = ax.axhline(0, color=_RSS_COLOR, linewidth=0.8, linestyle=":", visible=False)
        self._marks: list[Any] = []
        self._marks_drawn = 0
        self._legend: Any = None
        self._title = ax.set_title("", fontsize=9, loc="left")
        self._limits_set = False
        self._dynamic = (self._rss, self._heap, self._peak)
        self._background: Any = None
        self._background_key: Any = None
        self.figure.subplots_adjust(left=0.1, right=0.98, top=0.86, bottom=0.22)

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
    ) -> None:
        """Replace the data.  ``sticky`` (live frames): keep the axes' limits while the data fits
        them, growing them with headroom when it does not, so most frames can reuse the background."""
        ax = self.ax
        pts = downsample(samples, self.buckets)
        xs = [p[0] for p in pts]
        ys = [p[1] / MiB for p in pts]
        self._rss.set_data(xs, ys)
        if ys:
            self._peak.set_ydata([max(ys), max(ys)])
            self._peak.set_visible(True)
        hpts = downsample(heap, self.buckets) if heap else []
        self._heap.set_data([p[0] for p in hpts], [p[1] / MiB for p in hpts])
        self._heap.set_visible(bool(hpts))
        if heap is not None and self._legend is None:  # a heap series, even empty yet: legend from the start
            self._legend = ax.legend(loc="upper left", fontsize=7, frameon=False)
        self._draw_markers(markers)
        self._title.set_text(title)
        # Limits computed here, not by autoscaling (set_*lim would switch autoscaling off for good).
        right = max([xs[-1] if xs else 0.0, *(m.t for m in markers)], default=0.0)
        values = ys + [p[1] / MiB for p in hpts]
        lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
        pad = (hi - lo) * 0.08
        if hi - lo < 1:  # flat memory: keep a readable scale instead of magnifying noise
            mid = (hi + lo) / 2
            lo, hi, pad = mid - 0.5, mid + 0.5, 0.0
        x1 = max(right * 1.02, 1.0)
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
               self._legend is not None, self.canvas.get_width_height())  # fmt: skip
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
) -> Any:
    """A new matplotlib ``Figure`` of a timeline of ``(t, bytes)`` samples (no pyplot involved).

    ``heap`` is an optional second series (Python heap), ``markers`` are
    vertical lines at moments such as the start and end of profiled calls.
    """
    chart = Chart(size, dpi)
    chart.update(samples, heap, markers, title)
    return chart.figure


def render_png(
    samples: Sequence[tuple[float, int]],
    heap: Sequence[tuple[float, int]] | None = None,
    markers: Sequence[Marker] = (),
    title: str = "",
    size: tuple[int, int] = SIZE,
    dpi: int = DPI,
) -> bytes:
    """PNG bytes of :func:`plot_timeline`'s chart."""
    chart = Chart(size, dpi)
    chart.update(samples, heap, markers, title)
    return chart.png()
