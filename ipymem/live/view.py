"""The live view: a chart that moves while a cell runs, then a static image in its place.

Shape of it:

* A :class:`~ipymem.engine.Sampler` thread (``ipymem-sampler``) reads RSS;
  a second one reads the Python heap when tracemalloc is on.  A drawing
  thread (``ipymem-live``) renders the timeline with matplotlib (Agg, no
  pyplot) and assigns the PNG to an ``ipywidgets.Image``; sampling and drawing
  are separate so a slow draw never thins the timeline.
* The drawing thread measures its own CPU time per frame and spends it from a
  token bucket that refills at ``budget`` (4% of a core) up to ``ALLOWANCE``
  (0.1 s of CPU): the first frames of a cell come at the refresh rate, and
  after them a costly frame makes the next one wait, so the view never costs
  the user's code more than a few percent on average, however slow a draw
  gets; ``refresh`` (0.5 s) is the fastest it redraws.
* When the block ends (normally, by an exception, by KeyboardInterrupt) the
  threads are stopped through an :class:`threading.Event` and joined, and
  the widget is replaced, through its display id, by a static PNG of the
  final chart, so a saved notebook shows it with no widget state.  The
  widgets are then closed.
* A client that runs cells with nobody watching (nbclient and papermill:
  they send ``allow_stdin=False``) gets no widget at all, only the final
  static chart: nbclient saves the state of every widget model it ever
  saw, closed or not, so any widget would be orphaned state in the file.
* A drawing or frontend error turns the view off for that cell: the
  threads stop, and one line says so where the chart was.

Use :func:`live_view`; it returns a :class:`NullView` (does nothing) when
live views are off or the frontend cannot show widgets, so callers need no
branches::

    with live_view(shell, title="%mprun", enabled=not args.no_live) as view:
        view.mark("f", "start")
        ...
"""

from __future__ import annotations

import base64
import contextlib
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from ..engine.probes import shared_probe
from ..engine.sampler import THREAD_PREFIX, Sampler
from ..models import Sample
from ..render.chart import SIZE, Marker, Peak

MiB = 1024 * 1024

#: Fastest redraw (seconds between frames).
REFRESH = 0.5
#: Share of one core the drawing thread may use on average.
BUDGET = 0.04
#: Drawing CPU (seconds) the view may spend ahead of its budget: a few full frames at the start of a cell.
ALLOWANCE = 0.1
#: Slowest redraw, whatever a frame costs.
MAX_DELAY = 10.0
#: Markers kept per view; later ones are counted, not drawn.
MAX_MARKERS = 200

# Views currently running, innermost last: only the innermost one draws, so
# a %memit inside a %memwatch cell does not double the drawing cost.
_active: list[LiveView] = []
_active_lock = threading.Lock()


def widgets_supported(shell: Any) -> bool:
    """True when ``shell`` is a kernel shell whose frontend can receive widgets.

    That is a ``ZMQInteractiveShell`` (ipykernel) attached to a kernel that is
    not the in-process one (which delivers no widget messages), with
    ipywidgets importable.  Terminal IPython answers False.  ``jupyter
    console`` answers True but draws no widgets: turn live views off there
    with ``%config MemoryMagics.live = False``.
    """
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    if not any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__):
        return False
    if "InProcess" in type(shell.kernel).__name__:
        return False
    try:
        import ipywidgets  # noqa: F401
    except Exception:
        return False
    return True


class _HeapProbe:
    """Sampler probe for the Python heap: tracemalloc's current size (raises while it is off)."""

    def rss(self) -> int:
        if not tracemalloc.is_tracing():
            raise LookupError("tracemalloc is not tracing")
        return tracemalloc.get_traced_memory()[0]

    def children_rss(self) -> int:  # pragma: no cover - never asked: include_children is off
        return 0


class WidgetFrontend:
    """The widgets: an HTML label above an Image, in a VBox with the CSS class ``livemem``."""

    def __init__(self, size: tuple[int, int] = SIZE) -> None:
        import ipywidgets as w

        self.label = w.HTML(value="")
        self.image = w.Image(format="png", layout=w.Layout(width=f"{size[0]}px", height=f"{size[1]}px"))
        self.box = w.VBox([self.label, self.image])
        self.box.add_class("livemem")
        self.handle: Any = None

    def show(self, png: bytes | None, label: str) -> None:
        from IPython.display import display

        self.update(png, label)
        self.handle = display(self.box, display_id=True)

    def update(self, png: bytes | None, label: str) -> None:
        if self.image.comm is None:  # closed under us: stop drawing rather than update nothing
            raise ConnectionError("the chart widget was closed")
        if png is not None:
            self.image.value = png
        self.label.value = label

    def finish(self, data: dict[str, Any]) -> None:
        """Replace the widget by static output (a mime bundle) through its display id, then close it."""
        try:
            if self.handle is not None:
                self.handle.update(data, raw=True)
        finally:
            close_widgets(self.box)


