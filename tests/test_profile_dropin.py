"""memory_profiler's test programs and examples, ported, through the three ways in.

Each case is a small program in memory_profiler's style (bare ``@profile``
decorators, a main part) with the lines that must run and how often.  It
runs through ``ipymem.profile`` (the program imported with ``profile``
bound to it), through ``python -m ipymem`` (a subprocess; its printed
reports parsed back) and through ``%mprun -f`` (the program defined in an
IPython shell with ``profile`` a no-op).  In all three: every executed line
present with the right occurrences, and each function's increments summing
to its net change.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import re
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import ipymem
from ipymem.models import MprunResult

from .conftest import MiB

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Case:
    source: str  # definitions with @profile, then the main part
    expect: dict[str, list[tuple[str, int]]]  # function -> executed lines (stripped source, occurrences), in order
    mprun: tuple[str, str] = ("", "")  # (-f functions, statement) for %mprun; default: every expected function, main()
    calls: dict[str, int] = field(default_factory=dict)


CASES = {
    # memory_profiler test/test_as.py: a module function using an import
    "as": Case(
        """
        import math

        @profile
        def f():
            o = math.sqrt(2013)
            return o

        def main():
            f()
        """,
        {"f": [("o = math.sqrt(2013)", 1), ("return o", 1)]},
    ),
    # test/test_func.py: the same function called twice, occurrences summed over the calls
    "func": Case(
        """
        @profile
        def test_1(i):
            # .. called twice ..
            c = {}
            for i in range(i):
                c[i] = 2

        def main():
            test_1(10)
            test_1(1000)
        """,
        {"test_1": [("c = {}", 2), ("for i in range(i):", 11 + 1001), ("c[i] = 2", 1010)]},
        calls={"test_1": 2},
    ),
    # test/test_loop.py and test_loop_decorated.py: big lists made and dropped in a loop
    "loop": Case(
        """
        @profile
        def test_2():
            a = [1] * (10 ** 5)
            b = [2] * (2 * 10 ** 6)
            del b

            for i in range(2):
                a = [1] * (10 ** 5)
                b = [2] * (2 * 10 ** 6)
                del b
            return a

        def main():
            test_2()
        """,
        {
            "test_2": [
                ("a = [1] * (10 ** 5)", 1),
                ("b = [2] * (2 * 10 ** 6)", 1),
                ("del b", 1),
                ("for i in range(2):", 3),
                ("a = [1] * (10 ** 5)", 2),
                ("b = [2] * (2 * 10 ** 6)", 2),
                ("del b", 2),
                ("return a", 1),
            ]
        },
    ),
    # test/test_nested.py: a function defined inside a profiled one, called after it returned
    "nested": Case(
        """
        @profile
        def test_1():
            a = [1] * (10 ** 5)
            b = [2] * (2 * 10 ** 6)
            del b

            def test_2():
                a = [1] * (10 ** 5)
                b = [2] * (2 * 10 ** 6)
                del b

                return a

            return test_2

        def main():
            test_2 = test_1()
            test_2()
        """,
        {
            "test_1": [
                ("a = [1] * (10 ** 5)", 1),
                ("b = [2] * (2 * 10 ** 6)", 1),
                ("del b", 1),
                ("def test_2():", 1),
                ("return test_2", 1),
            ],
            "test_1.<locals>.test_2": [
                ("a = [1] * (10 ** 5)", 1),
                ("b = [2] * (2 * 10 ** 6)", 1),
                ("del b", 1),
                ("return a", 1),
            ],
        },
        mprun=("test_1", "main()"),
    ),
    # test/test_gen.py: a generator stepped once, comprehensions on several lines, a nested helper
    "gen": Case(
        """
        @profile
        def my_func():
            a = [1] * (10 ** 5)
            b = [2] * (2 * 10 ** 6)
            del b
            yield a

        @profile
        def test_comprehension():
            # Dict comprehension
            d_comp = dict((str(k*k), [v] * (1<<12))
                          for (v, k) in enumerate(range(99, 111)))

            # List comprehension
            l_comp = [[i] * (i<<5) for i in range(99)]
            del l_comp
            del d_comp

            def hh(x=1):
                # Set comprehension
                s_comp = set(('Z',) * (k<<8) for k in range(x, 19 + 2*x))
                return s_comp

            val = [range(1, 4), max(1, 4), 42 + len(hh())]
            val = hh() | hh(4)
            val.add(40)
            return val

        @profile
        def test_generator():
            a_gen = ([42] * (1<<14) for __ in '123')
            huge_lst = list(a_gen)
            del huge_lst
            return a_gen

        def main():
            next(my_func())
            test_generator()
            test_comprehension()
        """,
        {
            "my_func": [
                ("a = [1] * (10 ** 5)", 1),
                ("b = [2] * (2 * 10 ** 6)", 1),
                ("del b", 1),
                ("yield a", 1),
            ],
            "test_comprehension": [
                ("d_comp = dict((str(k*k), [v] * (1<<12))", 1),
                ("l_comp = [[i] * (i<<5) for i in range(99)]", 1),
                ("del l_comp", 1),
                ("del d_comp", 1),
                ("def hh(x=1):", 1),
                ("val = [range(1, 4), max(1, 4), 42 + len(hh())]", 1),
                ("val = hh() | hh(4)", 1),
                ("val.add(40)", 1),
                ("return val", 1),
            ],
            "test_comprehension.<locals>.hh": [
                ("s_comp = set(('Z',) * (k<<8) for k in range(x, 19 + 2*x))", 3),
                ("return s_comp", 3),
            ],
            "test_generator": [
                ("a_gen = ([42] * (1<<14) for __ in '123')", 1),
                ("huge_lst = list(a_gen)", 1),
                ("del huge_lst", 1),
                ("return a_gen", 1),
            ],
        },
        mprun=("my_func -f test_comprehension -f test_generator", "main()"),
        calls={"test_comprehension.<locals>.hh": 3},
    ),
    # test/test_async.py (and examples/async_decorator.py): a coroutine run as a task of the loop
    "async": Case(
        """
        import asyncio

        @profile
        async def my_func():
            a = [1] * (10 ** 5)
            b = [2] * (2 * 10 ** 6)
            await asyncio.sleep(1e-2)
            del b
            return a

        async def run():
            task = asyncio.create_task(my_func())
            await asyncio.gather(task)

        def main():
            asyncio.run(run())
        """,
        {
            "my_func": [
                ("a = [1] * (10 ** 5)", 1),
                ("b = [2] * (2 * 10 ** 6)", 1),
                ("await asyncio.sleep(1e-2)", 1),
                ("del b", 1),
                ("return a", 1),
            ]
        },
    ),
    # test/test_unicode.py and test_stream_unicode.py: non-ASCII source
    "unicode": Case(
        """
        # -*- coding: utf-8  -*-
        @profile
        def test_unicode(txt):
            # test when unicode is present
            txt = txt.replace (u"ی", u"ي") #Arabic Yah = ي
            return txt

        def main():
            assert test_unicode(u"ایست") == u"ايست"
        """,
        {"test_unicode": [('txt = txt.replace (u"ی", u"ي") #Arabic Yah = ي', 1), ("return txt", 1)]},
    ),
    # examples/example.py and reporting_file.py: two functions, one report each
    "example": Case(
        """
        @profile
        def my_func():
            a = [1] * (10 ** 5)
            b = [2] * (2 * 10 ** 6)
            del b
            return a

        @profile
        def my_func1():
            a = [2] * (10 ** 5)
            b = [3] * (2 * 10 ** 6)
            del b
            return a

        def main():
            my_func()
            my_func1()
        """,
        {
            name: [
                (f"a = [{k}] * (10 ** 5)", 1),
                (f"b = [{k + 1}] * (2 * 10 ** 6)", 1),
                ("del b", 1),
                ("return a", 1),
            ]
            for name, k in (("my_func", 1), ("my_func1", 2))
        },
    ),
    # the MemEater: methods, a loop of 12,345 iterations
    "memeater": Case(
        """
        class MemEater:
            @profile
            def __init__(self):
                self._dict = dict()
                self._all = ""

            @profile
            def eat(self, n: int):
                for i in range(n):
                    self._dict[i] = str(i)
                self._all = " ".join(self._dict.values())

        def main():
            e = MemEater()
            e.eat(12345)
        """,
        {
            "MemEater.__init__": [("self._dict = dict()", 1), ('self._all = ""', 1)],
            "MemEater.eat": [
                ("for i in range(n):", 12346),
                ("self._dict[i] = str(i)", 12345),
                ('self._all = " ".join(self._dict.values())', 1),
            ],
        },
        mprun=("MemEater.__init__ -f MemEater.eat", "main()"),
    ),
}


def _source(case: Case) -> str:
    return textwrap.dedent(case.source).lstrip("\n")


def _executed(result: MprunResult, name: str) -> list[tuple[str, int]]:
    return [(line.source.strip(), line.occurrences) for line in result.function(name).lines if line.executed]


def _check_books(result: MprunResult) -> None:
    for f in result.functions:
        assert f.increment == sum(line.increment or 0 for line in f.lines if line.executed)
        assert all(line.increment is None for line in f.lines if not line.executed)


# -- ipymem.profile --------------------------------------------------------------------


def _import_case(tmp_path: Path, name: str, **profile_kwargs) -> dict:
    path = tmp_path / f"case_{name}.py"
    path.write_text(_source(CASES[name]), encoding="utf-8")
    profile = ipymem.profile(**profile_kwargs) if profile_kwargs else ipymem.profile
    return runpy.run_path(str(path), init_globals={"profile": profile})


def _wrapper(ns: dict, name: str):
    obj = ns
    for part in name.split(".<locals>.")[0].split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_through_the_decorator(name, tmp_path, capsys):
    case = CASES[name]
    ns = _import_case(tmp_path, name)
    ns["main"]()
    printed = capsys.readouterr().out
    for fname, lines in case.expect.items():
        wrapper = _wrapper(ns, fname)
        result = wrapper.profile
        assert isinstance(result, MprunResult), fname
        assert _executed(result, fname) == lines, fname
        _check_books(result)
        assert result.function(fname).calls == case.calls.get(fname, 1)
        assert f"Filename: {tmp_path}" in printed  # memory_profiler's report after each call, on stdout
    for fname in case.expect:
        assert fname.rsplit(".", 1)[-1] + ":" in printed or fname + ":" in printed


def test_calls_accumulate_with_each_call_kept(tmp_path, capsys):
    ns = _import_case(tmp_path, "func")
    ns["main"]()
    w = ns["test_1"]
    assert [_executed(p, "test_1")[1][1] for p in w.profiles] == [11, 1001]  # per call
    assert w.last_profile is w.profiles[-1]
    assert w.profile.function("test_1").calls == 2
    assert capsys.readouterr().out.count("Filename:") == 2  # one report per call, as memory_profiler


def test_signature_and_nature_are_kept():
    async def coro():
        return 1

    def gen():
        yield 1

    async def agen():
        yield 1

    def documented(arg1):
        """dummy doc"""

    for f, check in (
        (coro, inspect.iscoroutinefunction),
        (gen, inspect.isgeneratorfunction),
        (agen, inspect.isasyncgenfunction),
    ):
        assert check(ipymem.profile(quiet=True)(f))
    w = ipymem.profile(documented)
    assert w.__doc__ == "dummy doc" and w.__name__ == "documented" and w.__wrapped__ is documented  # test_attributes
    assert inspect.signature(w) == inspect.signature(documented)


def test_precision_and_stream(tmp_path):
    """test_precision_import.py, test_stream_unicode.py, examples/reporting_file.py."""
    stream = io.StringIO()

    @ipymem.profile(precision=4, stream=stream)
    def four():
        a = [1] * (10**5)
        return a

    @ipymem.profile(precision=0, stream=stream)
    def none():
        return "ی"

    four()
    none()
    text = stream.getvalue()
    assert re.search(r"\d\.\d{4} MiB +[+-]?\d+\.\d{4} MiB", text)
    rows = [line for line in text.splitlines() if 'return "ی"' in line]
    assert rows and re.search(r"\b\d+ MiB", rows[0]) and not re.search(r"\d\.\d+ MiB", rows[0])
    assert text.count("Filename:") == 2


def test_backends_by_memory_profilers_names():
    def alloc(n):
        a = bytearray(n)
        del a

    for name in ("tracemalloc", "heap"):
        w = ipymem.profile(alloc, backend=name, quiet=True)
        for n in (10_000, 100_000, 1_000_000, 10_000_000):  # test_tracemalloc.py's sizes
            w(n)
            lines = {line.source.strip(): line for line in w.last_profile.functions[0].lines}
            # The object header, and a few hundred bytes of the tracer's own bookkeeping (traced too).
            assert n <= lines["a = bytearray(n)"].increment <= n + 1024
            assert -(n + 200) <= lines["del a"].increment <= -n + 1024
        assert w.last_profile.params.backend == "heap"
    for name in ("psutil", "posix", "rss"):
        assert ipymem.profile(alloc, backend=name, quiet=True).__wrapped__ is alloc
    for name in ("psutil_uss", "psutil_pss", "nope"):
        with pytest.raises(ValueError, match=r"'rss'.*'heap'"):
            ipymem.profile(backend=name)


def test_increment_display_cases():
    """test_increment_display.py: loop counts, a gain, a loop of gains, a release.

    The buffers are written (``b"x" * n``), so their pages are in RSS, as memory_profiler's lists were,
    and above glibc's largest mmap threshold (32 MiB), so freeing them gives the pages back.
    """

    def some_loop():
        for _ in range(12):
            a = 1  # noqa: F841

    def loop_incr():
        a = []
        b = b"x" * (40 * MiB)  # noqa: F841
        for _ in range(3):
            c = b"x" * (40 * MiB)
            a.append(c)
        return a

    def del_stuff():
        b = b"x" * (40 * MiB)
        del b

    for backend in ("rss", "heap"):
        r = ipymem.profile(some_loop, backend=backend, quiet=True)
        r()
        assert [n for _, n in _executed(r.profile, "some_loop")] == [13, 12]
        w = ipymem.profile(loop_incr, backend=backend, quiet=True)
        w()
        lines = {s: line for s, line in ((x.source.strip(), x) for x in w.profile.functions[0].lines)}
        b_line, c_line = lines['b = b"x" * (40 * MiB)  # noqa: F841'], lines['c = b"x" * (40 * MiB)']
        assert c_line.occurrences == 3
        assert abs(b_line.increment * 3 - c_line.increment) < 1 * MiB
        d = ipymem.profile(del_stuff, backend=backend, quiet=True)
        d()
        lines = {x.source.strip(): x for x in d.profile.functions[0].lines}
        assert lines["del b"].increment < 0
        assert abs(lines["del b"].increment + lines['b = b"x" * (40 * MiB)'].increment) < 1 * MiB


def test_net_change_matches_what_the_function_kept():
    """Increments sum to the net change, and that net change is what the function left allocated."""
    kept = []

    def keep(n):
        data = bytearray(n)
        scratch = bytearray(n)
        del scratch
        kept.append(data)

    w = ipymem.profile(keep, backend="heap", quiet=True)
    for _ in range(3):
        w(8 * MiB)
    f = w.profile.functions[0]
    assert f.calls == 3
    assert 3 * 8 * MiB <= f.increment <= 3 * 8 * MiB + 64 * 1024
    assert f.peak >= 2 * 8 * MiB  # the scratch buffer while both were alive
    kept.clear()


def test_exception_propagates_with_a_report(capsys):
    @ipymem.profile
    def bad():
        x = [1] * 100  # noqa: F841
        raise NotImplementedError("Error")

    with pytest.raises(NotImplementedError, match="Error"):
        bad()
    assert bad.last_profile.outcome == "error"
    assert [n for _, n in _executed(bad.profile, "bad")] == [1, 1]
    assert "raised NotImplementedError: Error" in capsys.readouterr().out


def test_recursion_is_one_profile():
    """Issue 11: a recursive call is part of the running profile, not a profiler of its own."""

    @ipymem.profile(quiet=True)
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(16) == 987
    assert len(fib.profiles) == 1  # one profile for the outer call
    f = fib.profile.function("fib")
    assert f.calls == 1 and f.activations == 3193  # every call of fib(16)'s tree, in that one outer call
    assert [n for _, n in _executed(fib.profile, "fib")] == [3193]
    fib(16)  # a second call: the merged profile sums calls, activations and nets
    f = fib.profile.function("fib")
    assert f.calls == 2 and f.activations == 2 * 3193
    assert fib.profile.total_increment == sum(p.total_increment for p in fib.profiles)


def test_a_decorated_function_called_by_another_is_in_the_running_profile():
    @ipymem.profile(quiet=True)
    def inner(n):
        return bytearray(n)

    @ipymem.profile(quiet=True)
    def outer():
        return [inner(1000) for _ in range(5)]

    outer()
    assert len(outer.profiles) == 1 and len(inner.profiles) == 1  # inner's calls went to its own books
    assert inner.profile.function("inner").calls == 5
    assert [f.name.rsplit(".", 1)[-1] for f in outer.profile.functions] == ["outer"]


def test_generators_across_suspensions_close_and_throw():
    @ipymem.profile(quiet=True)
    def gen(n):
        try:
            for i in range(n):
                block = bytearray(MiB)  # noqa: F841
                yield i
        except ValueError:
            yield -1

    assert list(gen(3)) == [0, 1, 2]
    assert dict(_executed(gen.profile, "gen"))["yield i"] == 3
    assert dict(_executed(gen.profile, "gen"))["for i in range(n):"] == 4
    g = gen(10)
    next(g)
    assert g.throw(ValueError) == -1
    g.close()
    assert len(gen.profiles) == 2
    assert gen.profile.function("gen").calls == 2


def test_async_generator_across_suspensions():
    @ipymem.profile(quiet=True)
    async def agen(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def main():
        return [x async for x in agen(4)]

    assert asyncio.run(main()) == [0, 1, 2, 3]
    assert _executed(agen.profile, "agen") == [
        ("for i in range(n):", 5),
        ("await asyncio.sleep(0)", 4),
        ("yield i", 4),
    ]


def test_coroutine_peak_is_above_the_call_entry():
    @ipymem.profile(backend="heap", quiet=True)
    async def grow():
        a = bytearray(4 * MiB)
        await asyncio.sleep(0)
        b = bytearray(4 * MiB)
        del a, b

    asyncio.run(grow())
    f = grow.profile.function("grow")
    assert f.peak >= 8 * MiB  # both buffers at once, though they were allocated in different resumptions
    assert abs(f.increment) < 64 * 1024


# -- python -m ipymem ------------------------------------------------------------------

ROW = re.compile(r"^\s*(\d+)\s+[\d,.]+ MiB\s+[+-]?[\d,.]+ MiB\s+[\d,.]+ MiB\s+(\d+)   (.*)$")


def parse_reports(text: str) -> dict[str, list[tuple[str, int]]]:
    """The executed lines of each function in printed reports (the text ``mprun_text`` writes)."""
    out: dict[str, list[tuple[str, int]]] = {}
    current = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Filename:") and i + 1 < len(lines):
            current = lines[i + 1].split(":")[0].strip()
            out[current] = []
            continue
        m = ROW.match(line)
        if m and current is not None:
            out[current].append((m.group(3).strip(), int(m.group(2))))
    return out


def run_ipymem(tmp_path: Path, source: str, *args: str, name: str = "script.py") -> subprocess.CompletedProcess:
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "ipymem", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        encoding="utf-8",
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_through_the_script_runner(name, tmp_path):
    case = CASES[name]
    proc = run_ipymem(tmp_path, _source(case) + "\nmain()\n", "script.py")
    assert proc.returncode == 0, proc.stderr
    reports = parse_reports(proc.stdout)
    for fname, lines in case.expect.items():
        assert reports.get(fname) == lines, proc.stdout


def test_memeater_prints_both_reports(tmp_path):
    """The issue's script, run as `python -m ipymem script.py`."""
    source = _source(CASES["memeater"]).replace("def main():\n    e = MemEater()\n    e.eat(12345)\n", "")
    proc = run_ipymem(tmp_path, source + "e = MemEater()\ne.eat(12345)\n", "script.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Filename: script.py") == 2
    assert ("for i in range(n):", 12346) in parse_reports(proc.stdout)["MemEater.eat"]
    assert "12,346" not in proc.stdout and re.search(r"\s12346   \s+for i in range\(n\):", proc.stdout)


