"""The wheel builds, holds the package, declares its dependencies, and `%load_ext ipymem` works from it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.packaging
def test_wheel_installs_and_the_extension_loads(tmp_path):
    if importlib.util.find_spec("build.__main__") is None:
        pytest.skip("the 'build' package is not installed (pip install -e '.[test]')")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("ipymem-*.whl")
    assert list((tmp_path / "dist").glob("ipymem-*.tar.gz"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "ipymem/engine/probes.py" in names and not any(n.startswith("tests/") for n in names)
    for dep in ("ipython", "psutil", "ipywidgets", "matplotlib"):
        assert f"Requires-Dist: {dep}" in meta
    # Install the wheel alone into a fresh directory; dependencies come from this environment.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    code = (
        f"import ipymem, IPython; assert ipymem.__file__.startswith({str(target)!r}), ipymem.__file__; "
        "from IPython.core.interactiveshell import InteractiveShell; "
        "ip = InteractiveShell.instance(); ip.run_line_magic('load_ext', 'ipymem'); "
        "r = ip.run_line_magic('memit', '-q -o x = bytearray(2**20)'); print('ok', r.increment >= 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "ok True" in out.stdout
