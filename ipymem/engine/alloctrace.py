"""Where the Python heap went while a callable ran: tracemalloc, booked on the user's lines.

How it works, per measurement:

1. tracemalloc is started with ``depth`` frames (default 1: the cheapest)
   if it is off; if it already runs it is left alone (its frame count
   cannot change without a restart, which would clear the user's traces),
   its traces are kept, and a snapshot of them is the baseline that later
   figures are relative to.  Its peak is reset only when ipymem started it:
   the user's own tracing keeps its peak (see :func:`_heap_peak_reset`).
2. While the callable runs, a line ledger (:class:`_LineLedger`) books
   every block on the user line that was running when it was allocated,
   however deep in library code the allocation happened, and keeps the
   per-line state at the exact heap peak.  It learns which user line runs
   from ``sys.monitoring`` events on user code only (3.12+, see
   :mod:`.allocwatch`), or from a ``sys.settrace`` hook (before 3.12, or
   when no monitoring tool id is free).  A trace function that is already
   set (a debugger, coverage, ``%mprun`` on 3.11) is not replaced: on the
   settrace path library allocations are then outside the user's code and
   "held at peak" is the end state, and a note says so.
3. After each run (and a garbage collection) a snapshot gives the retained
   column; with ``repeat > 1`` one per run gives the growth per run.

Grouping happens in one pass over tracemalloc's raw traces, by traceback
object first (tracemalloc shares one tuple per distinct traceback), then by
location: nothing is sorted or rendered before the data is reduced to one
row per location, and only the top ``top`` rows are selected
(``heapq.nlargest``), so millions of traces cost one linear pass.

"User code" is a notebook/IPython cell (the ``cell_files`` mapping, file
name to cell number) or a file outside the standard library, site-packages,
ipymem and IPython.  A block whose traceback holds a user frame is booked on
the innermost one (with ``-d`` > 1 and ``-g traceback`` the rows show the
call chain); the others are booked by the ledger.  ``all_frames`` groups by
the innermost frame whatever it is.

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
    ROW_MIN,
    AllocEntry,
    AllocFrame,
    AllocParams,
    AllocResult,
)
from . import allocwatch, peaks
from .allocwatch import PerCode
from .interrupts import deferred_interrupts
from .probes import Probe, rss_note, shared_probe

#: An in-run snapshot needs the traced heap to have moved by this much (bytes) since the last one ...
MIN_STEP = 1024 * 1024
#: ... within a budget counted in traces read (not time, so the books do not depend on the machine's speed):
#: per run this many, plus as many as the last snapshot had (in-run snapshots cost at most about one more
#: final snapshot, plus a few thousand-trace snapshots of numpy/pandas code, whose blocks are few and large).
SNAPSHOT_TRACES = 50_000
#: A user function's return takes a snapshot (within the budget) when the lines since the last grew this much.
RETURN_STEP = 4096
#: The books are updated when the heap moved this much since the last update (bytes).
RECORD_STEP = 4096
#: Growth outside the user's code (IPython running the cell: a few KiB) that makes the next snapshot worth
#: taking on the sys.monitoring path; less is booked with the lines' growth, at most this much misplaced.
OUTSIDE_STEP = 64 * 1024
#: Without the right to reset tracemalloc's peak, ipymem's own snapshots raise it by a few KiB: a heap this
#: close above the last exact peak still counts as exact.
PEAK_SLACK = 64 * 1024

Key = tuple[tuple[str, int], ...]
Groups = dict[Key, list[int]]  # key -> [size, count]

#: ipymem's package directory (with a trailing separator): frames here are the measuring machinery.
OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

#: tracemalloc's own module: at depth 1 its blocks are ipymem's snapshots (``take_snapshot`` called by ipymem).
_TRACEMALLOC = tracemalloc.__file__

_CELL_RE = re.compile(r"^<ipython-input-(\d+)-[0-9a-f]+>$")


# -- what is user code -------------------------------------------------------------


_LIBRARY_DIRS: dict[bool, tuple[str, ...]] = {}


def _library_dirs() -> tuple[str, ...]:
    """Directories of library code (computed once per process, or twice: before and after IPython is imported)."""
    ipython = sys.modules.get("IPython")
    known = _LIBRARY_DIRS.get(ipython is not None)
    if known is None:
        known = _LIBRARY_DIRS[ipython is not None] = _find_library_dirs()
    return known


def _find_library_dirs() -> tuple[str, ...]:
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
            known = self._ours[filename] = filename.startswith(OURS) or filename == _TRACEMALLOC
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

#: The group of blocks that no user line allocated (IPython, the interpreter, ipymem itself).
OUTSIDE = None
#: Blocks that already existed when the measurement started (tracemalloc was already running).
_BEFORE = ("before",)


def _attributor(code: CodeMap, group_by: str, depth: int, all_frames: bool) -> Callable[[tuple], Key | None]:
    """A function from a raw tracemalloc traceback (innermost first) to a group key.

    ``None``: no user frame in the traceback (a library or the interpreter
    allocated; the line ledger books it on the user line that was running);
    ``OURS_KEY``: ipymem's own machinery; ``OUTSIDE_KEY``: a user frame whose
    line tracemalloc does not know (line 0: a frame being set up, a few
    bytes), which is no line of the user's, so no ``line ?`` row.
    """
    is_user, is_ours = code.is_user, code.is_ours

    def attribute(frames: tuple) -> Key | None:
        # Innermost first.  The user's code runs below ipymem's runner frames,
        # so an ipymem frame met before any user frame marks the profiler's
        # own allocations (or the frames that called the magic): not the user's.
        first_user = None
        for i, frame in enumerate(frames):
            if is_ours(frame[0]):
                return OURS_KEY
            if is_user(frame[0]):
                first_user = i
                break
        if not frames:
            return None
        if all_frames:
            start = 0
        elif first_user is None:
            return None
        else:
            start = first_user
        if not frames[start][1]:
            return OUTSIDE_KEY  # no line known: a frame being set up, not a line of the user's
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


#: The group key of ipymem's own blocks (outside the user's code).
OURS_KEY: Key = (("<ipymem>", 0),)
#: The group key of blocks booked straight to "outside your code".
OUTSIDE_KEY: Key = (("<outside>", 0),)


def aggregate(
    snapshot: tracemalloc.Snapshot, attribute: Callable[[tuple], Key | None], keys: dict[tuple, Any] | None = None
) -> tuple[Groups, Groups]:
    """One pass over the snapshot's traces: ``({key: [size, count]}, {traceback: [size, count]})``.

    The second dict holds the blocks ``attribute`` could not place (no user
    frame in their traceback), by raw traceback, for the line ledger to book.
    Traces are first summed per traceback object (shared by tracemalloc for
    identical tracebacks), so ``attribute`` runs once per distinct traceback,
    and once per measurement with ``keys`` (a cache kept across snapshots).
    """
    if keys is None:
        keys = {}
    raw = getattr(snapshot.traces, "_traces", None)
    if raw is None:  # pragma: no cover - a future tracemalloc without the private list
        raw = [
            (t.domain, t.size, tuple((f.filename, f.lineno) for f in reversed(t.traceback)), 0) for t in snapshot.traces
        ]
    # Per-trace work stores existing size objects only; sums are taken once per traceback, in C.
    by_tb: dict[tuple, list[int]] = {}
    get = by_tb.get
    for trace in raw:
        sizes = get(trace[2])
        if sizes is None:
            by_tb[trace[2]] = [trace[1]]
        else:
            sizes.append(trace[1])
    groups: Groups = {}
    unplaced: Groups = {}
    missing = keys.get
    for frames, sizes in by_tb.items():
        size, count = sum(sizes), len(sizes)
        key = missing(frames, _UNKNOWN)
        if key is _UNKNOWN:
            key = keys[frames] = attribute(frames)
        if key is None:
            unplaced[frames] = [size, count]
            continue
        _add(groups, key, size, count)
    return groups, unplaced


_UNKNOWN = object()


def _minus(a: Groups, b: Groups) -> Groups:
    if not b:
        return a
    out = {k: [v[0] - b.get(k, (0, 0))[0], v[1] - b.get(k, (0, 0))[1]] for k, v in a.items()}
    for k, v in b.items():
        if k not in a:
            out[k] = [-v[0], -v[1]]
    return out


def _shares(total: int, weights: Mapping[Any, int]) -> dict[Any, int]:
    """``total`` split in proportion to ``weights`` (all positive), in integers that sum to ``total``."""
    whole = sum(weights.values())
    out = {k: total * w // whole for k, w in weights.items()}
    rest = total - sum(out.values())
    if rest:
        biggest = max(weights, key=weights.__getitem__)
        out[biggest] += rest
    return out


def _add(groups: dict[Any, list[int]], key: Any, size: int, count: int) -> None:
    """``size`` bytes in ``count`` blocks more for ``key`` (a new ``[size, count]`` if it has none yet)."""
    acc = groups.get(key)
    if acc is None:
        groups[key] = [size, count]
    else:
        acc[0] += size
        acc[1] += count


def _give(holders: dict[Any, list[int]], i: int, amount: int, weights: Mapping[Any, int]) -> None:
    """Book ``amount`` (bytes for ``i`` 0, blocks for 1; may be negative) on the keys in proportion to ``weights``."""
    for key, part in _shares(amount, weights).items():
        acc = holders.get(key)
        if acc is None:
            holders[key] = acc = [0, 0]
        acc[i] += part


def _take_back(holders: dict[Any, list[int]], count: int, size: int) -> int:
    """Remove ``count`` freed blocks of ``size`` bytes in all; returns the bytes removed.

    One traceback (``np.empty`` inside numpy, say) serves many lines.  The
    likeliest owner of the freed blocks is the holder that has as many
    blocks and the tightest room for their bytes (a freed 64 MiB temporary
    was not the 8 MiB array another line keeps); failing one, whole blocks
    are taken from the holders whose average block is closest in size.
    """
    fits = [k for k, v in holders.items() if v[1] >= count and v[0] >= size]
    if fits:
        v = holders[min(fits, key=lambda k: holders[k][0] - size)]
        v[0] -= size
        v[1] -= count
        return size
    removed = 0
    block = size / count

    def distance(key: Any) -> float:
        v = holders[key]
        return abs(v[0] / v[1] - block)

    for key in sorted((k for k, v in holders.items() if v[1] > 0), key=distance):
        if not count:
            break
        v = holders[key]
        take = min(v[1], count)
        part = v[0] * take // v[1]
        v[0] -= part
        v[1] -= take
        removed += part
        count -= take
    return removed


def _heap_peak_reset() -> None:
    """The one place alloctrace resets tracemalloc's peak, through its owner (:data:`.peaks.heap_peaks`).

    Called only when this measurement started tracemalloc (so the peak is
    ipymem's); never while the user traces.  The owner first folds the peak
    into every other open ipymem measurement, so a ``%memit --heap`` inside
    ``%memtrace`` and the ``%memtrace`` itself both keep theirs.
    """
    peaks.heap_peaks.reset_now()


_FROZEN_AT_START: list[int] = []


def _interpreter_frozen() -> int:
    """How many objects the interpreter itself keeps in gc's permanent generation (nobody froze them).

    Python 3.12 starts with a few hundred immortal tuples there (``gc.get_freeze_count()`` is 375 on
    3.12.1, 0 on 3.11 and 3.13).  ``gc.unfreeze()`` after the run moves them to the oldest
    generation (the count then reads 0), which is harmless: immortal objects are never freed.  Objects
    the user froze (before a fork) must stay frozen, so ipymem freezes only when the count is 0 or the
    interpreter's own, read once from a fresh interpreter (``-S -I``: no site, no user code).
    """
    if not _FROZEN_AT_START:
        count = 0
        if sys.version_info[:2] == (3, 12) and gc.get_freeze_count() and sys.executable:
            import subprocess

            try:
                out = subprocess.run(
                    [sys.executable, "-S", "-I", "-c", "import gc; print(gc.get_freeze_count())"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=True,
                ).stdout
                count = int(out.strip())
            except (OSError, ValueError, subprocess.SubprocessError):
                count = -1  # unknown: never freeze
        _FROZEN_AT_START.append(count)
    return _FROZEN_AT_START[0]


def _heap_peak() -> tuple[int, int]:
    """The one place alloctrace reads tracemalloc's peak: ``(traced now, peak since the last reset)``."""
    return tracemalloc.get_traced_memory()


class _LineLedger:
    """Books every traced block on the user line that was running when it was allocated.

    tracemalloc keeps one frame per block (cheap), so a block allocated deep
    inside numpy or pandas names a library line, not the user's.  The ledger
    adds what that frame cannot say: a watcher on user code only (this
    class's ``sys.settrace`` hook, or :class:`.allocwatch.MonitoringWatch`
    on 3.12+) marks each boundary between user lines (a line event, a call
    into library code, a return to the caller's line) and reads the traced
    heap there (~0.5 µs).  Each interval between two boundaries
    belongs to one user line (or to nobody: IPython, the interpreter), and
    its net heap change is noted for that line.

    * Blocks whose frame is user code are booked on that frame's line
      (exact, whatever ran in between).
    * Blocks with no user frame ("unplaced", by traceback) are booked when
      a snapshot sees them: a traceback's new blocks go to the lines that
      ran since the previous snapshot (in proportion to their heap growth,
      which is exact when one line did the allocating, the usual case),
      and freed ones are taken back from the lines holding them.
      Snapshots are taken when the heap moved by more than ``MIN_STEP``
      since the last one, or at a user function's return when its lines
      grew the heap by ``RETURN_STEP``, within a budget of traces read
      (``SNAPSHOT_TRACES``), and after each run.
    * The heap peak: tracemalloc's own peak is read at every boundary; when
      it rose, the interval that just ended holds the new highest point.
      The state at that interval's start is kept; the peak split is that
      state for every other line (what they held when the interval began,
      so a line that frees another line's memory after its own peak gives
      exact figures), and the exact peak minus all of that for the line of
      the peak interval.  The rows and "outside your code" therefore sum to
      the exact peak.
    """

    def __init__(
        self,
        code: CodeMap,
        attribute: Callable[[tuple], Key | None],
        group_by: str,
        base: int,
        owns_peak: bool,
        fold: bool = False,
    ) -> None:
        self._is_user = code.is_user
        self._known = code._user.get  # filename -> user code or not, once classified
        self._is_ours = code.is_ours
        self._attribute = attribute
        self._whole_file = group_by == "filename"
        self.fold = fold
        self.base = base
        self.owns_peak = owns_peak
        self.owner: Key | None = OUTSIDE  # the line of the interval now running
        self.last_owner: Key | None = OUTSIDE
        self.heap = base  # traced heap at the last boundary
        self.pending: dict[Key | None, int] = {}  # net heap change per line since the last snapshot
        self.snap_level = base
        self._lo, self._hi = base - RECORD_STEP, base + RECORD_STEP
        self._grown = 0  # heap growth recorded since the last snapshot
        self._return_step = RETURN_STEP
        self._captured_now = False
        self._next_capture = base
        self._attributed: dict[tuple, Any] = {}  # traceback -> group key, across snapshots
        self._keys: PerCode = PerCode()  # code object -> line -> group key (no tuple per event)
        self.before_groups: Groups = {}
        self.split: dict[tuple, dict[Any, list[int]]] = {}  # unplaced traceback -> {line: [size, count]}
        self.totals: Groups = {}  # unplaced traceback -> [size, count] as last booked
        self.held: Groups = {}  # per line, at the last snapshot, relative to the start
        self.best = base  # highest traced heap seen so far (exact when read from tracemalloc's peak)
        self._seen_peak = _heap_peak()[1]
        self._exact_high: int | None = base if owns_peak or self._seen_peak <= base else None
        # With the user's older, higher peak in place a rise inside a line can stay unseen: a lower bound.
        self.best_exact = owns_peak or self._seen_peak <= base
        self.peak: tuple | None = None  # (heap, owner, held, pending) at the start of the peak interval
        self.peak_end: Groups | None = None  # the snapshot taken right after the peak interval, if any
        self.seconds = 0.0
        self.snapshots = 0
        self._allowance = SNAPSHOT_TRACES
        self._traced = 0  # traces read by the in-run snapshots so far
        self._last_traces = 0  # traces in the last snapshot
        self._returning = False
        # Whether library code may have run for a user line since the last snapshot (its blocks name no user
        # line, so a return's snapshot is what books them).  Only the sys.monitoring watcher tells (it sees
        # each library call from user code, and sets ``tells_library``); otherwise it is always assumed.
        self.library_ran = True
        self.tells_library = False

    # -- the hook (sys.settrace), user frames only --------------------------------
    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        """Called for each new frame.  Three kinds of boundary follow from it:

        * a cell's (or user module's) top-level code gets line events;
        * a user function gets only its return event (no line events, so its
          loops run at tracemalloc's own speed: every allocation the hook made
          per event would cost as much as the user's); while it runs, its
          caller's line is the one running, until
        * a call from a user frame into library code, which is a boundary
          owned by the calling line (``f_lineno`` of the caller), and its
          return another: allocations only lack a user frame inside such calls,
          so those brackets are what books them on the right line, at any depth.
        """
        # Called for every frame of every library call: dict lookups in C first, the classifier once per file.
        code = frame.f_code
        user = self._known(code.co_filename)
        if user is None:
            user = self._is_user(code.co_filename)
        if user:
            if code.co_name != "<module>":
                frame.f_trace_lines = False
            return self._local
        back = frame.f_back
        if back is None:
            return None
        user = self._known(back.f_code.co_filename)
        if user is None:
            user = self._is_user(back.f_code.co_filename)
        if user:
            frame.f_trace_lines = False
            self.boundary(self._key(back.f_code, back.f_lineno))
            return self._library_return
        return None

    def _library_return(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "return":
            back = frame.f_back
            if back is not None:
                self.boundary(self._key(back.f_code, back.f_lineno))
        return None

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            self.boundary(self._key(frame.f_code, frame.f_lineno))
        elif event == "return":
            # back on the caller's line: the innermost user frame below (not past ipymem's runner)
            f = frame.f_back
            while f is not None:
                name = f.f_code.co_filename
                if self._is_ours(name):
                    f = None
                    break
                if self._is_user(name):
                    break
                f = f.f_back
            # A function's locals die just after its return event: a snapshot here (when it grew the heap)
            # tells its blocks from those it frees, which may come from the same library line.
            self._returning = True
            if f is None:
                self.boundary(OUTSIDE)
            else:
                self.boundary(self._key(f.f_code, f.f_lineno))
            self._returning = False
        return self._local

    def _key(self, code: Any, lineno: int) -> Key:
        lines = self._keys.of(code)
        key = lines.get(lineno)
        if key is None:
            key = lines[lineno] = ((code.co_filename, 0 if self._whole_file else lineno),)
        return key

    # -- bookkeeping ------------------------------------------------------------
    def boundary(self, new_owner: Key | None) -> None:
        """The running interval ends here; ``new_owner``'s begins.

        The hot path allocates nothing but tracemalloc's reading (every
        allocation is traced, and costs microseconds, while tracemalloc runs):
        the books are updated only when the heap moved by ``RECORD_STEP`` since
        the last update, and the change goes to the line whose interval
        crossed it, which over many intervals is a sample proportional to what
        each allocated.
        """
        now, peak = _heap_peak()
        self._captured_now = False
        if peak > self._seen_peak:  # tracemalloc's peak rose: exact, and inside the interval that just ended
            self._seen_peak = self._exact_high = peak
            if peak > self.best:
                self._new_high(peak, True)
        elif now > self.best:
            # Only when the user's tracing keeps an older, higher peak (or ipymem's own snapshot raised it):
            # the heap seen here is a lower bound, taken as exact within PEAK_SLACK of the last exact peak.
            self._new_high(now, self._exact_high is not None and now - self._exact_high <= PEAK_SLACK)
        if self._lo < now < self._hi and not (self._returning and self._grown > self._return_step):
            self.owner = new_owner
            return
        self._record(now, peak, new_owner)

    def _new_high(self, high: int, exact: bool) -> None:
        # Copying the (small) pending dict at every new high would be most of the hook's cost in a growing
        # loop: a new capture needs a rise of 1/64 of the growth (or 64 KiB), the split's error bound.
        if self.peak is None or high >= self._next_capture:
            self.peak = (high, self.owner, self.held, dict(self.pending))
            self.peak_end = None
            self._next_capture = high + max(64 * 1024, (high - self.base) >> 6)
            self._captured_now = True
        self.best = high
        self.best_exact = exact

    def _record(self, now: int, peak: int, new_owner: Key | None) -> None:
        delta = now - self.heap
        if delta:
            self.pending[self.owner] = self.pending.get(self.owner, 0) + delta
            if delta > 0:
                self._grown += delta
                if self.owner is OUTSIDE and self.pending[OUTSIDE] > OUTSIDE_STEP:
                    self.library_ran = True  # IPython's or the interpreter's code allocated: no user line named
        self.heap = now
        self._lo, self._hi = now - RECORD_STEP, now + RECORD_STEP
        self.last_owner = self.owner
        self.owner = new_owner
        if not self.library_ran and not self.fold:
            # Only the user's own code ran since the last snapshot: every new block names its line, exactly,
            # in any later snapshot, and the heap readings give each line's growth for the peak split.
            # (Grouped by traceback the groups are not lines, and the snapshots are what splits the peak.)
            return
        returning = self._returning and self._grown > self._return_step
        # The heap rose by MIN_STEP since the last snapshot, even if it came back down (a library copying
        # its inputs and freeing them: the net change hides what the line allocated).
        rose = self.owns_peak and peak - self.snap_level > MIN_STEP
        if abs(now - self.snap_level) <= MIN_STEP and not rose and not returning:
            return
        if self._traced <= self._allowance + self._last_traces:
            held = self.snap()
            if self._captured_now:
                self.peak_end = held
        elif returning:  # over budget: wait for a bigger rise before trying again
            self._return_step = 2 * self._grown

    def new_run(self) -> None:
        """Each run (``-r N``) gets the snapshot allowance afresh: a leak's growth is booked in every run."""
        self._allowance = self._traced + SNAPSHOT_TRACES

    def snap(self) -> Groups:
        """Take a snapshot, book its unplaced blocks, and return the per-line state (relative to the start)."""
        t0 = time.perf_counter()
        snapshot = tracemalloc.take_snapshot()
        self._last_traces = len(snapshot.traces)
        self._traced += self._last_traces
        groups, unplaced = aggregate(snapshot, self._attribute, self._attributed)
        del snapshot
        self._book(unplaced)
        held = _minus(groups, self.before_groups)
        for tb_split in self.split.values():
            for key, v in tb_split.items():
                if key is _BEFORE:
                    continue
                _add(held, key, v[0], v[1])
        self.held = held
        self.pending = {}
        self._grown = 0
        self.library_ran = not self.tells_library
        self._return_step = RETURN_STEP
        now = _heap_peak()[0]
        if self.owns_peak:
            _heap_peak_reset()  # the snapshot's own Python objects must not be the run's peak
        self._seen_peak = _heap_peak()[1]
        self.heap = self.snap_level = now
        self._lo, self._hi = now - RECORD_STEP, now + RECORD_STEP
        self.seconds += time.perf_counter() - t0
        self.snapshots += 1
        return held

    def start_from(self, groups: Groups, unplaced: Groups) -> None:
        """What was traced before the run (tracemalloc already running): belongs to no row."""
        self.before_groups = groups
        self.split = {tb: {_BEFORE: list(v)} for tb, v in unplaced.items()}
        self.totals = {tb: list(v) for tb, v in unplaced.items()}

    def _book(self, unplaced: Groups) -> None:
        """Give each unplaced traceback's new blocks to the lines that ran since the last snapshot."""
        growth = {k: d for k, d in self.pending.items() if d > 0}
        if not growth:
            growth = {self.last_owner: 1}
        single = next(iter(growth)) if len(growth) == 1 else None
        split, totals = self.split, self.totals
        changed = [tb for tb, now in unplaced.items() if totals.get(tb) != now]
        changed += [tb for tb in totals if tb not in unplaced]
        for tb in changed:
            now = unplaced.get(tb, (0, 0))
            holders = split.get(tb)
            if holders is None:
                holders = split[tb] = {}
            total = totals.get(tb, (0, 0))
            totals[tb] = list(now)
            size = now[0] - total[0]
            count = now[1] - total[1]
            if count < 0:  # blocks were freed: take back whole blocks, from the holders of that block size first
                size += _take_back(holders, -count, max(-size, 0))
                count = 0
            if count > 0 and single is not None:  # the usual case: one line grew since the last snapshot
                _add(holders, single, size, count)
            elif count > 0:  # new blocks, with their bytes, to the lines that grew
                blocks = {k: n for k, n in _shares(count, growth).items() if n}
                _give(holders, 1, count, blocks)
                _give(holders, 0, size, blocks)
            elif size:  # as many blocks, other sizes (resized ones): by each holder's share
                weights = {k: v[0] for k, v in holders.items() if v[0] > 0}
                _give(holders, 0, size, weights or growth)
            if not now[0] and not now[1]:
                del split[tb], totals[tb]

    def peak_state(self, heap_start: int, heap_peak: int, final: Groups) -> Groups:
        """Per group, what its blocks held when the traced heap was at ``heap_peak`` (see the class docstring).

        The state at the start of the peak interval, plus what each group
        gained by the end of it when a snapshot was taken there (blocks that
        name their line, e.g. a function's locals, alive at its return), and
        the rest of the exact peak (blocks allocated and freed inside the
        interval) on the line that ran it.  With ``-g traceback`` or
        ``--all`` the groups are not the running lines, so that rest is split
        over the groups by what each gained by the next snapshot (``final``:
        the end of the run, if none came sooner).
        """
        if self.peak is None:
            return {k: [v[0], v[1]] for k, v in self.held.items()}
        _, owner, held, pending = self.peak
        state = {k: [v[0], v[1]] for k, v in held.items()}
        if not self.fold:
            for key, delta in pending.items():
                state.setdefault(key, [0, 0])[0] += delta
        rest = heap_peak - heap_start - sum(v[0] for v in state.values())
        after = self.peak_end if self.peak_end is not None else (final if self.fold else None)
        if after is not None:
            gained = {k: v[0] - state.get(k, (0, 0))[0] for k, v in after.items()}
            gained = {k: g for k, g in gained.items() if g > 0}
            if self.fold:
                gained = _shares(rest, gained or {OUTSIDE: 1})
            elif sum(gained.values()) > rest:
                gained = _shares(rest, gained) if rest > 0 and gained else {}
            for key, part in gained.items():
                acc = state.setdefault(key, [0, 0])
                acc[0] += part
                rest -= part
            # Blocks at the peak: at least those alive at the start and at the end of the peak interval.
            for key, v in after.items():
                acc = state.setdefault(key, [0, 0])
                acc[1] = max(acc[1], v[1])
        if rest:
            state.setdefault(owner, [0, 0])[0] += rest
        return state


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
    """Run ``func`` ``repeat`` times under tracemalloc; report allocations by user-code line.

    Returns ``(result, error)`` like :func:`ipymem.engine.memit`: ``error`` is
    the exception ``func`` raised (KeyboardInterrupt included) or ``None``;
    the caller re-raises it after showing the partial ``result``.
    tracemalloc and the trace function are restored before returning,
    whatever happened.  ``watch_peak=False`` skips the line ledger: blocks
    with no user frame (library allocations, at ``depth`` 1) are then
    "outside your code" and "held at peak" is the state at the end of the run.
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
    ledger: _LineLedger | None = None
    hook = False
    runs = 0
    duration = 0.0
    # Setup and teardown hold Ctrl-C (replayed as the user's interrupt with a report), so an
    # interrupt never lands between starting and stopping tracemalloc.
    started = frozen = False
    try:  # the deferral is inside the try, so an interrupt landing just after it still reaches the finally
        with deferred_interrupts() as held:
            if not was_tracing:
                tracemalloc.start(depth)
                peaks.heap_tracing.adopt()  # ipymem's tracing: nested ipymem measurements may reset its peak
                started = True
        with deferred_interrupts() as held_setup:
            if was_tracing and collect:  # the user's traces: their garbage must not be freed during the run
                gc.collect()
            if not was_tracing and gc.get_freeze_count() in (0, _interpreter_frozen()):
                # Blocks from before the run are untraced (tracemalloc starts now): the collection after the
                # run need only look at objects made during it, not at the whole session (~0.15 s with pandas).
                gc.freeze()
                frozen = True
            before = aggregate(tracemalloc.take_snapshot(), attribute) if was_tracing else ({}, {})
            # The peak is ours when we started tracing, or when an enclosing ipymem measurement did
            # (its own peak survives: the owner folds it in before resetting).
            owns_peak = not was_tracing or peaks.heap_tracing.resettable()
            if owns_peak:
                _heap_peak_reset()  # ours to reset; the user's own tracing keeps its peak (see engine/peaks.py)
            heap_start = _heap_peak()[0]
            bookkeeping_start = tracemalloc.get_tracemalloc_memory()
            ledger = _LineLedger(
                code,
                attribute,
                group_by,
                heap_start,
                owns_peak=owns_peak,
                fold=all_frames or group_by == "traceback",
            )
            ledger.start_from(*before)
            rss_start = probe.rss()
        if held.received or held_setup.received:
            error = KeyboardInterrupt()
            repeat = 0
        monitored = False
        if watch_peak:
            if allocwatch.available():  # 3.12+: events on user code only (see engine/allocwatch.py)
                hook = monitored = True
            elif sys.gettrace() is None:
                hook = True
            else:
                notes.append(
                    "another trace function is set (debugger or coverage?), so ipymem cannot see which of your"
                    " lines runs: library allocations count as outside your code and 'held at peak' is the"
                    " state at the end of the run"
                )
        try:
            for _ in range(repeat):
                t0 = time.perf_counter()
                ledger.new_run()
                error, changed = _one_run(func, ledger if hook else None, monitored)
                if changed and changed not in notes:
                    notes.append(changed)
                duration += time.perf_counter() - t0
                runs += 1
                # Held: an interrupt landing in a gc callback would be lost, one in the snapshot wasted.
                with deferred_interrupts() as held_run:
                    ledger.boundary(OUTSIDE)  # the run's last interval ends here
                    gc.collect()
                    ledger.boundary(OUTSIDE)
                    per_run.append(ledger.snap())
                if held_run.received and error is None:
                    error = KeyboardInterrupt()
                if error is not None:
                    break
        except KeyboardInterrupt as exc:  # landed in our own work between or after runs
            if error is None:
                error = exc
        heap_now, heap_peak = _heap_peak()
        bookkeeping = tracemalloc.get_tracemalloc_memory() - bookkeeping_start
        rss_end = probe.rss()
    finally:
        with deferred_interrupts() as held:
            if frozen:
                gc.unfreeze()
            if started:
                peaks.heap_tracing.release()  # stops tracemalloc (unless a nested ipymem user still needs it)
        if held.received and error is None:
            error = KeyboardInterrupt()
    heap_peak = max(ledger.best, heap_now) if ledger is not None else heap_now
    peak_exact = ledger is None or ledger.best_exact
    final = per_run[-1] if per_run else {}
    if hook:
        peak = ledger.peak_state(heap_start, heap_peak, final)
        observed = heap_peak
    else:
        peak, observed = dict(final), heap_now
    # ipymem's own blocks (the ledger's dicts, a few KiB) ran outside the user's lines too.
    outside_peak = sum(peak.pop(k, (0, 0))[0] for k in (OUTSIDE, OUTSIDE_KEY, OURS_KEY))
    retained_runs = []
    for g in per_run:
        g = dict(g)
        outside_retained = sum(g.pop(k, (0, 0))[0] for k in (OUTSIDE, OUTSIDE_KEY, OURS_KEY))
        retained_runs.append(g)
    if not per_run:
        outside_retained = 0
    entries, rest_peak, rest_retained, n_groups = _select(
        peak, retained_runs, code, top, repeat > 1, whole_files=group_by == "filename"
    )
    if rss_note(probe):
        notes.append(rss_note(probe))
    if not peak_exact:
        notes.append(
            "tracemalloc was already tracing (your own tracing), and its peak is yours, so ipymem did not reset it:"
            " the heap peak is the highest seen at your lines' boundaries, at least what is shown"
        )
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
        outside_peak_size=outside_peak,
        outside_retained_size=outside_retained,
        snapshots=ledger.snapshots if ledger is not None else 0,
        tracemalloc_memory=bookkeeping,
        peak_exact=peak_exact,
        lines_watched=hook,
        outcome=outcome,
        error=error_text,
        notes=tuple(notes),
    )
    return result, error


def _one_run(
    func: Callable[[], object], ledger: _LineLedger | None, monitored: bool = False
) -> tuple[BaseException | None, str | None]:
    """Run ``func`` once under the ledger's watcher: ``(the exception it raised, what it did to the watcher)``."""
    __tracebackhide__ = True  # keep user tracebacks clean (IPython and pytest honour it)
    if monitored:
        watch = allocwatch.MonitoringWatch(ledger)
        try:
            watch.__enter__()  # outside the try below: a failure here is ipymem's, not the user's exception
        except RuntimeError:  # every tool id ipymem may take was claimed since available() looked
            if sys.gettrace() is not None:
                ledger = None  # and a trace function is set: not ours to replace, so nothing watches this run
        else:
            error = None
            try:
                func()
            except BaseException as exc:
                error = exc
            finally:
                watch.__exit__()
            return error, _watch_note(watch.changed)
    if ledger is None:
        try:
            func()
        except BaseException as exc:
            return exc, None
        return None, None
    sys.settrace(ledger)
    try:
        func()
    except BaseException as exc:
        return exc, None
    finally:
        if sys.gettrace() is ledger:  # the user's code may have set its own
            sys.settrace(None)
    return None, None


def _watch_note(changed: str | None) -> str | None:
    if changed is None:
        return None
    return (
        f"{changed}: from there on ipymem could not see which of your lines ran, so later library"
        " allocations may be booked on the last line seen (what the code installed is left installed)"
    )


def _select(
    peak: Groups, retained_runs: list[Groups], code: CodeMap, top: int, repeated: bool, whole_files: bool = False
) -> tuple[tuple[AllocEntry, ...], int, int, int]:
    """The top entries (reduced data only: one item per location) and the sums of the rest."""
    final = retained_runs[-1] if retained_runs else {}
    zero = (0, 0)
    # A row needs something in it: groups that held less than ROW_MIN at the peak and after every run
    # (a ``del`` line, a ``def`` line's frame set-up, blocks from before the run) are in the rest's sums.
    keys = {k for k, v in peak.items() if abs(v[0]) >= ROW_MIN} | {k for k, v in final.items() if abs(v[0]) >= ROW_MIN}
    if repeated:
        for g in retained_runs[:-1]:
            keys |= {k for k, v in g.items() if abs(v[0]) >= ROW_MIN}

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
