"""Session safety in one process: names IPython needs, %memwatch's confirmations, the threading hook,
monitoring tool ids, and other profilers and debuggers inside and around the magics."""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time

import pytest
from IPython.core.error import UsageError

from ipymem.engine.linetrace import _ThreadWatch

HAS_MONITORING = hasattr(sys, "monitoring")


@pytest.mark.parametrize("magic", ["memit", "memtrace", "mprun"])
@pytest.mark.parametrize(
    "name",
    [
        "get_ipython",
        "exit",
        "quit",
        "In",
        "Out",
        "_",
        "__",
        "___",
        "_i",
        "_ii",
        "_i3",
        "_12",
        "_oh",
        "_ih",
        "_dh",
        "print",
        "len",
        "display",
        "for",
    ],
)
def test_v_refuses_names_ipython_needs_and_runs_nothing(ip, magic, name):
    ip.user_ns["ran"] = 0
    before = ip.user_ns.get(name, "absent")
    with pytest.raises(UsageError, match=r"-v.*\n.*Usage: %" + magic):
        ip.line(magic, f"-v {name} -f str ran = 1" if magic == "mprun" else f"-v {name} ran = 1")
    assert ip.user_ns["ran"] == 0
    assert ip.user_ns.get(name, "absent") is before


def test_v_still_stores_under_an_ordinary_name(ip):
    ip.line("memit", "-q -v kept x = 1")
    assert type(ip.user_ns["kept"]).__name__ == "MemitResult"
    ip.run_cell("%memit -q x = 2")  # later magics still work
    assert callable(ip.user_ns["get_ipython"])


def test_memwatch_on_and_off_confirm_in_one_line(ip, capsys):
    ip.line("memwatch", "on")
    ip.line("memwatch", "on")
    ip.line("memwatch", "off")
    ip.line("memwatch", "off")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("memwatch on: ") and "RSS" in lines[0]
    assert lines[1:] == ["memwatch is already on", "memwatch off", "memwatch is already off"]


def test_memwatch_off_in_a_watched_cell_puts_its_line_where_the_view_was(ip):
    from ipymem.live.watch import MemWatch
    from tests.test_live import FakeFrontend

    fe = FakeFrontend()
    watch = MemWatch(ip.ip, live=True, refresh=0.02, frontend=lambda: fe)
    watch.on()
    watch.pre_run_cell()  # the `%memwatch off` cell itself is watched
    assert watch.off(say="memwatch off") is True
    assert fe.finished == [{"text/plain": "memwatch off"}]  # no empty output left behind


def _hook():
    return getattr(threading, "_profile_hook", None)


def test_overlapping_thread_watches_restore_the_hook_in_any_order():
    def mine(frame, event, arg):
        return None

    for first_out in (0, 1):
        for before in (None, mine):
            threading.setprofile(before)
            try:
                a, b = _ThreadWatch(), _ThreadWatch()
                a.__enter__()
                b.__enter__()
                t = threading.Thread(target=lambda: None)
                t.start()
                t.join()
                assert (a.started, b.started) == (1, 1)  # one hook counts for every watch
                (a if first_out == 0 else b).__exit__()
                assert _hook() is not before  # the other watch is still counting
                (b if first_out == 0 else a).__exit__()
                assert _hook() is before
            finally:
                threading.setprofile(None)


def test_threads_the_kernel_starts_during_a_profile_are_not_the_profiled_codes(ip):
    """ipykernel 7 starts a subshell thread when the widgets frontend asks for one, which can be during a
    run: the note on threads started by the profiled code counts only the code's own.  The kernel's
    thread is recognised by its code (a class or target of ipykernel's), not by its name."""
    ip.run_cell(
        "import threading\n"
        "def kernel_target():\n    pass\n"
        "kernel_target.__module__ = 'ipykernel.subshell'  # what ipykernel's own thread runs\n"
        "def spawn(target, name):\n    t = threading.Thread(target=target, name=name)\n"
        "    t.start()\n    t.join()\n    return 1\n"
    )
    r = ip.line("mprun", "-q -o -f spawn spawn(kernel_target, 'Thread-9')")
    assert not any("threads started" in n for n in r.notes), r.notes
    r = ip.line("mprun", "-q -o -f spawn spawn(lambda: None, 'subshell-1234')")  # a name proves nothing
    assert any("(1 started)" in n for n in r.notes), r.notes


