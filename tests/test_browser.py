"""Browser test: JupyterLab in headless chromium, driven by Playwright. The recipe: Debian's chromium via ``executable_path``, never ``playwright install``.

A cell runs ``%memit`` on ~6 s of work that allocates as it goes.  While the
prompt says ``[*]``, the live chart's ``<img>`` must change (a
MutationObserver logs every new ``src``); afterwards the widget must have
been replaced by a static PNG and the result table must be visible.
Screenshots go to ``test-artifacts/``.

Needs: ``/usr/bin/chromium`` (Debian ``chromium``), and the Python packages
``jupyterlab`` and ``playwright`` (never ``playwright install``: the system
chromium is used).  Skips with a message when any is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("IPYMEM_CHROMIUM", "/usr/bin/chromium")

CELL = """\
%load_ext ipymem
import os, time

def work(seconds=6.0):  # 6 s, and on a slow machine until the test has its screenshots
    chunks, t0, last = [], time.perf_counter(), 0.0
    while (t := time.perf_counter() - t0) < seconds or (not os.path.exists("shots.done") and t < 90):
        if t - last > 0.3:
            chunks.append(bytearray(10 * 2**20))
            for c in chunks[-1:]:
                c[:: 4096] = b"x" * len(c[:: 4096])
            last = t
        sum(range(2000))
    return len(chunks)

%memit work()
"""

OBSERVER = """
() => {
  window.__livelog = [];
  const nb = document.querySelector('.jp-Notebook');
  const snap = () => {
    const cell = document.querySelector('.jp-Notebook .jp-CodeCell');
    const prompt = cell ? cell.querySelector('.jp-InputArea-prompt').textContent.trim() : '';
    const img = cell ? cell.querySelector('.livemem img.widget-image') : null;
    window.__livelog.push({t: performance.now(), prompt, src: img ? img.getAttribute('src') : null});
  };
  new MutationObserver(snap).observe(nb, {subtree: true, childList: true, characterData: true,
                                          attributes: true, attributeFilter: ['src', 'class']});
  snap();
}
"""

#: One notebook with every report: (screenshot name, cell source).  Sizes defeat allocator reuse
#: (numpy buffers above glibc's mmap threshold), so the tables show lines that really move memory.
REPORTS = [
    (
        "setup",
        """\
%load_ext ipymem
import numpy as np
import ipymem

def parse_rows(n):
    rows = [[i, i * 0.5, "x" * 8] for i in range(n)]
    return rows

def to_columns(rows):
    ids = np.array([r[0] for r in rows], dtype=np.int64); values = np.array([r[1] for r in rows], dtype=np.float64) * 2
    return ids, values

def summarize(ids, values):
    wide = np.repeat(values, 8)
    mean = float(wide.mean())
    del wide
    return mean

cache = []
def handle():
    cache.append(bytearray(2**20))
    return len([str(i) for i in range(20_000)])
""",
    ),
    ("memit", "%memit np.ones((3000, 3000)) + 1"),
    (
        "cell-memit",
        """\
%%memit x = np.random.rand(1_000_000, 5)
z = (x - x.mean(axis=0)) / x.std(axis=0)
total = float(z.sum())
del z
""",
    ),
    ("mprun", "%mprun -f parse_rows -f to_columns -f summarize summarize(*to_columns(parse_rows(300_000)))"),
    (
        "cell-mprun",
        """\
%%mprun
a = np.ones(5_000_000)
b = a * 2
del a
total = float(b.sum())
del b
""",
    ),
    ("memtrace", "%memtrace -r 3 handle()"),
    (
        "compare",
        """\
