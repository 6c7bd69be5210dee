"""The HTML reports' markup for notebooks: what the browser test checks by eye and DOM, checked here per cell.

Inline styles only (reports survive sanitising and nbconvert): code cells left-aligned,
monospace, ``white-space: pre`` inside a horizontally scrolling block; numbers right-aligned
with tabular figures; headers of at most two lines; colours from JupyterLab variables with
fallbacks; no bar where a figure reads zero; the heaviest line in bold.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from ipymem.models import MemitResult, MemitRun
from ipymem.models.lines import FunctionProfile, LineStats, MprunParams, MprunResult
from ipymem.render import compare_html, memit_html, mprun_html
from ipymem.render._html import caption_for

from .conftest import MiB

LONG = "    values = [" + ", ".join(f"x{i}" for i in range(30)) + "]  # a line of 150 characters and more"


class Cells(HTMLParser):
    """Collects (tag, style, text) of every td/th and the styles of divs."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict] = []
        self.divs: list[str] = []
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("td", "th"):
            self._open = {"tag": tag, "style": attrs.get("style", ""), "html": "", "title": attrs.get("title")}
            self.cells.append(self._open)
        elif tag == "div":
            self.divs.append(attrs.get("style", ""))
        if self._open is not None and tag == "br":
            self._open["html"] += "<br>"

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open["html"] += data


def parse(html: str) -> Cells:
    p = Cells()
    p.feed(html)
    return p


def mprun_result() -> MprunResult:
    lines = (
        LineStats(1, "def f(n):"),
        LineStats(2, "    a = bytearray(n)", 1, 150 * MiB, 50 * MiB, 50 * MiB),
        LineStats(3, LONG, 1, 150 * MiB, 0, 0),
        LineStats(4, "    del a", 1, 100 * MiB, -50 * MiB, 0),
    )
    f = FunctionProfile("f", "<cell>", 1, lines, calls=1, label="Cell In[1]", peak=50 * MiB)
    return MprunResult((f,), MprunParams(memory_method="RSS from /proc/self/statm, peaks from the kernel"))


def test_mprun_code_cells_are_left_aligned_pre_monospace_in_a_scrolling_block():
    html = mprun_html(mprun_result())
    cells = parse(html)
    code = [c for c in cells.cells if c["tag"] == "td" and "white-space:pre" in c["style"]]
    assert [c["html"] for c in code] == ["def f(n):", "    a = bytearray(n)", LONG, "    del a"]  # indentation kept
    assert len(LONG) >= 150
    for c in code:
        assert "text-align:left" in c["style"] and "font-family:var(--jp-code-font-family" in c["style"]
    assert any("overflow-x:auto" in d for d in cells.divs)  # a long line scrolls inside the output
    numbers = [c for c in cells.cells if c["tag"] == "td" and "MiB" in c["html"]]
    assert numbers and all("text-align:right" in c["style"] and "tabular-nums" in c["style"] for c in numbers)


def test_headers_have_at_most_two_lines_and_name_the_metric():
    for html in (mprun_html(mprun_result()), memit_html(memit_result())):
        heads = [c for c in parse(html).cells if c["tag"] == "th"]
        assert heads
        for h in heads:
            assert h["html"].count("<br>") <= 1 and "white-space:nowrap" in h["style"], h
    heads = {c["html"] for c in parse(mprun_html(mprun_result())).cells if c["tag"] == "th"}
    assert {"Mem usage<br>RSS", "Increment<br>RSS", "Peak<br>RSS"} <= heads


def test_bars_only_where_memory_moved_and_the_heaviest_line_is_bold():
    cells = parse(mprun_html(mprun_result())).cells
    rows = {}
    for c in cells:
        if c["tag"] == "td" and re.fullmatch(r"\d+", c["html"]):
            current = rows.setdefault(int(c["html"]), [])
        elif c["tag"] == "td" and rows:
            current.append(c)
    inc = {n: r[1] for n, r in rows.items() if len(r) > 1}
    assert "linear-gradient" in inc[2]["style"] and "linear-gradient" in inc[4]["style"]  # +50 and -50 MiB
    assert "linear-gradient" not in inc[3]["style"]  # 0.00 MiB: nothing drawn
    assert all("font-weight:bold" in c["style"] for c in rows[2])
    assert not any("font-weight:bold" in c["style"] for c in rows[3] + rows[4])


def test_colours_come_from_jupyterlab_variables_with_fallbacks():
    for html in (mprun_html(mprun_result()), memit_html(memit_result())):
        colours = re.findall(r"color:([^;\"]+)", html)
        assert colours
        for colour in colours:
            assert colour.startswith("var(--jp-") or colour == "inherit", colour
        assert "#555" not in html and "#888" not in html  # fixed greys fail on dark themes


def memit_result(**kw) -> MemitResult:
    run = MemitRun(baseline=100 * MiB, peak=300 * MiB, end=110 * MiB, duration=0.5, samples=3)
    return MemitResult(statement=kw.pop("statement", "x = 1"), runs=(run,), peak_method="kernel high-water mark", **kw)


def test_captions_say_what_was_measured():
    line = caption_for("memit", "x = 1")
    assert line.startswith("%memit <code") and ">x = 1</code>" in line and "setup" not in line
    cell = memit_html(memit_result(statement="import time\na = bytearray(10)\ndel a\n", setup="import numpy"))
    assert "%%memit cell of 3 lines" in cell and "%memit import time" not in cell
    assert "setup (not measured)" in cell and "import numpy" in cell
    one = memit_html(memit_result(statement="a = 1", setup="b = 2"))
    assert "%%memit <code" in one and "setup (not measured)" in one


def test_children_figures_say_at_least_and_sampled():
    from ipymem.models.memit import MemitParams

    html = memit_html(memit_result(params=MemitParams(include_children=True)))
    assert "peak at least this" in html and "children sampled" in html
    assert "exact peak from" not in html


def test_mprun_footer_says_its_memory_once():
    html = mprun_html(mprun_result())
    assert "RSS: RSS" not in html and "RSS from /proc/self/statm" in html
    heap = MprunResult((), MprunParams(backend="heap", memory_method="Python heap from tracemalloc"))
    assert "Python heap: Python heap" not in mprun_html(heap)


def test_compare_labels_are_left_aligned_and_headers_short():
    from ipymem import compare

    a, b = memit_result(statement="a"), memit_result(statement="b")
    cells = parse(compare_html(compare(a, b))).cells
    labels = [c for c in cells if c["tag"] == "td" and c["html"] in ("a", "b")]
    assert len(labels) == 2 and all("text-align:left" in c["style"] for c in labels)
    heads = [c for c in cells if c["tag"] == "th"]
    assert all(h["html"].count("<br>") <= 1 for h in heads)
    assert any(h["html"] == "Increment<br>RSS" and h["title"] for h in heads)  # detail in the tooltip


def test_children_sampling_is_said_once():
    from ipymem.models.memit import MemitParams
    from ipymem.render import memit_text

    result = memit_result(
        params=MemitParams(include_children=True),
        notes=("child processes are sampled: their share of the peak is a lower bound",),
    )
    for out in (memit_html(result), memit_text(result)):
        assert out.count("sampled") == 1, out
