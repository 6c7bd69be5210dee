"""%memit through a real InteractiveShell: options, output forms, faults, accuracy."""

from __future__ import annotations

import os
import signal
import sys
import threading
import tracemalloc

import pytest
from IPython.core.error import UsageError

from ipymem.models import MemitResult

from .conftest import MiB

LINUX_HWM = os.path.exists("/proc/self/clear_refs")


def test_line_magic_prints_familiar_line_and_returns_nothing_without_o(ip):
    assert ip.line("memit", "x = bytearray(50 * 2**20)") is None
    (text,) = ip.texts()
    assert text.startswith("peak memory: ") and ", increment: " in text
    assert "RSS" in text
    assert ip.user_ns["x"].__len__() == 50 * MiB  # names defined by the statement stay defined


def test_o_returns_frozen_result_with_sane_figures(ip):
    r = ip.line("memit", "-o -q x = bytearray(64 * 2**20); del x")
    assert isinstance(r, MemitResult)
    assert ip.outputs == []  # -q prints nothing
    with pytest.raises(AttributeError):
        r.statement = "other"  # frozen
    (run,) = r.runs
    assert run.peak >= run.baseline and run.peak >= run.end
    assert r.increment == run.peak - run.baseline
    assert 60 * MiB < r.increment < 72 * MiB
    assert r.duration > 0 and r.samples >= 2
    assert r.statement.startswith("x = bytearray")
    d = r.to_dict()
    assert d["increment"] == r.increment and d["runs"][0]["retained"] == run.retained


@pytest.mark.skipif(not LINUX_HWM, reason="needs /proc/self/clear_refs")
def test_exact_peak_of_a_200_mib_spike_ten_times(ip):
    """A 200 MiB buffer allocated and freed within milliseconds: every run within 5%."""
    for _ in range(10):
        r = ip.line("memit", "-q -o -i 10 bytearray(200 * 2**20)")  # a 10 s interval: the sampler sees nothing
        assert r.exact and "high-water" in r.peak_method
        assert abs(r.increment - 200 * MiB) <= 0.05 * 200 * MiB, r.increment / MiB


def test_repeat_reports_worst_and_best(ip):
    r = ip.line("memit", "-r 3 -o x = bytearray(32 * 2**20); del x")
    assert len(r.runs) == 3 and r.params.repeat == 3
    assert r.increment == max(run.increment for run in r.runs)
    assert r.best_increment == min(run.increment for run in r.runs)
    assert "worst of 3 runs" in ip.texts()[0]


def test_timeout_is_a_budget_for_repeats(ip):
    r = ip.line("memit", "-q -o -r 50 -t 0.05 import time; time.sleep(0.03)")
    assert 1 < len(r.runs) < 50 and r.timed_out
    assert r.params.timeout == 0.05
    assert "timeout" in str(r)


def test_interval_sets_the_sampling_rate(ip):
    r = ip.line("memit", "-q -o -i 0.002 import time; time.sleep(0.2)")
    assert r.params.interval == 0.002
    assert r.samples > 20
    assert r.timeline[0].t <= r.timeline[-1].t


def test_children_are_included_with_c(ip):
    code = (
        "import subprocess, sys; "
        "subprocess.run([sys.executable, '-c', "
        "'import time; b = bytearray(80 * 2**20); time.sleep(0.5)'], check=True)"
    )
    without = ip.line("memit", "-q -o -i 0.02 " + code)
    with_children = ip.line("memit", "-q -o -c -i 0.02 " + code)
    assert with_children.params.include_children
    assert with_children.increment > without.increment + 50 * MiB
    assert "child" in str(with_children)


def test_heap_traces_python_heap_and_restores_tracemalloc(ip):
    assert not tracemalloc.is_tracing()
    r = ip.line("memit", "--heap -o -q x = [None] * (2**20); del x")
    assert not tracemalloc.is_tracing()
    assert r.heap_increment is not None
    assert abs(r.heap_increment - 8 * MiB) < 0.5 * MiB


def test_heap_is_free_when_tracemalloc_already_runs_and_stays_running(ip):
    tracemalloc.start(5)
    try:
        r = ip.line("memit", "-o -q x = [None] * (2**20); del x")
        assert r.heap_increment is not None and r.heap_increment >= 8 * MiB
        assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 5
    finally:
        tracemalloc.stop()


def test_v_stores_result_in_user_namespace(ip):
    ip.line("memit", "-q -v res pass")
    assert isinstance(ip.user_ns["res"], MemitResult)


def test_precision_changes_the_figures(ip):
    ip.line("memit", "--precision 4 pass")
    first = ip.texts()[0].splitlines()[0]
    assert first.split("peak memory: ")[1].split(" MiB")[0].split(".")[1].__len__() == 4


