"""%memtrace through a real InteractiveShell: attribution, retained vs held at peak, leaks, state, faults."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tracemalloc

import pytest
from IPython.core.error import UsageError

from ipymem.engine import alloctrace
from ipymem.models import AllocResult
from ipymem.models.alloc import ROW_MIN

from .conftest import MiB, sigint_timer

CELL = """\
keep = [str(i) for i in range(100_000)]
tmp = bytes(50 * 2**20)
del tmp
"""


def entry_for(result: AllocResult, source_start: str):
    matches = [e for e in result.entries if e.source.startswith(source_start)]
    assert matches, [(e.location, e.source) for e in result.entries]
    return matches[0]


def test_retained_list_and_transient_bytes(ip):
    r = ip.cell("memtrace", "-o -q", CELL)
    keep = ip.user_ns["keep"]
    expected = sys.getsizeof(keep) + sum(sys.getsizeof(s) for s in keep)
    listed = entry_for(r, "keep = ")
    transient = entry_for(r, "tmp = ")
    # the list's line is retained, within 10% of what it holds
    assert abs(listed.retained_size - expected) <= 0.1 * expected, (listed.retained_size, expected)
    assert listed.retained_count >= 100_000
    assert abs(listed.peak_size - expected) <= 0.1 * expected
    # the transient line was held at the peak but is not retained
    assert abs(transient.peak_size - 50 * MiB) <= 0.1 * 50 * MiB, transient.peak_size
    assert transient.retained_size < ROW_MIN
    # the peak covers the transient and the list; net retained is the list
    assert r.peak_increment >= 50 * MiB + 0.9 * expected
    assert abs(r.retained - expected) <= 0.25 * expected
    assert r.unobserved_peak < MiB
    assert r.entries[0] is transient  # largest first
    assert r.ok and r.runs == 1 and r.params.group_by == "lineno" and r.params.depth == 1


def test_rows_are_labelled_by_cell_and_line_and_carry_source(ip):
    ip.ip.run_cell("%%memtrace -v res\n" + CELL)
    r = ip.user_ns["res"]
    listed = entry_for(r, "keep = ")
    assert re.fullmatch(r"Cell In\[\d+\], line 1", listed.location), listed.location
    assert entry_for(r, "tmp = ").location.endswith("line 2")
    text = ip.texts()[-1]
    assert "Cell In[" in text and "keep = [str(i) for i in range(100_000)]" in text
    assert "Held at heap peak" in text and "Retained after" in text
    assert "Python heap peak" in text and "process RSS" in text


def test_r_finds_the_line_that_grows_every_run(ip):
    ip.ip.run_cell("LEAK = []\ndef handle():\n    scratch = bytearray(4 * 2**20)\n    LEAK.append(bytearray(10_000))\n")
    r = ip.line("memtrace", "-o -q -r 3 handle()")
    assert r.runs == 3 and r.params.repeat == 3
    leak = entry_for(r, "LEAK.append")
    assert leak.grows and leak in r.leak_suspects
    assert len(leak.retained_by_run) == 3
    assert abs(leak.growth_per_run - 10_033) < 0.05 * 10_033  # a bytearray(10_000) per run (and list growth)
    scratch = entry_for(r, "scratch = ")
    # (a few bytes of other threads' waits, e.g. the timeline sampler's, can be booked on a running line)
    assert not scratch.grows and scratch.retained_size < ROW_MIN
    assert scratch.peak_size >= 4 * MiB  # seen at the function's return, while still held
    assert r.entries[0] is leak  # suspects first
    ip.line("memtrace", "-r 3 handle()")
    text = ip.texts()[-1]
    assert "leak suspects" in text and "Growth/run" in text and "LEAK.append" in text
    recs = r.records()
    assert recs[0]["grows"] is True and recs[0]["retained_by_run"] == list(leak.retained_by_run)


def test_tracemalloc_stopped_after_when_it_was_off(ip):
    assert not tracemalloc.is_tracing()
    ip.line("memtrace", "-q x = [1] * 1000")
    assert not tracemalloc.is_tracing()
    assert sys.gettrace() is None


def test_prestarted_tracemalloc_keeps_frames_and_traces(ip):
    tracemalloc.start(5)
    try:
        before = bytearray(2 * MiB)
        tb = tracemalloc.get_object_traceback(before)
        assert tb is not None
        r = ip.line("memtrace", "-o -q -d 10 x = bytearray(3 * 2**20)")
        assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 5
        assert tracemalloc.get_object_traceback(before) == tb  # traces not cleared
        assert r.params.depth == 5 and r.params.requested_depth == 10
        assert any("already running with 5 frame" in n for n in r.notes)
        line = entry_for(r, "x = bytearray")
        assert abs(line.retained_size - 3 * MiB) < 0.1 * MiB
        # the user's earlier allocation is not counted as this run's
        assert not any(e.source.startswith("before = ") for e in r.entries)
    finally:
        tracemalloc.stop()


def test_library_allocations_are_booked_on_the_users_line_at_any_depth(ip):
    ip.ip.user_ns["data"] = list(range(300_000))
    ip.ip.run_cell("import json")
    d1 = ip.line("memtrace", "-o -q s = json.dumps(data)")
    size = sys.getsizeof(ip.user_ns["s"])
    line = entry_for(d1, "s = json")  # json's frame is innermost: the line ledger books it on the user's line
    assert abs(line.retained_size - size) < 0.1 * size
    assert line.peak_size >= 0.9 * size  # and json's list of chunks, joined into the string at the end
    assert d1.outside_retained_size < 0.05 * size
    d10 = ip.line("memtrace", "-o -q -d 10 s = json.dumps(data)")
    line = entry_for(d10, "s = json")
    assert abs(line.retained_size - size) < 0.1 * size
    everything = ip.line("memtrace", "-o -q --all s = json.dumps(data)")
    assert any("json" in e.location and "encoder.py" in e.location for e in everything.entries)
    unwatched, error = alloctrace(lambda: ip.ip.run_cell("s = json.dumps(data)"), watch_peak=False)
    assert error is None and not unwatched.lines_watched
    assert unwatched.outside_retained_size >= 0.9 * size  # without the ledger a library's frame is outside


def test_group_by_filename_and_traceback(ip):
    ip.ip.run_cell("def make():\n    return [bytearray(1000) for _ in range(100)]\n")
    by_file = ip.line("memtrace", "-o -q -g filename x = make()")
    assert all(e.lineno == 0 and e.source == "" for e in by_file.entries)
    assert any(re.fullmatch(r"Cell In\[\d+\]", e.location) for e in by_file.entries)
    by_tb = ip.line("memtrace", "-o -q -g traceback -d 5 x = make()")
    top = entry_for(by_tb, "return [bytearray")
    assert len(top.frames) >= 2 and top.frames[-1].source == "x = make()"  # 3.11: + the comprehension
    assert top.retained_size >= 100 * 1000
    assert by_tb.records()[0]["traceback"][0] == top.location
    ip.line("memtrace", "-g traceback -d 5 x = make()")
    assert "←" in ip.texts()[-1]


def test_n_limits_rows_and_sums_the_rest(ip):
    cell = "\n".join(f"a{i} = bytearray({(i + 1) * 10_000})" for i in range(6))
    r = ip.cell("memtrace", "-o -q -n 2", cell)
    assert len(r.entries) == 2 and r.groups >= 6
    assert [e.source.split()[0] for e in r.entries] == ["a5", "a4"]
    assert r.rest_retained_size >= (10 + 20 + 30 + 40) * 1000


def test_setup_line_is_not_traced(ip):
    r = ip.cell("memtrace", "-o -q big = bytearray(20 * 2**20)", "small = bytearray(2**20)\n")
    assert r.setup == "big = bytearray(20 * 2**20)"
    assert "big" in ip.user_ns and "small" in ip.user_ns
    assert not any(e.source.startswith("big") for e in r.entries)
    assert r.peak_increment < 5 * MiB


def test_output_forms(ip):
    ip.line("memtrace", "x = ['<b>&' * 1000 + str(i) for i in range(10)]")
    (data,) = ip.outputs
    html = data["text/html"]
    assert "<table" in html and "<script" not in html.lower()
    assert "&lt;b&gt;&amp;" in html and "<b>&" not in html.replace("<b>Total</b>", "")
    assert "Held at heap peak" in html and "background:" in html  # size bars
    assert data["text/plain"].startswith("%memtrace: Python heap (tracemalloc)")
    r = ip.line("memtrace", "-q -o x = 1")
    assert ip.outputs == [data]  # -q printed nothing
    with pytest.raises(AttributeError):
        r.statement = "other"  # frozen
    assert r._repr_html_().startswith("<div")
    printed = []
    r._repr_pretty_(type("P", (), {"text": lambda self, s: printed.append(s)})(), False)
    assert printed[0] == str(r)
    json.dumps(r.to_dict())
    assert ip.line("memtrace", "-q x = 1") is None


def test_v_stores_result(ip):
    ip.line("memtrace", "-q -v res x = 1")
    assert isinstance(ip.user_ns["res"], AllocResult)


def test_help_is_generated_from_the_option_table(ip):
    doc = ip.ip.find_line_magic("memtrace").__doc__
    for flag in ("-n N", "-g GROUP", "-d DEPTH", "--all", "-r N", "-o", "-q", "-v NAME", "--precision N"):
        assert flag in doc


@pytest.mark.parametrize(
    "line, message",
    [
        ("-z x = 1", "not recognized"),
        ("", "no statement"),
        ("-n", "requires argument"),
        ("-n 0 x = 1", "positive integer"),
        ("-n ten x = 1", "positive integer"),
        ("-g line x = 1", "lineno, filename, traceback"),
        ("-d 0 x = 1", "positive integer"),
        ("-d 5000 x = 1", "1 to 1000"),
        ("-d deep x = 1", "positive integer"),
        ("-r 0 x = 1", "positive integer"),
        ("-r -2 x = 1", "positive integer"),
        ("-v 1bad x = 1", "identifier"),
        ("--precision -1 x = 1", "from 0 to 12"),
        ("--bogus x = 1", "not recognized"),
    ],
)
def test_bad_input_raises_usage_error_and_runs_nothing(ip, line, message):
    with pytest.raises(UsageError) as info:
        ip.line("memtrace", line)
    assert message in str(info.value)
    assert "Usage: %memtrace" in str(info.value)
    assert "x" not in ip.user_ns
    assert ip.outputs == []


def test_empty_cell_and_syntax_error(ip):
    with pytest.raises(UsageError):
        ip.cell("memtrace", "", "  \n")
    with pytest.raises(SyntaxError):
        ip.cell("memtrace", "ran_setup = True", "x = (")
    assert "ran_setup" not in ip.user_ns


def test_engine_rejects_bad_arguments():
    for kwargs in ({"top": 0}, {"group_by": "line"}, {"depth": 0}, {"repeat": 0}):
        with pytest.raises(ValueError):
            alloctrace(lambda: None, **kwargs)


def test_exception_gives_partial_report_restores_state_and_propagates(ip):
    ip.ip.run_cell("def boom():\n    held = bytearray(2**20)\n    raise ValueError('from user code')")
    with pytest.raises(ValueError, match="from user code") as info:
        ip.line("memtrace", "-r 3 -v partial boom()")
    frames = [f.name for f in __import__("traceback").extract_tb(info.value.__traceback__)]
    assert frames[-1] == "boom"
    r = ip.user_ns["partial"]
    assert r.outcome == "error" and r.runs == 1 and "ValueError" in r.error
    assert "partial report" in ip.texts()[0] and "run 1 of 3" in ip.texts()[0]
    assert not tracemalloc.is_tracing() and sys.gettrace() is None


def test_a_second_measurement_and_a_second_run_watch_the_same_code_again(ip):
    """Each measurement, and each run of -r N, sees the user's code objects start again (a monitoring
    event disabled by a callback would stay disabled for good: the second %memtrace would be blind)."""
    ip.ip.run_cell(
        "import numpy as np\ndef churn():\n    t = bytes(50 * 2**20)\n    del t\n    return 1\n"
        "def lib_after():\n    x = np.ones(2**20)\n    y = [0] * 10\n    return len(y)\n"
    )
    allocating = "t = bytes" if hasattr(sys, "monitoring") else "churn()"
    for options in ("-o -q", "-o -q", "-o -q -r 2"):
        r = ip.line("memtrace", f"{options} churn()")
        line = entry_for(r, allocating)
        assert abs(line.peak_size - 50 * MiB) < 0.05 * 50 * MiB, (options, str(r))
        r = ip.line("memtrace", f"{options} lib_after()")
        line = entry_for(r, "x = np.ones")  # a library allocation inside a function, booked on its line
        assert abs(line.peak_size - 8 * MiB) < 0.05 * 8 * MiB, (options, str(r))


@pytest.mark.usefixtures("python_sigint_handler")
def test_keyboard_interrupt_shows_partial_result_and_reraises(ip):
    # The traced loop sends SIGINT itself once three buffers are kept, so however slow the machine,
    # it lands mid-run with three appends done (the loop would run on for ~10 s if it did not land).
    with pytest.raises(KeyboardInterrupt):
        ip.cell(
            "memtrace",
            "-v partial import os, signal, time",
            "kept = []\n"
            "for _ in range(200):\n    kept.append(bytearray(10_000))\n"
            "    if len(kept) == 3:\n        os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(0.05)\n",
        )
    r = ip.user_ns["partial"]
    assert r.outcome == "interrupted" and r.runs == 1
    assert entry_for(r, "kept.append").retained_count >= 3
    assert "interrupted" in ip.texts()[0]
    assert not tracemalloc.is_tracing() and sys.gettrace() is None
    ip.line("memtrace", "-q pass")  # the next magic works


def test_existing_trace_function_is_kept(ip):
    def tracer(frame, event, arg):
        return None

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        r = ip.cell("memtrace", "-o -q", CELL)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(old)
    listed = entry_for(r, "keep = ")
    assert listed.retained_size > 5 * MiB  # retained is unaffected
    assert r.peak_increment >= 50 * MiB
    if hasattr(sys, "monitoring"):
        # 3.12+: ipymem watches the user's lines through sys.monitoring, beside any trace function
        assert not any("another trace function" in n for n in r.notes) and r.lines_watched
        assert r.unobserved_peak == 0 and abs(entry_for(r, "tmp = ").peak_size - 50 * MiB) < 0.01 * 50 * MiB
    else:  # one trace function per thread: held-at-peak falls back to the end state, and the report says so
        assert any("another trace function" in n for n in r.notes)
        assert r.unobserved_peak >= 45 * MiB


def test_many_allocations_are_reduced_before_anything_else(ip):
    """300,000 live traces: one row per line, records are small, and nothing else is materialised."""
    r = ip.line("memtrace", "-o -q many = [str(i) for i in range(300_000)]")
    line = entry_for(r, "many = ")
    assert line.retained_count >= 300_000
    assert r.groups < 10 and len(r.records()) == len(r.entries)


def test_engine_without_ipython_and_imports_no_ipython(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        "from ipymem.engine import alloctrace\n"
        "def f():\n"
        "    global kept\n"
        "    kept = bytearray(2**20)\n"
        "r, err = alloctrace(f)\n"
        "assert err is None\n"
        "assert r.entries[0].location.endswith('probe.py:5'), r.entries[0].location\n"
        "assert 'IPython' not in sys.modules, 'IPython imported'\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, str(script)], check=True, env={**os.environ, "PYTHONPATH": root})


def test_transient_freed_inside_a_function_is_held_at_peak_by_its_line(ip):
    """Memory a user function allocates and frees before returning is held at the peak by the line that
    allocated it (3.12+: the call of ``bytes`` is a sys.monitoring event).  Before 3.12 a user function
    gets no line events (its loops run at tracemalloc's speed) and a call to a C function is no event for
    a trace function: the line that was running, the one that called the function, holds it."""
    ip.ip.run_cell("def churn():\n    t = bytes(50 * 2**20)\n    del t\n    return 1\n")
    r = ip.line("memtrace", "-o -q churn()")
    assert r.peak_increment >= 50 * MiB  # the exact peak sees it
    line = entry_for(r, "t = bytes" if hasattr(sys, "monitoring") else "churn()")
    assert abs(line.peak_size - 50 * MiB) < 0.05 * 50 * MiB and line.retained_size < ROW_MIN
    assert r.unobserved_peak == 0
    ip.line("memtrace", "churn()")
    assert "between two observations" not in ip.texts()[-1]


@pytest.mark.usefixtures("python_sigint_handler")
@pytest.mark.parametrize("seed", range(2))
def test_sigint_at_random_points_leaves_a_clean_session(ip, seed):
    import random

    rng = random.Random(seed)
    for _ in range(5):
        # The delay picks a random landing point (setup, any of the three runs, ipymem's work between
        # them); the last run waits for the signal to have been sent, so it always lands before the end.
        ip.user_ns["passes"] = []
        timer, ip.user_ns["fired"] = sigint_timer(rng.uniform(0.0, 0.25))
        try:
            with pytest.raises(KeyboardInterrupt):
                timer.start()  # inside: even a zero delay on a stalled machine lands in here
                ip.cell(
                    "memtrace",
                    "-r 3 -d 3 import time",
                    "data = [bytearray(2**16) for _ in range(50)]\ntime.sleep(0.1)\npasses.append(1)\n"
                    "if len(passes) == 3:\n    fired.wait(30)\n    time.sleep(5)\n",
                )
        finally:
            timer.join()
        assert not tracemalloc.is_tracing() and sys.gettrace() is None
        ip.clear()
    ip.line("memtrace", "-q pass")  # the next magic works


def test_result_keeps_the_rss_timeline_and_plots_it(ip):
    r = ip.line("memtrace", "-q -o x = [bytearray(2**16) for _ in range(100)]")
    assert len(r.timeline) >= 2
    fig = r.plot()
    assert fig.axes and fig.axes[0].lines


def test_locations_name_the_cell_the_magic_ran_in(ip):
    """IPython counts a cell before it runs: the statement's rows still say the running cell's number."""
    ip.ip.run_cell("y = 1", store_history=True)
    result = ip.ip.run_cell("%memtrace -q -v r kept = [str(i) for i in range(10_000)]", store_history=True)
    assert result.success
    number = result.execution_count
    assert entry_for(ip.user_ns["r"], "kept = ").location == f"Cell In[{number}], line 1"
    result = ip.ip.run_cell("%%mprun -q -r\nz = [0] * 1000\n", store_history=True)
    assert result.success and result.result.functions[0].label == f"Cell In[{result.execution_count}]"


def test_labels_say_line_question_mark_where_tracemalloc_knows_no_line():
    from ipymem.engine.alloctrace import CodeMap

    code = CodeMap({"<ipython-input-3-abc>": 3})
    assert code.frame("<ipython-input-3-abc>", 2).label == "Cell In[3], line 2"
    assert code.frame("<ipython-input-3-abc>", 0).label == "Cell In[3], line ?"  # not the whole cell
    assert code.frame("<ipython-input-3-abc>", 0, whole_file=True).label == "Cell In[3]"  # -g filename
    assert code.frame("/srv/app/job.py", 0).label.endswith("job.py:?")
    assert code.frame("/srv/app/job.py", 0, whole_file=True).label.endswith("job.py")
