"""Engine and probes without IPython: known allocations, fake probes, the bounded timeline."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from ipymem.engine import Sampler, Timeline, memit, probes
from ipymem.engine.peaks import PeakLedger
from ipymem.engine.probes import PEAK_HWM, ProcfsProbe, PsutilProbe

MiB = 2**20
HAS_PROC = os.path.exists("/proc/self/statm")


def test_engine_imports_neither_ipython_nor_widgets_nor_matplotlib():
    code = (
        "import sys, ipymem.engine, ipymem.engine.cluster, ipymem.models, ipymem.units; "
        "ipymem.engine.cluster.default_client(); "
        "bad = [m for m in ('IPython', 'ipywidgets', 'matplotlib', 'distributed') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(not HAS_PROC, reason="Linux /proc only")
def test_procfs_rss_agrees_with_psutil():
    import psutil

    probe = ProcfsProbe()
    try:
        ours, theirs = probe.rss(), psutil.Process().memory_info().rss
        assert abs(ours - theirs) < 4 * MiB
    finally:
        probe.close()


@pytest.mark.skipif(not HAS_PROC, reason="Linux /proc only")
def test_high_water_mark_sees_a_spike_the_sampler_cannot():
    probe = ProcfsProbe()
    try:
        if not probe.can_reset_peak:
            pytest.skip("clear_refs not writable here")
        result, error = memit(lambda: bytearray(100 * MiB), interval=60.0, probe=probe)
        assert error is None
        assert result.peak_method == PEAK_HWM and result.exact
        assert abs(result.increment - 100 * MiB) < 5 * MiB
        assert result.samples == 2  # start and stop only: the interval never elapsed
    finally:
        probe.close()


def test_fallback_without_clear_refs_is_sampling_and_says_so(monkeypatch):
    """Simulate a platform without /proc/self/clear_refs: the peak comes from samples and is labelled."""
    real_open = os.open

    def fake_open(path, *args, **kwargs):
        if str(path).endswith("clear_refs"):
            raise PermissionError(path)
        return real_open(path, *args, **kwargs)

    probes.close_shared_probe()  # the process-wide ledger reads the shared probe: choose it under the patch
    monkeypatch.setattr(os, "open", fake_open)
    probe = probes.shared_probe()
    try:
        assert not probe.can_reset_peak
        # A small allocation: ru_maxrss (lifetime maximum) is not exceeded, so only samples remain.
        result, _ = memit(lambda: bytearray(MiB), probe=probe, interval=0.001)
        assert result.peak_method.startswith("sampled every 0.001 s")
        assert not result.exact
        assert "may miss" in str(result)
    finally:
        monkeypatch.undo()
        probes.close_shared_probe()


def test_without_resets_a_window_is_exact_only_at_a_new_lifetime_record():
    probe = PsutilProbe()
    ledger = PeakLedger(probe.hwm, probe.clear_hwm, lambda: False)
    w = ledger.open()
    assert not w.reset
    assert ledger.peek(w) == (None, False)  # nothing new since the window opened: unknown, not zero
    big = bytearray(int(probe.hwm() * 1.2) + 64 * MiB)  # beyond the lifetime maximum
    size = len(big)
    del big
    value, exact = ledger.close(w)
    assert exact and value is not None and value >= size


class FakeProbe:
    """Deterministic probe: RSS follows a script; the 'kernel' peak is the max ever set."""

    rss_method = "fake"
    can_reset_peak = True

    def __init__(self) -> None:
        self.value = 100 * MiB
        self.hwm = self.value

    def set(self, value: int) -> None:
        self.value = value
        self.hwm = max(self.hwm, value)

    def rss(self) -> int:
        return self.value

    def reset_peak(self) -> None:
        self.hwm = self.value

    def peak(self):
        return self.hwm, PEAK_HWM

    def children_rss(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_exact_arithmetic_with_a_fake_probe():
    probe = FakeProbe()

    def work():
        probe.set(400 * MiB)  # spike
        probe.set(130 * MiB)  # keeps 30 MiB

    result, error = memit(work, probe=probe, interval=60.0, collect=False)
    assert error is None
    (run,) = result.runs
    assert run.baseline == 100 * MiB and run.peak == 400 * MiB and run.end == 130 * MiB
    assert run.increment == 300 * MiB and run.retained == 30 * MiB


def test_repeat_each_run_has_its_own_baseline_and_errors_stop_the_runs():
    probe = FakeProbe()
    calls = []

    def work():
        calls.append(1)
        probe.set(probe.value + 10 * MiB)
        if len(calls) == 3:
            raise RuntimeError("third")

    result, error = memit(work, repeat=5, probe=probe, interval=60.0, collect=False)
    assert isinstance(error, RuntimeError) and result.outcome == "error"
    assert result.error == "RuntimeError: third"
    assert [r.baseline for r in result.runs] == [100 * MiB, 110 * MiB, 120 * MiB]
    assert all(r.increment == 10 * MiB for r in result.runs)


def test_bad_engine_arguments():
    with pytest.raises(ValueError):
        memit(lambda: None, repeat=0)
    with pytest.raises(ValueError):
        memit(lambda: None, timeout=0)
    with pytest.raises(ValueError):
        Sampler(FakeProbe(), interval=0)


def test_timeline_is_bounded_and_keeps_every_peak():
    tl = Timeline(max_points=64)
    peaks = {}
    for i in range(100_000):
        value = 1000 + (i % 50)
        if i % 9973 == 0:
            value = 10**6 + i  # isolated spikes
            peaks[i] = value
        tl.add(float(i), value)
    kept = tl.samples()
    assert len(kept) <= 64 + 2
    values = {s.rss for s in kept}
    assert all(v in values for v in peaks.values())
    assert tl.count == 100_000 and tl.max_value == max(peaks.values())
    assert [s.t for s in kept] == sorted(s.t for s in kept)


def test_sampler_with_an_accelerated_clock_stays_bounded():
    """Ten simulated minutes at 100 Hz: memory of the sampler stays bounded by max_points."""
    now = [0.0]

    def clock():
        now[0] += 0.01
        return now[0]

    sampler = Sampler(FakeProbe(), interval=0.01, max_points=256, clock=clock)
    for _ in range(60_000):
        sampler.sample()
    assert sampler.timeline.count == 60_000
    assert len(sampler.timeline.samples()) <= 258
    assert sampler.elapsed() >= 599.9


def test_sampler_thread_stops_promptly_and_is_named():
    sampler = Sampler(FakeProbe(), interval=30.0)
    sampler.start()
    assert any(t.name == "ipymem-sampler" for t in threading.enumerate())
    sampler.stop()  # must not wait 30 s
    assert not sampler.running
    assert sampler.timeline.count == 2


def test_sampler_survives_probe_errors():
    class Flaky(FakeProbe):
        n = 0

        def rss(self):
            self.n += 1
            if self.n % 2:
                raise OSError("gone")
            return 1

    sampler = Sampler(Flaky(), interval=0.001)
    for _ in range(10):
        sampler.sample()
    assert sampler.errors == 5 and sampler.timeline.count == 5
