"""Where the Python heap went while a callable ran: tracemalloc, grouped by the user's lines.

How it works, per measurement:

1. tracemalloc is started with ``depth`` frames if it is off; if it already
   runs it is left alone (its frame count cannot change without a restart,
   which would clear the user's traces), its traces are kept, and a
   snapshot of them is the baseline that later figures are relative to.
   Only its peak is reset (``tracemalloc.reset_peak``), as ``%memit`` does.
2. While the callable runs, a trace function (``sys.settrace``, this thread
   only) looks at ``tracemalloc.get_traced_memory()`` at each line of the
   top-level cell code and at each call into and return from a user
   function (library frames get no events at all: the global hook returns
   ``None`` for them; user functions get no line events, so their loops run
   at tracemalloc's own speed).  When the traced heap has doubled its
   growth since the last snapshot (and risen by at least 1 MiB), it takes
   a snapshot and folds it into per-location totals at once; a time budget
   keeps snapshots under about a quarter of the run time unless the growth
   quadrupled.  The highest of these snapshots, or the end of the run when
   that is higher, is the "held at the heap peak" column.  Memory allocated
   and freed between two observation points (inside one line of the cell,
   or inside a function call that returns before the next one) is
   invisible to it: the exact heap peak in the total row still includes it,
   and the difference is reported as the unobserved part of the peak.  If
   a trace function is already set (a debugger, coverage, ``%mprun`` on
   3.11), it is not replaced: the "held at peak" column then comes from the
   end of the run, and a note says so.
3. After each run (and a garbage collection) a snapshot gives the retained
   column; with ``repeat > 1`` one per run gives the growth per run.

Grouping happens in one pass over tracemalloc's raw traces, by traceback
object first (tracemalloc shares one tuple per distinct traceback), then by
location: nothing is sorted or rendered before the data is reduced to one
row per location, and only the top ``top`` rows are selected
(``heapq.nlargest``), so millions of traces cost one linear pass.

"User code" is a notebook/IPython cell (the ``cell_files`` mapping, file
name to cell number) or a file outside the standard library, site-packages,
ipymem and IPython.  An allocation made inside a library is attributed to
the innermost user frame of its traceback, which needs ``depth`` > 1; with
depth 1 it counts as outside user code.  ``all_frames`` groups by the
innermost frame whatever it is.

This module knows nothing of IPython: it takes a zero-argument callable.
"""

from __future__ import annotations

import gc
import heapq
import linecache
import os
import re
import sys
import sysconfig
import time
import tracemalloc
from collections.abc import Callable, Mapping
from typing import Any

from ..models import outcome_of
from ..models.alloc import (
    GROUPINGS,
    AllocEntry,
    AllocFrame,
    AllocParams,
    AllocResult,
)
from .interrupts import deferred_interrupts
from .probes import Probe, rss_note, shared_probe

#: A snapshot is taken when the traced heap exceeds the last one by this much (bytes) ...
MIN_STEP = 1024 * 1024
#: Share of the run time the in-run snapshots may take (unless the heap quadruples its growth).
SNAPSHOT_BUDGET = 0.25

Key = tuple[tuple[str, int], ...]
Groups = dict[Key, list[int]]  # key -> [size, count]

#: ipymem's package directory (with a trailing separator): frames here are the measuring machinery.
OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

_CELL_RE = re.compile(r"^<ipython-input-(\d+)-[0-9a-f]+>$")


# -- what is user code -------------------------------------------------------------


def _library_dirs() -> tuple[str, ...]:
    dirs = set()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(name)
        if path:
            dirs.add(os.path.realpath(path))
            dirs.add(path)
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        lib = os.path.join(prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}")
        dirs.add(lib)
    dirs.add(OURS)
    ipython = sys.modules.get("IPython")
    if ipython is not None and getattr(ipython, "__file__", None):
        dirs.add(os.path.dirname(os.path.abspath(ipython.__file__)))
    return tuple(sorted((d.rstrip(os.sep) + os.sep for d in dirs), key=len, reverse=True))


