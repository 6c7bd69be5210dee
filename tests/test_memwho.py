"""%memwho and ipymem.memwho: figures checked against the truth measured another way.

"Freed if deleted" is checked against tracemalloc's traced heap, running
from before the objects were made: delete the name, collect, and the heap
must drop by what the census said.  The RSS parts are checked against
allocations and files of known size.
"""

from __future__ import annotations

import gc
import json
import mmap
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from IPython.core.error import UsageError

import ipymem
from ipymem.engine import census
from ipymem.engine import namespace as census_module
from ipymem.engine.rssparts import mallinfo, smaps_rollup
from ipymem.models import MemwhoResult
from tests.conftest import MiB

pd = pytest.importorskip("pandas")

linux_glibc = pytest.mark.skipif(mallinfo() is None, reason="needs glibc mallinfo2")
linux_smaps = pytest.mark.skipif(smaps_rollup() is None, reason="needs /proc/self/smaps_rollup")


@pytest.fixture
def traced():
    """tracemalloc running for the test (restored after: the no_leaks fixture checks it)."""
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    yield
    if not was:
        tracemalloc.stop()


def heap_drop_on_delete(ns: dict, name: str) -> int:
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    del ns[name]
    gc.collect()
    return before - tracemalloc.get_traced_memory()[0]