def test_decorated_calls_in_threads_overlapping_mprun_leave_no_threading_hook(ip):
    """The issue's case: ``@ipymem.profile`` in several threads, a ``%mprun`` overlapping them."""
    import ipymem

    release = threading.Event()
    entered = threading.Barrier(4)

    @ipymem.profile
    def worker():
        entered.wait(30)
        release.wait(30)
        return bytearray(1000)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    entered.wait(30)  # all three are inside the profiler
    ip.user_ns.update(release=release)
    ip.run_cell("def f():\n    release.set()\n    return 1\n")
    ip.line("mprun", "-q -f f f()")  # ends while the threads' profiles may still run
    for t in threads:
        t.join(30)
    assert _hook() is None


@contextlib.contextmanager
def _general_tool_ids_taken():
    """Monitoring tool ids 3, 4 and 5 held by another tool (those that were free), as if several ran."""
    mon = sys.monitoring
    taken = []
    try:
        for i in (3, 4, 5):
            if mon.get_tool(i) is None:
                mon.use_tool_id(i, "someone")
                taken.append(i)
        yield
    finally:
        for i in taken:
            mon.free_tool_id(i)


@pytest.mark.skipif(not HAS_MONITORING, reason="sys.monitoring needs Python 3.12+")
def test_mprun_takes_a_general_purpose_tool_id_and_never_a_standard_ones(ip):
    ip.run_cell("import sys\ndef f():\n    global seen\n    seen = [sys.monitoring.get_tool(i) for i in range(6)]\n")
    ip.line("mprun", "-q -f f f()")
    assert ip.user_ns["seen"] == [None, None, None, "ipymem", None, None]
    with _general_tool_ids_taken():
        r = ip.line("mprun", "-q -o -f f f()")
        assert ip.user_ns["seen"][:3] == [None, None, None]  # debugger, coverage, profiler ids left free
        assert r.params.tracer == "sys.settrace"
        assert any("fell back to sys.settrace" in n for n in r.notes)


@pytest.mark.skipif(not HAS_MONITORING, reason="sys.monitoring needs Python 3.12+")
def test_memtrace_watches_lines_with_a_general_purpose_tool_id_or_falls_back_to_settrace(ip):
    mon = sys.monitoring
    ip.run_cell(
        "import sys, numpy as np\ndef f():\n    global seen, tracer\n"
        "    seen = [sys.monitoring.get_tool(i) for i in range(6)]\n    tracer = sys.gettrace()\n"
        "    return np.ones(2**20)\n"
    )
    r = ip.line("memtrace", "-q -o a = f()")
    assert ip.user_ns["seen"] == [None, None, None, "ipymem", None, None] and ip.user_ns["tracer"] is None
    held = [e for e in r.entries if e.source == "return np.ones(2**20)"]
    assert held and held[0].retained_size >= 8 * 2**20  # np.ones is Python code in numpy: booked on the line
    with _general_tool_ids_taken():
        r = ip.line("memtrace", "-q -o a = f()")
        assert ip.user_ns["seen"][:3] == [None, None, None]  # debugger, coverage, profiler ids left free
        assert ip.user_ns["tracer"] is not None  # no id free: the sys.settrace watcher, with the same books
        held = [e for e in r.entries if e.source == "return np.ones(2**20)"]
        assert held and held[0].retained_size >= 8 * 2**20
    assert sys.gettrace() is None and [mon.get_tool(i) for i in (3, 4, 5)] == [None, None, None]