def test_script_sees_its_argv_and_keeps_its_exit_code(tmp_path):
    source = "import sys\nprint(repr(sys.argv))\n@profile\ndef f():\n    return 1\nf()\nsys.exit(int(sys.argv[1]))\n"
    proc = run_ipymem(tmp_path, source, "script.py", "3", "--precision", "2")
    assert proc.returncode == 3
    assert proc.stdout.splitlines()[0] == repr(
        ["script.py", "3", "--precision", "2"]
    )  # options after the script are its own
    assert "Filename: script.py" in proc.stdout


def test_script_exception_keeps_its_traceback_and_the_report(tmp_path):
    source = "@profile\ndef f():\n    x = [1] * 10\n    raise RuntimeError('I am not working nicely')\nf()\n"
    proc = run_ipymem(tmp_path, source, "script.py")
    assert proc.returncode == 1
    assert "RuntimeError: I am not working nicely" in proc.stderr
    assert 'File "script.py", line 5, in <module>' in proc.stderr and "ipymem" not in proc.stderr
    assert parse_reports(proc.stdout)["f"] == [
        ("x = [1] * 10", 1),
        ("raise RuntimeError('I am not working nicely')", 1),
    ]


def test_memory_profilers_global_switches_and_precision(tmp_path):
    """test_nested.py's enable_by_count/disable_by_count, test_gen.py's `with profile:`, --precision."""
    source = (
        "@profile(precision=4)\ndef g():\n    a = [1] * 10\n    yield a\n\n"
        "profile.enable_by_count()\nwith profile:\n    next(g())\nprofile.disable_by_count()\n"
    )
    proc = run_ipymem(tmp_path, source, "--precision", "3", "script.py")
    assert proc.returncode == 0, proc.stderr
    assert parse_reports(proc.stdout)["g"] == [("a = [1] * 10", 1), ("yield a", 1)]
    assert re.search(r"\d\.\d{3} MiB", proc.stdout) and not re.search(r"\d\.\d{4} MiB", proc.stdout)


