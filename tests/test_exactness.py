"""Exact in company: figures stay true when measurements nest, overlap, or meet the user's own tracemalloc.

Every measurement shares two process-wide counters (the kernel's high-water
mark of RSS and tracemalloc's peak) with every other one.  These tests make a
300 MiB spike in an outer measurement, then run an inner one that resets the
counter for itself, and check that the outer figure still sees the spike.
"""

from __future__ import annotations

import resource
import threading
import tracemalloc

import pytest

import ipymem
from ipymem.engine import peaks

from .conftest import MiB

SPIKE = 300 * MiB

HELPERS = """
import ipymem, threading
import numpy as np

def spike(n=300 * 2**20):
    b = np.ones(n // 8)      # every page written, so RSS really rises (allocator reuse cannot hide it)
    del b

def profiled_noop():
    x = 1
    return x

@ipymem.profile
def decorated_noop():
    return 1

def api_inner():
    ipymem.memit(lambda: None)

def inner_in_thread():
    t = threading.Thread(target=lambda: ipymem.memit(lambda: None))
    t.start(); t.join()
"""

INNER = {
    "%memit": "%memit -q pass",
    "%%memit": "%%memit -q\npass",
    "%mprun": "%mprun -q -f profiled_noop profiled_noop()",
    "%memtrace": "%memtrace -q x = 1",
    "@profile": "decorated_noop()",
    "api": "api_inner()",
    "thread": "inner_in_thread()",
}


def _inner_cell(kind: str) -> str:
    inner = INNER[kind]
    if inner.startswith("%%"):
        head, body = inner.split("\n", 1)
        return f"get_ipython().run_cell_magic({head[2:].split()[0]!r}, {head.split(' ', 1)[1]!r}, {body!r})"
    return inner


@pytest.mark.parametrize("kind", list(INNER))
def test_outer_memit_keeps_its_spike_whatever_runs_inside(ip, kind):
    ip.run_cell(HELPERS)
    # -i 60: the outer sampler never ticks, so only the high-water mark can have seen the spike.
    r = ip.cell("memit", "-o -q -i 60", f"spike()\n{_inner_cell(kind)}\n")
    assert r.exact, r.peak_method
    assert abs(r.increment - SPIKE) < 0.05 * SPIKE, (kind, r.increment / MiB)


def test_inner_measurement_keeps_its_own_figure(ip):
    """The inner %memit, opened after the spike, does not report the outer spike."""
    ip.run_cell(HELPERS)
    ip.run_cell("inner = None")
    outer = ip.cell(
        "memit",
        "-o -q -i 60",
        "spike()\ninner = get_ipython().run_line_magic('memit', '-o -q x = bytearray(50 * 2**20); del x')\n",
    )
    inner = ip.user_ns["inner"]
    assert abs(outer.increment - SPIKE) < 0.05 * SPIKE
    assert abs(inner.increment - 50 * MiB) < 0.05 * 50 * MiB, inner.increment / MiB


def test_memwatch_keeps_the_cells_peak_with_a_memit_inside(ip):
    ip.run_cell(HELPERS)
    ip.line("memwatch", "on")
    try:
        ip.clear()
        ip.run_cell("spike()\n%memit -q pass\n")
        lines = [t for t in ip.texts() if "above start" in t]
        assert lines, ip.texts()
        peak = float(lines[-1].split("peak", 1)[1].split("MiB")[0].replace(",", "").replace("+", ""))
        assert abs(peak - 300) < 15, lines[-1]
    finally:
        ip.line("memwatch", "off")


def test_outer_mprun_line_peak_keeps_a_spike_made_before_an_inner_measurement(ip):
    ip.run_cell(HELPERS)
    ip.run_cell("def outer():\n    spike(); ipymem.memit(lambda: None)\n    return 1\n")
    r = ip.line("mprun", "-o -q -f outer outer()")
    line = next(ln for ln in r.functions[0].lines if "spike()" in ln.source)
    assert abs(line.peak - SPIKE) < 0.05 * SPIKE, line.peak / MiB


