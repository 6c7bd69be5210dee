"""The chart tells the table's truth: exact peak, metric on the y axis, the run on the x axis, any theme.

The final chart (the static image the live view leaves in the notebook) and
``plot()`` draw through ``ipymem.render.chart``; the plain-data results in
``models/`` import nothing from the live view.
"""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest

from ipymem.live import LiveView, NullView
from ipymem.models import MemitResult, MemitRun, Sample
from ipymem.render.chart import FOREGROUND, Chart, Peak, render_png

from .conftest import MiB
from .test_live import FakeFrontend, live_threads

ROOT = Path(__file__).resolve().parent.parent / "ipymem"


def _views(monkeypatch):
    """Run the magics' live views on a fake frontend; returns the list of views made."""
    views = []

    def fake_live_view(shell, **kwargs):
        if not kwargs.pop("enabled"):
            return NullView(kwargs.get("sampler"))
        view = LiveView(FakeFrontend(), **kwargs)
        views.append(view)
        return view

    monkeypatch.setattr("ipymem.magics.live_view", fake_live_view)
    return views


def test_final_chart_of_a_spike_states_the_tables_exact_peak(ip, monkeypatch):
    views = _views(monkeypatch)
    # 200 MiB allocated, filled and freed at once: too quick for most samples, not for the high-water mark
    result = ip.line("memit", "-o bytearray(200 * 2**20)")
    assert result.exact and result.increment >= 190 * MiB
    chart = views[0]._chart
    assert chart.stated_peak is not None and chart.stated_peak.value == result.peak
    title = chart.ax.get_title(loc="left")
    assert f"peak {result.peak / MiB:,.1f} MiB (+{result.increment / MiB:,.1f}, exact)" in title, title
    assert chart._exact.get_visible() and chart._exact.get_ydata()[0] == pytest.approx(result.peak / MiB)
    assert chart.ax.get_ylim()[1] >= result.peak / MiB  # the line is on the chart even if no sample saw it
    assert chart.ax.get_ylabel() == "RSS (MiB)"
    last = result.timeline[-1].t
    assert last <= chart.ax.get_xlim()[1] <= last * 1.05 + 1e-6  # the x axis spans the run, no 1 s floor
    # plot() draws the same figure
    fig = result.plot()
    assert fig.axes[0].get_title(loc="left") == title
    assert live_threads() == []


def test_a_short_run_has_a_short_x_axis_and_the_peak_a_dot_at_its_moment():
    samples = [Sample(i * 0.01, (100 + (50 if i == 5 else 0)) * MiB) for i in range(11)]  # a 0.1 s run
    chart = Chart()
    chart.update(samples, peak=Peak(150 * MiB, "exact", 100 * MiB))
    assert chart.ax.get_xlim()[1] == pytest.approx(0.102)
    assert list(chart._exact_dot.get_xdata()) == [0.05]
    assert chart._exact_label.get_text() == "peak 150.0 MiB (+50.0, exact)"
    chart.update(samples, peak=Peak(400 * MiB, "exact", 100 * MiB))  # no sample reached it: a line, no dot
    assert not chart._exact_dot.get_visible() and chart._exact.get_visible()


def test_sampled_and_children_peaks_say_at_least():
    run = MemitRun(baseline=100 * MiB, peak=300 * MiB, end=110 * MiB, duration=0.5, samples=3)
    sampled = MemitResult(statement="x", runs=(run,), peak_method="sampled")
    assert "(+200.0, at least: sampled)" in sampled.plot().axes[0].get_title(loc="left")
    from ipymem.models.memit import MemitParams

    kids = MemitResult(
        statement="x", runs=(run,), params=MemitParams(include_children=True), peak_method="kernel high-water mark"
    )
    ax = kids.plot().axes[0]
    assert "RSS incl. children peak 300.0 MiB (+200.0, at least: children sampled)" in ax.get_title(loc="left")
    assert ax.get_ylabel() == "RSS incl. children (MiB)"


def test_heap_backend_chart_names_the_python_heap(ip, monkeypatch):
    views = _views(monkeypatch)
    ip.run_cell("def grow(n):\n    a = bytearray(n)\n    return len(a)\n")
    # 48 MiB: above glibc's largest dynamic mmap threshold (32 MiB), so freeing it leaves the
    # allocator's thresholds as they were for the tests that run after this one.
    ip.line("mprun", "-q --backend heap -f grow grow(48 * 2**20)")
    assert views == []  # -q: no view at all
    ip.line("mprun", "--backend heap -f grow grow(48 * 2**20)")
    assert views[0].heap_sampler is not None
    assert views[0]._chart.ax.get_ylabel() == "RSS, heap (MiB)"


