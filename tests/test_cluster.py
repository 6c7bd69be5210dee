"""Dask workers measured by %memit and %memwatch, against a real LocalCluster of two process workers.

One cluster for the module (starting one costs ~1 s); each test reads the
worker addresses afresh, because the kill test makes the nanny restart a
worker at a new address.  The fake-client tests at the end need no cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import threading
import time

import pytest

from ipymem.engine import cluster as cluster_engine
from ipymem.models import MemitResult, MemitRun, compare

from .conftest import MiB

LINUX_HWM = os.path.exists("/proc/self/clear_refs")
SPIKE = 300 * MiB


#: Defined in the user's namespace, as a notebook user would: cloudpickle sends it by value, so the
#: workers import nothing of this test module (which imports ipymem).
SPIKE_SOURCE = """
import time
def spike(n=300 * 2**20):
    # Allocate and touch n bytes, then free them: a transient of a few tens of ms.
    t0 = time.perf_counter()
    block = b"x" * n  # memset: every page resident
    del block
    return time.perf_counter() - t0
"""


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def workers(client) -> list[str]:
    return sorted(client.scheduler_info()["workers"])


@pytest.fixture
def cip(ip, dask_client):
    """The test shell with the client in its namespace as ``client``, and the spike function as ``spike``."""
    ip.user_ns.update(client=dask_client)
    ip.run_cell(SPIKE_SOURCE)
    ip.clear()
    return ip


pytestmark = pytest.mark.cluster


@pytest.mark.skipif(not LINUX_HWM, reason="exact worker peaks need Linux clear_refs")
def test_transient_on_one_worker_gives_it_the_increment_and_the_other_none(cip, dask_client):
    a, b = workers(dask_client)
    cip.user_ns.update(a=a)
    r = cip.line("memit", "-o client.submit(spike, workers=[a], pure=False).result()")
    assert isinstance(r, MemitResult)
    assert set(r.workers) == {a, b}
    wa, wb = r.workers[a], r.workers[b]
    assert wa.exact and wb.exact and wa.status == wb.status == "ok"
    assert abs(wa.increment - SPIKE) < 0.05 * SPIKE, wa
    assert wb.increment < 4 * MiB, wb
    assert wa.end - wa.baseline < 16 * MiB  # the spike was freed: a transient, gone before the end
    # the kernel's own figures are still the kernel's: it allocated nothing like 300 MiB
    assert r.increment < 50 * MiB
    # shown per worker, in text and HTML
    (text,) = cip.texts()
    assert "Dask workers" in text and a in text and b in text and "VmHWM" in text
    (html,) = cip.htmls()
    assert "ipymem-workers" in html and a in html and "Managed" in html
    # kept: to_dict (JSON), compare
    data = json.loads(json.dumps(r.to_dict()))
    assert data["workers"][a]["increment"] == wa.increment and data["workers"][a]["method"] == wa.method
    cmp = compare(r, r)
    names = [m.name for m in cmp.metrics]
    assert "Highest worker increment (Dask, RSS)" in names
    assert cmp.records()[0]["Highest worker increment (Dask, RSS)"] == wa.increment
    assert cmp.records()[0]["Workers' increments summed (Dask, RSS)"] == wa.increment + wb.increment


def test_memory_freed_just_before_the_statement_is_not_counted(cip, dask_client):
    # The scheduler still holds the last heartbeat, sent while the worker held 200 MiB: a sampled
    # peak taken from it would read 200 MiB too high.  Only heartbeats sent after the baseline count.
    _, b = workers(dask_client)
    cip.user_ns.update(b=b)
    cip.run_cell("import distributed\nheld = client.submit(lambda: b'x' * (200 * 2**20), workers=[b], pure=False)")
    cip.run_cell("distributed.wait(held)\npass")  # no Out cache entry keeping the future alive
    key = cip.user_ns["held"].key
    time.sleep(1.2)  # a heartbeat with the 200 MiB reaches the scheduler
    cip.run_cell("del held")

    def released():
        return dask_client.run(lambda dask_worker: key in dask_worker.data, workers=[b])[b] is False

    deadline = time.monotonic() + 30
    while not released() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert released()
    r = cip.line("memit", "-o -q x = 1")
    assert r.workers[b].increment < 4 * MiB, r.workers[b]


def test_nothing_is_left_on_the_workers(cip, dask_client):
    cip.line("memit", "-q client.submit(sum, [1, 2], pure=False).result()")
    left = dask_client.run(lambda: sorted(m for m in sys.modules if m.startswith("ipymem")))
    assert all(mods == [] for mods in left.values()), left
    assert [t for t in threading.enumerate() if t.name == "ipymem-cluster"] == []


def test_no_cluster_option_and_bad_cluster_names(cip, dask_client):
    from IPython.core.error import UsageError

    r = cip.line("memit", "-o -q --no-cluster x = 1")
    assert r.workers == {}
    with pytest.raises(UsageError, match="names no variable"):
        cip.line("memit", "--cluster nosuch x = 1")
    cip.user_ns["notaclient"] = 42
    with pytest.raises(UsageError, match=r"not a distributed\.Client"):
        cip.line("memit", "--cluster notaclient x = 1")


def test_client_closed_mid_cell_does_not_hang_and_keeps_the_kernel_figures(cip, dask_client):
    import distributed

    other = distributed.Client(dask_client.cluster, set_as_default=False)
    cip.user_ns["other"] = other
    r = cip.line("memit", "-o --cluster other x = bytearray(40 * 2**20); other.close()")
    assert other.status == "closed"
    assert 36 * MiB < r.increment < 60 * MiB  # the kernel's measurement is intact
    assert any("Dask cluster not measured" in n for n in r.notes), r.notes
    assert all(w.status == "unreachable" for w in r.workers.values())
    (text,) = cip.texts()
    assert "Dask cluster not measured" in text


@pytest.mark.skipif(not LINUX_HWM, reason="exact worker peaks need Linux clear_refs")
def test_memwatch_reports_the_workers_per_cell(cip, dask_client):
    a, _ = workers(dask_client)
    cip.user_ns.update(a=a)
    cip.line("memwatch", "on")
    try:
        cip.clear()
        cip.run_cell("client.submit(spike, workers=[a], pure=False).result()")
        cip.run_cell("y = 1")
    finally:
        cip.line("memwatch", "off")
    lines = [t for t in cip.texts() if t.startswith("RSS: used ")]
    assert len(lines) == 2, cip.texts()
    assert "Dask 2 workers (RSS, exact peaks): highest peak +" in lines[0]
    assert abs(_highest(lines[0]) - SPIKE) < 0.05 * SPIKE, lines[0]
    assert "Dask 2 workers (RSS, exact peaks)" in lines[1], lines[1]
    assert _highest(lines[1]) < 4 * MiB, lines[1]  # per cell: the second cell allocated nothing


@pytest.mark.skipif(not LINUX_HWM, reason="exact worker peaks need Linux clear_refs")
def test_a_memit_inside_a_watched_cell_does_not_erase_the_cells_worker_peak(cip, dask_client):
    # The spike happens before the inner %memit resets the workers' high-water marks: the watch
    # keeps it because the reset folds the erased value into every open measurement first.
    a, _ = workers(dask_client)
    cip.user_ns.update(a=a)
    cip.line("memwatch", "on")
    try:
        cip.clear()
        cip.run_cell("client.submit(spike, workers=[a], pure=False).result()\n%memit -q pass")
    finally:
        cip.line("memwatch", "off")
    (line,) = [t for t in cip.texts() if t.startswith("RSS: used ")]
    assert abs(_highest(line) - SPIKE) < 0.05 * SPIKE, line


def _highest(line: str) -> float:
    return float(re.search(r"highest peak \+?([\d,.]+) MiB", line).group(1).replace(",", "")) * MiB


def test_worker_killed_mid_cell_is_reported(cip, dask_client):
    a, b = workers(dask_client)
    name_b = dask_client.scheduler_info()["workers"][b]["name"]
    pid_b = dask_client.run(os.getpid, workers=[b])[b]
    cip.user_ns.update(b=b, pid_b=pid_b, wait_for_restart=_wait_for_restart)
    r = cip.line("memit", "-o import os, signal; os.kill(pid_b, signal.SIGKILL); wait_for_restart(client, b)")
    assert r.workers[b].status in ("restarted", "left")
    assert r.workers[b].peak is not None and r.workers[b].end is None
    new = [w for w in r.workers.values() if w.address not in (a, b)]
    assert len(new) == 1 and new[0].status == "restarted" and new[0].name == str(name_b)
    assert new[0].baseline is None and new[0].increment is None and new[0].end > 0
    assert r.workers[a].status == "ok"
    (text,) = cip.texts()
    assert "restarted" in text and b in text


def _wait_for_restart(client, old: str, deadline: float = 60.0) -> None:
    """Inside the measured cell: wait until the nanny's new worker has joined (two workers, ``old`` gone)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        now = set(client.scheduler_info()["workers"])
        if old not in now and len(now) == 2:
            return
        time.sleep(0.05)
    raise AssertionError("the killed worker was not restarted")


