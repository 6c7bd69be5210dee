"""Coexistence: interrupts in %mprun and %memtrace, other tracers, coverage, threads, children, nesting, reloads.

Interrupts are armed so that a slow machine cannot make a test fail: either
the measured code itself starts the timer and then waits for it to have
fired (so SIGINT always lands before the magic can end), or a phase of
ipymem is patched to send SIGINT from inside it (setup, teardown, rendering).
Besides the autouse ``no_leaks`` fixture, ``_assert_clean`` also checks the
threading profile hook that ``%mprun`` borrows to count started threads.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from .conftest import MiB, _ipymem_threads, _state

ROOT = str(Path(__file__).resolve().parent.parent)
HAS_MONITORING = hasattr(sys, "monitoring")

HELPERS = """
import os, signal, threading, time
fired = threading.Event()

def arm(delay):
    '''Send SIGINT to this process after `delay` s (from a helper thread), then set `fired`.'''
    fired.clear()
    def fire():
        os.kill(os.getpid(), signal.SIGINT)
        fired.set()
    timer = threading.Timer(delay, fire)
    timer.daemon = True
    timer.start()
    return timer

def step(data):
    data.append(bytearray(2**14))
    if len(data) > 64:
        del data[:32]

def work():
    data = []
    while not fired.is_set():
        step(data)
        time.sleep(0.0005)
    time.sleep(5)  # the signal was sent before `fired` was set: it lands before this ends
    return data