def test_two_threads_measuring_at_once_each_keep_their_peak():
    results: dict[str, object] = {}
    started = threading.Barrier(2)

    def big():
        started.wait()
        b = bytearray(SPIKE)
        del b
        results["big_done"] = True

    def small():
        started.wait()
        for _ in range(50):  # many resets while the other one runs
            ipymem.memit(lambda: None)

    t = threading.Thread(target=lambda: results.__setitem__("small", small()))
    t.start()
    r = ipymem.memit(big, interval=60)  # no sampler tick: only the high-water mark sees the spike
    t.join()
    assert abs(r.increment - SPIKE) < 0.05 * SPIKE, r.increment / MiB


# -- the user's own tracemalloc ------------------------------------------------------


USER_TRACING_RUNS = {
    "%memit --heap": ("memit", "-q --heap x = bytearray(2**20); del x"),
    "%memit": ("memit", "-q x = 1"),
    "%mprun heap": ("mprun", "-q --backend heap -f profiled_noop profiled_noop()"),
    "%mprun rss": ("mprun", "-q -f profiled_noop profiled_noop()"),
    "%memtrace": ("memtrace", "-q x = [bytearray(1000) for _ in range(100)]"),
}


@pytest.mark.parametrize("what", list(USER_TRACING_RUNS))
def test_the_users_tracemalloc_peak_survives_every_magic(ip, what):
    ip.run_cell(HELPERS)
    tracemalloc.start()
    try:
        b = bytearray(40 * MiB)
        del b
        before = tracemalloc.get_traced_memory()[1]
        assert before >= 40 * MiB
        magic, line = USER_TRACING_RUNS[what]
        ip.line(magic, line)
        assert tracemalloc.get_traced_memory()[1] >= before
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_the_users_tracemalloc_peak_survives_the_api():
    tracemalloc.start()
    try:
        b = bytearray(40 * MiB)
        del b
        before = tracemalloc.get_traced_memory()[1]
        r = ipymem.memit(lambda: bytearray(MiB), trace_heap=True)
        ipymem.mprun(lambda: bytearray(MiB), backend="heap")
        assert tracemalloc.get_traced_memory()[1] >= before
    finally:
        tracemalloc.stop()
    # No new maximum was set (1 MiB under a 40 MiB peak): the heap peak is a lower bound, and said so.
    assert r.runs[0].heap_exact is False
    assert any("at least" in n for n in r.notes), r.notes


def test_outer_heap_peak_survives_an_inner_memtrace(ip):
    """%memtrace starts tracemalloc itself and resets its peak: through the owner, which folds it first."""
    r = ip.cell(
        "memit",
        "-o -q --heap",
        "b = bytearray(50 * 2**20); del b\nget_ipython().run_line_magic('memtrace', '-q y = [0] * 10')\n",
    )
    assert r.heap_increment is not None and r.heap_increment >= 50 * MiB, r.heap_increment


def test_a_new_heap_maximum_under_the_users_tracing_is_exact():
    tracemalloc.start()
    try:
        r = ipymem.memit(lambda: bytearray(30 * MiB), trace_heap=True)
    finally:
        tracemalloc.stop()
    assert r.runs[0].heap_exact
    assert abs(r.heap_increment - 30 * MiB) < MiB


# -- the process's lifetime peak ------------------------------------------------------


def _ru_maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture
def no_reset():
    peaks.set_reset_hwm(False)
    yield
    peaks.set_reset_hwm(True)


def test_lifetime_peak_is_kept_across_resets():
    b = bytearray(400 * MiB)
    del b
    life = ipymem.lifetime_peak()
    assert life is not None and life >= 400 * MiB
    ipymem.memit(lambda: None)  # resets the kernel's mark
    assert _ru_maxrss() < life  # the kernel's figure dropped...
    assert ipymem.lifetime_peak() >= life  # ...ipymem's record did not


