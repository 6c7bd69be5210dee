"""Drop-in for memory_profiler: its kind of notebook runs unchanged but for the extension name."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "notebooks" / "05-from-memory-profiler.ipynb"
SHARED_COLUMNS = ["Line #", "Mem usage", "Increment", "Occurrences", "Line Contents"]


def _execute(nb, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from run_notebooks import execute
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    path = tmp_path / "in" / NOTEBOOK.name
    path.parent.mkdir()
    nbformat.write(nb, path)
    return execute(path, tmp_path / "out")


def _texts(nb) -> list[str]:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            assert o.output_type != "error", "".join(o.get("traceback", []))
            out.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
    return out


def _header_order(texts: list[str]) -> list[list[str]]:
    orders = []
    for text in texts:
        for line in text.splitlines():
            if line.startswith("Line #"):
                orders.append([c for c in SHARED_COLUMNS if c in line and re.search(re.escape(c), line)])
                positions = [line.index(c) for c in SHARED_COLUMNS]
                assert positions == sorted(positions), line
    return orders


def test_the_notebook_differs_from_a_memory_profiler_notebook_only_in_the_extension_name():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert code[0] == "%load_ext ipymem"
    assert not any("ipymem" in c for c in code[1:])
    joined = "\n".join(code)
    for usage in ("%memit ", "%%memit ", "%mprun -f", "%mprun -T ", "%mprun -r ", "%%file "):
        assert usage in joined


@pytest.mark.kernel
def test_runs_with_ipymem_and_reads_the_same_way(tmp_path):
    texts = _texts(_execute(nbformat.read(NOTEBOOK, as_version=4), tmp_path))
    assert any(t.startswith("peak memory:") for t in texts)
    orders = _header_order(texts)
    assert len(orders) >= 3 and all(o == SHARED_COLUMNS for o in orders)


@pytest.mark.kernel
@pytest.mark.skipif(importlib.util.find_spec("memory_profiler") is None, reason="memory_profiler not installed")
def test_the_same_notebook_runs_with_memory_profiler(tmp_path):
    """Proof that the notebook is a memory_profiler notebook: the incumbent runs it too."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    first.source = "%load_ext memory_profiler"
    try:
        texts = _texts(_execute(nb, tmp_path))
    except Exception as exc:  # e.g. memory_profiler importing distutils on 3.12+
        if "distutils" in str(exc):
            pytest.skip("memory_profiler needs distutils on this Python")
        raise
    assert any("peak memory:" in t for t in texts)
    assert _header_order(texts)  # its %mprun tables have the shared columns in the same order