"""


def _state_plus() -> dict:
    return {**_state(), "profile_hook": getattr(threading, "_profile_hook", None), "sigint": signal.getsignal(2)}


def _assert_clean(ip, before: dict) -> None:
    deadline = time.monotonic() + 2
    while _ipymem_threads() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _ipymem_threads() == []
    assert _state_plus() == before


def _timers_done(ip) -> None:  # ip: called where a shell is in play, for symmetry with _assert_clean
    for t in threading.enumerate():
        if isinstance(t, threading.Timer):
            t.join(5)


COUNTS: dict[str, int] = {}


def _count(key: str, n: int = 1) -> None:
    COUNTS[key] = COUNTS.get(key, 0) + n


pytestmark = pytest.mark.usefixtures("python_sigint_handler")  # conftest: SIGINT raises here


@pytest.fixture
def helpers(ip):
    ip.ip.run_cell(HELPERS)
    return ip


# -- interrupts -------------------------------------------------------------------------

MPRUN_FORMS = [
    ("cell", "", "arm({d})\nwork()\n"),  # %%mprun: the cell body line by line
    ("cell", "-f work -f step", "arm({d})\nwork()\n"),
    ("line", "-f work -f step", "arm({d}); work()"),
    ("line", "-f step --backend heap", "arm({d}); work()"),
]
MEMTRACE_FORMS = [
    ("cell", "", "arm({d})\nwork()\n"),
    ("cell", "-r 3 -d 4", "arm({d})\nwork()\n"),
    ("line", "", "arm({d}); work()"),
]


def _run(ip, magic, form, line, stmt):
    if form == "cell":
        return ip.cell(magic, line, stmt)
    return ip.line(magic, f"{line} {stmt}")


@pytest.mark.parametrize(("magic", "forms"), [("mprun", MPRUN_FORMS), ("memtrace", MEMTRACE_FORMS)])
@pytest.mark.parametrize("seed", range(2))
def test_sigint_from_a_helper_thread_mid_run_reaches_the_user_with_a_marked_partial_report(helpers, magic, forms, seed):
    ip = helpers
    rng = random.Random(seed)
    before = _state_plus()
    for i in range(10):
        form, line, stmt = forms[i % len(forms)]
        delay = rng.choice([0.0, rng.uniform(0, 0.002), rng.uniform(0.002, 0.05)])
        try:
            with pytest.raises(KeyboardInterrupt):
                _run(ip, magic, form, line, stmt.format(d=delay))
        finally:
            _timers_done(ip)
        _count(f"{magic} interrupts mid-run")
        texts = ip.texts()
        assert texts, "the partial report is shown"
        assert "interrupted" in texts[-1]
        ip.clear()
        _assert_clean(ip, before)
        ip.line(magic, "-q -f step step([])" if magic == "mprun" else "-q x = [1] * 10")  # the next magic works
        _assert_clean(ip, before)


@pytest.mark.parametrize("magic", ["mprun", "memtrace"])
@pytest.mark.parametrize("seed", range(2))
def test_sigint_armed_before_the_magic_lands_in_setup_or_run_and_always_reaches_the_user(helpers, magic, seed):
    """The timer starts before the magic, so it lands anywhere from option parsing to the run."""
    ip = helpers
    rng = random.Random(100 + seed)
    before = _state_plus()
    partial = 0
    for _ in range(10):
        try:
            with pytest.raises(KeyboardInterrupt):
                ip.user_ns["arm"](rng.uniform(0, 0.004))  # may land in arm itself, on a slow machine
                if magic == "mprun":
                    ip.line("mprun", "-f work -f step work()")
                else:
                    ip.line("memtrace", "-d 3 work()")
        finally:
            _timers_done(ip)
        _count(f"{magic} interrupts armed before the magic")
        if ip.texts():
            assert "interrupted" in ip.texts()[-1]
            partial += 1
        ip.clear()
        _assert_clean(ip, before)
        ip.line(magic, "-q -f step step([])" if magic == "mprun" else "-q x = 1")
    _count(f"{magic} interrupts armed before the magic with a partial report", partial)


def _kill_inside(monkeypatch, owner, name):
    """Patch ``owner.name`` so that calling it first sends SIGINT to this process."""
    real = getattr(owner, name)

    def patched(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs here at the latest
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)


PHASES = {
    # phase: (module attribute patched, magic, line)
    "mprun setup (meter)": ("ipymem.engine.linetrace", "make_meter", "mprun", "-f step step([])"),
    "mprun teardown (books)": ("ipymem.engine.linetrace._Books", "finish", "mprun", "-f step step([])"),
    "mprun rendering": ("ipymem.magics", "mprun_text", "mprun", "-f step step([])"),
    "memtrace setup": ("ipymem.engine.alloctrace", "CodeMap", "memtrace", "x = [1] * 100"),
    "memtrace teardown (snapshot)": ("ipymem.engine.alloctrace", "aggregate", "memtrace", "x = [1] * 100"),
    "memtrace rendering": ("ipymem.magics", "alloc_text", "memtrace", "x = [1] * 100"),
    "memit rendering": ("ipymem.magics", "memit_text", "memit", "x = [1] * 100"),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_sigint_inside_ipymem_setup_teardown_or_rendering_reaches_the_user(helpers, monkeypatch, phase):
    import importlib

    ip = helpers
    path, name, magic, line = PHASES[phase]
    module_name, _, cls = path.partition("._")
    owner = importlib.import_module(module_name)
    if cls:
        owner = getattr(owner, "_" + cls)
    before = _state_plus()
    _kill_inside(monkeypatch, owner, name)
    with pytest.raises(KeyboardInterrupt):
        ip.line(magic, line)
    _count("interrupts inside ipymem phases")
    if "teardown" in phase:  # the run was cut short: partial report, marked
        assert "interrupted" in ip.texts()[-1]
    if "rendering" in phase:  # the run was complete: its report is still shown, then the interrupt
        assert len(ip.texts()) == 1 and "interrupted" not in ip.texts()[-1]
    monkeypatch.undo()
    ip.clear()
    _assert_clean(ip, before)
    ip.line(magic, line)  # the next magic works and reports normally
    assert ip.texts() and "interrupted" not in ip.texts()[-1]
    _assert_clean(ip, before)


# -- other tracers -------------------------------------------------------------------------


PROFILED = """
def f(n):
    a = [0] * n
    b = bytearray(n)
    return len(a) + len(b)