@pytest.mark.skipif(not HAS_MONITORING, reason="sys.monitoring needs Python 3.12+")
def test_memtrace_whose_tool_id_was_taken_at_the_last_moment_watches_with_settrace(ip, monkeypatch):
    """The ids can be claimed between ipymem looking for a free one and taking it (another thread):
    that is no exception of the user's code, and the settrace watcher keeps the books."""
    from ipymem.engine import allocwatch

    def taken(preferred):
        raise RuntimeError("no free sys.monitoring tool id (ipymem uses 3, 4 or 5)")

    monkeypatch.setattr(allocwatch, "_claim_tool_id", taken)
    ip.run_cell("import numpy as np\ndef f():\n    return np.ones(2**20)\n")
    r = ip.line("memtrace", "-q -o a = f()")
    assert r.outcome == "ok", r.error
    held = [e for e in r.entries if e.source == "return np.ones(2**20)"]
    assert held and held[0].retained_size >= 8 * 2**20
    assert sys.gettrace() is None


@pytest.mark.skipif(not HAS_MONITORING, reason="sys.monitoring needs Python 3.12+")
def test_memtrace_says_so_when_the_measured_code_frees_its_monitoring_tool_id(ip):
    ip.run_cell(
        "import sys\ndef rude():\n    for i in (3, 4, 5):\n"
        "        if sys.monitoring.get_tool(i) == 'ipymem':\n            sys.monitoring.free_tool_id(i)\n"
        "    return bytearray(2**20)\n"
    )
    r = ip.line("memtrace", "-q -o kept = rude()")
    assert r.outcome == "ok"
    assert any("freed sys.monitoring tool id" in n for n in r.notes), r.notes
    assert [sys.monitoring.get_tool(i) for i in (3, 4, 5)] == [None, None, None]
    assert any(e.source == "return bytearray(2**20)" for e in r.entries)  # its own blocks still name it
    r = ip.line("memtrace", "-q -o kept = bytearray(2**20)")  # the next run watches again
    assert not r.notes and r.entries[0].retained_size >= 2**20


# -- tracebacks as a user sees them ------------------------------------------------------

BOOM = """\
import asyncio
def boom():
    raise ValueError("boom from the user")
async def aboom():
    await asyncio.sleep(0)
    raise ValueError("boom from the user")
"""

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _shown_traceback(ip, capsys, cell: str) -> str:
    capsys.readouterr()
    result = ip.run_cell(cell)
    assert result.error_in_exec is not None
    return ANSI.sub("", capsys.readouterr().out)


def _assert_clean(text: str, error: str) -> None:
    assert error in text, text
    frames = [ln for ln in text.splitlines() if ln.startswith(("File ", "Cell In"))]
    assert frames, text
    for name in ("ipymem", "asyncio", "selectors.py", "async_helpers"):
        assert not any(name in ln for ln in frames), f"{name} frame in the traceback:\n{text}"


@pytest.mark.parametrize(
    "cell",
    [
        "%memit boom()",
        "%%memit\nboom()",
        "%memtrace boom()",
        "%%memtrace\nboom()",
        "%mprun -f boom boom()",
        "%%mprun\nboom()",
        "%%mprun -f boom\nboom()",
        "%memit await aboom()",
        "%memtrace await aboom()",
        "%%mprun -f aboom\nawait aboom()",
    ],
)
def test_user_traceback_has_no_ipymem_frame(ip, capsys, cell):
    ip.run_cell(BOOM)
    text = _shown_traceback(ip, capsys, cell)
    _assert_clean(text, "ValueError: boom from the user")
    assert 'raise ValueError("boom from the user")' in text  # down to the user's own line


def test_memwatch_cell_traceback_has_no_ipymem_frame(ip, capsys):
    ip.run_cell(BOOM)
    ip.line("memwatch", "on")
    try:
        _assert_clean(_shown_traceback(ip, capsys, "boom()"), "ValueError: boom from the user")
    finally:
        ip.line("memwatch", "off")


def test_decorator_traceback_has_no_ipymem_frame(ip, capsys):
    ip.run_cell(BOOM + "import ipymem\nprofiled = ipymem.profile(boom)\n")
    text = _shown_traceback(ip, capsys, "profiled()")
    _assert_clean(text, "ValueError: boom from the user")
    assert 'raise ValueError("boom from the user")' in text


