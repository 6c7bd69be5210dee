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
    # 500 runs of >= 20 ms each (10 s) cannot fit in a 1 s budget, and the first run leaves ample slack for a second.
    r = ip.line("memit", "-q -o -r 500 -t 1 import time; time.sleep(0.02)")
    assert r.timed_out and r.params.timeout == 1
    assert 1 < len(r.runs) < 500
    assert all(run.duration >= 0.02 for run in r.runs)
    # No run starts once the budget is spent: every run but the last ran inside it (so at most
    # 1 / 0.02 + 1 runs, on any machine; a slow one fits fewer).
    assert sum(run.duration for run in r.runs[:-1]) < 1
    assert "timeout" in str(r)


def _readings_fit_the_interval(r, interval):
    """A start and a stop reading, and between them one per ``interval`` of the timeline at most."""
    span = r.timeline[-1].t - r.timeline[0].t
    assert r.timeline[0].t <= r.timeline[-1].t
    assert r.samples <= 2 + span / interval + 1, (r.samples, span)


def test_interval_sets_the_sampling_rate(ip):
    fast = ip.line("memit", "-q -o -i 0.002 import time; time.sleep(0.2)")
    slow = ip.line("memit", "-q -o -i 1 import time; time.sleep(0.2)")
    assert fast.params.interval == 0.002 and slow.params.interval == 1
    _readings_fit_the_interval(fast, 0.002)
    _readings_fit_the_interval(slow, 1)
    assert fast.samples >= 3  # the start and stop readings and at least one from the thread in 100 intervals
    assert fast.samples > slow.samples  # the same statement, read more often at the shorter interval


def test_children_are_included_with_c(ip, monkeypatch):
    from ipymem.engine import Sampler

    # The child allocates, says so, and holds its memory until the parent closes its stdin; the parent
    # closes it only once the sampler thread has taken a reading that began after the child was ready.
    child_ready, sampled = threading.Event(), threading.Event()
    real_sample = Sampler.sample

    def sample(self):
        after_ready = child_ready.is_set()
        value = real_sample(self)
        if after_ready and threading.current_thread().name == "ipymem-sampler":
            sampled.set()
        return value

    monkeypatch.setattr(Sampler, "sample", sample)

    def run_child():
        import subprocess

        child_ready.clear()
        sampled.clear()
        code = "import sys; b = bytearray(80 * 2**20); print('ready', flush=True); sys.stdin.read()"
        with subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ) as child:
            try:
                assert child.stdout.readline() == "ready\n", "the child did not start"
                child_ready.set()
                assert sampled.wait(30), "the sampler took no reading while the child held its memory"
            finally:
                child.stdin.close()
                try:
                    child.wait(30)
                finally:
                    if child.poll() is None:
                        child.kill()
            assert child.returncode == 0

    ip.user_ns["run_child"] = run_child
    without = ip.line("memit", "-q -o -i 0.02 run_child()")
    with_children = ip.line("memit", "-q -o -c -i 0.02 run_child()")
    assert without.ok and with_children.ok
    assert with_children.params.include_children and not without.params.include_children
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
        "%time y = 1\nout = !echo hello\nsmall = bytearray(48 * 2**20)\n",
    )
    assert r.setup == "big = bytearray(100 * 2**20)"
    assert 40 * MiB < r.increment < 60 * MiB  # the setup's 100 MiB is not in the increment
    assert ip.user_ns["y"] == 1 and ip.user_ns["out"][0] == "hello"
    assert "small" in ip.user_ns and "big" in ip.user_ns


def test_html_and_text_forms(ip):
    ip.line("memit", "-r 2 x = '<b>&'")
    (data,) = ip.outputs
    html = data["text/html"]
    assert "<table" in html and "<script" not in html.lower()
    assert "&lt;b&gt;&amp;" in html  # the statement is escaped
    assert ">Peak<" in html and ">RSS</span>" in html and "Increment" in html  # the value header names RSS
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
        ("--precision -2 x = 1", "from 0 to 12"),
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


@pytest.mark.usefixtures("python_sigint_handler")  # SIGINT raises even when the tests run as a background job
def test_keyboard_interrupt_shows_partial_result_and_reraises(ip):
    # The measured statement arms the interrupt itself, so however slow the machine, it lands mid-run.
    ip.user_ns["interrupt_soon"] = lambda: threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        ip.cell("memit", "-v partial import time", "interrupt_soon()\nfor _ in range(200): time.sleep(0.05)\n")
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


def test_top_level_await_in_a_memit_cell(ip):
    r = ip.cell("memit", "-q -o import asyncio", "await asyncio.sleep(0.01)\nafter_await = bytearray(48 * 2**20)\n")
    assert "after_await" in ip.user_ns and r.ok


def test_memory_profilers_attribute_names(ip):
    """memory_profiler's MemitResult attributes, as aliases: mem_usage in MiB per run, the options."""
    r = ip.line("memit", "-q -o -r 3 -i 0.02 -t 60 x = bytearray(32 * 2**20)")
    assert r.mem_usage == [run.peak / 2**20 for run in r.runs] and len(r.mem_usage) == 3
    assert all(isinstance(v, float) for v in r.mem_usage)
    assert (r.repeat, r.timeout, r.interval, r.include_children) == (3, 60.0, 0.02, False)
    assert max(r.mem_usage) * 2**20 == r.peak