"""


def test_mprun_and_memtrace_under_another_settrace_function(ip):
    ip.ip.run_cell(PROFILED)
    f_code = ip.user_ns["f"].__code__
    events: list = []

    def local(frame, event, arg):
        if event == "line":
            events.append((frame.f_code, frame.f_lineno))
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code is f_code else None

    sys.settrace(tracer)
    try:
        r = ip.line("mprun", "-o -f f f(5 * 10**6)")  # 40 MB: above glibc's largest mmap threshold, never reused
        assert sys.gettrace() is tracer
        seen_during = len(events)
        ip.user_ns["f"](10)  # the user's tracer still works afterwards
        assert sys.gettrace() is tracer
        a = ip.line("memtrace", "-o f(10**5)")
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    assert seen_during >= 3, "the other tracer saw f's lines while %mprun profiled them"
    assert len(events) > seen_during
    first = f_code.co_firstlineno
    lines = {ln.lineno - first: ln for ln in r.functions[0].lines}
    assert [lines[n].occurrences for n in (1, 2, 3)] == [1, 1, 1]
    assert lines[1].increment > 30 * MiB  # [0] * (5 * 10**6): 40 MB of pointers
    # 3.12+ watches lines through sys.monitoring beside the user's tracer; before, it says it cannot
    assert any("another trace function" in n for n in a.notes) != HAS_MONITORING
    assert a.outcome == "ok"


@pytest.mark.skipif(not HAS_MONITORING, reason="sys.monitoring needs Python 3.12+")
def test_another_monitoring_tool_with_line_events_on_the_same_code_keeps_its_registration(ip):
    mon = sys.monitoring
    ip.ip.run_cell(PROFILED)
    code = ip.user_ns["f"].__code__
    tool = mon.DEBUGGER_ID
    seen: list[int] = []

    def on_line(c, line):
        seen.append(line)

    mon.use_tool_id(tool, "other-debugger")
    try:
        mon.register_callback(tool, mon.events.LINE, on_line)
        mon.set_local_events(tool, code, mon.events.LINE)
        r = ip.line("mprun", "-o -f f f(10**6)")
        during = list(seen)
        assert mon.get_tool(tool) == "other-debugger"
        assert mon.get_local_events(tool, code) == mon.events.LINE
        assert mon.register_callback(tool, mon.events.LINE, on_line) is on_line  # still ours
        seen.clear()
        ip.user_ns["f"](10)
        after = list(seen)
    finally:
        mon.set_local_events(tool, code, 0)
        mon.register_callback(tool, mon.events.LINE, None)
        mon.free_tool_id(tool)
    assert r.params.tracer == "sys.monitoring"
    body = [code.co_firstlineno + i for i in (1, 2, 3)]
    assert during == body and after == body
    assert [ln.occurrences for ln in r.functions[0].lines if ln.occurrences] == [1, 1, 1]


@pytest.mark.skipif(not HAS_MONITORING, reason="sys.monitoring needs Python 3.12+")
def test_preferred_monitoring_id_taken_picks_another_and_all_taken_falls_back_to_settrace_and_says_so(ip):
    mon = sys.monitoring
    ip.ip.run_cell(PROFILED)
    mon.use_tool_id(mon.PROFILER_ID, "someone-else")
    try:
        r = ip.line("mprun", "-o -f f f(1000)")
        assert r.params.tracer == "sys.monitoring" and r.notes == ()
        assert mon.get_tool(mon.PROFILER_ID) == "someone-else"
        taken = [i for i in range(6) if mon.get_tool(i) is None]
        for i in taken:
            mon.use_tool_id(i, f"squatter-{i}")
        try:
            ip.clear()
            r = ip.line("mprun", "-o -f f f(1000)")
            assert [mon.get_tool(i) for i in taken] == [f"squatter-{i}" for i in taken]
        finally:
            for i in taken:
                mon.free_tool_id(i)
    finally:
        mon.free_tool_id(mon.PROFILER_ID)
    assert r.params.tracer == "sys.settrace"
    assert "fell back to sys.settrace" in ip.texts()[-1]
    assert [ln.occurrences for ln in r.functions[0].lines if ln.occurrences] == [1, 1, 1]


COVERAGE_SCRIPT = """
import json, sys
sys.path.insert(0, {here!r})
import target
from IPython.core.interactiveshell import InteractiveShell

def tracer_name():
    t = sys.gettrace()
    return None if t is None else type(t).__name__

def tools():
    mon = getattr(sys, "monitoring", None)
    return [mon.get_tool(i) for i in range(6)] if mon else []

before = (tracer_name(), tools())
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipymem")
ip.user_ns["target"] = target
r = ip.run_line_magic("mprun", "-o -q -f target.f target.f(10**5)")
a = ip.run_line_magic("memtrace", "-o -q target.f(10**4)")
m = ip.run_line_magic("memit", "-o -q target.f(10)")
after = (tracer_name(), tools())
target.g()  # lines that run only after the magics
print(json.dumps({{
    "before": before, "after": after, "tracer": r.params.tracer,
    "occurrences": [ln.occurrences for ln in r.functions[0].lines if ln.occurrences],
    "outcomes": [r.outcome, a.outcome, m.outcome],
}}))
"""

TARGET = """
def f(n):
    a = [0] * n
    return len(a)


def g():
    x = 1
    y = x + 1
    return y
