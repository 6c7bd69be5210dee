"""Reliability: fuzzed options and cells, interrupts at random points, memory pressure, nesting.

Whatever the input, a magic either runs, raises ``UsageError``, or raises the
user's own exception, and the session is left as it was (the autouse
``no_leaks`` fixture in conftest checks threads, trace function, tracemalloc
and monitoring ids after each test; ``_assert_clean`` checks after each example).
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from ipymem import AllocResult, MemitResult, MprunResult

from .conftest import _ipymem_threads, _state, sigint_timer

PACKAGE_DIR = str(Path(__file__).resolve().parent.parent / "ipymem")
MAGICS = ["memit", "mprun", "memtrace", "memwatch"]  # every magic; each is fuzzed the same way

FLAGS = [
    "-r",
    "-t",
    "-i",
    "-c",
    "-o",
    "-q",
    "-v",
    "-n",
    "-d",
    "-g",
    "-f",
    "-T",
    "--heap",
    "--precision",
    "--all",
    "--backend",
    "--no-live",
    "-x",
    "on",
    "off",
    "f",
    "g.h",
    "f(1)",
    "len",
]
VALUES = ["0", "-1", "1", "3", "0.0", "1e-9", "1e308", "9" * 40, "nan", "inf", "x", "'a b'", '"', "$x", "{x}", "é", ""]
SNIPPETS = [
    "pass",
    "x = 1",
    "y = [0] * 1000",
    "1/0",
    "undefined_name",
    "s = '$x {x}'",
    "(",
    "[1, 2",
    "'unterminated",
    "é = 'ünïcødé'",
    "%time z = 2",
    "!true",
    "raise KeyboardInterrupt",
    "import sys; sys.exit(3)",
    "",
    "   ",
    "def f(:",
    "lambda: 0",
    "{x}",
    "$x",
]


def _assert_clean(ip, before, sentinel):
    deadline = time.monotonic() + 2
    while _ipymem_threads() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _ipymem_threads() == []
    assert _state() == before
    assert ip.user_ns["sentinel"] is sentinel


def _raised_inside_ipymem(exc: BaseException) -> bool:
    """True if the innermost frame of the traceback is ipymem's own code (a bug, not the user's error)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(PACKAGE_DIR)


option_line = st.lists(st.one_of(st.sampled_from(FLAGS), st.sampled_from(VALUES), st.text(max_size=6)), max_size=6).map(
    " ".join
)
statement = st.one_of(st.sampled_from(SNIPPETS), st.text(alphabet="ab1 =()[]{}'\"$:%!\\\n.,-+é#", max_size=25))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(magic=st.sampled_from(MAGICS), options=option_line, stmt=statement, cell_mode=st.booleans())
def test_fuzzed_input_gives_a_run_a_usage_error_or_the_users_exception(ip, tmp_path, magic, options, stmt, cell_mode):
    sentinel = object()
    ip.user_ns["sentinel"] = sentinel
    ip.user_ns["x"] = "x-value"
    ip.ip.run_cell("def f():\n    return [0] * 10\nclass G:\n    def h(self):\n        return 1\ng = G()\n")
    before = _state()
    # Repeats are the one knob that can make a fuzzed run take forever: bound them with %memit's
    # time budget, and elsewhere replace huge numbers (huge -r is tested in its own test).
    line = options
    if "-r" in options and magic != "mprun":  # %mprun's -r is a switch (return the result)
        line = options + " -t 0.05 " if magic == "memit" else re.sub(r"\d{3,}|1e308|inf", "2", options)
    if "-T" in options:  # never let a fuzzed -T write into the working tree
        line = line.replace("-T", "-T " + str(tmp_path / "report.txt") + " -T")
    try:
        if magic == "memwatch":  # line magic only, no statement
            ip.line(magic, line)
            ip.line(magic, "off")
        elif cell_mode:
            ip.cell(magic, line, stmt)
        else:
            ip.line(magic, line + " " + stmt)
    except UsageError:
        pass
    except SystemExit:
        pass  # the user's sys.exit: IPython's run_cell turns it into a message
    except BaseException as exc:  # the user's own exception (SyntaxError included)
        assert not _raised_inside_ipymem(exc), "".join(traceback.format_exception(exc))
    _assert_clean(ip, before, sentinel)
    # Never expanded, never clobbered: x changes only where the statement names it or `-v x` stored a result there.
    stored = isinstance(ip.user_ns["x"], (MemitResult, MprunResult, AllocResult)) and "-v" in options
    assert ip.user_ns["x"] == "x-value" or "x" in stmt or stored


