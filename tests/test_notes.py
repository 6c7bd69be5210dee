"""Notes that are true: the kernel's own threads are not the user's, and no measurement pins the caller's frame.

Each test fails without its fix: thread names (``Thread-1``) alone cannot tell
ipykernel's parent poller from the user's thread, and a frames dict kept in
a local makes a cycle through the measuring frame and its callers.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest

import ipymem
from ipymem.engine.threads import ThreadActivity, _is_housekeeping_module, is_housekeeping


class _Obj:
    pass


# -- housekeeping threads by what they run ----------------------------------------------------------


def test_kernel_threads_are_recognised_by_class_and_target_not_name():
    iostream = pytest.importorskip("ipykernel.iostream")
    from ipykernel.heartbeat import Heartbeat
    from ipykernel.parentpoller import ParentPollerUnix

    assert is_housekeeping(ParentPollerUnix())  # named "Thread-1" in a kernel
    assert is_housekeeping(threading.Thread(target=iostream.OutStream._watch_pipe_fd, name="Thread-2"))
    assert is_housekeeping(Heartbeat.__new__(Heartbeat))
    from IPython.core.history import HistorySavingThread

    assert _is_housekeeping_module(HistorySavingThread.__module__)  # an instance needs a history manager
    # the same names on the user's threads are the user's
    assert not is_housekeeping(threading.Thread(target=lambda: None, name="Thread-1"))
    assert not is_housekeeping(threading.Thread(target=print, name="IOPub"))
    assert not is_housekeeping(threading.current_thread())


def test_pool_threads_run_user_work_and_are_the_users():
    with ThreadPoolExecutor(1) as pool:
        pool.submit(time.sleep, 0).result()
        workers = list(pool._threads)
    assert workers and not any(is_housekeeping(t) for t in workers)

    class Mine(threading.Thread):
        pass

    assert not is_housekeeping(Mine())


def test_a_housekeeping_thread_that_wakes_often_gives_no_note():
    class Poller(threading.Thread):  # what ipykernel's ParentPollerUnix is: a class of the kernel's
        __module__ = "ipykernel.parentpoller"

        def __init__(self, stop):
            super().__init__(daemon=True)
            self.stop = stop

        def run(self):
            while not self.stop.wait(0.005):
                sum(range(1000))

    stop = threading.Event()
    poller = Poller(stop)
    poller.start()
    try:
        r = ipymem.memit(time.sleep, 0.3)
        assert not any("other thread" in n for n in r.notes), r.notes
        if sys.version_info < (3, 11):  # 3.10 reuses a frame's memory: a looping thread can look unchanged
            return
        # a user thread doing the same is named
        ustop = threading.Event()

        def busy():  # mostly computing: on 3.10 a thread seen only in its wait() looks the same at each look
            while not ustop.wait(0.001):
                sum(range(10**5))

        t = threading.Thread(target=busy, name="mine")
        t.start()
        try:
            r = ipymem.memit(time.sleep, 0.3)
        finally:
            ustop.set()
            t.join()
        assert any("other thread" in n and "mine" in n for n in r.notes), r.notes
    finally:
        stop.set()
        poller.join()


def test_profile_counts_only_threads_the_profiled_code_started():
    stop = threading.Event()
    go = threading.Event()

    def elsewhere():  # another thread starts threads while the profiled function runs
        go.wait()
        for _ in range(5):
            threading.Thread(target=time.sleep, args=(0,)).start()
        stop.set()

    @ipymem.profile(stream=None)
    def profiled():
        go.set()
        stop.wait(5)
        return 1

    def starts_one():
        t = threading.Thread(target=time.sleep, args=(0,))
        t.start()
        t.join()

    t = threading.Thread(target=elsewhere)
    t.start()
    profiled()
    t.join()
    report = profiled.last_profile
    assert not any("started" in n for n in report.notes), report.notes

    r = ipymem.mprun(starts_one)
    assert any("(1 started)" in n for n in r.notes), r.notes


# -- no frame pinned -----------------------------------------------------------------------------


@pytest.fixture
def no_gc():
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@pytest.mark.parametrize(
    "measure",
    [
        lambda: ipymem.memit(bytearray, 10),
        lambda: ipymem.memit(time.sleep, 0.05),  # the sampler looks at the threads at its ticks
        lambda: ipymem.mprun(lambda: bytearray(10)),
    ],
    ids=["memit", "memit-sampled", "mprun"],
)
def test_a_measurement_inside_a_function_keeps_no_frame_of_it(no_gc, measure):
    def caller():
        local = _Obj()
        measure()
        return weakref.ref(local)

    ref = caller()
    assert ref() is None, "the caller's frame (and its locals) outlived the call"


def test_thread_activity_keeps_no_frame(no_gc):
    def caller():
        local = _Obj()
        a = ThreadActivity().start()
        a.poll()
        a.stop()
        return weakref.ref(local)

    assert caller()() is None


def test_memit_magic_inside_a_function_keeps_no_frame(ip, no_gc):
    ip.run_cell(
        "import weakref\n"
        "class Big: pass\n"
        "def f():\n"
        "    local = Big()\n"
        "    get_ipython().run_line_magic('memit', '-q pass')\n"
        "    return weakref.ref(local)\n"
        "ref = f()\n"
    )
    assert ip.user_ns["ref"]() is None


# -- in a real kernel -------------------------------------------------------------------------------


@pytest.mark.kernel
def test_kernel_memit_names_no_kernel_thread_but_names_a_users(tmp_path):
    pytest.importorskip("jupyter_client")
    pytest.importorskip("ipykernel")
    from jupyter_client.manager import start_new_kernel

    from .test_kernel import _env, execute

    def stdout(messages):
        return "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")

    km, kc = start_new_kernel(kernel_name="python3", env=_env(tmp_path))
    try:
        execute(kc, "%load_ext ipymem")
        # ipykernel's parent poller wakes every second and its pipe watchers on output: 1.5 s sees them
        messages, reply = execute(kc, "import time\nr = %memit -o --no-live time.sleep(1.5)\nprint(r.notes)")
        assert reply["content"]["status"] == "ok", reply["content"]
        assert "other thread" not in stdout(messages), stdout(messages)
        code = (  # a thread of the user's, started before, allocates during the statement
            "import threading\n"
            "go = threading.Event()\n"
            "def load():\n"
            "    go.wait()\n"
            "    global held\n"
            "    held = [bytearray(2**20) for _ in range(40)]\n"
            "t = threading.Thread(target=load, name='loader'); t.start()\n"
            "r = %memit -o --no-live go.set(); t.join()\n"
            "print(r.notes)"
        )
        messages, reply = execute(kc, code)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert "other thread" in stdout(messages) and "loader" in stdout(messages), stdout(messages)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# -- %memit's fixed cost: no full collection, no smaps ------------------------------------------------


def test_memit_runs_no_full_collection_and_reads_no_smaps(ip, monkeypatch):
    import builtins

    calls = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a, **k: (calls.append(a or k or "full"), real_collect(*a, **k))[1])
    opened = []
    real_open = builtins.open

    def spy_open(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    ip.line("memit", "-q pass")
    assert calls and all(c not in ("full", (2,)) and c != {"generation": 2} for c in calls), calls
    assert not any(p.endswith("/smaps") for p in opened), opened


def _warm_free_lists(ip):
    # Allocate and free 1 MB blocks until glibc serves them from its heap (its mmap threshold grows
    # after the first free of an mmapped block), then free 60 of them below a block that stays, so
    # the heap's top cannot be trimmed: ~60 MB stay free in the allocator, resident, as after a cell
    # that built and dropped a large intermediate.
    ip.run_cell(
        "for _ in range(3):\n    _tmp = [bytearray(10**6) for _ in range(60)]\n    del _tmp\n"
        "_tmp = [bytearray(10**6) for _ in range(60)]\n_pin = bytearray(10**6)\ndel _tmp\n"
    )


def test_memit_says_when_new_memory_went_into_memory_the_allocator_held_free(ip):
    pytest.importorskip("ctypes")
    from ipymem.engine.rssparts import mallinfo

    if mallinfo() is None:
        pytest.skip("needs glibc's mallinfo2")
    _warm_free_lists(ip)
    r = ip.line("memit", "-o -q x = [bytearray(10**6) for _ in range(50)]")
    ip.run_cell("del x")
    note = [n for n in r.notes if "held free" in n]
    assert note, (r.increment, r.notes)
    mib = float(note[0].split(" MiB")[0].split()[-1].replace(",", ""))
    assert 40 <= mib <= 55, note  # 50 x 10**6 bytes = 47.7 MiB went into freed memory


def test_memit_gives_no_reuse_note_when_memory_is_new(ip):
    r = ip.line("memit", "-o -q x = bytearray(64 * 2**20)")
    ip.run_cell("del x")
    assert not any("held free" in n for n in r.notes), r.notes


# -- %memwho: an object column sized in bulk, within its budget, and a headline that matches ---------


def _namespace_of_20(ip):
    pd = pytest.importorskip("pandas")
    ip.run_cell(
        "import numpy as np, pandas as pd\n"
        "n = 10**6\n"
        "df = pd.DataFrame({'a': np.arange(n), 'b': np.random.rand(n), 's': [f'row {i}' for i in range(n)]})\n"
        "for i in range(19):\n"
        "    globals()[f'v{i}'] = np.ones(10**5) if i % 3 == 0 else (list(range(10**4)) if i % 3 == 1 else"
        " {'k': list(range(1000))})\n"
    )
    return pd


@pytest.mark.parametrize("traced", [False, True], ids=["plain", "tracemalloc"])
def test_memwho_walks_a_million_row_object_column_within_its_default_budget(ip, traced):
    import tracemalloc

    _namespace_of_20(ip)
    was = tracemalloc.is_tracing()
    if traced and not was:
        tracemalloc.start()
    try:
        r = ip.line("memwho", "-o -q")
    finally:
        if traced and not was:
            tracemalloc.stop()
    assert r.complete, r.notes
    assert r.params.budget == 5.0  # the default budget
    deep = int(ip.user_ns["df"].memory_usage(deep=True).sum())  # pandas' own books: every string's getsizeof
    assert abs(r.row("df").size - deep) <= 0.02 * deep, (r.row("df").size, deep)
    assert r.row("df").freed_if_deleted == pytest.approx(r.row("df").size, rel=0.01)


def test_memwho_object_array_freed_if_deleted_against_the_traced_drop(ip):
    import tracemalloc

    pytest.importorskip("numpy")
    tracemalloc.start()
    try:
        ip.run_cell("import numpy as np\nwords = np.array([f'word {i}' for i in range(200_000)], dtype=object)")
        r = ip.line("memwho", "-o -q words")
        before = tracemalloc.get_traced_memory()[0]
        ip.run_cell("del words")
        drop = before - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert r.row("words").objects > 200_000
    assert abs(r.row("words").freed_if_deleted - drop) <= 0.05 * drop, (r.row("words").freed_if_deleted, drop)


def test_memwho_object_arrays_sharing_elements_share_them(ip):
    pytest.importorskip("numpy")
    ip.run_cell(
        "import numpy as np\n"
        "a = np.array([f'word {i}' for i in range(100_000)], dtype=object)\n"
        "b = a.copy()\n"  # a new buffer of references to the same strings
        "c = np.array([f'other {i}' for i in range(100_000)], dtype=object)\n"
    )
    r = ip.line("memwho", "-o -q")
    a, b, c = r.row("a"), r.row("b"), r.row("c")
    assert "b" in a.shared_with and "a" in b.shared_with and not c.shared_with
    strings = a.size - a.freed_if_deleted  # what a shares: the strings
    assert strings > 100_000 * 50
    assert a.freed_if_deleted < 100_000 * 8 + 4096  # only its own buffer of pointers
    assert c.freed_if_deleted == pytest.approx(c.size, rel=0.001)
    ip.run_cell("del a, b, c")


def test_memwho_held_from_outside_frees_nothing_of_its_bulk_elements(ip):
    pytest.importorskip("numpy")
    ip.run_cell(
        "import numpy as np, sys\n"
        "words = np.array([f'w{i}' for i in range(100_000)], dtype=object)\n"
        "sys.modules['__main__'].__dict__.setdefault('_cache_for_test', [])\n"
        "_hold = [words]\n"
    )
    r = ip.line("memwho", "-o -q words")
    assert r.row("words").freed_if_deleted < 4096, r.row("words")
    ip.run_cell("del words, _hold")


def test_memwho_headline_says_what_the_rows_shown_hold(ip):
    pytest.importorskip("numpy")
    ip.run_cell("import numpy as np\ndf1 = np.ones(2**17)\ndf2 = np.ones(2**18)\nother = np.ones(2**20)\n")
    r = ip.line("memwho", "-o -q -n 1 df*")
    text = str(r)
    first = text.splitlines()[0]
    assert [row.name for row in r.rows] == ["df2"]
    assert "1 of 3 names shown (matching df*, top 1), holding 2.00 MiB" in first, first
    assert "all names together hold 11.00 MiB" in first, first