def test_reset_hwm_off_leaves_ru_maxrss_alone_and_labels_its_peaks(ip, no_reset):
    b = bytearray(300 * MiB)
    del b
    before = _ru_maxrss()
    r = ip.line("memit", "-o x = bytearray(2**20)")
    assert _ru_maxrss() >= before
    assert not r.exact and r.peak_method.startswith("sampled")
    assert any("reset_hwm is off" in n for n in r.notes)
    # A new lifetime maximum is exact even without a reset.
    big = int(before * 1.2) + 100 * MiB
    r = ip.line("memit", f"-o -q y = bytearray({big}); del y")
    assert r.exact and "lifetime" in r.peak_method, r.peak_method
    assert abs(r.increment - big) < 0.05 * big


def test_reset_hwm_config_switch(ip):
    ip.run_line_magic("config", "MemoryMagics.reset_hwm = False")
    try:
        assert not peaks.reset_hwm_allowed()
    finally:
        ip.run_line_magic("config", "MemoryMagics.reset_hwm = True")
    assert peaks.reset_hwm_allowed()


# -- other threads ---------------------------------------------------------------------


def test_memit_names_a_thread_that_allocated_while_it_ran(ip):
    ip.run_cell(
        "import threading, time\n"
        "go = threading.Event()\n"
        "def worker():\n"
        "    go.wait(); global held; held = bytearray(64 * 2**20)\n"
        "t = threading.Thread(target=worker, name='loader'); t.start()\n"
    )
    r = ip.line("memit", "-o -q go.set(); t.join()")
    assert any("loader" in n and "other thread" in n for n in r.notes), r.notes
    ip.run_cell("del held")


def test_memit_says_nothing_of_threads_that_only_waited(ip):
    ip.run_cell(
        "import threading\nstop = threading.Event()\nt = threading.Thread(target=stop.wait, name='idle'); t.start()\n"
    )
    try:
        r = ip.line("memit", "-o -q x = bytearray(2**20)")
        assert not any("other thread" in n for n in r.notes), r.notes
    finally:
        ip.run_cell("stop.set(); t.join()")


# -- recursion --------------------------------------------------------------------------

REC = """
import numpy as np

def rec(n, keep):
    keep.append(np.ones(10 * 2**17))
    if n > 1:
        rec(n - 1, keep)
    return len(keep)
"""


@pytest.mark.parametrize("tracer", ["settrace", "monitoring"])
def test_recursion_is_counted_once(ip, tracer):
    import sys

    if tracer == "monitoring" and not hasattr(sys, "monitoring"):
        pytest.skip("sys.monitoring needs 3.12+")
    ip.run_cell(REC)
    rec = ip.user_ns["rec"]
    keep: list = []
    result, error = ipymem.engine.profile_lines(lambda: rec(5, keep), [rec], tracer=tracer)
    assert error is None
    f = result.functions[0]
    assert f.calls == 1 and f.activations == 5 and f.recursive
    assert abs(f.increment - 50 * MiB) < 0.05 * 50 * MiB, (result.params, result.readings, str(result))
    by_source = {ln.source.strip(): ln for ln in f.lines}
    assert abs(by_source["keep.append(np.ones(10 * 2**17))"].increment - 50 * MiB) < 2.5 * MiB
    assert abs(by_source["rec(n - 1, keep)"].increment) < 2.5 * MiB  # its callees' memory is not counted twice
    assert "5 with recursion" in str(result)
    assert abs(result.total_increment - 50 * MiB) < 2.5 * MiB