def test_output_file_and_bad_arguments(tmp_path):
    out = tmp_path / "report.txt"
    proc = run_ipymem(tmp_path, "@profile\ndef f():\n    return 1\nf()\n", "-o", str(out), "script.py")
    assert proc.returncode == 0, proc.stderr
    assert "Profile printout saved to text file" in proc.stdout and "Line #" not in proc.stdout
    assert parse_reports(out.read_text())["f"] == [("return 1", 1)]
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').close()\n"
    for bad in (
        ["-o", str(tmp_path / "no" / "such" / "dir.txt"), "script.py"],
        ["-o", str(tmp_path), "script.py"],
        ["--backend", "psutil_uss", "script.py"],
        ["missing.py"],
    ):
        proc = run_ipymem(tmp_path, source, *bad)
        assert proc.returncode == 2 and "usage: python -m ipymem" in proc.stderr, bad
        assert not marker.exists(), bad  # nothing ran


def test_timeline_peak_and_chart(tmp_path):
    """mprof run / plot: a script that allocates and frees 300 MiB; the peak within 5%."""
    source = textwrap.dedent(
        """
        import time

        @profile
        def work():
            time.sleep(0.1)
            a = b"x" * (300 * 2**20)
            time.sleep(0.2)
            del a
            time.sleep(0.1)

        work()
        """
    )
    png = tmp_path / "out.png"
    proc = run_ipymem(tmp_path, source, "--timeline", "--plot", str(png), "script.py")
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"peak memory: ([\d,.]+) MiB, increment: ([\d,.]+) MiB", proc.stdout)
    assert m, proc.stdout
    assert abs(float(m.group(2).replace(",", "")) - 300) <= 15
    assert "exact peak" in proc.stdout or "sampled" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


