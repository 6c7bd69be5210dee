"""%mprun and %%mprun through a real InteractiveShell: targets, options, bad input, faults, accuracy."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
import tracemalloc

import pytest
from IPython.core.error import UsageError

from ipymem.models import MprunResult

from .conftest import MiB

LINUX_HWM = os.path.exists("/proc/self/clear_refs")

SUM_OF_LISTS = """
def sum_of_lists(N):
    total = 0
    for i in range(5):
        L = [j ^ (j >> i) for j in range(N)]
        total += sum(L)
    del L
    return total
"""

ALLOC = """
def alloc(n):
    a = bytearray(n)
    b = [0] * 10
    del a
    return b
"""


def define(ip, source: str) -> None:
    result = ip.run_cell(textwrap.dedent(source))
    assert result.success, result.error_in_exec or result.error_before_exec


def lines_of(result: MprunResult, name: str) -> dict[str, object]:
    """Executed lines of a function by their stripped source text."""
    return {line.source.strip(): line for line in result.function(name).lines if line.executed}


def test_function_defined_in_a_cell_shows_its_source_and_the_cell_name(ip):
    define(ip, ALLOC)
    assert ip.line("mprun", "-f alloc alloc(64 * 2**20)") is None
    (text,) = ip.texts()
    assert "Cell In[" in text and "ipython-input" not in text
    for header in ("Line #", "Mem usage (RSS)", "Increment (RSS)", "Peak (RSS)", "Occurrences", "Line Contents"):
        assert header in text
    assert text.index("Increment (RSS)") < text.index("Peak (RSS)") < text.index("Occurrences")
    assert "a = bytearray(n)" in text and "def alloc(n):" in text
    (html,) = ip.htmls()
    assert "<table" in html and "linear-gradient" in html and "Cell In[" in html


@pytest.mark.skipif(not LINUX_HWM, reason="needs /proc/self/clear_refs")
def test_allocation_and_release_land_on_their_lines(ip):
    define(ip, ALLOC)
    r = ip.line("mprun", "-q -r -f alloc alloc(64 * 2**20)")
    lines = lines_of(r, "alloc")
    a, b, d = lines["a = bytearray(n)"], lines["b = [0] * 10"], lines["del a"]
    assert 60 * MiB < a.increment < 70 * MiB and 60 * MiB < a.peak < 70 * MiB
    assert -70 * MiB < d.increment < -60 * MiB
    assert abs(b.increment) < 2 * MiB
    f = r.function("alloc")
    assert f.increment == sum(line.increment or 0 for line in f.lines)
    assert all(line.occurrences == 1 for line in lines.values())


def test_function_in_a_module(ip, tmp_path, monkeypatch):
    (tmp_path / "mp_module_under_test.py").write_text(textwrap.dedent(ALLOC))
    monkeypatch.syspath_prepend(str(tmp_path))
    define(ip, "import mp_module_under_test as m")
    r = ip.line("mprun", "-r -f m.alloc m.alloc(2**20)")
    f = r.function("alloc")
    assert f.filename.endswith("mp_module_under_test.py") and f.where == f.filename
    assert "mp_module_under_test.py" in ip.texts()[0]
    assert lines_of(r, "alloc")["del a"].occurrences == 1
    sys.modules.pop("mp_module_under_test", None)


def test_method_bound_and_unbound(ip):
    define(
        ip,
        """
        class Box:
            def fill(self, n):
                self.data = bytearray(n)
                return len(self.data)
        box = Box()
        """,
    )
    for expr in ("box.fill", "Box.fill"):
        r = ip.line("mprun", f"-q -o -f {expr} box.fill(2**20)")
        f = r.function("Box.fill")
        assert f.calls == 1
        assert lines_of(r, "fill")["self.data = bytearray(n)"].occurrences == 1


def test_wraps_decorated_function_profiles_the_wrapped_lines(ip):
    define(
        ip,
        """
        import functools
        def deco(f):
            @functools.wraps(f)
            def wrapper(*args):
                return f(*args)
            return wrapper

        @deco
        def decorated(n):
            x = bytearray(n)
            return len(x)
        """,
    )
    r = ip.line("mprun", "-q -o -f decorated decorated(1000)")
    f = r.function("decorated")
    assert f.calls == 1
    assert lines_of(r, "decorated")["x = bytearray(n)"].occurrences == 1


def test_generator_counts_resumes_as_one_line(ip):
    define(
        ip,
        """
        def chunks(n):
            for i in range(n):
                block = bytearray(1024)
                yield block
        """,
    )
    r = ip.line("mprun", "-q -o -f chunks total = sum(len(b) for b in chunks(5))")
    lines = lines_of(r, "chunks")
    assert lines["block = bytearray(1024)"].occurrences == 5
    assert lines["yield block"].occurrences == 5
    assert r.function("chunks").calls == 1
    assert ip.user_ns["total"] == 5 * 1024


def test_recursion(ip):
    define(
        ip,
        """
        def fact(n):
            if n <= 1:
                return 1
            return n * fact(n - 1)
        """,
    )
    r = ip.line("mprun", "-q -o -f fact fact(10)")
    f = r.function("fact")
    assert f.calls == 1 and f.activations == 10  # recursion: the nested calls are part of the outer one
    lines = lines_of(r, "fact")
    assert lines["if n <= 1:"].occurrences == 10
    assert lines["return n * fact(n - 1)"].occurrences == 9
    assert lines["return 1"].occurrences == 1


def test_cell_body_form_profiles_the_cell_lines(ip):
    r = ip.cell(
        "mprun",
        "-q -o",
        "x = bytearray(48 * 2**20)\ny = [i * i for i in range(1000)]\nfor k in range(3):\n    z = k\ndel x\n",
    )
    (f,) = r.functions
    assert f.name == "(cell body)"
    lines = lines_of(r, "(cell body)")
    assert lines["y = [i * i for i in range(1000)]"].occurrences == 1  # the comprehension is one occurrence
    assert lines["z = k"].occurrences == 3
    assert lines["for k in range(3):"].occurrences == 4
    assert "y" in ip.user_ns and "x" not in ip.user_ns  # it ran in the user namespace
    if LINUX_HWM:
        assert 46 * MiB < lines["x = bytearray(48 * 2**20)"].increment < 50 * MiB


def test_cell_form_with_f_profiles_the_functions_while_the_cell_runs(ip):
    define(ip, ALLOC)
    r = ip.cell("mprun", "-q -o -f alloc", "a1 = alloc(1000)\na2 = alloc(2000)\n")
    assert [f.name for f in r.functions] == ["alloc"]
    assert r.function("alloc").calls == 2
    assert lines_of(r, "alloc")["del a"].occurrences == 2


def test_multiple_f(ip):
    define(ip, ALLOC)
    define(ip, "def twice(n):\n    first = alloc(n)\n    second = alloc(n)\n    return first + second\n")
    r = ip.line("mprun", "-o -f alloc -f twice twice(1000)")
    assert [f.name for f in r.functions] == ["alloc", "twice"]
    assert r.function("alloc").calls == 2 and r.function("twice").calls == 1
    text = ip.texts()[0]
    assert text.count("Filename:") == 2


def test_T_writes_the_text_report(ip, tmp_path, capsys):
    define(ip, ALLOC)
    path = tmp_path / "report.txt"
    r = ip.line("mprun", f"-o -T {path} -f alloc alloc(1000)")
    written = path.read_text()
    assert written.strip() == str(r).strip()
    assert "Line Contents" in written and "a = bytearray(n)" in written
    assert str(path) in capsys.readouterr().out


def test_r_o_v_q(ip):
    define(ip, ALLOC)
    assert isinstance(ip.line("mprun", "-q -r -f alloc alloc(10)"), MprunResult)
    assert isinstance(ip.line("mprun", "-q -o -f alloc alloc(10)"), MprunResult)
    assert ip.line("mprun", "-q -v kept -f alloc alloc(10)") is None
    assert isinstance(ip.user_ns["kept"], MprunResult)
    assert ip.outputs == []  # -q printed nothing
    d = ip.user_ns["kept"].to_dict()
    assert d["functions"][0]["name"] == "alloc" and d["params"]["metric"] == "RSS"


def test_precision(ip):
    define(ip, ALLOC)
    ip.line("mprun", "--precision 4 -f alloc alloc(10)")
    assert " MiB" in ip.texts()[0]
    figures = [w for w in ip.texts()[0].split() if w.replace(".", "").replace("+", "").replace("-", "").isdigit()]
    assert any(len(w.split(".")[-1]) == 4 for w in figures if "." in w)


def test_heap_backend_attributes_python_allocations(ip):
    assert not tracemalloc.is_tracing()
    define(ip, "def build(n):\n    data = [str(i) for i in range(n)]\n    keep = data[:10]\n    return keep\n")
    r = ip.line("mprun", "-o --backend heap -f build build(100_000)")
    assert not tracemalloc.is_tracing()  # left as found
    assert r.params.backend == "heap" and r.params.metric == "Python heap"
    assert "Increment (Python heap)" in ip.texts()[0]
    data = lines_of(r, "build")["data = [str(i) for i in range(n)]"]
    assert data.peak > 4 * MiB and data.increment > 4 * MiB


def test_heap_backend_keeps_tracemalloc_running_if_it_was(ip):
    tracemalloc.start(3)
    try:
        define(ip, ALLOC)
        ip.line("mprun", "-q --backend heap -f alloc alloc(10)")
        assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 3
    finally:
        tracemalloc.stop()


def test_c_includes_children(ip):
    define(
        ip,
        """
        import subprocess, sys
        def spawn():
            subprocess.run([sys.executable, '-c', 'pass'], check=True)
        """,
    )
    r = ip.line("mprun", "-q -o -c -f spawn spawn()")
    assert r.params.include_children and "incl. children" in r.params.metric
    assert any("child processes" in n for n in r.notes)


@pytest.mark.parametrize(
    ("expr", "said"),
    [
        ("len", "built-in"),
        ("undefined_name", "NameError"),
        ("alloc(1)", "is a call"),
        ("three", "not a Python function"),
        ("int", "a class"),
        ("1 +", "not a Python expression"),
    ],
)
def test_bad_f_is_a_usage_error_naming_what_was_given(ip, expr, said):
    define(ip, ALLOC + "\nthree = 3\n")
    with pytest.raises(UsageError, match=r"expected|call|give") as info:
        ip.line("mprun", f"-f '{expr}' alloc(1)")
    assert said in str(info.value) and expr.strip() in str(info.value)
    assert ip.outputs == []


def test_bad_usage(ip):
    define(ip, ALLOC)
    with pytest.raises(UsageError, match="-f FUNC"):
        ip.line("mprun", "alloc(1)")
    with pytest.raises(UsageError, match="no statement"):
        ip.line("mprun", "-f alloc")
    with pytest.raises(UsageError, match="rss or heap"):
        ip.line("mprun", "--backend vms -f alloc alloc(1)")


def test_exception_propagates_after_the_partial_report(ip):
    define(ip, "def fails(n):\n    data = bytearray(n)\n    raise ValueError('bad input')\n")
    with pytest.raises(ValueError, match="bad input"):
        ip.line("mprun", "-v r -f fails fails(1000)")
    r = ip.user_ns["r"]
    assert r.outcome == "error" and "ValueError: bad input" in r.error
    assert lines_of(r, "fails")["data = bytearray(n)"].occurrences == 1
    assert "raised ValueError: bad input" in ip.texts()[0]


def test_keyboard_interrupt_is_marked_and_reraised(ip):
    define(ip, "def stop(n):\n    data = bytearray(n)\n    raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        ip.line("mprun", "-v r -f stop stop(10)")
    assert ip.user_ns["r"].outcome == "interrupted"
    assert "interrupted" in ip.texts()[0]


def test_threads_started_by_the_profiled_code_are_not_profiled_and_it_says_so(ip):
    import threading

    define(
        ip,
        """
        import threading
        def inner():
            x = bytearray(1000)
            return x
        def starter():
            t = threading.Thread(target=inner)
            t.start()
            t.join()
            return inner()
        """,
    )
    hook = getattr(threading, "_profile_hook", None)
    r = ip.line("mprun", "-q -o -f inner -f starter starter()")
    assert r.function("inner").calls == 1  # the calling thread's call only
    assert any("only the calling thread" in n and "1 started" in n for n in r.notes)
    assert getattr(threading, "_profile_hook", None) is hook  # threading's hook restored


def test_coroutine_function_awaited(ip):
    define(
        ip,
        """
        import asyncio
        async def fetch(n):
            await asyncio.sleep(0)
            data = bytearray(n)
            await asyncio.sleep(0)
            return len(data)
        """,
    )
    r = ip.line("mprun", "-q -o -f fetch out = asyncio.run(fetch(1000))")
    lines = [line for line in r.function("fetch").lines if line.executed]
    assert [line.source.strip() for line in lines] == [
        "await asyncio.sleep(0)",
        "data = bytearray(n)",
        "await asyncio.sleep(0)",
        "return len(data)",
    ]
    assert [line.occurrences for line in lines] == [1, 1, 1, 1]  # resuming after an await is not a new entry
    assert r.function("fetch").calls == 1
    assert ip.user_ns["out"] == 1000


@pytest.mark.skipif(not LINUX_HWM, reason="needs /proc/self/clear_refs")
def test_sum_of_lists_comprehension_peak_and_sane_increments(ip):
    define(ip, SUM_OF_LISTS)
    r = ip.line("mprun", "-q -o -f sum_of_lists sum_of_lists(300_000)")
    f = r.function("sum_of_lists")
    comp = lines_of(r, "sum_of_lists")["L = [j ^ (j >> i) for j in range(N)]"]
    assert comp.occurrences == 5  # inner iterations are not occurrences
    assert 5 * MiB < comp.peak < 40 * MiB  # roughly the list's size (~11 MiB)
    assert all(abs(line.increment or 0) <= f.peak for line in f.lines)
    assert f.increment == sum(line.increment or 0 for line in f.lines)


def test_html_escapes_source_and_marks_the_costly_line(ip):
    define(ip, "def tagged(n):\n    s = '<b>' * 3\n    big = bytearray(n)\n    return s\n")
    ip.line("mprun", "-f tagged tagged(64 * 2**20)")
    html = ip.htmls()[0]
    assert "&lt;b&gt;" in html and "'<b>'" not in html  # source text is escaped
    assert "<script" not in html
    if LINUX_HWM:  # the costly line's bar is the full width; the cheap line has none
        rows = html.split("<tr>")
        big = next(r for r in rows if "big = bytearray(n)" in r)
        cheap = next(r for r in rows if "s = " in r)
        assert "100.0%" in big and "100.0%" not in cheap


def test_unload_removes_mprun(ip):
    ip.run_line_magic("unload_ext", "ipymem")
    assert "mprun" not in ip.magics_manager.magics["line"]
    assert "mprun" not in ip.magics_manager.magics["cell"]
    ip.run_line_magic("load_ext", "ipymem")


def test_cell_with_top_level_await_profiles_the_cell_body(ip):
    r = ip.cell(
        "mprun",
        "-q -o",
        "import asyncio\nawait asyncio.sleep(0)\nbuf = bytearray(1000)\nawait asyncio.sleep(0)\ndone = len(buf)\n",
    )
    lines = [line for line in r.functions[0].lines if line.executed]
    assert [line.source for line in lines] == [
        "import asyncio",
        "await asyncio.sleep(0)",
        "buf = bytearray(1000)",
        "await asyncio.sleep(0)",
        "done = len(buf)",
    ]
    assert all(line.occurrences == 1 for line in lines)
    assert ip.user_ns["done"] == 1000


def test_coroutine_function_awaited_from_a_cell_with_top_level_await(ip):
    define(
        ip,
        """
        import asyncio
        async def fetch(n):
            await asyncio.sleep(0)
            data = bytearray(n)
            return len(data)
        """,
    )
    r = ip.cell("mprun", "-q -o -f fetch", "out = await fetch(1000)\n")
    f = r.function("fetch")
    assert f.calls == 1
    assert [line.occurrences for line in f.lines if line.executed] == [1, 1, 1]
    assert ip.user_ns["out"] == 1000


@pytest.mark.skipif(not hasattr(os, "kill") or sys.platform == "win32", reason="needs POSIX signals")
@pytest.mark.usefixtures("python_sigint_handler")
@pytest.mark.parametrize("delay", [0.05, 0.15, 0.3])
def test_real_ctrl_c_during_a_profiled_loop(ip, delay):
    # The profiled loop starts the timer itself once its first pass is done, so however slow the
    # machine (or %mprun's setup), the SIGINT lands inside the loop, never before it.
    timers = []

    def start_timer():
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        timers.append(timer)
        timer.start()

    ip.user_ns["start_timer"] = start_timer
    define(
        ip,
        "def spin():\n    n = 0\n    while True:\n        n += 1\n        x = [n] * 10\n"
        "        if n == 1:\n            start_timer()\n",
    )
    try:
        with pytest.raises(KeyboardInterrupt):
            ip.line("mprun", "-v r -f spin spin()")
    finally:
        for timer in timers:
            timer.join()
    assert len(timers) == 1
    r = ip.user_ns["r"]
    assert r.outcome == "interrupted"
    assert lines_of(r, "spin")["n += 1"].occurrences > 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_result_keeps_the_timeline_and_the_calls_and_plots_them(ip):
    define(ip, "def twice(n):\n    a = bytearray(n)\n    return len(a)\n")
    r = ip.cell("mprun", "-q -o -f twice", "twice(2**20)\ntwice(2**20)\n")
    assert len(r.timeline) >= 2 and r.timeline[0].t <= r.timeline[-1].t
    assert [kind for _, name, kind in r.calls] == ["start", "end", "start", "end"]
    assert all(name == "twice" for _, name, _ in r.calls)
    fig = r.plot()
    assert fig.axes and fig.axes[0].lines


def test_T_prints_only_where_the_report_went(ip, tmp_path, capsys):
    """memory_profiler's -T: the report goes to the file, only the saved-to line to the screen."""
    define(ip, ALLOC)
    path = tmp_path / "report.txt"
    r = ip.line("mprun", f"-o -v kept -T {path} -f alloc alloc(1000)")
    assert ip.outputs == []  # no table, no HTML: -T keeps long reports out of the notebook
    assert capsys.readouterr().out.strip() == f"*** Profile printout saved to text file {path}."
    assert isinstance(r, MprunResult) and ip.user_ns["kept"] is r
    assert "a = bytearray(n)" in path.read_text()