"""


def _coverage_available():
    try:
        import coverage  # noqa: F401
    except ImportError:
        return False
    return True


CORES = ["ctrace"] + (["sysmon"] if HAS_MONITORING else [])


@pytest.mark.skipif(not _coverage_available(), reason="coverage is not installed")
@pytest.mark.parametrize("core", CORES)
def test_profiling_under_coverage_run_leaves_coverage_measuring(tmp_path, core):
    (tmp_path / "target.py").write_text(TARGET)
    script = tmp_path / "session.py"
    script.write_text(COVERAGE_SCRIPT.format(here=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": ROOT, "COVERAGE_CORE": core, "COVERAGE_FILE": str(tmp_path / ".coverage")}
    out = subprocess.run(
        [sys.executable, "-m", "coverage", "run", "--source", str(tmp_path), str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "Trace function changed" not in out.stderr and "Warning" not in out.stderr, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["before"] == report["after"], "coverage is still the trace function / monitoring tool"
    tracer, tools = report["before"]
    assert (tracer == "CTracer") if core == "ctrace" else any("coverage" in (t or "") for t in tools), report
    assert report["outcomes"] == ["ok", "ok", "ok"]
    assert report["occurrences"] == [1, 1]
    subprocess.run(
        [sys.executable, "-m", "coverage", "json", "-o", str(tmp_path / "cov.json")],
        capture_output=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    files = json.loads((tmp_path / "cov.json").read_text())["files"]
    executed = next(v for k, v in files.items() if k.endswith("target.py"))["executed_lines"]
    assert {3, 4, 8, 9, 10} <= set(executed), executed  # f's lines (profiled) and g's (after the magics)


# -- threads and child processes --------------------------------------------------------------

CHILD = """
def hold(ready, stop, n):
    data = b"\\x01" * n  # touched pages: resident
    ready.set()
    stop.wait(60)
    return len(data)
