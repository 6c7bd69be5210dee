"""Platforms without a usable /proc: the probes fall back to psutil, and every magic says which method it used.

``/proc`` is made missing (``FileNotFoundError``), forbidden (``PermissionError``),
or present but unreadable (every ``/proc`` path opens ``/dev/null``, so reads
come back empty) by patching ``os.open``; the shared probe is dropped before
and after so the patched state is what ipymem sees when it chooses.
"""

from __future__ import annotations

import errno
import os

import pytest

from ipymem.engine import probes

from .conftest import MiB

REAL_OPEN = os.open

FUNCS = """
def grow(n):
    a = bytearray(n)
    a[::4096] = b"x" * len(a[::4096])
    return a
"""


def _patched_open(mode: str, only: str = "/proc"):
    def fake_open(path, flags, *args, **kwargs):
        p = os.fspath(path)
        if isinstance(p, bytes):
            p = p.decode()
        if p.startswith(only):
            if mode == "missing":
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", p)
            if mode == "forbidden":
                raise PermissionError(errno.EACCES, "Permission denied", p)
            if mode == "unreadable":
                return REAL_OPEN(os.devnull, os.O_RDONLY if flags == os.O_RDONLY else flags)
        return REAL_OPEN(path, flags, *args, **kwargs)

    return fake_open


@pytest.fixture
def without_proc(request, monkeypatch):
    """Yields a function that takes /proc away in one of three ways (or just clear_refs)."""

    def take_away(mode: str, only: str = "/proc") -> None:
        probes.close_shared_probe()
        monkeypatch.setattr(os, "open", _patched_open(mode, only))

    yield take_away
    monkeypatch.undo()
    probes.close_shared_probe()  # the next test gets a probe chosen with /proc back


@pytest.mark.parametrize("mode", ["missing", "forbidden", "unreadable"])
def test_probe_falls_back_to_psutil(without_proc, mode):
    without_proc(mode)
    probe = probes.make_probe()
    assert probe.rss_method == "psutil"
    assert probe.rss() > 0
    assert probes.shared_probe().rss_method == "psutil"


@pytest.mark.parametrize("mode", ["missing", "forbidden", "unreadable"])
def test_every_magic_works_without_proc_and_says_psutil(ip, without_proc, mode):
    ip.ip.run_cell(FUNCS)
    without_proc(mode)
    size = 64 * MiB

    m = ip.line("memit", f"-o x = grow({size})")
    text = ip.texts()[-1]
    assert "psutil" in text, text
    assert 0.9 * size <= m.increment <= 1.2 * size
    assert "VmHWM" not in m.peak_method  # no kernel high-water mark without /proc

    r = ip.line("mprun", f"-o -f grow y = grow({size})")
    text = ip.texts()[-1]
    assert "RSS from psutil" in text, text
    inc = {ln.lineno - r.functions[0].firstlineno: ln.increment for ln in r.functions[0].lines}
    assert 0.9 * size <= inc[1] + inc[2] <= 1.2 * size

    a = ip.line("memtrace", "-o z = [bytearray(1000) for _ in range(1000)]")
    text = ip.texts()[-1]
    assert "psutil" in text, text
    assert a.outcome == "ok" and a.entries

    ip.clear()
    ip.line("memit", "-c -q w = 1")  # children need psutil anyway
    del ip.user_ns["x"], ip.user_ns["y"]


def test_clear_refs_unwritable_keeps_statm_and_says_how_the_peak_was_known(ip, without_proc):
    ip.ip.run_cell(FUNCS)
    without_proc("forbidden", only="/proc/self/clear_refs")
    assert probes.shared_probe().rss_method == "/proc/self/statm"
    assert not probes.shared_probe().can_reset_peak
    m = ip.line("memit", "-o x = 1")
    assert m.peak_method.startswith(("lifetime high-water mark", "sampled")), m.peak_method
    assert "VmHWM" not in ip.texts()[-1]
    ip.line("mprun", "-f grow y = grow(2**20)")
    assert "RSS from /proc/self/statm, peaks from the readings (and new lifetime maxima)" in ip.texts()[-1]


def test_proc_comes_back_after_the_fallback(ip, without_proc):
    without_proc("missing")
    ip.line("memit", "x = 1")
    assert "psutil" in ip.texts()[-1]
    os.open = REAL_OPEN  # the monkeypatch fixture restores it too; this is the "mid-session" case
    ip.line("reload_ext", "ipymem")  # unload drops the shared probe: the next one is chosen afresh
    ip.line("memit", "x = 1")
    assert "VmHWM" in ip.texts()[-1]
