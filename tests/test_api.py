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