@pytest.mark.parametrize("call", ["ipymem.memit(boom)", "ipymem.mprun(boom)", "ipymem.memtrace(boom)"])
def test_plain_api_traceback_has_no_ipymem_frame(ip, capsys, call):
    ip.run_cell(BOOM + "import ipymem\n")
    text = _shown_traceback(ip, capsys, call)
    _assert_clean(text, "ValueError: boom from the user")
    assert 'raise ValueError("boom from the user")' in text


@pytest.mark.parametrize("magic", ["memit", "memtrace", "mprun -f wait"])
def test_interrupt_traceback_has_no_ipymem_frame(ip, capsys, python_sigint_handler, magic):
    ip.run_cell("import os, signal, time\ndef wait():\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(30)\n")
    text = _shown_traceback(ip, capsys, f"%{magic} wait()")
    _assert_clean(text, "KeyboardInterrupt")
    assert "time.sleep(30)" in text


# -- top-level await on the loop a cell would use ----------------------------------------------

MiB = 2**20

EARLIER = """\
import asyncio
async def produce(n):
    await asyncio.sleep(0.05)
    return bytearray(n)
async def feed(q, n):
    for _ in range(3):
        await asyncio.sleep(0.02)
        await q.put(bytearray(n))
"""

AWAITS = {
    # what an earlier cell leaves on the loop, then the statement that awaits it
    "task": ("task = asyncio.ensure_future(produce(48 * 2**20))", "x = await task"),
    "event": ("ev = asyncio.Event()\nasyncio.get_running_loop().call_later(0.2, ev.set)", "x = await ev.wait()"),
    "queue": (
        "q = asyncio.Queue()\nfeeder = asyncio.ensure_future(feed(q, 8 * 2**20))",
        "x = [await q.get() for _ in range(3)]",
    ),
}


def _statement(magic: str, stmt: str) -> tuple[str, str, str]:
    return ("mprun", "-q -o", stmt) if magic == "mprun" else (magic, f"-q -o {stmt}", "")


@pytest.mark.parametrize("case", sorted(AWAITS))
@pytest.mark.parametrize("magic", ["memit", "memtrace", "mprun"])
@pytest.mark.parametrize("inside_async_cell", [False, True])
def test_await_in_a_magic_uses_the_loop_of_earlier_cells(ip, magic, case, inside_async_cell):
    """As in terminal IPython: earlier async cells leave tasks on IPython's loop; the magic awaits them there.

    ``inside_async_cell``: the magic's cell has an ``await`` of its own, so the loop is already running
    when the magic starts (the kernel's situation) and the magic turns it.
    """
    ip.run_cell(EARLIER)
    setup, stmt = AWAITS[case]
    assert ip.run_cell(setup + "\nawait asyncio.sleep(0)").success  # an async cell: IPython's loop
    name, line, body = _statement(magic, stmt)
    magic_call = f"%{name} {line}" if not body else f"%%{name} {line}\n{body}"
    if inside_async_cell:
        cell = f"await asyncio.sleep(0)\nr = get_ipython().run_{'cell' if body else 'line'}_magic({name!r}, {line!r}"
        cell += f", {body!r})" if body else ")"
    else:
        cell = "r = " + magic_call if not body else magic_call
    result = ip.run_cell(cell)
    assert result.success, result.error_in_exec
    x = ip.user_ns["x"]
    expected = {"task": 48 * MiB, "event": None, "queue": None}[case]
    if case == "task":
        assert len(x) == expected
    elif case == "event":
        assert x is True
    else:
        assert [len(b) for b in x] == [8 * MiB] * 3
    if body and not inside_async_cell:
        return  # %%mprun -o with no name: the result went to Out
    r = ip.user_ns["r"]
    assert r.outcome == "ok" and not any("helper thread" in n for n in r.notes)
    # The awaited work is inside the measurement.  RSS: 48 MiB is above glibc's largest mmap threshold,
    # so freed memory of earlier tests cannot absorb it; the Python heap has no such reuse.
    if magic == "memit" and case == "task":
        assert r.runs[0].peak - r.runs[0].baseline >= 40 * MiB
    if magic == "memtrace" and case != "event":
        assert r.heap_peak - r.heap_start >= 20 * MiB
    if magic == "mprun":  # the awaiting line was traced (what other tasks allocate while it waits is theirs)
        (line,) = [ln for ln in r.functions[0].lines if "await" in ln.source]
        assert line.occurrences == 1