"""


@pytest.fixture
def children(helpers, tmp_path, monkeypatch):
    (tmp_path / "_ipymem_child.py").write_text(CHILD)
    monkeypatch.syspath_prepend(str(tmp_path))
    ip = helpers
    ip.ip.run_cell(
        "import multiprocessing as mp, _ipymem_child\n"
        "ctx = mp.get_context('spawn')\n"
        "stop = ctx.Event()\n"
        "def start_children(k, n):\n"
        "    procs = []\n"
        "    for _ in range(k):\n"
        "        ready = ctx.Event()\n"
        "        p = ctx.Process(target=_ipymem_child.hold, args=(ready, stop, n))\n"
        "        p.start()\n"
        "        ready.wait(60)\n"
        "        procs.append(p)\n"
        "    return procs\n"
    )
    yield ip
    ip.user_ns["stop"].set()
    for p in ip.user_ns.get("procs", []):
        p.join(30)


def test_children_are_counted_with_c_once_each_and_never_killed(children):
    ip = children
    size = 96 * MiB
    r = ip.line("memit", f"-o -q -c procs = start_children(2, {size})")
    procs = ip.user_ns["procs"]
    assert all(p.is_alive() for p in procs), "ipymem killed no child"
    # Two children of 96 MiB each, plus the few MiB of a fresh interpreter each: counted once, not twice.
    assert 2 * size <= r.increment < 3 * size, r.increment / MiB
    # Without -c the children are not this process's memory.
    r2 = ip.line("memit", "-o -q -c x = 1")
    assert abs(r2.increment) < 32 * MiB
    r3 = ip.line("memit", "-o -q y = [p.pid for p in procs]")
    assert r3.peak < r.peak - size
    # %mprun -c: the line that started them carries them; nothing is counted on the other lines.
    ip.user_ns["stop"].set()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0], "children ended normally"
    ip.user_ns["stop"] = ip.user_ns["ctx"].Event()
    ip.ip.run_cell("def spawn_two(n):\n    ps = start_children(2, n)\n    k = len(ps)\n    return ps\n")
    m = ip.line("mprun", f"-o -q -c -f spawn_two procs = spawn_two({size})")
    lines = {ln.lineno: ln for ln in m.functions[0].lines}
    assert 2 * size <= lines[2].increment < 3 * size
    assert abs(lines[3].increment) < 16 * MiB
    assert any("child processes are sampled" in n for n in m.notes)
    assert all(p.is_alive() for p in ip.user_ns["procs"])
    _count("child processes started", 4)


def test_user_threads_under_mprun_and_memtrace_are_left_running(helpers):
    ip = helpers
    ip.ip.run_cell(
        "stop_t = threading.Event()\n"
        "def churn():\n"
        "    keep = []\n"
        "    while not stop_t.is_set():\n"
        "        step(keep)\n"
        "        time.sleep(0.001)\n"
        "def spawn():\n"
        "    t = threading.Thread(target=churn, name='user-churn')\n"
        "    t.start()\n"
        "    x = bytearray(2**20)\n"
        "    return t\n"
    )
    try:
        m = ip.line("mprun", "-o -q -f spawn -f churn -f step t = spawn()")
        assert ip.user_ns["t"].is_alive()
        assert any("only the calling thread is profiled" in n for n in m.notes)
        a = ip.line("memtrace", "-o -q y = [bytearray(100) for _ in range(1000)]")
        assert a.outcome == "ok" and ip.user_ns["t"].is_alive()
    finally:
        ip.user_ns["stop_t"].set()
        ip.user_ns["t"].join(10)


# -- nesting -------------------------------------------------------------------------------------


def test_memit_inside_an_mprun_cell(ip):
    r = ip.cell("mprun", "-o -q", "inner = %memit -o -q x = bytearray(40 * 2**20)\ny = 1\n")
    inner = ip.user_ns["inner"]
    assert 38 * MiB < inner.increment < 44 * MiB
    lines = {ln.lineno: ln for ln in r.functions[0].lines}
    assert lines[1].occurrences == 1 and lines[1].peak >= 38 * MiB


def test_memtrace_around_mprun_and_mprun_around_memtrace(ip):
    ip.ip.run_cell(PROFILED)
    before = _state_plus()
    a = ip.line("memtrace", "-o -q r = %mprun -o -q -f f f(10**5)")
    r = ip.user_ns["r"]
    assert a.outcome == "ok" and r.outcome == "ok"
    assert [ln.occurrences for ln in r.functions[0].lines if ln.occurrences] == [1, 1, 1]
    assert a.heap_peak - a.heap_start >= 10**5 * 8 * 0.9  # [0] * n seen by tracemalloc
    _assert_clean(ip, before)
    m = ip.cell("mprun", "-o -q", "a2 = %memtrace -o -q z = [str(i) for i in range(10**4)]\nw = 2\n")
    assert m.outcome == "ok" and ip.user_ns["a2"].entries
    _assert_clean(ip, before)
    # all three, three deep
    t = ip.cell("memtrace", "-o -q", "m3 = %memit -o -q r3 = %mprun -o -q -f f f(10**4)\n")
    assert t.outcome == "ok" and ip.user_ns["m3"].outcome == "ok" and ip.user_ns["r3"].outcome == "ok"
    _assert_clean(ip, before)


def test_interrupt_inside_nested_magics_unwinds_every_level(helpers):
    ip = helpers
    before = _state_plus()
    try:
        with pytest.raises(KeyboardInterrupt):
            ip.cell("memtrace", "", "%mprun -f step arm(0.001); work()\n")
    finally:
        _timers_done(ip)
    texts = ip.texts()
    assert len(texts) == 2 and all("interrupted" in t for t in texts)
    _assert_clean(ip, before)
    _count("interrupts inside nested magics")


# -- unloading and reloading -------------------------------------------------------------------


def test_unload_and_reload_in_the_middle_of_a_session(ip):
    before = _state_plus()
    ip.line("memit", "-q x = 1")
    ip.line("unload_ext", "ipymem")
    for magic in ("memit", "mprun", "memtrace"):
        with pytest.raises(UsageError):
            ip.line(magic, "x = 1")
    ip.line("load_ext", "ipymem")
    ip.ip.run_cell(PROFILED)
    assert ip.line("memit", "-o -q x = 1").outcome == "ok"
    assert ip.line("mprun", "-o -q -f f f(10)").outcome == "ok"
    assert ip.line("memtrace", "-o -q x = [1] * 10").outcome == "ok"
    ip.line("reload_ext", "ipymem")
    assert ip.line("memit", "-o -q x = 1").outcome == "ok"
    _assert_clean(ip, before)


@pytest.mark.parametrize("magic", ["memit", "mprun", "memtrace"])
def test_unload_and_reload_from_inside_a_running_magic(ip, magic):
    """The user's cell unloads the extension while the magic measures it: the measurement still completes."""
    before = _state_plus()
    r = ip.cell(magic, "-o -q", "%unload_ext ipymem\n%load_ext ipymem\nx = bytearray(2**20)\n")
    assert r.outcome == "ok"
    assert ip.line("memit", "-o -q y = 1").outcome == "ok"
    ip.cell(magic, "-q", "%unload_ext ipymem\nz = 1\n")  # unloaded for good this time
    with pytest.raises(UsageError):
        ip.line("memit", "y = 1")
    ip.line("load_ext", "ipymem")
    _assert_clean(ip, before)


def test_zz_report_counts(capsys):
    """Not a check: prints what this module exercised (for the RELIABILITY figures); run with -s to see it."""
    with capsys.disabled():
        print("\n[coexistence counts] " + json.dumps(COUNTS, sort_keys=True))