# -- %mprun ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_through_mprun(name, ip):
    case = CASES[name]
    result = ip.run_cell("def profile(f=None, **kw):\n    return f if f is not None else (lambda g: g)\n")
    assert result.success
    result = ip.run_cell(_source(case))
    assert result.success, result.error_in_exec
    funcs, statement = case.mprun
    if not funcs:
        funcs = " -f ".join(case.expect)
    r = ip.line("mprun", f"-q -o -f {funcs} {statement or 'main()'}")
    assert r.ok, r.error
    for fname, lines in case.expect.items():
        assert _executed(r, fname) == lines, fname
    _check_books(r)


def test_code_map_like_memory_profilers(ip):
    """`%mprun -r` returned memory_profiler's LineProfiler; its code_map is on the result: MiB and counts."""
    ip.run_cell("def grow(n):\n    a = b'x' * n\n    return len(a)\n")
    r = ip.line("mprun", "-q -r -f grow grow(48 * 2**20)")
    ((key, per_line),) = r.code_map.items()
    assert key[2] == "grow"
    f = r.function("grow")
    first = f.firstlineno
    assert per_line[first] is None  # the def line never ran
    inc, mem, occ = per_line[first + 1]
    line = f.lines[1]
    assert (inc, mem, occ) == (line.increment / MiB, line.mem_after / MiB, 1)
    assert 40 < inc < 56