CASES = {
    "list of strings": ("s = [str(i) * 3 for i in range(20_000)]", "s"),
    "dict of bytes": ("d = {i: bytes(100) + str(i).encode() for i in range(10_000)}", "d"),
    "numpy array": ("a = np.ones((1000, 1000))", "a"),
    "view, base still named": ("a = np.ones((1000, 1000)); v = a[10:]", "v"),
    "base, view still named": ("a = np.ones((1000, 1000)); v = a[10:]", "a"),
    "view, base deleted": ("a = np.ones((1000, 1000)); v = a[10:]; del a", "v"),
    "two names for one array": ("b = np.ones((500, 1000)); c = b", "b"),
    "DataFrame with an object column": (
        "df = pd.DataFrame({'n': np.arange(20_000),"
        " 's': pd.Series([str(i) * 2 for i in range(20_000)], dtype=object)})",
        "df",
    ),
    "instance holding a list": (
        "class Model:\n    def __init__(self):\n        self.w = [float(i) for i in range(20_000)]\nm = Model()",
        "m",
    ),
    "closure": (
        "def make():\n    big = list(range(30_000))\n    def f():\n        return len(big)\n    return f\nf = make()",
        "f",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_freed_if_deleted_matches_the_traced_heap_drop(case, traced):
    code, name = CASES[case]
    ns: dict = {"np": np, "pd": pd}
    exec(code, ns)
    gc.collect()
    row = census(ns, budget=120).row(name)
    drop = heap_drop_on_delete(ns, name)
    assert row.freed_if_deleted is not None
    assert abs(row.freed_if_deleted - drop) <= max(0.05 * drop, 4096), (row, drop)
    assert drop > 500_000 or row.freed_if_deleted < 4096  # the big cases are big
    assert row.size >= row.freed_if_deleted


def test_views_and_aliases_say_what_they_share(traced):
    ns = {"np": np}
    exec("a = np.ones((1000, 1000)); v = a[10:]; b = np.zeros(10**6); c = b", ns)
    r = census(ns, budget=60)
    assert r.row("v").shared_with == ("a",) and r.row("a").shared_with == ("v",)
    assert r.row("b").shared_with == ("c",) and r.row("c").shared_with == ("b",)
    assert r.row("b").freed_if_deleted == 0 and r.row("c").freed_if_deleted == 0
    assert r.row("v").size >= 8 * 10**6 and r.row("v").freed_if_deleted < 1000  # the base is a's too


def test_shared_memory_is_counted_once():
    arr = np.ones(2 * 10**6)  # 16 MB
    ns = {"a": arr, "pair": [arr, arr], "box": {"x": arr, "y": (arr,)}}
    r = census(ns)
    for name in ns:
        assert 16 * 10**6 <= r.row(name).size < 16 * 10**6 + 4096
        assert r.row(name).freed_if_deleted < 4096  # every name but one would still hold it
    assert 16 * 10**6 <= r.total < 16 * 10**6 + 8192  # the table's total: each object once
    assert set(r.row("pair").shared_with) == {"a", "box"}


def test_dataframe_size_agrees_with_memory_usage_deep():
    df = pd.DataFrame({"n": np.arange(100_000), "s": pd.Series([f"row {i}" for i in range(100_000)], dtype=object)})
    r = census({"df": df})
    expected = int(df.memory_usage(deep=True).sum())
    assert abs(r.row("df").size - expected) <= 0.05 * expected
    assert r.row("df").type == "DataFrame 100000×2"


def test_census_keeps_no_reference_and_calls_no_user_sizeof():
    class Loud:
        def __sizeof__(self):  # user code: the census must not call it
            raise AssertionError("__sizeof__ called")

    obj = [bytearray(10**5) for _ in range(10)]
    loud = Loud()
    before = sys.getrefcount(obj), sys.getrefcount(obj[0]), sys.getrefcount(loud)
    r = census({"obj": obj, "loud": loud})
    assert (sys.getrefcount(obj), sys.getrefcount(obj[0]), sys.getrefcount(loud)) == before
    assert r.row("obj").size > 10**6 and r.row("loud").size > 0


def test_an_outside_holder_is_named_and_what_it_holds_is_not_freed():
    held = list(range(100_000))
    census_module.__dict__["_test_stash"] = held  # a module global outside the namespace
    try:
        r = census({"mine": held, "other": bytearray(10**6)})
    finally:
        del census_module.__dict__["_test_stash"]
    row = r.row("mine")
    assert row.freed_if_deleted < 4096
    assert "ipymem.engine.namespace._test_stash" in row.held_by
    assert r.row("other").freed_if_deleted >= 10**6 and r.row("other").held_by == ()


def test_memmap_is_file_backed(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"\0" * (8 * MiB))
    m = np.memmap(path, dtype=np.uint8, mode="r")
    r = census({"m": m})
    assert r.row("m").file_backed == 8 * MiB
    assert r.row("m").size < 4096  # the mapping is not heap
    del m


def test_deep_structures_walk_without_recursion_limit():
    deep: list = []
    node = deep
    for _ in range(50_000):  # far deeper than the recursion limit
        node.append([])
        node = node[0]
    r = census({"deep": deep}, budget=120)
    assert r.complete and r.row("deep").objects == 50_001


def test_five_million_objects_finish_within_the_budget_and_say_whether_complete():
    ns = {"numbers": list(range(10**6, 6 * 10**6))}  # 5 million ints and one list
    calls = []
    r = census(ns, budget=1.0, progress=calls.append)
    # A slow machine makes the walk cover less, never last longer: the check is per 1,024 objects.
    assert r.duration < 1.0 + 30
    if r.complete:
        assert r.objects == 5_000_001 and r.row("numbers").complete
    else:
        assert 0 < r.objects < 5_000_001
        assert not r.row("numbers").complete and r.row("numbers").freed_if_deleted is None
        assert any("time budget of 1 s" in n for n in r.notes)
        assert "cut short" in str(r) and "≥" in str(r)
    del ns


def test_progress_and_ctrl_c_give_a_partial_report(monkeypatch):
    monkeypatch.setattr(census_module, "PROGRESS_AFTER", 0.0)
    seen = []

    def progress(p):
        seen.append(p)
        raise KeyboardInterrupt

    r = census({"xs": [str(i) for i in range(50_000)]}, progress=progress)
    assert seen and seen[0].objects >= 1 and seen[0].current == "xs" and seen[0].names_total == 1
    assert r.outcome == "interrupted" and not r.complete
    assert any("interrupted" in n for n in r.notes)


# -- where RSS goes ------------------------------------------------------------------


def test_the_rest_is_what_the_parts_leave_never_forced_to_zero():
    b = census({}).breakdown
    parts = {p.key: p for p in b.parts}
    assert list(parts) == ["objects", "heap_other", "malloc_free", "pymalloc_free", "file", "rest"]
    known = sum(p.bytes for p in b.parts if p.key != "rest" and p.bytes is not None)
    assert parts["rest"].bytes == b.rss - known
    for p in b.parts:
        assert p.bytes is not None or p.source == "unavailable on this platform"


ALLOCATOR_SCRIPT = """
import gc, json, sys
from ipymem.engine import census
from ipymem.engine.rssparts import trim_memory
trim_memory()
objs = [bytes(2000) for _ in range(8 * 4000)]  # 64 MB of 2 KiB malloc chunks, adjacent
kept = objs[::8]
freed = sum(sys.getsizeof(o) for i, o in enumerate(objs) if i % 8)
before = census({}).breakdown.part("malloc_free")
del objs
gc.collect()
after = census({}).breakdown.part("malloc_free")
r = census({"kept": kept}, trim=True)
trimmed_free = r.breakdown.part("malloc_free")
print(json.dumps(dict(freed=freed, before=before, after=after, trimmed=r.trimmed, trimmed_free=trimmed_free)))
"""


@linux_glibc
def test_allocator_free_part_against_known_frees_and_trim():
    """Groups of 8 adjacent 2 KiB objects (malloc'd: pymalloc takes only <= 512 bytes); 7 of each 8 freed.

    The kept one stops the freed runs from merging into the top of the heap, so
    the allocator keeps them: the part grows by what was freed; ``--trim``
    returns their whole pages and the part falls.  In a fresh process, where
    the main arena is the contiguous ``[heap]`` the figure reads residency from.
    """
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    f = json.loads(out.stdout)
    freed = f["freed"]
    assert abs((f["after"] - f["before"]) - freed) <= 0.15 * freed, f
    assert f["trimmed"] >= 0.5 * freed, f  # RSS returned: whole pages of the freed runs
    assert f["trimmed_free"] <= f["after"] - 0.5 * freed, f


def test_pymalloc_free_grows_by_the_small_blocks_freed():
    b = census({}).breakdown
    if b.part("pymalloc_free") is None:
        pytest.skip("pymalloc statistics unavailable")
    objs = [bytes(31) for _ in range(200_000)]  # 64-byte pymalloc blocks
    kept = objs[::2]
    freed = sum(sys.getsizeof(o) for o in objs[1::2])
    before = census({}).breakdown.part("pymalloc_free")
    del objs
    gc.collect()
    after = census({}).breakdown.part("pymalloc_free")
    assert abs((after - before) - freed) <= 0.15 * freed, (after - before, freed)
    del kept


@linux_smaps
def test_file_backed_part_grows_by_an_mmapped_file_that_was_read(tmp_path):
    size = 64 * MiB
    path = tmp_path / "blob.bin"
    with open(path, "wb") as f:
        f.write(b"x" * size)
    before = census({}).breakdown.part("file")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        total = sum(mm[i] for i in range(0, size, mmap.PAGESIZE))  # touch every page
        r = census({"mm": mm})
        after = r.breakdown.part("file")
        assert r.row("mm").file_backed == size
    assert total == ord("x") * (size // mmap.PAGESIZE)
    assert abs((after - before) - size) <= 0.1 * size, (after - before, size)


@pytest.mark.parametrize("tracing", [True, False], ids=["tracemalloc", "allocator statistics"])
def test_other_heap_grows_by_memory_held_outside_the_names(tracing):
    if tracing and tracemalloc.is_tracing():
        pytest.skip("tracemalloc already running")
    if tracing:
        tracemalloc.start()
    try:
        if not tracing and census({}).breakdown.part("heap_other") is None:
            pytest.skip("no allocator statistics here")
        _other_heap_grows()
    finally:
        if tracing:
            tracemalloc.stop()


def _other_heap_grows():
    before = census({}).breakdown.part("heap_other")
    census_module.__dict__["_test_block"] = bytearray(32 * MiB)
    try:
        after = census({}).breakdown.part("heap_other")
    finally:
        del census_module.__dict__["_test_block"]
    assert abs((after - before) - 32 * MiB) <= 0.05 * 32 * MiB


# -- the magic -----------------------------------------------------------------------


def test_magic_table_and_output_cache_holder(ip):
    ip.run_cell("import numpy as np", store_history=True)
    ip.run_cell("np.ones(10**6)", store_history=True)  # Out[2]: only the output cache holds it
    ip.run_cell("x = np.zeros(2 * 10**6); lst = [bytes(1000) for _ in range(2000)]", store_history=True)
    ip.clear()
    r = ip.line("memwho", "-o")
    assert isinstance(r, MemwhoResult)
    holder = r.row("Out[2]")
    assert holder.kind == "holder" and {"_2"} <= set(holder.aliases)
    assert abs(holder.freed_if_deleted - 8 * 10**6) < 4096
    assert [row.name for row in r.rows][:3] == ["x", "Out[2]", "lst"]
    text = ip.texts()[-1]
    assert "Out[2]" in text and "hidden holder" in text and "Where RSS goes" in text
    html = ip.htmls()[-1]
    assert "<table" in html and "Freed if deleted" in html and "<script" not in html
    assert "np" not in [row.name for row in r.rows]  # modules are the program, not the data


def test_magic_shared_with_the_output_cache(ip):
    ip.run_cell("import numpy as np\nx = np.ones(10**6)", store_history=True)
    ip.run_cell("x", store_history=True)
    r = ip.line("memwho", "-o -q")
    assert r.row("x").freed_if_deleted < 4096
    assert any(name.startswith("Out[") for name in r.row("x").shared_with)
    assert ip.texts() == [] or "memwho" not in ip.texts()[-1]


def test_magic_options(ip):
    ip.run_cell("alpha = bytearray(3 * 10**6); beta = bytearray(2 * 10**6); gamma = bytearray(10**6)")
    r = ip.line("memwho", "-o -q -n 2")
    assert [row.name for row in r.rows] == ["alpha", "beta"]
    r = ip.line("memwho", "-o -q g*")
    assert [row.name for row in r.rows] == ["gamma"]
    ip.line("memwho", "-q -v kept --precision 0")
    assert isinstance(ip.user_ns["kept"], MemwhoResult)
    assert ip.line("memwho", "-q") is None
    r = ip.line("memwho", "-o -q -a")
    assert "In" in [row.name for row in r.rows]
    r = ip.line("memwho", "-o -q --trim")
    assert r.trimmed is not None and "--trim" in str(r)


def test_magic_bad_input_is_a_usage_error(ip):
    for line in ("-n 0", "-n x", "a b", "--bogus"):
        with pytest.raises(UsageError, match="Usage: %memwho"):
            ip.line("memwho", line)


def test_budget_is_configurable(ip):
    ip.run_cell("%config MemoryMagics.memwho_budget = 0.25")
    ip.run_cell("numbers = list(range(10**6, 4 * 10**6))")
    r = ip.line("memwho", "-o -q")
    assert r.params.budget == 0.25
    assert r.complete or any("time budget of 0.25 s" in n for n in r.notes)
    ip.run_cell("del numbers")


def test_api_and_records_and_compare():
    ns = {"a": bytearray(10**6)}
    first = ipymem.memwho(ns)
    ns["a"] = bytearray(5 * 10**6)
    second = ipymem.memwho(ns)
    rec = second.records()[0]
    assert rec["name"] == "a" and rec["size"] >= 5 * 10**6 and rec["freed_if_deleted"] >= 5 * 10**6
    assert rec["rss"] > 0 and "rss_malloc_free" in rec and "rss_rest" in rec
    assert second.to_dict()["rows"][0]["name"] == "a"
    cmp = first.compare(second, labels=["before", "after"])
    row = cmp.records()[1]
    assert row["a (size)"] >= 5 * 10**6 and cmp.records()[0]["a (size)"] < 2 * 10**6
    assert cmp.ratios()[1] > 4


def test_api_defaults_to_the_callers_globals():
    r = ipymem.memwho(pattern="MiB")
    assert [row.name for row in r.rows] == ["MiB"]


# -- the retained-RSS hint of %memit and %memwatch -------------------------------------

FRAGMENT = "objs = [bytes(2000) for _ in range(8 * 4000)]; kept = objs[::8]; del objs"


@linux_glibc
def test_memit_and_memwatch_say_when_retained_rss_is_memory_the_allocator_keeps(ip):
    ip.line("memwho", "-q --trim")  # what is free now is returned, so the statement's frees show as kept free
    r = ip.line("memit", f"-o -q {FRAGMENT}")
    assert r.runs[0].retained > 32 * MiB
    hint = [n for n in r.notes if "%memwho --trim" in n]
    assert hint and "keeps free for reuse" in hint[0]
    r = ip.line("memit", "-o -q x = bytearray(64 * 2**20)")  # a live object: no hint
    assert not [n for n in r.notes if "%memwho --trim" in n]
    ip.run_cell("del x, kept")
    ip.line("memwho", "-q --trim")
    ip.line("memwatch", "on")
    try:
        ip.clear()
        ip.run_cell(FRAGMENT)
        assert "%memwho --trim returns it" in ip.texts()[-1]
    finally:
        ip.line("memwatch", "off")
        ip.run_cell("del kept")


def test_retained_hint_thresholds():
    from ipymem.engine.rssparts import retained_hint

    assert retained_hint(100 * MiB, 80 * MiB) is not None and "80.0 MiB" in retained_hint(100 * MiB, 80 * MiB)
    assert retained_hint(100 * MiB, 20 * MiB) is None  # mostly live objects
    assert retained_hint(2 * MiB, 2 * MiB) is None  # too small to mention
    assert retained_hint(100 * MiB, None) is None


def test_pyarrow_arrays_by_their_buffers_and_slices_share():
    pa = pytest.importorskip("pyarrow")
    arr = pa.array(np.arange(10**6, dtype=np.int64))  # 8 MB in arrow's memory pool, not Python's heap
    piece = arr.slice(10, 1000)  # shares arr's buffers
    table = pa.table({"x": arr})
    r = census({"arr": arr, "piece": piece, "table": table})
    assert 8 * 10**6 <= r.row("arr").size < 8 * 10**6 + 4096
    assert r.row("arr").size - 4096 < r.row("table").size and r.row("piece").size >= 8 * 10**6
    assert set(r.row("arr").shared_with) == {"piece", "table"}
    assert r.row("arr").freed_if_deleted < 4096  # the others keep the buffer
    assert 8 * 10**6 <= r.total < 8 * 10**6 + 16384  # the buffer once
    del arr, piece, table, r
    ns = {"arr": pa.array(range(10**6), type=pa.int64())}  # built in arrow's pool (from numpy it would wrap)
    solo = census(ns)
    assert solo.row("arr").type.startswith("Int64Array int64 len")
    before = pa.total_allocated_bytes()  # the truth another way: arrow's own memory pool
    del ns["arr"]
    drop = before - pa.total_allocated_bytes()
    assert drop >= 8 * 10**6 and abs(solo.row("arr").freed_if_deleted - drop) <= 0.05 * drop


def test_torch_cpu_tensors_by_their_storage():
    torch = pytest.importorskip("torch")
    t = torch.ones(1000, 1000)  # 4 MB
    view = t[10:]
    r = census({"t": t, "view": view})
    assert 4 * 10**6 <= r.row("t").size < 4 * 10**6 + 4096
    assert r.row("t").shared_with == ("view",) and r.row("t").freed_if_deleted < 4096
    assert 4 * 10**6 <= r.total < 4 * 10**6 + 8192
