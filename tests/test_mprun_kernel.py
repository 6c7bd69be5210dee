"""%mprun in a real Jupyter kernel (nbclient): cell names, HTML output, top-level await on the kernel loop."""

from __future__ import annotations

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.kernel


def run_notebook(*sources: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": ROOT}})
    client.execute()
    return nb


def test_kernel_html_cell_name_and_top_level_await():
    nb = run_notebook(
        "%load_ext ipymem",
        "import asyncio\n"
        "async def fetch(n):\n    await asyncio.sleep(0)\n    data = bytearray(n)\n    return len(data)",
        "%%mprun -f fetch\nout = await fetch(2**20)",
        "out",
    )
    outputs = nb.cells[2].outputs
    # the live view leaves a static chart (image/png) before the report table
    (display,) = [o for o in outputs if o["output_type"] == "display_data" and "text/html" in o["data"]]
    html, text = display["data"]["text/html"], display["data"]["text/plain"]
    assert "<table" in html and "Cell In[2]" in html
    assert "data = bytearray(n)" in text
    assert "helper thread" not in text  # awaited on the kernel's own loop, in the kernel's thread
    assert nb.cells[3].outputs[0]["data"]["text/plain"] == str(2**20)


def test_T_leaves_only_the_saved_to_line(tmp_path):
    """memory_profiler's -T in a notebook: the live chart shows while it runs, then only the saved-to line stays."""
    report = tmp_path / "report.txt"
    nb = run_notebook(
        "%load_ext ipymem",
        "import time\ndef work():\n    data = bytearray(2**20)\n    time.sleep(0.5)\n    return len(data)",
        f"r = %mprun -r -T {report} -f work work()",
        "r.function('work').calls",
    )
    outputs = nb.cells[2].outputs
    shown = [o["data"] for o in outputs if o["output_type"] == "display_data"]
    shown += [{"text/plain": o["text"]} for o in outputs if o["output_type"] == "stream"]
    assert shown == [{"text/plain": f"*** Profile printout saved to text file {report}."}]
    assert "data = bytearray(2**20)" in report.read_text()
    assert nb.cells[3].outputs[0]["data"]["text/plain"] == "1"
