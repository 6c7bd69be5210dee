"""The live view: chart drawing, bounded timelines, the drawing thread, faults, %memwatch.

Widgets need a real kernel (see test_kernel.py); here the view is driven
through a fake frontend that records what a widget would have received.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time

import pytest
from IPython.core.error import UsageError

from ipymem.engine import Sampler
from ipymem.live import LiveView, Marker, MemWatch, NullView, downsample, live_view, plot_timeline, render_png
from ipymem.live import view as view_mod
from ipymem.models import MemitResult, MemitRun, Sample

from .conftest import MiB

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class FakeFrontend:
    """Records show/update/finish; can be told to fail."""

    def __init__(self, fail_update_at: int | None = None, fail_finish: bool = False) -> None:
        self.shown = None
        self.shown_at: float | None = None
        self.updates: list[tuple[bytes | None, str]] = []
        self.update_times: list[float] = []  # time.perf_counter() of each update
        self.finished: list[dict] = []
        self.fail_update_at = fail_update_at
        self.fail_finish = fail_finish
        self.threads: set[str] = set()

    def show(self, png, label):
        self.shown = (png, label)
        self.shown_at = time.perf_counter()

    def update(self, png, label):
        self.threads.add(threading.current_thread().name)
        if self.fail_update_at is not None and len(self.updates) + 1 >= self.fail_update_at:
            raise ConnectionError("comm closed")
        self.updates.append((png, label))
        self.update_times.append(time.perf_counter())

    def finish(self, data):
        if self.fail_finish:
            raise ConnectionError("frontend gone")
        self.finished.append(data)


class FakeProbe:
    def __init__(self, value: int = 100 * MiB) -> None:
        self.value = value

    def rss(self) -> int:
        return self.value

    def children_rss(self) -> int:
        return 0


def live_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ipymem-")]


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- drawing -----------------------------------------------------------------------


def test_downsample_is_bounded_and_keeps_extremes():
    pts = [(i * 0.01, (i * 7919) % 1000) for i in range(100_000)]
    pts[54_321] = (543.21, 10_000)
    pts[12_345] = (123.45, -5)
    out = downsample(pts, 300)
    assert len(out) <= 2 * 300 + 2
    assert max(v for _, v in out) == 10_000
    assert min(v for _, v in out) == -5
    assert out[0] == pts[0] and out[-1] == pts[-1]
    assert [t for t, _ in out] == sorted(t for t, _ in out)
    assert downsample(pts[:10], 300) == pts[:10]


def test_render_png_and_plot_timeline():
    samples = [Sample(i * 0.1, (100 + i) * MiB) for i in range(50)]
    heap = [(i * 0.1, (10 + i) * MiB) for i in range(50)]
    png = render_png(samples, heap, [Marker(1.0, "f", "start"), Marker(2.0, "f", "end")], title="t")
    assert png.startswith(PNG_MAGIC)
    fig = plot_timeline(samples, heap, title="hello")
    ax = fig.axes[0]
    assert ax.get_title(loc="left") == "hello"
    ys = ax.lines[0].get_ydata()
    assert max(ys) == pytest.approx(149)
    assert fig.canvas.get_width_height() == (600, 200)


def test_plot_draws_empty_and_flat_timelines():
    assert render_png([]).startswith(PNG_MAGIC)
    assert render_png([Sample(0.0, 5 * MiB)]).startswith(PNG_MAGIC)


def test_memit_result_plot_returns_a_figure():
    from matplotlib.figure import Figure

    result = MemitResult(
        statement="x",
        runs=(MemitRun(baseline=100 * MiB, peak=300 * MiB, end=110 * MiB, duration=1.0, samples=3),),
        timeline=(Sample(0.0, 100 * MiB), Sample(0.5, 300 * MiB), Sample(1.0, 110 * MiB)),
    )
    fig = result.plot()
    assert isinstance(fig, Figure)
    assert "peak 300.0 MiB" in fig.axes[0].get_title(loc="left")
    assert max(fig.axes[0].lines[0].get_ydata()) == pytest.approx(300)


def test_drawing_uses_no_pyplot_and_loading_imports_no_matplotlib():
    code = (
        "import sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'ipymem')\n"
        "ip.run_line_magic('memit', 'x = 1')\n"
        "assert 'matplotlib' not in sys.modules, 'load/memit imported matplotlib'\n"
        "assert 'ipywidgets' not in sys.modules, 'load/memit imported ipywidgets'\n"
        "from ipymem.live import render_png\n"
        "render_png([(0, 1), (1, 2)])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'drawing imported pyplot'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_timeline_stays_bounded_over_hours_with_a_fake_clock():
    now = [0.0]
    probe = FakeProbe()
    sampler = Sampler(probe, interval=0.01, max_points=512, clock=lambda: now[0])
    sampler._t0 = 0.0
    for i in range(360_000):  # one hour at 10 ms
        now[0] = i * 0.01
        probe.value = (100 + (i % 1000) // 10) * MiB + (500 * MiB if i == 271_828 else 0)  # one spike: 682 MiB
        sampler.sample()
    samples = sampler.timeline.samples()
    assert len(samples) <= 512 + 2
    assert max(s.rss for s in samples) == 682 * MiB  # the one-sample spike survives
    from ipymem.render.chart import Chart

    chart = Chart()
    chart.update(samples)
    assert len(chart._rss.get_xdata()) <= 2 * chart.buckets + 2
    assert max(chart._rss.get_ydata()) == pytest.approx(682)


# -- the view ------------------------------------------------------------------------


def make_view(frontend=None, **kwargs):
    kwargs.setdefault("refresh", 0.02)
    kwargs.setdefault("budget", 1.0)
    return LiveView(frontend or FakeFrontend(), title="%test", **kwargs)


def test_view_draws_in_its_own_thread_and_ends_with_a_static_png():
    fe = FakeFrontend()
    with make_view(fe, interval=0.005) as view:
        assert fe.shown[0].startswith(PNG_MAGIC)  # never an empty widget
        view.mark("f", "start")
        x = bytearray(40 * MiB)  # > 32 MiB: freeing it leaves glibc's mmap threshold alone
        assert wait_for(lambda: len(fe.updates) >= 3)
        view.mark("f", "end")
        del x
    assert fe.threads == {"ipymem-live"}
    assert all(png.startswith(PNG_MAGIC) for png, _ in fe.updates)
    assert "running" in fe.updates[-1][1] and "peak" in fe.updates[-1][1]
    (final,) = fe.finished
    import base64

    assert base64.b64decode(final["image/png"]).startswith(PNG_MAGIC)
    assert "%test" in final["text/plain"] and "peak" in final["text/plain"]
    assert [m.kind for m in view.markers] == ["start", "end"]
    assert view.sampler.timeline.count >= 3
    assert live_threads() == []


def test_view_shares_an_external_sampler_without_owning_it():
    sampler = Sampler(FakeProbe(), interval=0.005)
    fe = FakeFrontend()
    with make_view(fe, sampler=sampler) as view:
        assert not view.own_sampler and not sampler.running
        sampler.start()
        assert wait_for(lambda: len(fe.updates) >= 2)
        sampler.stop()
    assert fe.finished and "image/png" in fe.finished[0]


def test_markers_are_bounded():
    fe = FakeFrontend()
    with make_view(fe) as view:
        for i in range(view_mod.MAX_MARKERS + 50):
            view.mark(f"call {i}", "start")
    assert len(view.markers) == view_mod.MAX_MARKERS
    assert view.markers_dropped == 50
    assert "50 more marks not drawn" in fe.finished[0]["text/plain"]


@pytest.fixture
def slow_frames(monkeypatch):
    """Every live frame costs at least 50 ms of CPU."""
    from ipymem.render import chart

    real_png = chart.Chart.live_png

    def slow_png(self):
        t = time.thread_time()
        while time.thread_time() - t < 0.05:  # 50 ms of CPU per frame
            pass
        return real_png(self)

    monkeypatch.setattr(chart.Chart, "live_png", slow_png)


@pytest.mark.usefixtures("slow_frames")
def test_slow_draws_slow_the_refresh_down():
    fe = FakeFrontend()
    with make_view(fe, refresh=0.01, budget=0.1, allowance=0.0) as view:  # 50 ms / 10% -> >= 0.5 s between frames
        assert wait_for(lambda: fe.updates, timeout=30), "no frame drawn in 30 s"
        time.sleep(1.3)
    window = time.perf_counter() - fe.update_times[0]  # every update fell in it
    # Each frame costs >= 50 ms of CPU, and a frame waits for the budget to pay for the one before:
    # consecutive updates are at least cost / budget apart, however fast or slow the machine,
    # so the window holds at most one update per 0.5 s after the first (3 on an idle machine).
    costs = [cost for _, cost, _ in view.frame_costs]
    gaps = [b - a for a, b in itertools.pairwise(fe.update_times)]
    assert len(costs) == len(fe.updates)  # one cost per update: the gap after update i is paid by cost i
    assert all(gap >= cost / 0.1 for gap, cost in zip(gaps, costs[:-1], strict=True)), (gaps, costs)
    assert 1 <= len(fe.updates) <= 1 + window / 0.5, (len(fe.updates), window)


@pytest.mark.usefixtures("slow_frames")
def test_the_allowance_lets_the_first_frames_come_quickly_and_the_average_stays_in_budget():
    fe = FakeFrontend()
    view = make_view(fe, refresh=0.01, budget=0.1, allowance=0.1)
    with view:
        start = time.perf_counter()
        # two frames' worth of allowance: both at the refresh rate
        assert wait_for(lambda: len(view.frame_costs) >= 2, timeout=30), f"frames in 30 s: {view.frame_costs}"
        quick = time.perf_counter() - start
        time.sleep(1.5)
    elapsed = time.perf_counter() - start
    spent = sum(cost for _, cost, _ in view.frame_costs)
    assert len(view.frame_costs) >= 2
    # Whatever the machine's speed: never more than the allowance plus the budget's share of the time
    # (plus the one frame that overdraws the bucket).
    assert spent <= 0.1 + 0.1 * elapsed + max(cost for _, cost, _ in view.frame_costs), (spent, elapsed, quick)
    # and after the allowance, frames wait for the budget: fewer than the 10 ms refresh would give.
    assert len(view.frame_costs) <= 2 + (elapsed - quick) / 0.45 + 1, view.frame_costs


def test_a_drawing_error_turns_the_view_off_and_says_so_once(monkeypatch):
    from ipymem.render import chart

    calls = []

    def broken_png(self):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("no fonts today")
        return b"\x89PNG\r\n\x1a\nfirst"

    monkeypatch.setattr(chart.Chart, "live_png", broken_png)
    monkeypatch.setattr(chart.Chart, "png", broken_png)
    fe = FakeFrontend()
    ran = False
    with make_view(fe) as view:
        assert wait_for(lambda: view.error is not None)
        assert wait_for(lambda: view._thread is not None and not view._thread.is_alive())
        ran = True  # the user's code goes on
    assert ran
    assert fe.finished == [{"text/plain": "ipymem: live chart turned off for this cell (ValueError: no fonts today)"}]
    assert len(calls) == 2  # no final redraw attempt after the failure


def test_a_frontend_that_goes_away_stops_the_threads_within_an_interval():
    fe = FakeFrontend(fail_update_at=2)
    with make_view(fe, refresh=0.05) as view:
        assert wait_for(lambda: view.error is not None, timeout=30)
        thread = view._thread
        # The drawing thread ends by itself, while the cell still runs (not at close()), and right after
        # the failed update: the first frame, one update, the frame whose update failed, and nothing more.
        thread.join(timeout=5)
        assert not thread.is_alive() and view._stop.is_set()
        assert view.frames == 3 and len(fe.updates) == 1
    assert "ConnectionError: comm closed" in fe.finished[0]["text/plain"]
    assert live_threads() == []


def test_finish_failure_is_reported_not_raised(capsys):
    fe = FakeFrontend(fail_finish=True)
    with make_view(fe):
        pass
    assert "live chart turned off" in capsys.readouterr().err


@pytest.mark.parametrize(("exc", "note"), [(ValueError("boom"), "error"), (KeyboardInterrupt(), "interrupted")])
def test_exceptions_propagate_and_the_final_chart_is_still_shown(exc, note):
    fe = FakeFrontend()
    with pytest.raises(type(exc)), make_view(fe):
        time.sleep(0.05)
        raise exc
    assert "image/png" in fe.finished[0]
    assert fe.finished[0]["text/plain"].endswith(f"{note}>")
    assert live_threads() == []


def test_a_failing_start_leaves_nothing_running(monkeypatch):
    from ipymem.render import chart

    def broken_init(self, *a, **k):
        raise RuntimeError("no matplotlib")

    monkeypatch.setattr(chart.Chart, "__init__", broken_init)
    fe = FakeFrontend()
    with make_view(fe) as view:
        pass
    assert view.error and "no matplotlib" in view.error
    assert fe.shown is None and fe.finished == []
    assert live_threads() == []


def test_only_the_innermost_view_draws():
    outer_fe, inner_fe = FakeFrontend(), FakeFrontend()
    with make_view(outer_fe):
        with make_view(inner_fe):
            n = len(outer_fe.updates)
            assert wait_for(lambda: len(inner_fe.updates) >= 3)
            assert len(outer_fe.updates) <= n + 1  # at most a frame already being drawn
        assert wait_for(lambda: len(outer_fe.updates) >= n + 2)


def test_heap_series_is_drawn_when_tracemalloc_runs():
    import tracemalloc

    fe = FakeFrontend()
    tracemalloc.start()
    try:
        with make_view(fe, heap=True) as view:
            x = [object() for _ in range(50_000)]  # small objects: pymalloc, not the glibc heap
            assert wait_for(lambda: view.heap_sampler.timeline.count >= 3 and fe.updates)
            del x
    finally:
        tracemalloc.stop()
    assert view._chart._heap.get_visible()
    assert "Python heap" in fe.updates[-1][1]


# -- in IPython (no widget frontend) ----------------------------------------------------


def test_terminal_shell_gets_no_widgets(ip):
    from ipymem.live import widgets_supported

    assert not widgets_supported(ip.ip)
    assert isinstance(live_view(ip.ip, title="x"), NullView)
    ip.line("memit", "x = bytearray(2**20)")
    assert all(WIDGET_MIME not in o for o in ip.outputs)
    assert "peak memory" in ip.texts()[-1]
    assert live_threads() == []


def test_no_live_option_and_config_switch(ip, monkeypatch):
    made = []

    def fake_live_view(shell, **kwargs):
        made.append(kwargs["enabled"])
        return NullView(kwargs.get("sampler"))

    monkeypatch.setattr("ipymem.magics.live_view", fake_live_view)
    ip.line("memit", "x = 1")
    ip.line("memit", "--no-live x = 1")
    ip.cell("memit", "--no-live", "x = 1")
    ip.run_line_magic("config", "MemoryMagics.live = False")
    ip.line("memit", "x = 1")
    assert made == [True, False, False, False]
    assert "--no-live" in ip.ip.magics_manager.magics["line"]["memit"].__doc__


def test_memit_with_a_live_view_gives_the_same_result(ip, monkeypatch):
    fe = FakeFrontend()
    views = []

    def fake_live_view(shell, **kwargs):
        kwargs.pop("enabled")
        view = LiveView(fe, **kwargs)
        views.append(view)
        return view

    monkeypatch.setattr("ipymem.magics.live_view", fake_live_view)
    result = ip.cell("memit", "-o", "import time\nx = bytearray(50 * 2**20)\ntime.sleep(0.3)\ndel x")
    assert result.increment >= 45 * MiB
    assert views[0].sampler.timeline.samples() == result.timeline  # one timeline for the chart and the result
    assert "image/png" in fe.finished[0]
    assert "peak" in fe.finished[0]["text/plain"]
    with pytest.raises(ZeroDivisionError):
        ip.line("memit", "1/0")
    assert fe.finished[-1]["text/plain"].endswith("error>")
    assert live_threads() == []


# -- %memwatch ------------------------------------------------------------------------------


def _callbacks(ip, event):
    return [cb for cb in ip.events.callbacks[event] if isinstance(getattr(cb, "__self__", None), MemWatch)]


def test_memwatch_on_off(ip):
    ip.line("memwatch", "on")
    assert len(_callbacks(ip, "pre_run_cell")) == 1 and len(_callbacks(ip, "post_run_cell")) == 1
    ip.line("memwatch", "on")  # idempotent
    assert len(_callbacks(ip, "pre_run_cell")) == 1
    ip.clear()
    ip.run_cell("x = bytearray(40 * 2**20)")
    line = ip.texts()[-1]
    assert line.startswith("RSS: used +") and "MiB above start" in line and line.endswith(" s")
    used = float(line.split("used ")[1].split(" MiB")[0].replace(",", ""))
    peak = float(line.split("peak ")[1].split(" MiB")[0].replace(",", ""))
    assert 35 <= used <= 45 and peak >= used
    ip.run_cell("del x")
    assert "used -" in ip.texts()[-1]
    ip.line("memwatch", "off")
    assert not _callbacks(ip, "pre_run_cell") and not _callbacks(ip, "post_run_cell")
    ip.clear()
    ip.run_cell("y = 1")
    assert ip.texts() == []


def test_memwatch_is_removed_by_unloading(ip):
    ip.line("memwatch", "on")
    ip.run_line_magic("unload_ext", "ipymem")
    assert not _callbacks(ip, "pre_run_cell") and not _callbacks(ip, "post_run_cell")
    assert not any(type(c).__name__ == "MemoryMagics" for c in ip.configurables)


def test_memwatch_bad_argument(ip):
    with pytest.raises(UsageError, match=r"on.*off"):
        ip.line("memwatch", "maybe")


def test_memwatch_with_a_live_frontend(ip):
    frontends = []

    def factory():
        frontends.append(FakeFrontend())
        return frontends[-1]

    watch = MemWatch(ip.ip, live=True, frontend=factory)  # the default refresh: first frame after 0.25 s
    watch.on()
    chart = watch.chart
    assert chart is not None  # built by `on`, so no watched cell pays for matplotlib
    ip.user_ns["frontends"] = frontends
    try:
        # A slow cell: it runs until its live view has sent a frame (or 30 s have passed).
        ip.run_cell(
            "import time\n"
            "deadline = time.monotonic() + 30\n"
            "while not frontends[-1].updates and time.monotonic() < deadline:\n"
            "    time.sleep(0.01)\n"
        )
        assert watch.chart is chart
        ip.run_cell("y = 1")
    finally:
        watch.off()
    slow, quick = frontends
    assert slow.shown == (None, slow.shown[1])  # no frame drawn before display
    assert slow.updates, "no live frame in a 30 s cell"
    assert "above start" in slow.finished[0]["text/plain"]
    # A quick cell draws nothing: no frame comes sooner than 0.25 s after the view is shown, so a cell
    # shorter than that (any `y = 1`) has none.
    assert all(t - quick.shown_at >= 0.25 for t in quick.update_times), quick.update_times
    assert all(t - slow.shown_at >= 0.25 for t in slow.update_times), slow.update_times
    assert "above start" in quick.finished[0]["text/plain"]
    assert live_threads() == []


def test_memwatch_off_inside_a_watched_cell_closes_its_view(ip):
    fe = FakeFrontend()
    watch = MemWatch(ip.ip, live=True, refresh=0.02, frontend=lambda: fe)
    watch.on()
    watch.pre_run_cell()
    assert live_threads()
    watch.off()
    assert live_threads() == []
    watch.post_run_cell()  # no longer registered; harmless if called


def test_chart_limits_follow_the_data_frame_after_frame():
    from ipymem.render.chart import Chart

    chart = Chart()
    chart.update([])  # an empty first frame must not freeze the scale
    chart.update([Sample(0.0, 100 * MiB), Sample(2.0, 300 * MiB)])
    lo, hi = chart.ax.get_ylim()
    assert lo <= 100 <= 300 <= hi < 400
    assert chart.ax.get_xlim()[1] >= 2.0
    chart.update([Sample(0.0, 100 * MiB), Sample(9.0, 900 * MiB)])
    assert chart.ax.get_ylim()[1] >= 900 and chart.ax.get_xlim()[1] >= 9.0


def test_live_frames_reuse_the_background_and_match_a_full_render():
    import io

    from PIL import Image

    from ipymem.render.chart import Chart

    chart = Chart()
    samples = [Sample(i * 0.01, (100 + i % 50) * MiB) for i in range(300)]
    chart.update(samples, sticky=True)
    first = chart.live_png()
    key = chart._background_key
    chart.update(samples[:-5], sticky=True)  # data still fits: the background is reused
    chart.live_png()
    assert chart._background_key == key
    chart.update([*samples, Sample(60.0, 900 * MiB)], sticky=True)  # out of bounds: limits grow
    chart.live_png()
    assert chart._background_key != key
    assert chart.ax.get_xlim()[1] >= 60 and chart.ax.get_ylim()[1] >= 900
    # the restored-background frame looks like a full render of the same state (drawing
    # order on the grid lines changes a few anti-aliased pixels, nothing more)
    chart.update(samples, sticky=True)
    fast = Image.open(io.BytesIO(chart.live_png())).convert("L")
    full = Image.open(io.BytesIO(chart.png())).convert("L")
    assert fast.size == full.size == (600, 200)
    differ = sum(abs(a - b) > 40 for a, b in zip(fast.tobytes(), full.tobytes(), strict=True))
    assert differ < 0.005 * 600 * 200, differ
    assert first.startswith(PNG_MAGIC)


def test_close_is_idempotent_and_magics_without_live_options_get_a_view(ip):
    fe = FakeFrontend()
    view = make_view(fe)
    with view:
        pass
    view.close()
    assert len(fe.finished) == 1

    class Args:  # a magic whose table has no --no-live, -q or --heap
        pass

    magics = ip.ip.magics_manager.registry["MemoryMagics"]
    assert isinstance(magics._live("%other", Args()), NullView)  # terminal shell: no widgets
