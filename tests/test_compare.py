"""Comparing kept results: ipymem.compare(a, b) and a.compare(b), against allocations of known size."""

from __future__ import annotations

import json
import os

import pytest

import ipymem
from ipymem.models import Comparison, MemitParams, MemitResult, MemitRun, MprunParams, MprunResult

from .conftest import MiB

LINUX_HWM = os.path.exists("/proc/self/clear_refs")


@pytest.mark.skipif(not LINUX_HWM, reason="the exact peak needs /proc/self/clear_refs")
def test_two_memit_results_side_by_side_with_the_ratio_of_their_increments(ip):
    big = ip.line("memit", "-q -o bytearray(160 * 2**20)")
    small = ip.line("memit", "-q -o bytearray(40 * 2**20)")
    c = big.compare(small)
    assert isinstance(c, Comparison) and c.kind == "%memit"
    assert c.labels == ("bytearray(160 * 2**20)", "bytearray(40 * 2**20)")
    assert c.values[0][0] == big.increment and c.values[1][0] == small.increment
    first, second = c.ratios()
    assert first == 1.0
    assert abs(second - 0.25) < 0.02, second  # 40 / 160 MiB, both exact peaks
    assert [m.name for m in c.metrics][:3] == [
        "Increment (RSS, peak − baseline)",
        "Peak (RSS)",
        "Retained (RSS)",
    ]
    text = str(c)
    assert "0.25x" in text and "1.00x" in text and "bytearray(40 * 2**20)" in text
    assert "<table" in c._repr_html_()


def test_labels_from_a_mapping_or_a_list_and_export(ip):
    a = ip.line("memit", "-q -o x = bytearray(8 * 2**20)")
    b = ip.line("memit", "-q -o --heap x = [0] * 10**6")
    c = ipymem.compare({"bytes <b>": a, "list": b})
    assert c.labels == ("bytes <b>", "list")
    assert "Python heap peak (tracemalloc, above start)" in [m.name for m in c.metrics]  # b traced the heap
    assert c.values[0][3] is None and c.values[1][3] >= 8 * 10**6  # the list's 8 MB of pointers
    html = c._repr_html_()
    assert "bytes &lt;b&gt;" in html and "<b>" not in html  # labels are escaped
    records = c.records()
    assert records[1]["label"] == "list" and records[1]["Peak (RSS)"] == b.peak and records[0]["ratio"] == 1.0
    json.dumps(c.to_dict())  # JSON-ready
    assert ipymem.compare(a, b, labels=["one", "two"]).labels == ("one", "two")


def test_memtrace_results_compare_their_python_heap(ip):
    strings = ip.line("memtrace", "-q -o kept = [str(i) * 10 for i in range(100_000)]")
    ints = ip.line("memtrace", "-q -o kept2 = list(range(100_000))")
    c = strings.compare(ints, labels=["strings", "ints"])
    assert c.kind == "%memtrace" and c.metrics[0].name == "Heap peak (Python heap, above start)"
    assert c.values[0][1] == strings.retained and c.values[1][1] == ints.retained
    assert c.ratios()[1] < 1  # 100,000 strings of 10-60 characters weigh more than the ints


def test_mprun_results_compare_and_refuse_different_metrics(ip):
    ip.ip.run_cell("def grow(n):\n    a = bytearray(n)\n    return len(a)\n")
    r1 = ip.line("mprun", "-q -r -f grow grow(32 * 2**20)")
    r2 = ip.line("mprun", "-q -r -f grow grow(8 * 2**20)")
    c = r1.compare(r2)
    assert c.kind == "%mprun" and c.values[0][0] == r1.peak and c.values[0][1] == r1.functions[0].increment
    heap = MprunResult(functions=(), params=MprunParams(backend="heap"))
    with pytest.raises(ValueError, match="different memory"):
        r1.compare(heap)


def test_bad_input_gets_a_clear_error():
    run = MemitRun(baseline=0, peak=MiB, end=0, duration=0.1, samples=3)
    memit = MemitResult(statement="x", runs=(run,))
    empty = MemitResult(statement="y", runs=())
    with pytest.raises(TypeError, match="one kind"):
        ipymem.compare(memit, MprunResult(functions=()))
    with pytest.raises(TypeError, match="one kind"):
        ipymem.compare(memit, 3)
    with pytest.raises(TypeError, match="at least one"):
        ipymem.compare()
    with pytest.raises(ValueError, match="2 results but 1 labels"):
        ipymem.compare(memit, memit, labels=["a"])
    with pytest.raises(TypeError, match="not both"):
        ipymem.compare({"a": memit}, labels=["b"])
    with_children = MemitResult(statement="z", runs=(run,), params=MemitParams(include_children=True))
    with pytest.raises(ValueError, match="different memory"):
        ipymem.compare(memit, with_children)
    assert (
        ipymem.compare(with_children, with_children).metrics[0].name
        == "Increment (RSS incl. children, peak − baseline)"
    )
    c = ipymem.compare(memit, empty)  # a result that measured nothing shows n/a, not a made-up figure
    assert c.values[1] == (None, None, None, None) and c.ratios() == (1.0, None)
    assert "n/a" in str(c)
