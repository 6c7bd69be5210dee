"""The guard's stop, against a fake meter: loops, code that catches MemoryError, threads, await, Ctrl-C.

The meter is fake so the usage is exact arithmetic (the test's code raises
it); the real cgroup is :mod:`tests.test_memguard_cgroup`.  Each test checks
that nothing is left behind: threads (the autouse fixture), the switch
interval, RLIMIT_DATA, the flight record.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import ipymem
from ipymem.engine.limits import guard as guard_mod
from ipymem.engine.limits.flight import FlightRecorder, deaths, explain
from ipymem.models.limits import LimitSource

from .conftest import sigint_timer

GiB, MiB = 2**30, 2**20
SOURCE = LimitSource("cgroup v2", GiB, "/fake/memory.max", "/fake")


class FakeMeter:
    """The usage is what the test says it is."""

    used = 100 * MiB
    kills = 0

    def __init__(self, *args, **kwargs):
        pass

    def working_set(self):
        return FakeMeter.used

    usage = working_set

    def refresh_cache(self):
        return 0

    def oom_kills(self):
        return FakeMeter.kills

    def peak(self):
        return None

    def close(self):
        pass


def grow(n: int = 8 * MiB) -> None:
    FakeMeter.used += n


@pytest.fixture
def fake(monkeypatch, tmp_path):
    FakeMeter.used = 100 * MiB
    monkeypatch.setattr(guard_mod, "UsageMeter", FakeMeter)
    monkeypatch.setattr("ipymem.api.sys", sys)
    monkeypatch.setattr("ipymem.magics.memguard.find_limit", lambda: (SOURCE, [SOURCE]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    switch = sys.getswitchinterval()
    rlimit = resource.getrlimit(resource.RLIMIT_DATA)
    yield FakeMeter
    assert sys.getswitchinterval() == switch, "switch interval not restored"
    assert resource.getrlimit(resource.RLIMIT_DATA) == rlimit, "RLIMIT_DATA not restored"


def _guarded(**kw):
    return ipymem.guard(**kw)


def test_api_guard_stops_a_loop_and_keeps_the_variables(fake, monkeypatch):
    monkeypatch.setattr("ipymem.engine.limits.guard.find_limit", lambda: (SOURCE, [SOURCE]))
    keep = bytearray(10)
    chunks = []
    warned = []
    with pytest.raises(ipymem.MemoryLimitError) as info, ipymem.guard(on_warn=warned.append) as g:
        while True:
            chunks.append(1)
            grow(MiB)
            time.sleep(0.0005)
    e = info.value
    assert isinstance(e, MemoryError)
    assert e.limit == GiB and e.usage >= g.stop_bytes
    assert g.stop_bytes == GiB - 128 * MiB  # 95%, or 128 MiB below the limit: the lower
    assert "of the 1.00 GiB container limit" in str(e) and "test_memguard.py" in str(e)
    assert keep == bytearray(10) and len(chunks) > 700
    assert warned and "warning" in warned[0]
    assert not g.running


def test_code_that_catches_memory_error_is_stopped_again(fake, monkeypatch):
    monkeypatch.setattr("ipymem.engine.limits.guard.find_limit", lambda: (SOURCE, [SOURCE]))
    caught = 0
    with pytest.raises(ipymem.MemoryLimitError), ipymem.guard(stop="50%", warn=None):
        while True:
            try:
                while True:
                    grow(MiB)
                    time.sleep(0.0005)
            except MemoryError:
                caught += 1
                if caught == 2:
                    raise
    assert caught == 2


def test_the_guard_never_fires_outside_the_with_block(fake, monkeypatch):
    monkeypatch.setattr("ipymem.engine.limits.guard.find_limit", lambda: (SOURCE, [SOURCE]))
    FakeMeter.used = 2 * GiB  # over the limit already: nothing may be raised outside the guarded code

    def elsewhere():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            pass

    g = guard_mod.Guard(source=SOURCE, meter=FakeMeter()).start()
    try:
        g.arm(anchor=sys._getframe(0).f_back)  # a frame that is not on this thread's stack below here... it is
        g.disarm()
        elsewhere()  # disarmed: no stop
    finally:
        g.close()


@pytest.fixture
def guarded_shell(fake, ip):
    shell = ip
    shell.run_line_magic("memguard", "on --warn 60%")
    yield shell
    shell.run_line_magic("memguard", "off")


def _cell(shell, code):
    result = shell.run_cell(code)
    return result


def test_a_cell_is_stopped_and_the_next_cell_runs(guarded_shell, capsys):
    shell = guarded_shell
    shell.user_ns["grow"] = grow
    shell.run_cell("keep = bytearray(5 * 2**20)")
    r = _cell(shell, "import time\nchunks = []\nwhile True:\n    chunks.append(1); grow(2**20); time.sleep(0.0005)")
    assert type(r.error_in_exec) is ipymem.MemoryLimitError
    out = capsys.readouterr().out
    assert "memguard stopped Cell In[" in out and "the kernel and the variables made before are intact" in out
    assert "memguard warning" in out
    assert len(shell.user_ns["keep"]) == 5 * MiB and shell.user_ns["chunks"]
    FakeMeter.used = 100 * MiB
    assert _cell(shell, "x = 1 + 1").success and shell.user_ns["x"] == 2


def test_user_threads_are_stopped_too(guarded_shell):
    shell = guarded_shell
    shell.user_ns["grow"] = grow
    r = _cell(
        shell,
        "import threading, time\nerrors = []\n"
        "def work():\n    try:\n        while True:\n            grow(2**20); time.sleep(0.0005)\n"
        "    except MemoryError as e:\n        errors.append(type(e).__name__)\n"
        "t = threading.Thread(target=work)\nt.start()\nt.join()",
    )
    assert shell.user_ns["errors"] == ["MemoryLimitError"]
    assert r.error_in_exec is None or type(r.error_in_exec) is ipymem.MemoryLimitError


def test_top_level_await_is_never_interrupted_inside_the_event_loop(guarded_shell, capsys):
    """An exception raised in a task step can land in the loop's callbacks and hang the cell: not stopped, warned."""
    shell = guarded_shell
    shell.user_ns["FakeMeter"] = FakeMeter
    r = _cell(
        shell,
        "import asyncio\nn = 0\nwhile n < 1200:\n    FakeMeter.used += 2**20; n += 1\n"
        "    for _ in range(200): pass\n    await asyncio.sleep(0.0002)",
    )
    assert r.success and shell.user_ns["n"] == 1200  # ran to its end, past the stop level, and did not hang
    assert "memguard warning" in capsys.readouterr().out
    FakeMeter.used = 100 * MiB
    assert _cell(shell, "await asyncio.sleep(0); y = 3").success


