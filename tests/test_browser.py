"""Browser test: JupyterLab in headless chromium, driven by Playwright (recipe: BROWSER.md).

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


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    for module in ("jupyterlab", "playwright", "jupyterlab_widgets"):
        try:
            __import__(module)
        except ImportError:
            return f"Python package {module!r} not installed (pip install jupyterlab playwright)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab():
    reason = _missing()
    if reason:
        pytest.skip(f"browser test needs chromium, jupyterlab and playwright: {reason}")
    import psutil

    # A short path: chromium's singleton socket path must fit in a sockaddr_un (108 bytes).
    w = Path(tempfile.mkdtemp(prefix="ipm-"))
    for d in ("config/labconfig", "runtime", "ws", "settings", "ipython", "root", "tmp", "xdg-config", "xdg-cache"):
        (w / d).mkdir(parents=True, exist_ok=True)
    (w / "config/labconfig/page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "live", "metadata": {}, "outputs": [],
                   "source": CELL}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }  # fmt: skip
    (w / "root/live.ipynb").write_text(json.dumps(nb))
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
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
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
                raise RuntimeError("jupyter lab did not start:\n" + (w / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        yield {"url": f"http://127.0.0.1:{port}/lab/tree/live.ipynb?token={token}", "dir": w, "server": server}
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


def test_live_chart_moves_in_jupyterlab_then_static_chart_and_table(lab):

    ARTIFACTS.mkdir(exist_ok=True)
    w = lab["dir"]
    old_tmpdir = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(w / "tmp")  # chromium's temporary profile goes there
    try:
        _drive(lab, w)
    finally:
        if old_tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmpdir


def _drive(lab, w):
    from playwright.sync_api import sync_playwright

    t_start = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"],
            env={**os.environ, "XDG_CONFIG_HOME": str(w / "xdg-config"), "XDG_CACHE_HOME": str(w / "xdg-cache")},
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(lab["url"])
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
            browser.close()
    print(f"browser test: {time.monotonic() - t_start:.1f} s after the server was up; {len(running)} frames")
    if os.environ.get("IPYMEM_UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(ARTIFACTS / "live-cell-running.png", ROOT / "docs" / "live-view.png")