@pytest.mark.usefixtures("python_sigint_handler")
@pytest.mark.parametrize("seed", range(3))
def test_sigint_at_random_points_always_reaches_the_user_and_leaves_a_clean_session(ip, seed):
    rng = random.Random(seed)
    sentinel = object()
    ip.user_ns["sentinel"] = sentinel
    before = _state()
    delivered = partial = 0
    for _ in range(8):
        delay = rng.uniform(0.0, 0.25)
        heap = rng.choice(["", "--heap "])
        # The delay picks a random landing point (setup, any of the three runs, ipymem's work between
        # them); the last run waits for the signal to have been sent, so it always lands before the end.
        ip.user_ns["passes"] = []
        timer, ip.user_ns["fired"] = sigint_timer(delay)
        try:
            with pytest.raises(KeyboardInterrupt):
                timer.start()  # inside: even a zero delay on a stalled machine lands in here
                ip.cell(
                    "memit",
                    f"-r 3 -i 0.001 {heap}import time; time.sleep(0.05)",
                    "data = [bytearray(2**16) for _ in range(50)]\ntime.sleep(0.1)\npasses.append(1)\n"
                    "if len(passes) == 3:\n    fired.wait(30)\n    time.sleep(5)\n",
                )
        finally:
            timer.join()
        delivered += 1
        if ip.texts() and "interrupted" in ip.texts()[-1]:
            partial += 1
        ip.clear()
        _assert_clean(ip, before, sentinel)
        ip.line("memit", "-q pass")  # the next magic works
    assert delivered == 8
    assert partial >= 1  # most land in the measured code and show a partial report


def test_memory_error_under_a_memory_limit_is_reported_and_reaches_the_user(tmp_path):
    """In a subprocess whose address space is capped, a runaway allocation ends in MemoryError."""
    script = tmp_path / "pressure.py"
    script.write_text(
        textwrap.dedent(
            """
            import resource, sys
            from IPython.core.interactiveshell import InteractiveShell
            ip = InteractiveShell.instance()
            ip.run_line_magic("load_ext", "ipymem")
            ip.run_line_magic("memit", "-q pass")  # warm up: threads, probes
            vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
            limit = vm + 400 * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try:
                ip.run_line_magic("memit", "-v res hog = []\\nwhile True: hog.append(bytearray(8 * 2**20))")
            except MemoryError:
                print("MemoryError reached the user")
            r = ip.user_ns["res"]
            print("outcome", r.outcome, r.error)
            print("increment_mib", r.increment // 2**20)
            """
        )
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "MemoryError reached the user" in out.stdout
    assert "outcome error MemoryError" in out.stdout
    increment = int(out.stdout.split("increment_mib")[1].split()[0])
    assert 200 <= increment <= 420  # it saw the growth up to the failure
    assert "raised MemoryError" in out.stdout


def test_nested_memit_inside_memit_cell(ip):
    # Sizes above glibc's largest mmap threshold (32 MiB), so RSS grows whatever earlier tests freed.
    r = ip.cell("memit", "-o -q", "inner = %memit -o -q x = bytearray(40 * 2**20)\ny = bytearray(48 * 2**20)\n")
    inner = ip.user_ns["inner"]
    assert 38 * 2**20 < inner.increment < 44 * 2**20
    assert r.increment >= 86 * 2**20


def test_user_threads_keep_running_and_are_not_touched(ip):
    ip.ip.run_cell(
        "import threading, time\n"
        "stop = threading.Event()\n"
        "worker = threading.Thread(target=lambda: stop.wait(30), name='user-worker')\n"
        "worker.start()\n"
    )
    ip.line("memit", "-q x = bytearray(2**20)")
    assert ip.user_ns["worker"].is_alive()
    ip.user_ns["stop"].set()
    ip.user_ns["worker"].join()


def test_another_trace_function_is_left_in_place(ip):
    calls = []

    def tracer(frame, event, arg):
        calls.append(event)
        return None

    sys.settrace(tracer)
    try:
        ip.line("memit", "-q x = 1")
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)


def test_huge_repeat_counts_are_accepted_and_bounded_by_errors_or_budgets(ip):
    r = ip.line("memit", "-q -o -r " + "9" * 40 + " -t 0.05 x = 1")
    assert 1 <= len(r.runs) < 10**6 and r.timed_out
    with pytest.raises(ZeroDivisionError):
        ip.line("memtrace", "-q -v res -r " + "9" * 40 + " 1/0")
    assert ip.user_ns["res"].outcome == "error"