def close_widgets(widget: Any) -> None:
    """Close ``widget``, its children and the ``layout`` and ``style`` models each one has.

    ``Widget.close()`` closes only that model: a VBox of an HTML and an Image is
    seven models, and the four layouts and styles left open stay alive in the
    kernel and are saved in the notebook's widget state.
    """
    import ipywidgets as w

    stack, seen = [widget], set()
    while stack:
        model = stack.pop()
        if not isinstance(model, w.Widget) or id(model) in seen:
            continue
        seen.add(id(model))
        stack.extend(getattr(model, "children", ()))
        stack.extend(getattr(model, name, None) for name in ("layout", "style"))
        model.close()


class StaticFrontend:
    """For a client that runs cells with nobody watching them (nbclient, papermill, ``nbconvert --execute``).

    No widget at all, so the executed notebook holds no widget state (nbclient
    saves the state of every model it ever saw, closed or not); the final
    chart is displayed as a static image when the view closes, as the
    widget's replacement would have been.
    """

    live = False

    def show(self, png: bytes | None, label: str) -> None:
        pass

    def update(self, png: bytes | None, label: str) -> None:
        pass

    def finish(self, data: dict[str, Any]) -> None:
        from IPython.display import display

        display(data, raw=True)


def unwatched(shell: Any) -> bool:
    """True when the client that sent the running cell cannot answer ``input()``.

    Frontends a person uses (JupyterLab, Notebook, VS Code) allow stdin; the
    headless executors (nbclient and what is built on it) do not, and render
    no widget either.  ipykernel records the request's ``allow_stdin`` on the
    kernel while the cell runs.
    """
    kernel = getattr(shell, "kernel", None)
    return kernel is not None and getattr(kernel, "_allow_stdin", True) is False