def test_cell_magic_runs_setup_unmeasured_and_supports_ipython_syntax(ip):
    r = ip.cell(
        "memit",
        "-o -q big = bytearray(100 * 2**20)",
        "%time y = 1\nout = !echo hello\nsmall = bytearray(10 * 2**20)\n",
    )
    assert r.setup == "big = bytearray(100 * 2**20)"
    assert 8 * MiB < r.increment < 30 * MiB  # the setup's 100 MiB is not in the increment
    assert ip.user_ns["y"] == 1 and ip.user_ns["out"][0] == "hello"
    assert "small" in ip.user_ns and "big" in ip.user_ns


def test_html_and_text_forms(ip):
    ip.line("memit", "-r 2 x = '<b>&'")
    (data,) = ip.outputs
    html = data["text/html"]
    assert "<table" in html and "<script" not in html.lower()
    assert "&lt;b&gt;&amp;" in html  # the statement is escaped
    assert "Peak (RSS)" in html and "Increment" in html
    assert "Run" in html  # per-run table when repeated
    assert data["text/plain"].startswith("peak memory:")
    r = ip.line("memit", "-q -o pass")
    assert r._repr_html_().startswith("<div")
    printed = []
    r._repr_pretty_(type("P", (), {"text": lambda self, s: printed.append(s)})(), False)
    assert printed[0] == str(r)


def test_dollar_and_braces_are_not_expanded(ip):
    ip.user_ns["name"] = "WRONG"
    ip.line("memit", "-q s = '$name {name}'")
    assert ip.user_ns["s"] == "$name {name}"


def test_help_is_generated_from_the_option_table(ip):
    doc = ip.ip.find_line_magic("memit").__doc__
    for flag in ("-r N", "-t SECONDS", "-i SECONDS", "-c", "-o", "-q", "-v NAME", "--heap", "--precision N"):
        assert flag in doc


@pytest.mark.parametrize(
    "line, message",
    [
        ("-z x = 1", "not recognized"),
        ("", "no statement"),
        ("-r", "requires argument"),
        ("-r abc x = 1", "expected a positive integer"),
        ("-r 0 x = 1", "expected a positive integer"),
        ("-t soon x = 1", "seconds"),
        ("-t -1 x = 1", "seconds"),
        ("-i nan x = 1", "seconds"),
        ("-v 1bad x = 1", "identifier"),
        ("--precision -2 x = 1", "0 or more"),
    ],
)
def test_bad_input_raises_usage_error_and_runs_nothing(ip, line, message):
    with pytest.raises(UsageError) as info:
        ip.line("memit", line)
    assert message in str(info.value)
    assert "Usage: %memit" in str(info.value)
    assert "x" not in ip.user_ns
    assert ip.outputs == []


def test_empty_cell_is_a_usage_error(ip):
    with pytest.raises(UsageError):
        ip.cell("memit", "", "   \n")


def test_syntax_error_raises_before_anything_runs(ip):
    with pytest.raises(SyntaxError):
        ip.cell("memit", "ran_setup = True", "x = (")
    assert "ran_setup" not in ip.user_ns


def test_exception_propagates_with_users_traceback_and_partial_report(ip):
    ip.ip.run_cell("def boom():\n    raise ValueError('from user code')")
    with pytest.raises(ValueError, match="from user code") as info:
        ip.line("memit", "-r 3 boom()")
    frames = [f.name for f in __import__("traceback").extract_tb(info.value.__traceback__)]
    assert frames[-1] == "boom"
    (text,) = ip.texts()
    assert "raised ValueError: from user code" in text and "run 1 of 3" in text


def test_exception_through_run_cell_shows_user_frames_only(ip, capsys):
    ip.ip.run_cell("def boom():\n    raise ValueError('shown')")
    result = ip.ip.run_cell("%memit boom()")
    assert isinstance(result.error_in_exec, ValueError)
    out = capsys.readouterr().out
    assert "boom()" in out and "shown" in out
    assert "engine" not in out and "_one_run" not in out  # our frames are hidden


def test_no_process_is_killed_on_exception(ip):
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(ZeroDivisionError):
            ip.line("memit", "-c 1/0")
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_keyboard_interrupt_shows_partial_result_and_reraises(ip):
    # The timer starts inside the statement: gc.collect() before the run can take a while
    # once matplotlib (the live view's tests) is loaded, and that is not the run's time.
    ip.user_ns["_interrupt_later"] = lambda: threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        ip.line("memit", "-v partial import time\n_interrupt_later()\nfor _ in range(100): time.sleep(0.05)")
    r = ip.user_ns["partial"]
    assert r.outcome == "interrupted" and len(r.runs) == 1
    assert r.runs[0].duration >= 0.2
    assert "interrupted" in ip.texts()[0]
    ip.line("memit", "-q pass")  # the next magic works


def test_unload_removes_magics_and_reload_works(ip):
    ip.line("unload_ext", "ipymem")
    assert ip.ip.find_line_magic("memit") is None
    ip.line("load_ext", "ipymem")
    ip.line("memit", "-q pass")


def test_memit_pass_is_cheap(ip):
    """Behaviour, not timing: `%memit pass` starts and stops one sampler thread and nothing else."""
    before = threading.active_count()
    r = ip.line("memit", "-q -o pass")
    assert threading.active_count() == before
    assert r.samples >= 2 and len(r.runs) == 1