class CodeMap:
    """Which files are user code, and how to label them (``Cell In[3], line 2`` or a short path)."""

    def __init__(self, cell_files: Mapping[str, int] | None = None) -> None:
        self.cell_files = cell_files if cell_files is not None else {}
        self.library_dirs = _library_dirs()
        self._user: dict[str, bool] = {}
        self._ours: dict[str, bool] = {}
        try:
            self._cwd = os.getcwd() + os.sep
        except OSError:  # pragma: no cover - cwd removed
            self._cwd = None

    def cell_number(self, filename: str) -> int | None:
        number = self.cell_files.get(filename)
        if number is None:
            m = _CELL_RE.match(filename)
            if m:
                number = int(m.group(1))
        return number

    def is_user(self, filename: str) -> bool:
        known = self._user.get(filename)
        if known is None:
            known = self._user[filename] = self._classify(filename)
        return known

    def is_ours(self, filename: str) -> bool:
        """A frame of ipymem: allocations under it (before any user frame) are the profiler's own."""
        known = self._ours.get(filename)
        if known is None:
            known = self._ours[filename] = filename.startswith(OURS)
        return known

    def _classify(self, filename: str) -> bool:
        if self.cell_number(filename) is not None:
            return True
        if filename.startswith("<") or not filename:
            return False  # <frozen ...>, <string>, <stdin>: no source we can show as the user's
        if "site-packages" in filename or "dist-packages" in filename:
            return False
        return not filename.startswith(self.library_dirs)

    def short_path(self, filename: str) -> str:
        for d in self.library_dirs:
            if filename.startswith(d):
                return filename[len(d) :]
        if self._cwd and filename.startswith(self._cwd):
            return filename[len(self._cwd) :]
        home = os.path.expanduser("~") + os.sep
        if home != os.sep and filename.startswith(home):
            return "~" + os.sep + filename[len(home) :]
        return filename

    def frame(self, filename: str, lineno: int, whole_file: bool = False) -> AllocFrame:
        """``whole_file``: the group is the file (``lineno`` 0); otherwise a ``lineno`` of 0 is
        tracemalloc's "no line known" (an allocation while a frame is set up), shown as ``line ?``."""
        number = self.cell_number(filename)
        if number is not None:
            label = f"Cell In[{number}]" + ("" if whole_file else f", line {lineno or '?'}")
        else:
            label = self.short_path(filename) + ("" if whole_file else f":{lineno or '?'}")
        source = linecache.getline(filename, lineno).strip() if lineno else ""
        return AllocFrame(label=label, filename=filename, lineno=lineno, source=source)


# -- reducing snapshots ------------------------------------------------------------


def _attributor(code: CodeMap, group_by: str, depth: int, all_frames: bool) -> Callable[[tuple], Key | None]:
    """A function from a raw tracemalloc traceback (innermost first) to a group key, or None if not user code."""
    is_user, is_ours = code.is_user, code.is_ours

    def attribute(frames: tuple) -> Key | None:
        # Innermost first.  The user's code runs below ipymem's runner frames,
        # so an ipymem frame met before any user frame marks the profiler's
        # own allocations (or the frames that called the magic): not the user's.
        first_user = None
        for i, frame in enumerate(frames):
            if is_ours(frame[0]):
                return None
            if is_user(frame[0]):
                first_user = i
                break
        if all_frames:
            start = 0
        elif first_user is None:
            return None
        else:
            start = first_user
        if not frames:
            return None
        if group_by == "lineno":
            return (tuple(frames[start]),)
        if group_by == "filename":
            return ((frames[start][0], 0),)
        chosen = []
        for f in frames[start:]:
            if is_ours(f[0]) or len(chosen) == depth:
                break
            if all_frames or is_user(f[0]):
                chosen.append(tuple(f))
        return tuple(chosen)

    return attribute