def test_memtrace_final_chart_states_the_exact_heap_peak(ip, monkeypatch):
    views = _views(monkeypatch)
    result = ip.line("memtrace", "-o -q x = bytearray(40 * 2**20); del x")  # > 32 MiB: see above
    assert views == []
    result = ip.line("memtrace", "-o x = bytearray(40 * 2**20); del x")
    stated = views[0]._chart.stated_peak
    assert stated.value == result.heap_peak and result.peak_increment >= 39 * MiB
    assert "Python heap peak" in views[0]._chart.ax.get_title(loc="left")


def test_the_chart_is_transparent_and_its_text_reads_on_light_and_dark():
    from PIL import Image

    png = render_png([Sample(0.0, 100 * MiB), Sample(1.0, 200 * MiB)], title="t", peak=Peak(210 * MiB, "exact"))
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    assert image.getpixel((2, 2))[3] == 0  # no white box in a dark theme
    assert image.getpixel((image.width - 2, image.height - 2))[3] == 0

    def luminance(hex_colour: str) -> float:
        def channel(c: float) -> float:
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

        r, g, b = (int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
        return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)

    def contrast(a: str, b: str) -> float:
        hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
        return (hi + 0.05) / (lo + 0.05)

    for background in ("#ffffff", "#111111"):  # JupyterLab light and dark --jp-layout-color0
        assert contrast(FOREGROUND, background) >= 3.0


def test_models_import_nothing_above_render():
    """models/ is plain data: it may call renderers (lazily, for display), never the live view or IPython."""
    forbidden = ("live", "magics", "shell", "api", "IPython", "ipywidgets", "matplotlib")
    for path in (ROOT / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [(node.module or "").lstrip(".")]
                if node.level and node.module is None:
                    names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


def test_a_heap_peak_is_dotted_on_the_heap_series_not_on_rss():
    rss = [Sample(i * 0.1, 200 * MiB) for i in range(10)]
    heap = [(i * 0.1, (i if i <= 6 else 1) * MiB) for i in range(10)]
    chart = Chart()
    chart.update(rss, heap, peak=Peak(6 * MiB, "exact", 0, what="Python heap"))
    assert list(chart._exact_dot.get_xdata()) == [pytest.approx(0.6)]
    assert chart._exact_label.get_text() == "Python heap peak 6.0 MiB (+6.0, exact)"


def test_plot_displays_as_png_without_pyplot():
    run = MemitRun(baseline=100 * MiB, peak=300 * MiB, end=110 * MiB, duration=0.5, samples=3)
    fig = MemitResult(statement="x", runs=(run,), timeline=(Sample(0.0, 100 * MiB), Sample(0.5, 110 * MiB))).plot()
    from IPython.core.formatters import PNGFormatter

    assert PNGFormatter()(fig).startswith(b"\x89PNG")  # what a notebook shows for ``result.plot()``


def test_the_static_chart_left_in_the_notebook_looks_like_the_last_live_frame():
    import base64

    from PIL import Image

    from .test_live import make_view, wait_for

    fe = FakeFrontend()
    with make_view(fe, refresh=0.01) as view:
        assert wait_for(lambda: fe.updates, timeout=30), "no live frame in 30 s"
        view.conclude("%test · done", Peak(view.sampler.read(), "exact"))
    live = Image.open(io.BytesIO(fe.updates[-1][0])).convert("RGBA")
    final = Image.open(io.BytesIO(base64.b64decode(fe.finished[0]["image/png"]))).convert("RGBA")
    assert live.size == final.size  # same place, same size
    for image in (live, final):  # same theme-neutral look: transparent, the same text colour
        assert image.getpixel((1, 1))[3] == 0
    grey = tuple(int(FOREGROUND[i : i + 2], 16) for i in (1, 3, 5))
    for image in (live, final):
        colours = {c for _, c in image.getcolors(maxcolors=1 << 20)}
        assert (*grey, 255) in colours, "no axis text in the theme grey"
    assert "%test · done" in fe.finished[0]["text/plain"]
    assert live_threads() == []
