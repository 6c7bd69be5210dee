"""Hardening, round 2: bad values refused before anything runs, and a census that survives hostile namespaces.

Each test fails without its fix (issue 22): a huge ``--precision`` ran the
statement and then raised (or built a 1 GB string), ``nan`` made the
``%memwho`` walk unbounded, ``memwho("df*")`` raised ``AttributeError``,
and a lazy object, a non-string key or a thread adding globals broke the
census.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from IPython.core.error import UsageError

import ipymem


@pytest.mark.parametrize("magic", ["memit", "mprun", "memtrace"])
def test_a_huge_precision_is_refused_before_the_statement_runs(ip, magic):
    ip.run_cell("ran = []\ndef f():\n    ran.append(1)\n")
    line = ("-f f " if magic == "mprun" else "") + "--precision 10000000000 f()"
    with pytest.raises(UsageError, match="from 0 to 12"):
        ip.line(magic, line)
    assert ip.user_ns["ran"] == []
    ip.line(magic, ("-f f " if magic == "mprun" else "") + "-q --precision 12 f()")
    assert ip.user_ns["ran"] == [1]


def test_the_script_runner_refuses_a_huge_precision_with_its_usage(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('ran')\n")
    out = subprocess.run(
        [sys.executable, "-m", "ipymem", "--precision", "1000000000", str(script)], capture_output=True, text=True
    )
    assert out.returncode == 2 and "from 0 to 12" in out.stderr, out.stderr
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("value", ["float('nan')", "-1", "0", "float('inf')"])
def test_memwho_budget_must_be_a_positive_number_of_seconds(ip, value):
    ip.run_cell(f"%config MemoryMagics.memwho_budget = {value}")
    from ipymem.magics import MemoryMagics

    magics = ip.magics_manager.registry[MemoryMagics.__name__]
    assert magics.memwho_budget == 5.0


def test_api_memwho_takes_a_pattern_as_its_first_argument():
    globals()["df_pattern_test"] = bytearray(2**20)
    try:
        r = ipymem.memwho("df_pattern_*")
        assert [row.name for row in r.rows] == ["df_pattern_test"]
    finally:
        del globals()["df_pattern_test"]
    with pytest.raises(TypeError, match="mapping of names"):
        ipymem.memwho(42)  # type: ignore[arg-type]


def test_memwho_survives_lazy_objects_dead_proxies_odd_keys_and_a_thread_adding_globals(ip):
    ip.run_cell(
        "import weakref, sys, types\n"
        "class T: pass\n"
        "t = T(); p = weakref.proxy(t); del t\n"
        "class Lazy:\n"
        "    @property\n"
        "    def __class__(self): raise RuntimeError('lazy object evaluated')\n"
        "lazy = Lazy()\n"
        "_m = types.ModuleType('ipymem_test_lazymod'); _m.obj = Lazy(); sys.modules['ipymem_test_lazymod'] = _m\n"
        "globals()[1] = 'an int key'\n"
        "class K(str):\n"
        "    def startswith(self, *a): raise RuntimeError('user startswith called')\n"
        "globals()[K('kname')] = bytearray(10)\n"
        "big = bytearray(2**20)\n"
    )
    try:
        r = ip.line("memwho", "-o -q")
        names = {row.name for row in r.rows}
        assert {"big", "p", "lazy", "kname"} <= names, names
        assert r.row("big").freed_if_deleted >= 2**20
        stop = threading.Event()

        def adder():
            i = 0
            while not stop.is_set():
                ip.user_ns[f"g{i % 2000}"] = [i]
                i += 1

        t = threading.Thread(target=adder)
        t.start()
        try:
            for _ in range(5):
                ip.line("memwho", "-q")
        finally:
            stop.set()
            t.join()
    finally:
        sys.modules.pop("ipymem_test_lazymod", None)
        for key in (1, "kname", "lazy", "p"):  # the odd keys break other tools that read the namespace
            ip.user_ns.pop(key, None)
