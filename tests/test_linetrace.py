"""The line tracer's books, with a fake meter where exact arithmetic is the point; no IPython here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ipymem.engine.linetrace import code_of, profile_lines

TRACERS = ["settrace"] + (["monitoring"] if hasattr(sys, "monitoring") else [])


class FakeMeter:
    """Memory is whatever the profiled code says it is; the peak is tracked like a high-water mark."""

    method = "fake"

    def __init__(self) -> None:
        self.value = 1000
        self.high = 1000
        self.reads = 0

    def set(self, value: int) -> None:
        self.value = value
        self.high = max(self.high, value)

    def add(self, n: int) -> None:
        self.set(self.value + n)

    def read(self) -> tuple[int, int]:
        self.reads += 1
        value, peak = self.value, self.high
        self.high = value
        return value, peak


def work(m):
    m.add(100)
    m.add(500), m.add(-500)
    for _ in range(3):
        m.add(10)
    m.add(-50)
    return m.value


def by_line(result, func):
    first = func.__code__.co_firstlineno
    f = result.functions[0]
    return {line.lineno - first: line for line in f.lines}


@pytest.mark.parametrize("tracer", TRACERS)
def test_reading_at_every_boundary_gives_exact_lines(tracer):
    m = FakeMeter()
    r, err = profile_lines(lambda: work(m), [work], meter=m, min_interval=0, tracer=tracer)
    assert err is None and r.ok
    lines = by_line(r, work)
    assert lines[0].occurrences == 0 and lines[0].increment is None  # the def line never runs
    assert (lines[1].increment, lines[1].peak, lines[1].occurrences) == (100, 100, 1)
    assert (lines[2].increment, lines[2].peak) == (0, 500)
    assert (lines[3].occurrences, lines[3].increment) == (4, 0)
    assert (lines[4].occurrences, lines[4].increment, lines[4].peak) == (3, 30, 10)
    assert (lines[5].increment, lines[5].mem_after) == (-50, 1080)
    assert lines[6].increment == 0 and lines[6].mem_after == 1080
    f = r.functions[0]
    assert f.calls == 1 and f.increment == 80 and f.peak == 600
    assert r.params.tracer == ("sys.monitoring" if tracer == "monitoring" else "sys.settrace")


@pytest.mark.parametrize("tracer", TRACERS)
def test_books_balance_when_readings_are_skipped(tracer):
    """A gate of an hour skips every reading inside; the total is still exact and lands on a line."""
    m = FakeMeter()
    r, _ = profile_lines(lambda: work(m), [work], meter=m, min_interval=3600, tracer=tracer)
    f = r.functions[0]
    assert f.increment == 80
    assert f.peak == 600  # peaks are not lost to the gate: the high-water mark covers the window
    assert sum(line.occurrences for line in f.lines) == 1 + 1 + 4 + 3 + 1 + 1
    assert m.reads <= 4


def outer(m, n):
    m.add(1)
    if n:
        outer(m, n - 1)
    m.add(-1 if n % 2 else 2)
    return n


@pytest.mark.parametrize("tracer", TRACERS)
@pytest.mark.parametrize("gate", [0, 3600])
def test_recursion_is_counted_once(tracer, gate):
    m = FakeMeter()
    r, _ = profile_lines(lambda: outer(m, 4), [outer], meter=m, min_interval=gate, tracer=tracer)
    f = r.functions[0]
    assert f.calls == 1 and f.activations == 5  # the nested calls are part of the outermost one
    # per activation: +1 at line 1, +2 or -1 at line 4; the function's net is the outermost call's.
    nets = {}
    for n in range(5):
        nets[n] = 1 + (-1 if n % 2 else 2) + (nets[n - 1] if n else 0)
    assert f.increment == nets[4] == r.total_increment
    lines = by_line(r, outer)
    assert lines[3].occurrences == 4  # the recursive call line, entered once per non-leaf call
    if gate == 0:
        # The recursive call line does not carry its callees' net again: that is on their own lines.
        assert lines[1].increment == 5 and lines[3].increment == 0
        assert lines[4].increment == nets[4] - 5


def gen(m, n):
    for i in range(n):
        m.add(7)
        yield i
    m.add(-7 * n)


def consume(m):
    total = 0
    for x in gen(m, 3):
        m.add(1000)  # outside the generator: must not land on its lines
        total += x
    return total


@pytest.mark.parametrize("tracer", TRACERS)
def test_generator_suspended_and_resumed(tracer):
    m = FakeMeter()
    r, err = profile_lines(lambda: consume(m), [gen], meter=m, min_interval=0, tracer=tracer)
    assert err is None
    lines = by_line(r, gen)
    assert lines[2].occurrences == 3 and lines[2].increment == 21
    assert lines[3].occurrences == 3 and lines[3].increment == 0  # the yield line: resumes are not entries
    assert lines[4].increment == -21
    assert r.functions[0].increment == 0


@pytest.mark.parametrize("tracer", TRACERS)
def test_exception_closes_the_books_and_is_returned(tracer):
    def boom(m):
        m.add(64)
        raise ValueError("boom")

    m = FakeMeter()
    r, err = profile_lines(lambda: boom(m), [boom], meter=m, min_interval=0, tracer=tracer)
    assert isinstance(err, ValueError) and r.outcome == "error" and "boom" in r.error
    assert r.functions[0].increment == 64
    assert sys.gettrace() is None


def test_trace_function_already_installed_is_chained_and_restored():
    seen = []

    def other(frame, event, arg):
        seen.append(event)
        return other

    m = FakeMeter()
    sys.settrace(other)
    try:
        r, _ = profile_lines(lambda: work(m), [work], meter=m, min_interval=0, tracer="settrace")
        assert sys.gettrace() is other
    finally:
        sys.settrace(None)
    assert "line" in seen and "call" in seen
    assert r.functions[0].increment == 80


@pytest.mark.skipif(not hasattr(sys, "monitoring"), reason="sys.monitoring needs 3.12+")
def test_falls_back_to_settrace_when_no_tool_id_is_free():
    mon = sys.monitoring
    taken = [i for i in range(6) if mon.get_tool(i) is None]
    for i in taken:
        mon.use_tool_id(i, "test")
    try:
        m = FakeMeter()
        r, _ = profile_lines(lambda: work(m), [work], meter=m, min_interval=0)
    finally:
        for i in taken:
            mon.free_tool_id(i)
    assert r.params.tracer == "sys.settrace"
    assert any("tool ids are taken" in n for n in r.notes)
    assert r.functions[0].increment == 80


def test_code_of_accepts_functions_methods_wrappers_and_rejects_the_rest():
    import functools

    def deco(f):
        @functools.wraps(f)
        def wrapper(*a):
            return f(*a)

        return wrapper

    @deco
    def decorated(x):
        return x

    class C:
        def method(self):
            pass

        @staticmethod
        def st():
            pass

    assert code_of(decorated) is decorated.__wrapped__.__code__
    assert code_of(C().method) is C.method.__code__
    assert code_of(C.__dict__["st"]) is C.st.__code__
    assert code_of(functools.partial(work, None)) is work.__code__
    for bad in (len, 3, C, print):
        with pytest.raises(TypeError, match="not a Python function"):
            code_of(bad)


def test_engine_imports_no_ipython():
    code = "import sys, ipymem.engine.linetrace; print(sorted(m for m in sys.modules if m.startswith('IPython')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# fmt: off
def multiline(n):
    x = dict(
        a=n,
        b=[i for i in
           range(n)],
    )
    y = (x["a"] +
         len(x["b"]))
    return y
# fmt: on


@pytest.mark.parametrize("tracer", TRACERS)
def test_multi_line_statements_count_once_on_their_first_line(tracer):
    m = FakeMeter()
    r, _ = profile_lines(lambda: multiline(10), [multiline], meter=m, min_interval=0, tracer=tracer)
    executed = [(line.lineno - multiline.__code__.co_firstlineno, line.occurrences) for line in r.functions[0].lines]
    assert [e for e in executed if e[1]] == [(1, 1), (6, 1), (8, 1)]


def test_portable_meter_via_psutil_and_the_heap_meter():
    """The psutil fallback (no high-water mark: peaks from the readings) and tracemalloc, with real memory."""
    import tracemalloc

    from ipymem.engine.linetrace import make_meter
    from ipymem.engine.probes import make_probe

    def grow(n):
        a = bytearray(n)
        b = len(a)
        del a
        return b

    probe = make_probe("psutil")
    meter = make_meter("rss", probe=probe)
    assert "psutil" in meter.method
    r, _ = profile_lines(lambda: grow(64 * 2**20), [grow], meter=meter, min_interval=0)
    lines = by_line(r, grow)
    assert 60 * 2**20 < lines[1].increment < 70 * 2**20
    assert -70 * 2**20 < lines[3].increment < -60 * 2**20
    assert r.params.memory_method == meter.method

    r, _ = profile_lines(lambda: grow(8 * 2**20), [grow], backend="heap", min_interval=0)
    assert not tracemalloc.is_tracing()
    lines = by_line(r, grow)
    assert 8 * 2**20 <= lines[1].increment < 9 * 2**20 and lines[3].increment < -7.9 * 2**20
    assert r.params.metric == "Python heap"


def test_on_call_marks_the_outermost_entry_and_exit_of_profiled_code():
    from ipymem.engine.linetrace import profile_lines

    def fact(n):
        return 1 if n <= 1 else n * fact(n - 1)

    def outer():
        fact(5)
        fact(3)

    marks = []
    result, error = profile_lines(outer, [fact], on_call=lambda name, kind: marks.append((name, kind)))
    assert error is None and result.function("fact").calls == 2 and result.function("fact").activations == 8
    assert marks == [("fact", "start"), ("fact", "end"), ("fact", "start"), ("fact", "end")]  # recursion: once