small = %memit -o -q np.ones((1000, 1000))
large = %memit -o -q np.ones((2000, 2000))
ipymem.compare({"1000 x 1000": small, "2000 x 2000": large})
""",
    ),
    ("memwatch-on", "%memwatch on"),
    ("memwatch", "x = np.ones(10_000_000); x += 1; del x"),
    ("memwatch-off", "%memwatch off"),
    ("plot", "large.plot()"),
]
REPORT_CELLS = [src for _, src in REPORTS]
#: The cells whose output is a report to check and photograph.
CHECKED = ["memit", "cell-memit", "mprun", "cell-mprun", "memtrace", "compare", "memwatch", "plot"]

#: From the DOM of one output area: alignment, clipping, header lines, contrast against the real
#: background (JupyterLab's zebra rows and bars included), and the charts' pixels.
CHECK_OUTPUT = """
(area) => {
  const problems = [], stats = {texts: 0, minBody: 99, minOther: 99, imgs: 0, codeCells: 0, heads: 0};
  const parse = (c) => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(',').map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const over = (top, bottom) => { const a = top[3];
    return [0, 1, 2].map(i => top[i] * a + bottom[i] * (1 - a)).concat([1]); };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  const backgrounds = (el) => {  // the composited background under el, and under its bar if it has one
    const chain = [];
    for (let e = el; e; e = e.parentElement) chain.push(e);
    let bg = [255, 255, 255, 1];
    for (const e of chain.reverse()) { const c = parse(getComputedStyle(e).backgroundColor); if (c && c[3] > 0) bg = over(c, bg); }
    const out = [bg];
    const img = getComputedStyle(el).backgroundImage;
    if (img.includes('gradient')) { const c = parse(img); if (c) out.push(over(c, bg)); }
    return out;
  };
  const walker = document.createTreeWalker(area, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.textContent.trim()) continue;
    const el = n.parentElement, st = getComputedStyle(el);
    if (st.visibility === 'hidden' || st.display === 'none') continue;
    const fg = parse(st.color), body = !!el.closest('tbody');
    for (const bg of backgrounds(el.closest('td,th') || el)) {
      const r = ratio(over(fg, bg), bg);
      stats.texts++;
      if (body) stats.minBody = Math.min(stats.minBody, r); else stats.minOther = Math.min(stats.minOther, r);
      if (r < (body ? 4.5 : 3.0)) problems.push(`contrast ${r.toFixed(2)} of "${n.textContent.trim().slice(0, 40)}"`);
    }
  }
  const outRect = area.getBoundingClientRect();
  const scrolls = (el) => { for (let e = el.parentElement; e && e !== area.parentElement; e = e.parentElement) {
      const o = getComputedStyle(e).overflowX; if (o === 'auto' || o === 'scroll') return e; } return null; };
  for (const td of area.querySelectorAll('td, th')) {
    const st = getComputedStyle(td);
    if (st.whiteSpace === 'pre' || /mono/i.test(st.fontFamily) && td.tagName === 'TD') {
      stats.codeCells++;
      if (!['left', 'start'].includes(st.textAlign)) problems.push(`code cell aligned ${st.textAlign}`);
      const r = td.getBoundingClientRect();
      const box = scrolls(td);
      const fits = r.right <= outRect.right + 1 && td.scrollWidth <= td.clientWidth + 1;
      const scrollable = box && box.scrollWidth > box.clientWidth;
      if (!fits && !scrollable) problems.push(`code cell clipped: "${td.textContent.slice(0, 40)}"`);
      if (!fits && box && r.right > box.getBoundingClientRect().right + 1 && !scrollable) problems.push('no scroll');
    }
  }
  for (const th of area.querySelectorAll('th')) {
    stats.heads++;
    const range = document.createRange(); range.selectNodeContents(th);
    const tops = [];
    for (const rect of range.getClientRects()) if (rect.width > 0 && !tops.some(t => Math.abs(t - rect.bottom) < 6)) tops.push(rect.bottom);
    if (tops.length > 2) problems.push(`header "${th.textContent.trim()}" on ${tops.length} lines`);
  }
  const charts = [];
  for (const img of area.querySelectorAll('img')) {
    if (!img.naturalWidth) { problems.push('an image did not load'); continue; }
    stats.imgs++;
    const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d'); g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let white = 0, n = 0;
    for (let i = 0; i < d.length; i += 4 * 7) { n++; if (d[i + 3] > 200 && d[i] > 235 && d[i + 1] > 235 && d[i + 2] > 235) white++; }
    charts.push({w: c.width, h: c.height, white: white / n});
  }
  return {problems, stats, charts, text: area.innerText.slice(0, 400)};
}
"""


def _open(page, url: str) -> None:
    """Open a notebook and wait until its kernel is really there."""
    page.goto(url)
    page.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=60_000)
    page.wait_for_function(
        """() => {
            const ind = document.querySelector('.jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator');
            const name = document.querySelector('.jp-NotebookPanel-toolbar .jp-Toolbar-kernelName');
            const n = name ? name.textContent.trim() : '';
            return ind && ind.dataset.status === 'idle' && n !== '' && n !== 'No Kernel';
        }""",
        timeout=60_000,
    )


def _set_theme(page, theme: str) -> None:
    light = "true" if theme == "light" else "false"
    page.evaluate(
        f"window.jupyterapp.commands.execute('apputils:change-theme', {{theme: 'JupyterLab {theme.title()}'}})"
    )
    page.wait_for_function(f"() => document.body.dataset.jpThemeLight === '{light}'", timeout=30_000)
    page.wait_for_timeout(500)  # the theme's stylesheet applies after the attribute changes


@pytest.mark.parametrize("frontend", ["lab", "notebook"])
def test_every_report_reads_in_light_and_dark(servers, chromium, frontend):
    """Every report, in JupyterLab 4 and Notebook 7, light and dark: asserted from the DOM, photographed."""
    ARTIFACTS.mkdir(exist_ok=True)
    server = servers(frontend)
    page = chromium.new_page(viewport={"width": 1100, "height": 900})
    try:
        _open(page, server["reports"])
        _set_theme(page, "light")
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        n = len(REPORTS)
        page.wait_for_function(
            f"""() => {{
                const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')];
                return prompts.length >= {n} && prompts.slice(0, {n}).every(p => /^\\[\\d+\\]:$/.test(p.textContent.trim()));
            }}""",
            timeout=150_000,
        )
        cells = page.locator(".jp-Notebook .jp-CodeCell")
        for i, (name, _) in enumerate(REPORTS):
            text = cells.nth(i).locator(".jp-OutputArea").first.inner_text()
            assert "Traceback" not in text and "Error" not in text, f"{name}: {text[-800:]}"
        for theme in ("light", "dark"):
            _set_theme(page, theme)
            for i, (name, _) in enumerate(REPORTS):
                if name not in CHECKED:
                    continue
                cell = cells.nth(i)
                cell.scroll_into_view_if_needed()
                area = cell.locator(".jp-OutputArea").first
                found = area.evaluate(CHECK_OUTPUT)
                cell.screenshot(path=str(ARTIFACTS / f"{frontend}-{theme}-{name}.png"))
                where = f"{frontend}, {theme}, {name}"
                assert not found["problems"], f"{where}: {found['problems'][:8]}"
                assert found["stats"]["texts"] > 0, f"{where}: no text"
                if name in ("mprun", "cell-mprun", "memtrace"):
                    assert found["stats"]["codeCells"] > 0, f"{where}: no code cells found"
                if name in ("memit", "cell-memit", "mprun", "cell-mprun", "memtrace", "plot"):
                    assert found["charts"], f"{where}: no chart"
                for chart in found["charts"]:
                    assert chart["w"] >= 300, f"{where}: {chart}"
                    if theme == "dark":
                        assert chart["white"] < 0.05, f"{where}: the chart is a white box in the dark theme: {chart}"
                if name == "memwatch":
                    assert "RSS: used" in found["text"], found["text"]
                if name == "cell-memit":
                    assert "cell of 3 lines" in found["text"] and "setup" in found["text"], found["text"]
    finally:
        with contextlib.suppress(Exception):
            _set_theme(page, "light")  # the theme is a saved setting: leave the server as the next test expects
        page.close()
    if os.environ.get("IPYMEM_UPDATE_DOCS_SCREENSHOT") and frontend == "lab":
        for theme in ("light", "dark"):
            shutil.copy(ARTIFACTS / f"lab-{theme}-mprun.png", ROOT / "docs" / f"mprun-{theme}.png")


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    for module in ("jupyterlab", "notebook", "playwright", "jupyterlab_widgets"):
        try:
            __import__(module)
        except ImportError:
            return f"Python package {module!r} not installed (pip install -e '.[browser]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BROWSER_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage"]  # fmt: skip


def _write_notebook(path: Path, cells: list[str]) -> None:
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                   "source": src} for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }  # fmt: skip
    path.write_text(json.dumps(nb))


@contextlib.contextmanager
def _server(frontend: str):
    """One Jupyter server (``lab`` or ``notebook``) in a fresh directory."""
    import psutil

    # A short path: chromium's singleton socket path must fit in a sockaddr_un (108 bytes).
    w = Path(tempfile.mkdtemp(prefix="ipm-"))
    for d in ("config/labconfig", "runtime", "ws", "settings", "ipython", "root", "tmp", "xdg-config", "xdg-cache"):
        (w / d).mkdir(parents=True, exist_ok=True)
    # exposeAppInBrowser: window.jupyterapp, so the test runs commands (run all, change theme) as a user would.
    (w / "config/labconfig/page_config.json").write_text(
        json.dumps(
            {
                "disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True},
                "exposeAppInBrowser": True,
            }
        )
    )
    _write_notebook(w / "root/live.ipynb", [CELL])
    _write_notebook(w / "root/reports.ipynb", REPORT_CELLS)
    port, token = _free_port(), uuid.uuid4().hex
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(w / "config"),
        JUPYTER_RUNTIME_DIR=str(w / "runtime"),
        JUPYTERLAB_WORKSPACES_DIR=str(w / "ws"),
        JUPYTERLAB_SETTINGS_DIR=str(w / "settings"),
        IPYTHONDIR=str(w / "ipython"),
        MPLCONFIGDIR=str(Path.home() / ".cache" / "ipymem-test-mpl"),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    log = open(w / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", frontend, "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={w / 'root'}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    children: list = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"jupyter {frontend} did not start:\n" + (w / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"
        # In Lab, each notebook in a workspace of its own, so one test's open tabs are not the next one's.
        url = (
            (lambda name: f"{base}/lab/workspaces/{name}/tree/{name}.ipynb?token={token}")
            if frontend == "lab"
            else (lambda name: f"{base}/notebooks/{name}.ipynb?token={token}")
        )
        yield {
            "url": url("live"),
            "reports": url("reports"),
            "dir": w,
            "server": server,
            "frontend": frontend,
        }
    finally:
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(server.pid).children(recursive=True)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for child in children:
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
        log.close()
        shutil.rmtree(w, ignore_errors=True)


@pytest.fixture(scope="module")
def servers():
    """One server per frontend for the whole file, started when a test first asks for it."""
    reason = _missing()
    if reason:
        pytest.skip(f"browser test needs chromium, jupyterlab, notebook and playwright: {reason}")
    with contextlib.ExitStack() as stack:
        started: dict[str, dict] = {}

        def get(frontend: str) -> dict:
            if frontend not in started:
                started[frontend] = stack.enter_context(_server(frontend))
            return started[frontend]

        yield get


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """One headless chromium for the file (Playwright driving Debian's chromium, never a downloaded one)."""
    from playwright.sync_api import sync_playwright

    w = Path(tempfile.mkdtemp(prefix="ipm-b-"))
    old_tmpdir = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(w)  # chromium's temporary profile goes there
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS,
                env={**os.environ, "XDG_CONFIG_HOME": str(w / "xdg-config"), "XDG_CACHE_HOME": str(w / "xdg-cache")},
            )  # fmt: skip
            try:
                yield browser
            finally:
                browser.close()
    finally:
        if old_tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmpdir
        shutil.rmtree(w, ignore_errors=True)


