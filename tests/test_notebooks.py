"""The example notebooks execute headless in a real kernel, so they never rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))


@pytest.mark.kernel
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_example_notebook_executes(path, tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from run_notebooks import execute
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    nb = execute(path, tmp_path)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    texts = [
        o.get("text", "") or o.get("data", {}).get("text/plain", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    ]
    assert any("peak memory:" in t or "Line #" in t or "Cell In" in t for t in texts)
    # summarize() builds ~6 MiB right after to_typed() dropped its intermediates: its lines can land in
    # memory the allocator already holds free, so RSS honestly reads 0.00 on some runs (issue 21, open).
    flat = [name for t in texts for name in silent_functions(t) if name != "summarize"]
    assert flat == [], f"%mprun tables where every line reads 0.00: {flat}"


ROW = re.compile(r"^\s*\d+\s+[\d.,]+ [KMG]iB\s+([+-]?[\d.,]+) [KMG]iB\s+([\d.,]+) [KMG]iB\s+\d+")


def silent_functions(text: str) -> list[str]:
    """Names of the functions in a %mprun text report none of whose lines moved memory (all 0.00):
    a table that reads as broken, whatever the prose around it explains."""
    out = []
    for block in text.split("Filename: ")[1:]:
        lines = block.splitlines()
        name = lines[1].split(":")[0] if len(lines) > 1 else "?"
        rows = [m.groups() for m in map(ROW.match, lines) if m]
        if rows and all(float(inc.strip("+-").replace(",", "")) == 0 and float(pk) == 0 for inc, pk in rows):
            out.append(name)
    return out


def test_silent_functions_are_found():
    report = (
        "Filename: Cell In[1]\nf: 1 call · net 0.00 MiB\n\nLine #  Mem usage (RSS)  Increment (RSS)  Peak (RSS)"
        "  Occurrences   Line Contents\n====\n     1        31.66 MiB         0.00 MiB    0.00 MiB            1"
        "       total = 0\n\nFilename: Cell In[2]\ng: 1 call\n\nLine #\n====\n     4        48.50 MiB"
        "       +16.84 MiB   11.18 MiB            5           L = [j]\n"
    )
    assert silent_functions(report) == ["f"]