@pytest.mark.parametrize("magic", ["memit", "memtrace", "mprun"])
def test_ctrl_c_while_a_magic_awaits_on_a_running_loop_reports_and_cancels(ip, capsys, python_sigint_handler, magic):
    ip.run_cell(EARLIER + "import os, signal\n")
    assert ip.run_cell("task = asyncio.ensure_future(asyncio.sleep(60))\nawait asyncio.sleep(0)").success
    call = (
        "run_cell_magic('mprun', '', 'await task')" if magic == "mprun" else f"run_line_magic({magic!r}, 'await task')"
    )
    cell = (
        "asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGINT)\n"
        f"await asyncio.sleep(0)\nget_ipython().{call}\n"
    )
    capsys.readouterr()
    ip.clear()
    result = ip.run_cell(cell)
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert any("interrupted" in t for t in ip.texts()), ip.texts()  # the partial report
    _assert_clean(ANSI.sub("", capsys.readouterr().out), "KeyboardInterrupt")
    assert ip.run_cell("print(task.cancelled())\nawait asyncio.sleep(0)").success  # the loop still works
    assert capsys.readouterr().out.strip() == "True"


# -- other profilers and debuggers inside and around the magics -----------------------------------

PROFILED = """\
import cProfile, io, pdb, pstats
def g(n):
    return sum(range(n))
def with_cprofile():
    prof = cProfile.Profile()
    prof.runcall(g, 1000)
    return [k[2] for k in pstats.Stats(prof).stats]
def with_pdb():
    out = io.StringIO()
    secret = 41 + 1
    pdb.Pdb(stdin=io.StringIO("p secret\\nc\\n"), stdout=out, nosigint=True).set_trace()
    return out
"""


@pytest.mark.skipif(not HAS_MONITORING, reason="cProfile and ipymem share sys.monitoring on Python 3.12+")
def test_cprofile_inside_profiled_code_and_prun_inside_mprun(ip):
    ip.run_cell(PROFILED)
    ip.run_cell("r = %mprun -q -o -f with_cprofile names = with_cprofile()")
    assert ip.user_ns["r"].outcome == "ok", ip.user_ns["r"].error
    assert "g" in ip.user_ns["names"]
    assert ip.user_ns["r"].params.tracer == "sys.monitoring"
    result = ip.run_cell("%%mprun -q\nstats = %prun -q -r g(10**5)\nafter = 1\n")
    assert result.success, result.error_in_exec
    assert any(k[2] == "g" for k in ip.user_ns["stats"].stats)
    ip.run_cell("r2 = %memit -q -o names2 = with_cprofile()\nr3 = %memtrace -q -o names3 = with_cprofile()")
    assert "g" in ip.user_ns["names2"] and "g" in ip.user_ns["names3"]
    assert ip.run_cell("%prun -q -r %mprun -q -f g g(10)").success  # and the other way round


@pytest.mark.parametrize("magic", ["memit -q", "memtrace -q", "mprun -q -f with_pdb"])
def test_pdb_inside_every_magic(ip, magic):
    ip.run_cell(PROFILED)
    result = ip.run_cell(f"%{magic} shown = with_pdb()")
    assert result.success, result.error_in_exec
    # The debugger stopped and answered.  (Under %memtrace before 3.12 it stops at the function's return,
    # not its next line: memtrace's settrace watcher turns line events off in function frames.)
    assert "42" in ip.user_ns["shown"].getvalue()
    assert sys.gettrace() is None


