"""``%memguard``: stop a runaway cell before the container's limit kills the kernel.

The IPython side of :mod:`ipymem.engine.limits`: which frames are the user's
(a cell's file), the namespace census for "largest names", the cell events
that arm and disarm the guard, the flight record's cell fields, and the
post-mortem that the first ``%load_ext ipymem`` of a later kernel prints.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any, ClassVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from ..engine.limits.cgroups import find_limit, oom_kills
from ..engine.limits.flight import FlightRecorder, deaths, explain
from ..engine.limits.guard import DEFAULT_STOP, DEFAULT_WARN, Guard, Level, parse_level, running_line
from ..engine.probes import shared_probe
from ..render.limits import death_text, status_text, stop_text, warn_text
from ..shell import cell_files, cell_label, output_bookkeeping, output_holders
from ..units import glance

USAGE = "%memguard on [--stop LEVEL] [--warn LEVEL|off] [--interval SECONDS] [--hard] | off | status"
#: Seconds the census of "largest names" may take in the guard's thread (the user's code waits meanwhile).
CENSUS_BUDGET = 0.2


def _options(words: list[str]) -> dict[str, Any]:
    """``--stop 95% --warn 80% --interval 0.1 --hard`` -> keyword arguments of :class:`ShellGuard`."""
    out: dict[str, Any] = {"stop": DEFAULT_STOP, "warn": DEFAULT_WARN, "interval": 0.1, "hard": False}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--hard":
            out["hard"] = True
            i += 1
            continue
        if word not in ("--stop", "--warn", "--interval") or i + 1 >= len(words):
            raise UsageError(f"%memguard: unexpected {word!r}\nUsage: {USAGE}")
        value = words[i + 1]
        try:
            if word == "--interval":
                out["interval"] = float(value)
                if not 0.001 <= out["interval"] <= 10:
                    raise ValueError(f"expected an interval from 0.001 to 10 seconds, got {value!r}")
            elif word == "--warn" and value.lower() == "off":
                out["warn"] = None
            else:
                out[word[2:]] = parse_level(value)
        except ValueError as exc:
            raise UsageError(f"%memguard: {word} {value}: {exc}\nUsage: {USAGE}") from None
        i += 2
    return out


class ShellGuard:
    """The guard bound to one shell: its events, its flight record, its reports."""

    def __init__(self, shell: Any, stop: Level, warn: Level | None, interval: float, hard: bool) -> None:
        self.shell = shell
        self.source, self.found = find_limit()
        if warn is not None and warn.bytes_of(self.source.limit) >= stop.bytes_of(self.source.limit):
            raise UsageError(f"%memguard: the warning level ({warn}) must be below the stop level ({stop})")
        try:
            self.recorder: FlightRecorder | None = FlightRecorder()
        except OSError:
            self.recorder = None  # no cache directory: the guard still stops cells, no post-mortem
        self.probe = shared_probe()
        self.main = threading.main_thread().ident
        self.guard = Guard(
            stop=stop,
            warn=warn,
            interval=interval,
            source=self.source,
            is_user_frame=self.is_user_frame,
            holders=self.holders,
            on_warn=self.on_warn,
            on_record=self.on_record,
            hard=hard,
            rss=self.probe.rss,
            label_file=lambda filename: cell_label(self.shell, filename),
        )
        self.said_warning = False

    def is_user_frame(self, frame: Any) -> bool:
        return frame.f_code.co_filename in cell_files(self.shell)

    def census_rows(self, budget: float, top: int = 5) -> list[tuple[str, int, int | None]]:
        """The largest user names: (name, bytes reachable, bytes ``del`` would free)."""
        from ..engine.namespace import census

        result = census(
            dict(self.shell.user_ns),  # a copy: the user's code may be changing the namespace meanwhile
            hidden=self.shell.user_ns_hidden,
            holders=output_holders(self.shell),
            bookkeeping=output_bookkeeping(self.shell),
            top=top,
            budget=budget,
        )
        return [(row.name, row.size, row.freed_if_deleted) for row in result.rows if row.size >= 1 << 20][:top]

    def holders(self) -> list[tuple[str, int]]:
        return [(name, size) for name, size, _ in self.census_rows(CENSUS_BUDGET)]

    # -- events ---------------------------------------------------------------------
    def on(self) -> None:
        events = self.shell.events
        events.register("pre_run_cell", self.pre_run_cell)
        events.register("post_run_cell", self.post_run_cell)
        self.guard.start()
        atexit.register(self.off)

    def off(self) -> None:
        events = self.shell.events
        for name, callback in (("pre_run_cell", self.pre_run_cell), ("post_run_cell", self.post_run_cell)):
            if callback in events.callbacks[name]:
                events.unregister(name, callback)
        self.guard.close()
        if self.recorder is not None:
            self.recorder.close()
        atexit.unregister(self.off)

    def pre_run_cell(self, info: Any = None) -> None:
        # The cell's number comes from its frame once it runs (IPython's own numbering, as its tracebacks
        # give it): execution_count here is already the next one under ipykernel.
        source = getattr(info, "raw_cell", "") or ""
        if self.recorder is not None:
            self.recorder.cell = {"cell": None, "cell_source": source[:4000], "line": None, "line_source": ""}
        self.said_warning = False
        self.guard.arm(label="the cell", target=self.main)

    def post_run_cell(self, result: Any = None) -> None:
        watch = self.guard.disarm()
        if self.recorder is not None:
            self.recorder.cell = {"cell": None, "cell_source": "", "line": None, "line_source": ""}
            self.on_record(self.guard)
        if watch is None:
            return
        if watch.stops:
            try:
                rows = self.census_rows(budget=1.0)
            except Exception:
                rows = []
            print(stop_text(self.guard, watch, rows))
        elif watch.warned and not self.said_warning:
            print(warn_text(self.guard, watch))

    # -- from the guard's thread ---------------------------------------------------
    def on_warn(self, watch: Any) -> None:
        # ipykernel sends a thread's output with the running cell's header: this lands in the cell.
        self.said_warning = True
        print(warn_text(self.guard, watch), flush=True)

    def on_record(self, guard: Guard) -> None:
        recorder = self.recorder
        if recorder is None:
            return
        line = source = None
        if guard.watch is not None:
            import sys

            frame = sys._current_frames().get(self.main)
            if frame is not None:
                f = frame
                while f is not None and not self.is_user_frame(f):
                    f = f.f_back
                if f is not None:
                    cell = cell_files(self.shell).get(f.f_code.co_filename)
                    if cell is not None:  # the number IPython's traceback gives this cell
                        recorder.cell["cell"] = cell
                    line = f.f_lineno
                    source = running_line(f, self.is_user_frame).split(": ", 1)[-1] if f.f_lineno else ""
            del frame
        fields: dict[str, Any] = {
            "usage": guard.usage,
            "limit": guard.limit,
            "limit_label": guard.source.label,
            "limit_kind": guard.source.kind,
            "limit_dir": guard.source.directory,
            "oom_kills": guard.meter.oom_kills(),
            "rss": self.probe.rss(),
            "holders": list(guard.last_holders),
        }
        if line is not None:
            fields["line"], fields["line_source"] = line, source
            recorder.cell.update(line=line, line_source=source)
        recorder.write(**fields)


def post_mortem() -> list[str]:
    """The stories of this notebook's kernels that died since (each told once)."""
    out = []
    for record in deaths():
        kind, directory = record.get("limit_kind"), record.get("limit_dir")
        now = None
        if isinstance(kind, str) and kind.startswith("cgroup") and isinstance(directory, str):
            from ..models.limits import LimitSource

            now = oom_kills(LimitSource(kind, 0, directory=directory))
        out.append(death_text(record, explain(record, now)))
    return out