def test_ctrl_c_mid_cell_reports_the_workers_and_reraises(cip, dask_client, python_sigint_handler):
    # The measured statement arms the interrupt itself, so however slow the machine, it lands mid-run.
    cip.user_ns["interrupt_soon"] = lambda: threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        cip.cell("memit", "-v partial import time", "interrupt_soon()\nfor _ in range(200): time.sleep(0.05)\n")
    r = cip.user_ns["partial"]
    assert r.outcome == "interrupted"
    assert set(r.workers) == set(workers(dask_client)) and all(w.status == "ok" for w in r.workers.values())
    (text,) = cip.texts()
    assert "interrupted" in text and "Dask workers" in text
    assert [t for t in threading.enumerate() if t.name == "ipymem-cluster"] == []


# -- without a cluster: fake clients -------------------------------------------------------------------


class _SlowClient:
    """Answers nothing: every call times out after its callback_timeout (recorded)."""

    status = "running"

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []
        self.scheduler = type("Rpc", (), {"identity": staticmethod(lambda **kw: None)})()

    def run(self, *args, callback_timeout=None, **kwargs):
        self.timeouts.append(callback_timeout)
        raise asyncio.TimeoutError

    def sync(self, *args, callback_timeout=None, **kwargs):
        self.timeouts.append(callback_timeout)
        raise asyncio.TimeoutError

    def scheduler_info(self):
        raise AssertionError("not used")