def test_ctrl_c_gives_the_partial_report(python_sigint_handler, capsys):
    @ipymem.profile
    def slow():
        x = [1] * 10  # noqa: F841
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)  # the interrupt lands here at the latest

    with pytest.raises(KeyboardInterrupt):
        slow()
    assert slow.last_profile.outcome == "interrupted"
    assert dict(_executed(slow.profile, "slow"))["x = [1] * 10  # noqa: F841"] == 1
    assert "interrupted" in capsys.readouterr().out


def test_the_users_traceback_has_no_engine_frames():
    @ipymem.profile(quiet=True)
    def bad():
        raise LookupError("mine")

    with pytest.raises(LookupError) as info:
        bad()
    files = [entry.path for entry in info.traceback]
    engine_dir = str(Path(ipymem.__file__).parent / "engine")
    assert not any(str(f).startswith(engine_dir) for f in files), files


def test_decorated_in_a_cell_reports_the_cell(ip, capsys):
    result = ip.run_cell(
        "import ipymem\n@ipymem.profile\ndef cellfunc(n):\n"
        "    data = bytearray(n)\n    return len(data)\ncellfunc(10)\n"
    )
    assert result.success, result.error_in_exec
    out = capsys.readouterr().out
    assert "Filename: Cell In[1]" in out and "data = bytearray(n)" in out