COVERAGE_INSIDE = """
import json, sys
sys.path.insert(0, {here!r})
import coverage
from IPython.core.interactiveshell import InteractiveShell
import target

ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipymem")
ip.user_ns.update(target=target, coverage=coverage)
ip.run_cell('''%%mprun -q -v r
cov = coverage.Coverage(data_file=None, include=[target.__file__])
cov.start()
target.f(10**4)
cov.stop()
''')
r = ip.user_ns["r"]
data = ip.user_ns["cov"].get_data()
print(json.dumps({{
    "core": getattr(ip.user_ns["cov"], "_core", None) and ip.user_ns["cov"]._core.tracer_class.__name__,
    "lines": sorted(data.lines(target.__file__) or []),
    "outcome": r.outcome, "tracer": r.params.tracer,
    "tools": [sys.monitoring.get_tool(i) for i in range(6)],
}}))
"""


@pytest.mark.skipif(not HAS_MONITORING, reason="coverage's sys.monitoring core needs Python 3.12+")
def test_coverage_monitoring_core_inside_mprun(tmp_path):
    pytest.importorskip("coverage")
    import json
    import os
    import subprocess

    (tmp_path / "target.py").write_text("def f(n):\n    a = [0] * n\n    return len(a)\n")
    script = tmp_path / "session.py"
    script.write_text(COVERAGE_INSIDE.format(here=str(tmp_path)))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "COVERAGE_CORE": "sysmon"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["outcome"] == "ok" and report["tracer"] == "sys.monitoring", report
    assert report["lines"] == [2, 3], report  # coverage measured inside the profiled cell
    assert report["tools"] == [None] * 6, report  # both gave their ids back


def test_awaited_exception_keeps_its_cause(ip):
    ip.run_cell(
        "import asyncio\nasync def chained():\n    await asyncio.sleep(0)\n"
        "    try:\n        {}['k']\n    except KeyError as e:\n        raise ValueError('wrapped') from e\n"
    )
    for cell in (
        "%memit await chained()",
        "await asyncio.sleep(0)\nget_ipython().run_line_magic('memit', 'await chained()')",
    ):
        result = ip.run_cell(cell)
        err = result.error_in_exec
        assert isinstance(err, ValueError) and isinstance(err.__cause__, KeyError), cell


@pytest.mark.usefixtures("python_sigint_handler")
def test_ctrl_c_while_awaiting_never_lands_in_another_tasks_step():
    """While a magic awaits, ipymem turns the kernel's loop, so the main thread also runs the kernel's
    own tasks.  A Ctrl-C landing in one of their steps would kill that task (asyncio sets the
    KeyboardInterrupt as its result), and the kernel with it: it must reach the user's awaited code,
    or ipymem between two turns of the loop, never a bystander.  Here a bystander task is busy in
    nearly every moment of the loop, as the kernel's can be while messages flow."""
    import asyncio
    import signal as signal_module
    import threading

    from ipymem.shell import run_awaitable

    async def main() -> tuple[object, bool, int]:
        steps = 0

        async def bystander() -> None:
            nonlocal steps
            while True:
                end = time.perf_counter() + 0.02
                while time.perf_counter() < end:  # busy: the signal arrives inside this step
                    pass
                steps += 1
                await asyncio.sleep(0)

        keeper = asyncio.ensure_future(bystander())
        await asyncio.sleep(0)
        forever = asyncio.Event()
        main_thread = threading.get_ident()
        timer = threading.Timer(0.3, lambda: signal_module.pthread_kill(main_thread, signal_module.SIGINT))
        timer.start()
        outcome: object = None
        try:
            run_awaitable(None, forever.wait())  # synchronous, inside the running loop: as in a kernel
        except KeyboardInterrupt as exc:
            outcome = exc
        timer.join()
        alive = not keeper.done()
        before = steps
        await asyncio.sleep(0.1)
        keeper.cancel()
        return outcome, alive, steps - before

    loop = asyncio.new_event_loop()  # (not asyncio.run, whose SIGINT handler cancels the main task instead)
    try:
        outcome, alive, later_steps = loop.run_until_complete(main())
    finally:
        loop.close()
    assert isinstance(outcome, KeyboardInterrupt)
    assert alive and later_steps >= 1  # the bystander was not killed, and goes on after