def test_unreachable_scheduler_is_one_note_and_every_call_has_a_timeout(ip):
    client = _SlowClient()
    ip.user_ns["slow"] = client
    r = ip.line("memit", "-o --cluster slow x = bytearray(20 * 2**20)")
    assert 16 * MiB < r.increment < 40 * MiB
    assert r.workers == {}
    (note,) = [n for n in r.notes if "Dask" in n]
    assert note.startswith("Dask cluster not measured (reading the workers failed: no answer within 5 s)")
    assert client.timeouts and all(t == cluster_engine.TIMEOUT for t in client.timeouts)


# -- the chart: highest worker and all workers, live and in plot() ------------------------------------


class _FakeHandle:
    def __init__(self, samples):
        self.samples = samples


def test_live_view_and_plot_show_the_highest_worker_and_the_total():
    from ipymem.live.view import LiveView
    from ipymem.models import ClusterSample, Sample

    from .test_live import FakeFrontend

    samples = [ClusterSample(0.0, 200 * MiB, 100 * MiB), ClusterSample(0.5, 500 * MiB, 400 * MiB)]
    fe = FakeFrontend()
    view = LiveView(fe, title="%memit", refresh=0.02, budget=1.0)
    view.cluster = _FakeHandle(samples)
    with view:
        pass
    assert "Dask workers (heartbeats): highest 400.0 MiB, all 500.0 MiB" in fe.shown[1]
    highest, total = view._chart._ipymem_cluster_lines
    assert max(highest.get_ydata()) == 400 and max(total.get_ydata()) == 500
    assert view._chart.ax.get_ylim()[1] >= 500  # the axes hold the workers, not only the kernel
    assert fe.finished and "image/png" in fe.finished[0]
    result = MemitResult(
        statement="x",
        runs=(MemitRun(baseline=80 * MiB, peak=81 * MiB, end=80 * MiB, duration=1.0, samples=2),),
        timeline=(Sample(0.0, 80 * MiB), Sample(1.0, 80 * MiB)),
        cluster_timeline=tuple(samples),
    )
    figure = result.plot()
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == ["kernel RSS", "highest Dask worker RSS (heartbeats)", "all workers (heartbeats)"]


