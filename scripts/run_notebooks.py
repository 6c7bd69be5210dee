"""Execute the example notebooks headless and print their text outputs.

Usage: python scripts/run_notebooks.py [NOTEBOOK ...]   (default: all of examples/notebooks)

Each notebook runs in a fresh python3 kernel (nbclient); executed copies go
to demo-output/ so the committed notebooks stay output-free.  Exits
non-zero if any cell fails.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def execute(path: Path, out_dir: Path, timeout: int = 600) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + saved if saved else "")  # the kernel imports this ipymem
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(out_dir)}})
    out_dir.mkdir(parents=True, exist_ok=True)  # the kernel's working directory: files cells write go here
    try:
        client.execute()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    return nb


def text_outputs(nb: nbformat.NotebookNode):
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                yield cell.source, out.text
            elif "data" in out and "text/plain" in out.data:
                yield cell.source, out.data["text/plain"]


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))
    out_dir = ROOT / "demo-output"
    for path in paths:
        print(f"=== {path.name}")
        nb = execute(path, out_dir)
        for source, text in text_outputs(nb):
            first = source.strip().splitlines()[0] if source.strip() else ""
            print(f">>> {first}")
            print(text.rstrip())
        print(f"(executed copy: {out_dir / path.name})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