class NullView:
    """The view when live views are off: every method does nothing."""

    enabled = False
    error: str | None = None
    cluster: Any = None

    def __init__(self, sampler: Sampler | None = None) -> None:
        self.sampler = sampler

    def mark(self, label: str, kind: str = "point") -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def conclude(self, title: str | None = None, peak: Peak | None = None) -> None:
        pass

    def __enter__(self) -> NullView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class LiveView:
    """A running live chart; see the module docstring.  Use as a context manager.

    ``sampler``: an RSS sampler to read (for instance the one the engine
    runs, so the live chart and the result share one timeline); started and
    stopped by its owner.  Without one, the view runs its own at
    ``interval``.  ``heap``: also chart the Python heap (automatic when
    tracemalloc is already tracing).  ``first_frame``: draw one frame before
    showing the widget (imports matplotlib before the caller's baseline);
    ``%memwatch`` turns it off so short cells pay nothing for drawing, and
    passes ``chart``, one :class:`~ipymem.render.chart.Chart` built when the
    watch starts and reused cell after cell, so no cell is charged for
    importing matplotlib or allocating a figure.
    """

    enabled = True
    #: A Dask workers' measurement (:class:`~ipymem.engine.cluster.ClusterHandle`) whose scheduler
    #: readings the label shows beside the kernel's; set by the magic that started it.
    cluster: Any = None

    def __init__(
        self,
        frontend: Any,
        *,
        title: str,
        sampler: Sampler | None = None,
        heap: bool = False,
        refresh: float = REFRESH,
        budget: float = BUDGET,
        allowance: float = ALLOWANCE,
        interval: float = 0.02,
        first_frame: bool = True,
        chart: Any = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.frontend = frontend
        self.title = title
        self.own_sampler = sampler is None
        self.sampler = sampler if sampler is not None else Sampler(shared_probe(), interval=interval)
        self.heap = heap or tracemalloc.is_tracing()
        # The heap sampler reads the RSS sampler's clock, so both series share one time axis even
        # when the RSS sampler is a caller's that starts later.
        self.heap_sampler = (
            Sampler(_HeapProbe(), interval=max(interval, 0.02), clock=self.sampler.elapsed) if self.heap else None
        )
        self.refresh = refresh
        self.budget = budget
        self.allowance = allowance
        self.first_frame = first_frame
        self.clock = clock
        self.markers: list[Marker] = []
        self.markers_dropped = 0
        self.notes: list[str] = []
        self.frames = 0
        # (seconds since start, CPU seconds, wall seconds) of the drawing thread's recent frames
        self.frame_costs: list[tuple[float, float, float]] = []
        self.closed = False
        self.error: str | None = None
        self.shown = False
        self._chart: Any = chart  # a Chart to reuse (views that never overlap), else made on the first frame
        if chart is not None:
            chart.reset()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = clock()
        # What the caller measured (conclude()): the final chart states it instead of the samples' peak.
        self.result_title: str | None = None
        self.result_peak: Peak | None = None
        self.metric = "RSS"

    # -- the caller's API ---------------------------------------------------
    def mark(self, label: str, kind: str = "point") -> None:
        """Mark this moment on the chart (``kind``: ``"start"``, ``"end"`` or ``"point"``)."""
        with self._lock:
            if len(self.markers) >= MAX_MARKERS:
                self.markers_dropped += 1
                return
            self.markers.append(Marker(self.sampler.elapsed(), label, kind))

    def note(self, text: str) -> None:
        """Add a word to the final chart's title (e.g. ``"interrupted"``)."""
        self.notes.append(text)

    def conclude(self, title: str | None = None, peak: Peak | None = None) -> None:
        """What the measurement found, for the final chart: its title and the result's peak (a
        labelled line), so the chart left in the notebook states the table's figure, not the
        peak of its samples (which a spike shorter than the interval escapes)."""
        self.result_title, self.result_peak = title, peak

    def __enter__(self) -> LiveView:
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is KeyboardInterrupt:
            self.note("interrupted")
        elif exc_type is not None:
            self.note("error")
        self.close()

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        self._t0 = self.clock()
        with _active_lock:
            _active.append(self)
        try:
            if self.heap_sampler is not None:  # first: its clock origin is then the RSS sampler's
                self.heap_sampler.start()
            if self.own_sampler:
                self.sampler.start()
            png = label = None
            live = getattr(self.frontend, "live", True)
            if self.first_frame and live:
                png, label = self._frame()
            self.frontend.show(png, label or self._label(live=True))
            self.shown = True
        except Exception as exc:
            self._fail(exc)
            return
        except BaseException:  # KeyboardInterrupt while starting: leave nothing running
            self.close()
            raise
        if not live:  # nobody watching: the final chart only, no drawing thread
            return
        self._thread = threading.Thread(target=self._run, name=THREAD_PREFIX + "live", daemon=True)
        self._thread.start()

    def close(self, replace_with: dict[str, Any] | None = None) -> None:
        """Stop the threads, then put the final chart (or ``replace_with``, a mime bundle) in the view's place.

        Idempotent: a second call does nothing."""
        if self.closed:
            return
        self.closed = True
        try:
            self._stop_threads()
        finally:
            with _active_lock:
                if self in _active:
                    _active.remove(self)
        if not self.shown:
            if self.error:
                self._say(self.error)
            return
        data = replace_with
        if data is None and self.error is None:
            try:
                png, _ = self._frame(final=True)
                data = {
                    "image/png": base64.b64encode(png).decode("ascii"),
                    "text/plain": f"<ipymem chart: {self._summary()}>",
                }
            except Exception as exc:
                self._fail(exc)
        if self.error is not None:
            data = {"text/plain": self.error}
        try:
            self.frontend.finish(data)
        except Exception as exc:
            if self.error is None:
                self._fail(exc)
                self._say(self.error)

    def _stop_threads(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        try:
            if thread is not None:
                thread.join()
        finally:
            if self.own_sampler:
                self.sampler.stop()
            if self.heap_sampler is not None:
                self.heap_sampler.stop()

    # -- drawing ----------------------------------------------------------------
    def _run(self) -> None:
        delay = self.refresh if self.first_frame else min(self.refresh, 0.25)
        tokens, refilled = self.allowance, self.clock()
        while not self._stop.wait(delay):
            with _active_lock:
                innermost = bool(_active) and _active[-1] is self
            if not innermost:
                delay = self.refresh
                continue
            cpu, wall = time.thread_time(), time.perf_counter()
            try:
                png, label = self._frame()
                if self._stop.is_set():
                    return
                self.frontend.update(png, label)
            except Exception as exc:
                self._fail(exc)
                return
            cost = time.thread_time() - cpu
            self.frame_costs.append((round(wall - self._t0, 3), cost, time.perf_counter() - wall))
            del self.frame_costs[:-100]
            # A token bucket of drawing CPU: it refills at `budget` (a share of one core) up to the
            # allowance, and each frame spends its cost, going into debt if need be; the next frame
            # waits until the debt is repaid.  The first frames of a cell (a full draw of axes and
            # labels each) come at the refresh rate; a run of costly frames then comes at
            # cost / budget, so the average stays within the budget.
            now = self.clock()
            tokens = min(self.allowance, tokens + self.budget * (now - refilled)) - cost
            refilled = now
            delay = min(max(self.refresh, -tokens / self.budget), MAX_DELAY)

    def _frame(self, final: bool = False) -> tuple[bytes, str]:
        from ..render.chart import Chart

        if self._chart is None:
            self._chart = Chart()
        samples = self.sampler.timeline.samples()
        if not samples and not final:
            # Before the sampler's first reading (a caller's sampler not started yet): one reading
            # now, so the first frame's scale is already right and the next frame can reuse it.
            with contextlib.suppress(Exception):
                samples = (Sample(0.0, self.sampler.read()),)
        heap = self.heap_sampler.timeline.samples() if self.heap_sampler is not None else None
        with self._lock:
            markers = list(self.markers)
        title = self._summary() if final else ""
        peak = self.result_peak if final else None
        self._chart.update(samples, heap, markers, title, sticky=not final, peak=peak, metric=self.metric)
        if self.cluster is not None or hasattr(self._chart, "_ipymem_cluster_lines"):
            from ..render.cluster_chart import draw_cluster

            draw_cluster(self._chart, list(getattr(self.cluster, "samples", ())))
        png = self._chart.png() if final else self._chart.live_png()
        self.frames += 1
        return png, self._label(live=not final)

    def _figures(self) -> tuple[int | None, int | None, int | None]:
        tl = self.sampler.timeline
        samples = tl.samples()
        if not samples:
            return None, None, None
        return samples[0].rss, tl.last.rss if tl.last else samples[-1].rss, tl.max_value

    def _elapsed(self) -> float:
        """Seconds on the chart's clock: the RSS sampler's (0 until it starts)."""
        return self.sampler.elapsed()

    def _summary(self) -> str:
        start, now, peak = self._figures()
        parts = [self.result_title or self.title]
        if self.result_title is None and start is not None:
            parts.append(f"{self.metric} peak {peak / MiB:,.1f} MiB (+{(peak - start) / MiB:,.1f}, sampled)")
            parts.append(f"end {now / MiB:,.1f} MiB ({(now - start) / MiB:+,.1f})")
        if self.result_title is None:
            parts.append(f"{self._elapsed():.1f} s")
        if self.markers_dropped:
            parts.append(f"{self.markers_dropped} more marks not drawn")
        parts.extend(self.notes)
        return " · ".join(parts)

    def _label(self, live: bool) -> str:
        from html import escape

        start, now, peak = self._figures()
        text = f"<b>{escape(self.title)}</b> {'running' if live else 'done'} · {self._elapsed():.1f} s"
        if start is not None:
            text += (
                f" · RSS now {now / MiB:,.1f} MiB ({(now - start) / MiB:+,.1f})"
                f" · peak {peak / MiB:,.1f} MiB (+{(peak - start) / MiB:,.1f})"
            )
        if self.heap_sampler is not None and self.heap_sampler.timeline.last is not None:
            text += f" · Python heap {self.heap_sampler.timeline.last.rss / MiB:,.1f} MiB"
        samples = getattr(self.cluster, "samples", None)
        if samples:  # the scheduler's latest heartbeats: the highest worker and all of them
            last = samples[-1]
            text += f" · Dask workers (heartbeats): highest {last.highest / MiB:,.1f} MiB"
            text += f", all {last.total / MiB:,.1f} MiB"
        return f"<span style='font-family:monospace;font-size:12px'>{text}</span>"

    # -- faults -----------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            name = type(exc).__name__
            detail = f"{name}: {exc}" if str(exc) else name
            self.error = f"ipymem: live chart turned off for this cell ({detail})"
        self._stop.set()

    def _say(self, text: str) -> None:
        with contextlib.suppress(Exception):
            print(text, file=sys.stderr)


def live_view(
    shell: Any,
    *,
    title: str,
    enabled: bool = True,
    heap: bool = False,
    sampler: Sampler | None = None,
    refresh: float = REFRESH,
    frontend: Any = None,
    **kwargs: Any,
) -> LiveView | NullView:
    """A live view for one cell, or a :class:`NullView` when off or unsupported.

    ``enabled`` is the caller's switch (``--no-live``, ``MemoryMagics.live``);
    ``frontend`` is for tests and other frontends (an object with ``show``,
    ``update`` and ``finish``); without it, widgets are used when
    :func:`widgets_supported` says the frontend can show them.
    """
    if not enabled:
        return NullView(sampler)
    if frontend is None:
        if not widgets_supported(shell):
            return NullView(sampler)
        try:
            frontend = StaticFrontend() if unwatched(shell) else WidgetFrontend()
        except Exception:
            return NullView(sampler)
    return LiveView(frontend, title=title, heap=heap, sampler=sampler, refresh=refresh, **kwargs)