class _FlakyClient:
    """Two fake workers answered from this process; ``w2`` fails at the first call (the start)."""

    status = "running"

    def __init__(self) -> None:
        self.calls = 0
        self.scheduler = type("Rpc", (), {"identity": staticmethod(lambda **kw: None)})()

    def run(self, fn, *args, on_error="raise", callback_timeout=None, **kwargs):
        assert on_error == "return" and callback_timeout == cluster_engine.TIMEOUT
        self.calls += 1
        # reset=False: the readings are of this test process, whose high-water mark is not ours to reset
        answer = {"w1": fn(False, dask_worker=None)}
        answer["w2"] = OSError("connection refused") if self.calls == 1 else fn(False, dask_worker=None)
        if self.calls > 1:
            answer["w1"] = TimeoutError("too slow")
        return answer

    def sync(self, func, *args, callback_timeout=None, **kwargs):
        assert callback_timeout == cluster_engine.TIMEOUT
        return {"workers": {"w1": {"name": "one", "metrics": {"memory": 1}}, "w2": {"name": "two"}}}

    def scheduler_info(self):
        raise AssertionError("not used")


def test_workers_that_do_not_answer_are_reported_not_guessed():
    handle = cluster_engine.start(_FlakyClient(), interval=0.01)
    figures = handle.stop()
    w1, w2 = figures["w1"], figures["w2"]
    # w1 answered at the start, not at the end: baseline kept, end unknown, peak only "at least"
    assert w1.status == "unreachable" and w1.baseline > 0 and w1.end is None and not w1.exact
    assert "did not answer at the end (TimeoutError: too slow)" in w1.detail
    # w2 did not answer at the start: no baseline, so no increment, whatever it says at the end
    assert w2.status == "unreachable" and w2.baseline is None and w2.increment is None and w2.end > 0
    assert "did not answer at the start (OSError: connection refused)" in w2.detail
    assert handle.stop() is figures  # idempotent


def test_where_no_high_water_mark_can_be_reset_the_peak_is_sampled_and_says_at_least():
    # A worker off Linux (or without a writable clear_refs): its readings have no VmHWM and no reset.
    handle = cluster_engine.ClusterHandle(_FlakyClient())
    handle._baseline = {"w": {"rss": 100 * MiB, "pid": 7, "reset": False, "time": 10.0, "name": "w"}}
    handle._absorb({"workers": {"w": {"name": "w", "metrics": {"memory": 90 * MiB, "time": 9.0}}}})  # stale
    handle._absorb({"workers": {"w": {"name": "w", "metrics": {"memory": 180 * MiB, "time": 11.0}}}})
    (w,) = handle._figures({"w": {"rss": 120 * MiB, "pid": 7, "reset": False, "managed": 0}}, {}).values()
    assert not w.exact and w.method == cluster_engine.WORKER_SAMPLED
    assert w.peak == 180 * MiB and w.increment == 80 * MiB and w.end == 120 * MiB
    run = MemitRun(baseline=0, peak=0, end=0, duration=0.1, samples=1)
    result = MemitResult(statement="x", runs=(run,), workers={"w": w})
    text = str(result)
    assert "sampled from the scheduler's heartbeats" in text and "≥ 180.00" in text and "≥ +80.00" in text
    assert "at least" in result._repr_html_()