@pytest.fixture
def lab(servers):
    return servers("lab")


def test_live_chart_moves_in_jupyterlab_then_static_chart_and_table(lab, chromium):
    ARTIFACTS.mkdir(exist_ok=True)
    w = lab["dir"]
    t_start = time.monotonic()
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    try:
        _open(page, lab["url"])
        page.evaluate(OBSERVER)
        cell = page.locator(".jp-Notebook .jp-CodeCell").first
        cell.locator(".jp-InputArea-editor").first.click()
        page.keyboard.press("Shift+Enter")
        prompt = cell.locator(".jp-InputArea-prompt").first
        page.wait_for_function(
            "() => document.querySelector('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')"
            ".textContent.trim() === '[*]:'",
            timeout=10_000,
        )
        chart = cell.locator(".livemem").first
        chart.wait_for(timeout=30_000)
        page.wait_for_function(
            "() => window.__livelog.some(e => e.src && e.prompt === '[*]:')",
            timeout=30_000,
        )
        first = chart.screenshot(path=str(ARTIFACTS / "live-1.png"))
        page.wait_for_function(
            """() => {
                const log = window.__livelog;
                const first = log.find(e => e.src && e.prompt === '[*]:');
                const later = new Set(log.filter(e => e.src && e.prompt === '[*]:' && e.t > first.t)
                                         .map(e => e.src));
                later.delete(first.src);
                return later.size >= 2;
            }""",
            timeout=20_000,
        )
        page.wait_for_timeout(300)  # let the new frame paint
        second = chart.screenshot(path=str(ARTIFACTS / "live-2.png"))
        assert prompt.text_content().strip() == "[*]:", "the cell finished before two more frames arrived"
        assert first != second, "the chart did not change while the cell ran"
        # A later view of the running cell, for the README (not an assertion: the cell may end first).
        with contextlib.suppress(Exception):
            page.wait_for_function("() => performance.now() - window.__livelog[0].t > 5000", timeout=8_000)
        if prompt.text_content().strip() == "[*]:":
            cell.screenshot(path=str(ARTIFACTS / "live-cell-running.png"))
        (w / "root" / "shots.done").touch()  # the cell may end now

        page.wait_for_function(
            "() => /^\\[\\d+\\]:$/.test(document.querySelector('.jp-Notebook .jp-CodeCell "
            ".jp-InputArea-prompt').textContent.trim())",
            timeout=60_000,
        )
        log = page.evaluate("window.__livelog")
        running = {e["src"] for e in log if e["src"] and e["prompt"] == "[*]:"}
        assert len(running) >= 3, f"only {len(running)} distinct frames while the cell ran"

        final = cell.locator(".jp-OutputArea-output img:not(.widget-image)").first
        final.wait_for(timeout=10_000)
        assert final.get_attribute("src").startswith("data:image/png;base64,")
        assert cell.locator(".livemem").count() == 0, "the live widget was not replaced"
        table = cell.locator(".jp-OutputArea-output table").first
        table.wait_for(timeout=10_000)
        assert "peak" in cell.locator(".jp-OutputArea").first.inner_text().lower()
        cell.screenshot(path=str(ARTIFACTS / "live-cell-final.png"))
        page.screenshot(path=str(ARTIFACTS / "live-page-final.png"))
    finally:
        page.close()
    print(f"browser test: {time.monotonic() - t_start:.1f} s after the server was up; {len(running)} frames")
    if os.environ.get("IPYMEM_UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(ARTIFACTS / "live-cell-running.png", ROOT / "docs" / "live-view.png")