def aggregate(snapshot: tracemalloc.Snapshot, attribute: Callable[[tuple], Key | None]) -> tuple[Groups, list[int]]:
    """One pass over the snapshot's traces: ``({key: [size, count]}, [outside size, outside count])``.

    Traces are first summed per traceback object (shared by tracemalloc for
    identical tracebacks), so ``attribute`` runs once per distinct traceback.
    """
    raw = getattr(snapshot.traces, "_traces", None)
    if raw is None:  # pragma: no cover - a future tracemalloc without the private list
        raw = [
            (t.domain, t.size, tuple((f.filename, f.lineno) for f in reversed(t.traceback)), 0) for t in snapshot.traces
        ]
    # Per-trace work allocates nothing (tracemalloc may be tracing us): the
    # tuple key's hash is computed in place and ``append`` stores the existing
    # size object; sums are taken once per traceback, in C.
    by_tb: dict[tuple, list[int]] = {}
    get = by_tb.get
    for trace in raw:
        sizes = get(trace[2])
        if sizes is None:
            by_tb[trace[2]] = [trace[1]]
        else:
            sizes.append(trace[1])
    groups: Groups = {}
    outside = [0, 0]
    for frames, sizes in by_tb.items():
        size, count = sum(sizes), len(sizes)
        key = attribute(frames)
        acc = outside if key is None else groups.get(key)
        if acc is None:
            groups[key] = [size, count]
        else:
            acc[0] += size
            acc[1] += count
    return groups, outside


def _minus(a: Groups, b: Groups) -> Groups:
    if not b:
        return a
    out = {k: [v[0] - b.get(k, (0, 0))[0], v[1] - b.get(k, (0, 0))[1]] for k, v in a.items()}
    for k, v in b.items():
        if k not in a:
            out[k] = [-v[0], -v[1]]
    return out


class _PeakWatcher:
    """``sys.settrace`` hook: snapshot the heap when it reaches a new high, seen from user code.

    Observation points: every line of top-level cell (module) code, and each
    call into and return from a user function (function frames get no line
    events, which keeps loops inside functions at full tracemalloc speed;
    a function's locals are still alive at its return event).  A snapshot
    is taken when the heap has doubled its growth since the last one (and
    grown by at least ``MIN_STEP``), so their number is logarithmic in the
    growth and their total cost about twice one final snapshot.  A time
    budget keeps snapshots under about a quarter of the run time unless
    the heap has quadrupled its growth (a spike worth the cost).
    """

    def __init__(self, code: CodeMap, attribute: Callable[[tuple], Key | None], base: int) -> None:
        self._is_user = code.is_user
        self._attribute = attribute
        self._get = tracemalloc.get_traced_memory
        self.base = base
        self.level = base  # heap when the kept snapshot was taken
        self.groups: Groups = {}
        self.outside = [0, 0]
        self.snapshots = 0
        self.seconds = 0.0
        self._next = base + MIN_STEP
        self._started = time.perf_counter()

    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        if self._is_user(code.co_filename):
            if code.co_name != "<module>":
                frame.f_trace_lines = False
            if self._get()[0] > self._next:
                self.snap()
            return self._local
        return None

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if self._get()[0] > self._next:
            self.snap()
        return self._local

    def snap(self) -> None:
        t0 = time.perf_counter()
        current = self._get()[0]
        growth = current - self.base
        if self.seconds > SNAPSHOT_BUDGET * (t0 - self._started) and growth < 4 * (self.level - self.base):
            self._next = self.base + 2 * growth  # over budget: wait for a bigger rise
            return
        snapshot = tracemalloc.take_snapshot()
        self.groups, self.outside = aggregate(snapshot, self._attribute)
        del snapshot
        self.level = current
        self.snapshots += 1
        self._next = current + max(MIN_STEP, growth)
        self.seconds += time.perf_counter() - t0


# -- the engine --------------------------------------------------------------------