def test_nested_functions_are_not_summed_twice_in_totals(ip):
    # 48 MiB: above glibc's largest mmap threshold (32 MiB), so freed memory from earlier tests cannot hide it
    ip.run_cell(
        "import numpy as np\n"
        "def inner():\n"
        "    return np.ones(6 * 2**20)  # 48 MiB, every page written\n"
        "def outer():\n"
        "    return [inner()]\n"
    )
    r = ip.line("mprun", "-o -q -f outer -f inner held = outer()")
    assert abs(r.function("outer").increment - 48 * MiB) < 1.5 * MiB
    assert abs(r.function("inner").increment - 48 * MiB) < 1.5 * MiB
    assert abs(r.total_increment - 48 * MiB) < 1.5 * MiB  # not 96
    row = ipymem.compare(r, r).records()[0]
    net = [v for k, v in row.items() if "net" in k.lower() or "increment" in k.lower()]
    assert net and abs(net[0] - 48 * MiB) < 1.5 * MiB, row
    ip.run_cell("del held")


# -- the heap backend, line by line ----------------------------------------------------


def test_heap_backend_books_a_fast_allocation_on_its_own_line(ip):
    ip.run_cell("import numpy as np\ndef fast():\n    a = np.empty(10**8)\n    del a\n    return 1\n")
    r = ip.line("mprun", "-o -q --backend heap -f fast fast()")
    lines = {ln.source.strip(): ln for ln in r.functions[0].lines}
    size = 10**8 * 8
    alloc, free = lines["a = np.empty(10**8)"], lines["del a"]
    assert abs(alloc.increment - size) < 4096 and abs(alloc.peak - size) < 4096, alloc
    assert abs(free.increment + size) < 4096 and free.peak < 4096, free


# memory_profiler's tracemalloc test, ported: a `bytearray(n)` line, then `del`, for n from 100 to 10**8;
# the allocating line's increment is the object's size to within a few dozen bytes, whatever n is.
MP_TRACEMALLOC = """
def mem_prof(n):
    a = bytearray(n)
    del a
    return n
"""


@pytest.mark.parametrize("tracer", ["settrace", "monitoring"])
@pytest.mark.parametrize("n", [100, 1000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000])
def test_memory_profilers_tracemalloc_cases(ip, n, tracer):
    import sys

    if tracer == "monitoring" and not hasattr(sys, "monitoring"):
        pytest.skip("sys.monitoring needs 3.12+")
    ip.run_cell(MP_TRACEMALLOC)
    f = ip.user_ns["mem_prof"]
    result, error = ipymem.engine.profile_lines(lambda: f(n), [f], backend="heap", tracer=tracer)
    assert error is None
    lines = {ln.source.strip(): ln for ln in result.functions[0].lines}
    size = sys.getsizeof(bytearray(n))
    # Within HEAP_NET_SLACK (64 bytes); sys.settrace on 3.12+ also materialises the frame object for the
    # tracer during the first line (~200 bytes of the interpreter's, on the heap while the frame lives).
    slack = 64 if tracer == "monitoring" or sys.version_info < (3, 12) else 256
    assert abs(lines["a = bytearray(n)"].increment - size) <= slack, (n, lines["a = bytearray(n)"])
    assert abs(lines["del a"].increment + size) <= slack, (n, lines["del a"])


# -- other threads and tracer changes in %mprun ------------------------------------------


def test_mprun_says_when_another_thread_ran_while_lines_executed(ip):
    ip.run_cell(
        "import threading, time\n"
        "go = threading.Event()\n"
        "def loader():\n"
        "    go.wait(); global held; held = np.ones(25 * 2**20)\n"
        "t = threading.Thread(target=loader, name='loader'); t.start()\n"
        "import numpy as np\n"
        "def waits():\n"
        "    go.set()\n"
        "    t.join()\n"
        "    return 1\n"
    )
    r = ip.line("mprun", "-o -q -f waits waits()")
    assert any("loader" in n and "other thread" in n for n in r.notes), r.notes
    assert "loader" in str(r)
    ip.run_cell("del held")


def test_mprun_says_nothing_of_other_threads_when_none_ran(ip):
    ip.run_cell("def alone():\n    x = [0] * 1000\n    return len(x)\n")
    r = ip.line("mprun", "-o -q -f alone alone()")
    assert not any("other thread" in n for n in r.notes), r.notes


