"""The plain Python API: same engine and results, no IPython needed."""

from __future__ import annotations

import pytest

import ipymem

MiB = 2**20


def test_memit_of_a_callable_with_arguments():
    r = ipymem.memit(bytearray, 64 * MiB, repeat=2)
    assert isinstance(r, ipymem.MemitResult)
    assert len(r.runs) == 2
    assert 60 * MiB < r.increment < 70 * MiB
    assert r.statement == "bytearray(...)"


def test_memit_lets_the_exception_propagate():
    def boom():
        raise KeyError("k")

    with pytest.raises(KeyError):
        ipymem.memit(boom)


def test_memit_with_heap():
    r = ipymem.memit(lambda: [0] * (2**20), trace_heap=True)
    assert r.heap_increment is not None and r.heap_increment >= 8 * MiB


def build(n):
    data = bytearray(n)
    keep = data[:10]
    del data
    return keep


def test_mprun_profiles_a_module_function():
    r = ipymem.mprun(build, 64 * MiB)
    assert isinstance(r, ipymem.MprunResult)
    (fn,) = r.functions
    lines = {line.source.strip(): line for line in fn.lines}
    assert lines["data = bytearray(n)"].occurrences == 1
    assert sum(line.increment or 0 for line in fn.lines) == fn.increment  # the books are exact


def test_profile_decorator_keeps_the_return_value_and_the_last_profile(capsys):
    profiled = ipymem.profile(quiet=True)(build)
    assert profiled.last_profile is None
    assert profiled(1000) == bytearray(10)
    assert profiled.last_profile.functions[0].name == "build"
    assert capsys.readouterr().out == ""
    printing = ipymem.profile(build)  # memory_profiler's default: the report after each call, on stdout
    printing(1000)
    assert "Line #" in capsys.readouterr().out


def test_profile_decorator_reraises():
    @ipymem.profile(quiet=True)
    def bad():
        raise ValueError("x")

    with pytest.raises(ValueError):
        bad()
    assert bad.last_profile.outcome == "error"


def test_memtrace_of_a_callable():
    keep = []

    def leak():
        keep.append([str(i) for i in range(10_000)])

    r = ipymem.memtrace(leak, top=5)
    assert isinstance(r, ipymem.AllocResult)
    assert r.records() and any(rec["retained_size"] > 100_000 for rec in r.records())