@magics_class
class GuardMagics(Magics):
    """``%memguard``."""

    _guard: ShellGuard | None = None
    last_deaths: ClassVar[list[str]] = []  # the post-mortems %load_ext printed, for %memguard status

    @line_magic
    def memguard(self, line: str = "") -> None:
        """Stop a cell before the memory limit kills the kernel: ``%memguard on|off|status``.

        ``%memguard on [--stop 95%] [--warn 80%] [--interval 0.1] [--hard]``
        starts a watchdog that reads the container's working set (cgroup v2
        or v1; else ``MEM_LIMIT``; else the host's RAM) 10 times a second and
        faster near the limit.  In every cell, at the warning level it says so
        once; at the stop level it raises ``ipymem.MemoryLimitError`` (a
        ``MemoryError``) in your code, so the kernel and the variables made
        before survive.  Levels are a percentage of the limit or a size
        (``900M``, ``7.5GiB``).  ``--hard`` also sets ``RLIMIT_DATA`` while a
        cell runs, so one C call that allocates past the headroom at once
        (``np.ones(10**11)``) fails with ``MemoryError`` instead of taking the
        kernel; it counts reserved memory too and binds every thread.

        While on, a small flight record (under ``~/.cache/ipymem/flight``,
        removed at a clean exit) lets the next kernel of this notebook say
        how this one died, when the guard could not stop it.
        """
        words = line.split()
        verb = words[0].lower() if words else "status"
        if verb == "on":
            options = _options(words[1:])
            if self._guard is not None:
                self._guard.off()
                self._guard = None
            guard = ShellGuard(self.shell, **options)
            guard.on()
            self._guard = guard
            g = guard.guard
            print(
                f"memguard on: stops a cell at {g.stop_level} ({glance(g.stop_bytes)}) of the "
                f"{g.source.label}" + (f", warns at {g.warn_level}" if g.warn_level is not None else "")
            )
        elif verb == "off" and len(words) == 1:
            if self._guard is None:
                print("memguard is already off")
            else:
                self._guard.off()
                self._guard = None
                print("memguard off")
        elif verb == "status" and len(words) <= 1:
            if self._guard is None:
                source, _found = find_limit()
                from ..engine.limits.cgroups import UsageMeter
                from ..render.limits import against_limit

                meter = UsageMeter(source, rss=shared_probe().rss)
                used = meter.working_set() or 0
                meter.close()
                print(f"memguard is off; the binding limit: {against_limit(used, source)}, {source.label}")
            else:
                print(status_text(self._guard.guard, self._guard.recorder, self._guard.found))
            for story in self.last_deaths:
                print(story)
        else:
            raise UsageError(f"%memguard: expected on, off or status, got {line.strip()!r}\nUsage: {USAGE}")

    def close(self) -> None:
        if self._guard is not None:
            self._guard.off()
            self._guard = None


__all__ = ["GuardMagics", "ShellGuard", "post_mortem"]