def test_profiled_code_that_removes_the_tracer_is_reported_and_its_tracer_stays():
    import sys

    seen = []

    def users_tracer(frame, event, arg):
        seen.append(event)
        return None

    def stops_tracing():
        a = 1
        sys.settrace(users_tracer)
        b = 2
        return a + b

    result, error = ipymem.engine.profile_lines(stops_tracing, [stops_tracing], tracer="settrace")
    try:
        assert error is None
        assert sys.gettrace() is users_tracer  # what the profiled code installed is still installed
    finally:
        sys.settrace(None)
    notes = " ".join(result.notes)
    assert "sys.settrace" in notes and "from there on" in notes, notes
    line = next(ln for ln in result.functions[0].lines if "sys.settrace(users_tracer)" in ln.source)
    # Noticed off the fast path: the note gives the last line seen before the change and where it was noticed.
    noticed = int(notes.split("noticed at line ", 1)[1].split()[0])
    assert line.lineno <= noticed <= line.lineno + 2, notes


def test_profiled_code_that_calls_settrace_none_is_reported_at_its_line():
    import sys

    def stops():
        a = 1
        sys.settrace(None)
        b = bytearray(2**20)
        return a + len(b)

    result, error = ipymem.engine.profile_lines(stops, [stops], tracer="settrace")
    assert error is None and sys.gettrace() is None
    line = next(ln for ln in result.functions[0].lines if "sys.settrace(None)" in ln.source)
    assert any(f"line {line.lineno}" in n and "sys.settrace" in n for n in result.notes), result.notes


def test_a_run_that_leaves_the_tracer_alone_has_no_tracer_note():
    def plain():
        return 1

    result, _ = ipymem.engine.profile_lines(plain, [plain], tracer="settrace")
    assert not any("from there on" in n for n in result.notes)


@pytest.mark.skipif(not hasattr(__import__("sys"), "monitoring"), reason="sys.monitoring needs 3.12+")
def test_profiled_code_that_frees_the_monitoring_tool_is_reported():
    import sys

    mon = sys.monitoring

    def frees():
        for tool in range(6):
            if mon.get_tool(tool) == "ipymem":
                mon.free_tool_id(tool)
        return 1

    result, error = ipymem.engine.profile_lines(frees, [frees], tracer="monitoring")
    assert error is None
    assert any("freed sys.monitoring tool id" in n for n in result.notes), result.notes
    # Nothing of ipymem's is left on the id (before 3.14 freeing keeps events and callbacks firing)
    for tool in (3, 4, 5):
        assert mon.get_tool(tool) is None
        mon.use_tool_id(tool, "probe")
        try:
            assert mon.get_events(tool) == 0 and mon.get_local_events(tool, frees.__code__) == 0
            assert all(
                mon.register_callback(tool, event, None) is None for event in (mon.events.LINE, mon.events.PY_START)
            )
        finally:
            mon.free_tool_id(tool)


def test_mprun_chart_states_the_profiled_codes_exact_peak(ip):
    ip.run_cell(
        "import numpy as np\n"
        "def spiky():\n"
        "    b = np.ones(200 * 2**17)  # 200 MiB, freed at once\n"
        "    del b\n"
        "    return 1\n"
    )
    r = ip.line("mprun", "-o -q -f spiky spiky()")
    f = r.functions[0]
    assert r.peak_exact and r.peak_value is not None
    entry = f.lines[1].mem_after - f.lines[1].increment  # memory when the first line started
    assert abs(r.peak_value - (entry + f.peak)) < 2 * MiB
    from ipymem.render.chart import mprun_peak, mprun_title

    assert mprun_peak(r).value == r.peak_value
    assert f"peak {r.peak_value / MiB:,.1f} MiB" in mprun_title(r) and "exact" in mprun_title(r)
    assert r.plot() is not None