def test_ctrl_c_at_the_same_time_leaves_no_stray_exception(guarded_shell, python_sigint_handler):
    shell = guarded_shell
    shell.user_ns["grow"] = grow
    timer, _fired = sigint_timer(0.3)
    timer.start()
    r = _cell(shell, "import time\nwhile True:\n    grow(2**17); time.sleep(0.0005)")
    timer.join()
    assert type(r.error_in_exec) in (KeyboardInterrupt, ipymem.MemoryLimitError)
    FakeMeter.used = 100 * MiB
    for _ in range(3):  # nothing pending lands later
        assert _cell(shell, "import time; time.sleep(0.05)").success


def test_bad_options_print_usage_and_start_nothing(fake, ip):
    shell = ip
    for line in ("on --stop 150%", "on --stop", "on --warn 99% --stop 90%", "on --interval 0", "maybe", "off now"):
        with pytest.raises(UsageError, match="memguard"):
            shell.run_line_magic("memguard", line)
    assert not [t for t in threading.enumerate() if t.name.startswith("ipymem-guard")]


def test_status_and_off(fake, ip, capsys):
    shell = ip
    shell.run_line_magic("memguard", "on --stop 900M --warn 80%")
    shell.run_line_magic("memguard", "status")
    out = capsys.readouterr().out
    assert "stops a cell at 900 MiB" in out and "container limit" in out
    assert "memguard is on" in out and "flight record:" in out
    path = out.split("flight record: ")[1].split()[0]
    assert os.path.exists(path)
    shell.run_line_magic("memguard", "off")
    assert not os.path.exists(path), "a clean exit removes the flight record"
    shell.run_line_magic("memguard", "off")
    assert "already off" in capsys.readouterr().out


def test_hard_mode_sets_and_restores_rlimit_data(fake, ip):
    shell = ip
    shell.run_line_magic("memguard", "on --hard")
    shell.run_cell("import resource\nseen = resource.getrlimit(resource.RLIMIT_DATA)[0]")
    assert shell.user_ns["seen"] != resource.RLIM_INFINITY
    assert shell.user_ns["seen"] > guard_mod.vm_data() - 64 * MiB
    shell.run_line_magic("memguard", "off")


# -- the flight record ----------------------------------------------------------------------


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_dead_kernels_record_is_told_once(tmp_path):
    env = {"JPY_SESSION_NAME": "/work/a.ipynb"}
    rec = FlightRecorder(str(tmp_path), env=env)
    rec.cell = {"cell": 7, "line": 2, "line_source": "y = np.ones(3 * 2**30 // 8)"}
    rec.write(usage=1000 * MiB, limit=GiB, limit_label="container limit (cgroup v1 memory.limit_in_bytes)", oom_kills=0)
    # the record of a kernel that died: same notebook, a pid that is gone
    import json

    data = json.loads(Path(rec.path).read_text())
    data["pid"] = _dead_pid()
    os.close(rec._fd)
    rec._fd = None
    with open(rec.path, "w") as f:
        json.dump(data, f)
    other = FlightRecorder(str(tmp_path), env={"JPY_SESSION_NAME": "/work/b.ipynb"})
    other.write(usage=1, limit=2)
    assert deaths(str(tmp_path), env={"JPY_SESSION_NAME": "/work/b.ipynb"}) == []  # a live kernel is no death
    found = deaths(str(tmp_path), env=env)
    assert len(found) == 1 and found[0]["cell"] == 7
    assert deaths(str(tmp_path), env=env) == []  # told once
    assert os.path.exists(other.path)  # other notebooks' records are left alone
    assert "OOM killer" in explain(found[0], 1)
    assert "not by the cgroup's OOM killer" in explain(found[0], 0)
    from ipymem.render.limits import death_text

    text = death_text(found[0], explain(found[0], 1))
    assert "In[7], line 2: y = np.ones(3 * 2**30 // 8)" in text and "98%" in text
    other.close()
    assert not os.path.exists(other.path)


def test_expired_records_are_removed(tmp_path):
    path = tmp_path / "0000000000000000-1.json"
    path.write_text("{}")
    old = time.time() - 8 * 24 * 3600
    os.utime(path, (old, old))
    deaths(str(tmp_path), env={})
    assert not path.exists()