@pytest.mark.parametrize("kind", ["missing directory", "a directory", "unwritable file"])
def test_T_bad_path_is_refused_before_anything_runs(ip, tmp_path, kind, monkeypatch):
    define(ip, ALLOC)
    ip.run_cell("ran = []")
    if kind == "missing directory":
        path = tmp_path / "no" / "such" / "out.txt"
    elif kind == "a directory":
        path = tmp_path
    else:
        path = tmp_path / "locked.txt"
        path.write_text("")
        path.chmod(0o444)
        if os.geteuid() == 0:  # root may write anything: let access() answer as it would for a user
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(path) else real(p, mode))
    with pytest.raises(UsageError, match=r"(?s)-T.*Usage: %mprun"):
        ip.line("mprun", f"-T {path} -f alloc ran.append(alloc(10))")
    assert ip.user_ns["ran"] == []  # nothing ran
    assert ip.outputs == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_T_write_failing_after_the_run_keeps_the_report_and_the_users_exception(ip, capsys):
    """/dev/full passes every check and fails the write (ENOSPC): the report is shown instead."""
    define(ip, ALLOC)
    define(ip, "def boom():\n    alloc(10)\n    raise KeyError('mine')\n")
    with pytest.raises(KeyError, match="mine"):
        ip.line("mprun", "-v kept -T /dev/full -f alloc -f boom boom()")
    (text,) = ip.texts()
    assert "a = bytearray(n)" in text  # the report, on screen
    assert ip.user_ns["kept"].outcome == "error"
    assert "could not write /dev/full" in capsys.readouterr().err
    ip.clear()
    r = ip.line("mprun", "-o -T /dev/full -f alloc alloc(10)")
    assert isinstance(r, MprunResult) and len(ip.texts()) == 1