def alloctrace(
    func: Callable[[], object],
    *,
    top: int = 10,
    group_by: str = "lineno",
    depth: int = 1,
    all_frames: bool = False,
    repeat: int = 1,
    cell_files: Mapping[str, int] | None = None,
    collect: bool = True,
    watch_peak: bool = True,
    statement: str = "",
    setup: str | None = None,
    probe: Probe | None = None,
) -> tuple[AllocResult, BaseException | None]:
    """Run ``func`` ``repeat`` times under tracemalloc; report allocations by user-code location.

    Returns ``(result, error)`` like :func:`ipymem.engine.memit`: ``error`` is
    the exception ``func`` raised (KeyboardInterrupt included) or ``None``;
    the caller re-raises it after showing the partial ``result``.
    tracemalloc and the trace function are restored before returning,
    whatever happened.  ``watch_peak=False`` skips the trace-function
    watcher (the "held at peak" column then reflects the end of the run).
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPINGS)}, got {group_by!r}")
    if not 1 <= depth <= 1000:
        raise ValueError(f"depth must be between 1 and 1000, got {depth}")
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    probe = probe or shared_probe()
    code = CodeMap(cell_files)
    notes: list[str] = []
    was_tracing = tracemalloc.is_tracing()
    used_depth = depth
    if was_tracing:
        limit = tracemalloc.get_traceback_limit()
        if limit < depth:
            used_depth = limit
            notes.append(
                f"tracemalloc was already running with {limit} frame(s) per allocation; "
                f"-d {depth} needs a restart, which would clear your traces, so {limit} was used"
            )
    params = AllocParams(
        top=top, group_by=group_by, depth=used_depth, requested_depth=depth, all_frames=all_frames, repeat=repeat
    )
    attribute = _attributor(code, group_by, used_depth, all_frames)
    error: BaseException | None = None
    per_run: list[Groups] = []
    final_outside = [0, 0]
    before: Groups = {}
    before_outside = [0, 0]
    watcher: _PeakWatcher | None = None
    runs = 0
    duration = 0.0
    # Setup and teardown hold Ctrl-C (replayed as the user's interrupt with a report), so an
    # interrupt never lands between starting and stopping tracemalloc.
    started = False
    try:  # the deferral is inside the try, so an interrupt landing just after it still reaches the finally
        with deferred_interrupts() as held:
            if not was_tracing:
                tracemalloc.start(depth)
                started = True
        with deferred_interrupts() as held_setup:
            if collect:
                gc.collect()
            if was_tracing:
                before, before_outside = aggregate(tracemalloc.take_snapshot(), attribute)
            tracemalloc.reset_peak()
            heap_start = tracemalloc.get_traced_memory()[0]
            rss_start = probe.rss()
        if held.received or held_setup.received:
            error = KeyboardInterrupt()
            repeat = 0
        if watch_peak:
            if sys.gettrace() is None:
                watcher = _PeakWatcher(code, attribute, heap_start)
            else:
                notes.append(
                    "another trace function is set (debugger or coverage?): "
                    "'held at peak' is the state at the end of the run"
                )
        try:
            for _ in range(repeat):
                t0 = time.perf_counter()
                error = _one_run(func, watcher)
                duration += time.perf_counter() - t0
                runs += 1
                # Held: an interrupt landing in a gc callback would be lost, one in the snapshot wasted.
                with deferred_interrupts() as held_run:
                    gc.collect()
                    groups, final_outside = aggregate(tracemalloc.take_snapshot(), attribute)
                per_run.append(groups)
                if held_run.received and error is None:
                    error = KeyboardInterrupt()
                if error is not None:
                    break
        except KeyboardInterrupt as exc:  # landed in our own work between or after runs
            if error is None:
                error = exc
        heap_now, heap_peak = tracemalloc.get_traced_memory()
        rss_end = probe.rss()
    finally:
        with deferred_interrupts() as held:
            if started:
                tracemalloc.stop()
        if held.received and error is None:
            error = KeyboardInterrupt()
    if watcher is not None and watcher.snapshots and watcher.level > heap_now:
        peak_groups, peak_outside, observed = watcher.groups, watcher.outside, watcher.level
    else:
        peak_groups, peak_outside, observed = (per_run[-1] if per_run else {}), final_outside, heap_now
    heap_peak = max(heap_peak, observed)
    peak = _minus(peak_groups, before)
    retained_runs = [_minus(g, before) for g in per_run]
    entries, rest_peak, rest_retained, n_groups = _select(
        peak, retained_runs, code, top, repeat > 1, whole_files=group_by == "filename"
    )
    if rss_note(probe):
        notes.append(rss_note(probe))
    if watcher is not None and watcher.snapshots:
        notes.append(f"{watcher.snapshots} snapshot(s) taken during the run ({watcher.seconds:.3g} s)")
    outcome, error_text = outcome_of(error)
    result = AllocResult(
        statement=statement,
        setup=setup,
        entries=entries,
        params=params,
        runs=runs,
        duration=duration,
        heap_start=heap_start,
        heap_peak=heap_peak,
        heap_end=heap_now,
        observed_peak=observed,
        rss_start=rss_start,
        rss_end=rss_end,
        groups=n_groups,
        rest_peak_size=rest_peak,
        rest_retained_size=rest_retained,
        outside_peak_size=peak_outside[0] - before_outside[0],
        outside_retained_size=final_outside[0] - before_outside[0],
        snapshots=watcher.snapshots if watcher is not None else 0,
        outcome=outcome,
        error=error_text,
        notes=tuple(notes),
    )
    return result, error


def _one_run(func: Callable[[], object], watcher: _PeakWatcher | None) -> BaseException | None:
    __tracebackhide__ = True  # keep user tracebacks clean (IPython and pytest honour it)
    if watcher is not None:
        sys.settrace(watcher)
    try:
        func()
    except BaseException as exc:
        return exc
    finally:
        if watcher is not None and sys.gettrace() is watcher:  # the user's code may have set its own
            sys.settrace(None)
    return None


def _select(
    peak: Groups, retained_runs: list[Groups], code: CodeMap, top: int, repeated: bool, whole_files: bool = False
) -> tuple[tuple[AllocEntry, ...], int, int, int]:
    """The top entries (reduced data only: one item per location) and the sums of the rest."""
    final = retained_runs[-1] if retained_runs else {}
    zero = (0, 0)
    # Groups that did not change (blocks from before the run, when tracemalloc was already running) are no rows.
    keys = {k for k, v in peak.items() if v[0] or v[1]} | {k for k, v in final.items() if v[0] or v[1]}
    if repeated:
        for g in retained_runs[:-1]:
            keys |= {k for k, v in g.items() if v[0] or v[1]}

    def by_run(k: Key) -> tuple[int, ...]:
        return tuple(g.get(k, zero)[0] for g in retained_runs)

    def rank(k: Key) -> tuple:
        size = max(peak.get(k, zero)[0], final.get(k, zero)[0])
        if not repeated:
            return (size,)
        r = by_run(k)
        grows = len(r) > 1 and all(b > a for a, b in zip((0, *r), r, strict=False))
        return (grows, (r[-1] - r[0]) if grows else 0, size)

    chosen = heapq.nlargest(top, keys, key=rank)
    entries = []
    for k in chosen:
        p, f = peak.get(k, zero), final.get(k, zero)
        entries.append(
            AllocEntry(
                frames=tuple(code.frame(fn, ln, whole_files) for fn, ln in k),
                peak_size=p[0],
                peak_count=p[1],
                retained_size=f[0],
                retained_count=f[1],
                retained_by_run=by_run(k) if repeated else (),
            )
        )
    chosen_set = set(chosen)
    rest_peak = sum(v[0] for k, v in peak.items() if k not in chosen_set)
    rest_retained = sum(v[0] for k, v in final.items() if k not in chosen_set)
    return tuple(entries), rest_peak, rest_retained, len(keys)
