"""The flight record: a few KiB that let the next kernel say why this one died.

While the guard is on, :class:`FlightRecorder` keeps one small JSON file per
kernel under the user's cache directory (``$XDG_CACHE_HOME/ipymem/flight``,
else ``~/.cache/ipymem/flight``), rewritten in place a few times a second
(one ``pwrite`` and ``ftruncate`` of a kept-open file: no new file, no
rename).  It holds the kernel's pid and start time, the notebook, the
running cell's number, line and source, RSS, the container's usage and
limit, the cgroup's OOM-kill counter and the last top holders.  A clean exit
(``%memguard off``, ``%unload_ext``, interpreter exit) removes it.

:func:`deaths` finds the records of the same notebook whose process is gone
(or whose pid now belongs to another process: the start time differs) and
:func:`explain` says how each died: the OOM killer fired when the cgroup's
``oom_kill`` counter moved since the record was written.  Records of other
notebooks are left alone; records older than :data:`EXPIRE` are removed.
Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from typing import Any

#: Records older than this (seconds since their last write) are removed unread.
EXPIRE = 7 * 24 * 3600
#: The most a record holds of the running cell's source.
SOURCE_MAX = 4000


def flight_dir() -> str:
    """Where records live: the user's cache directory (no file is ever written elsewhere)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ipymem", "flight")


def notebook_key(env: dict[str, str] | None = None) -> tuple[str, str]:
    """(name, key) of this notebook: ``JPY_SESSION_NAME`` where the server sets it, else the working directory."""
    env = os.environ if env is None else env
    name = env.get("JPY_SESSION_NAME") or os.getcwd()
    return name, hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:16]


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


class FlightRecorder:
    """One kernel's record; :meth:`write` from the guard's thread, :meth:`close` on a clean exit."""

    def __init__(self, directory: str | None = None, env: dict[str, str] | None = None) -> None:
        self.directory = directory or flight_dir()
        self.notebook, self.key = notebook_key(env)
        self.pid = os.getpid()
        self.start = process_start(self.pid)
        self.path = os.path.join(self.directory, f"{self.key}-{self.pid}.json")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        self.cell: dict[str, Any] = {}

    def write(self, **fields: Any) -> None:
        """Rewrite the record in place with ``fields`` (and the identity of this kernel)."""
        fd = self._fd
        if fd is None:
            return
        record = {
            "version": 1,
            "pid": self.pid,
            "start": self.start,
            "notebook": self.notebook,
            "written": time.time(),
            **self.cell,
            **fields,
        }
        data = json.dumps(record, default=str).encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def close(self) -> None:
        """A clean exit: the record goes."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _alive(record: dict[str, Any]) -> bool:
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    start = process_start(pid)
    return start is not None and (record.get("start") is None or start == record.get("start"))


def deaths(
    directory: str | None = None, env: dict[str, str] | None = None, remove: bool = True
) -> list[dict[str, Any]]:
    """Records of this notebook's kernels that ended without a clean exit, newest first.

    Each is removed once read (``remove``), so a death is told once; expired
    records of any notebook are removed too; live kernels' records are kept.
    """
    directory = directory or flight_dir()
    _, key = notebook_key(env)
    found: list[dict[str, Any]] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    now = time.time()
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(directory, name)
        try:
            if now - os.stat(path).st_mtime > EXPIRE:
                os.unlink(path)
                continue
            if not name.startswith(key + "-"):
                continue
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("pid") == os.getpid() or _alive(record):
            continue
        record["path"] = path
        found.append(record)
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(path)
    found.sort(key=lambda r: r.get("written", 0), reverse=True)
    return found


def explain(record: dict[str, Any], oom_kills_now: int | None) -> str:
    """How the kernel of ``record`` ended, from what the cgroup counted since.

    The OOM killer fired when the cgroup's counter is higher now than at the
    last record (any process of the cgroup may have been its victim, but a
    kernel that was near the limit and is gone is the likely one).
    """
    before = record.get("oom_kills")
    if isinstance(before, int) and oom_kills_now is not None:
        if oom_kills_now > before:
            return f"killed by the OOM killer (the cgroup's oom_kill counter went from {before} to {oom_kills_now})"
        return "ended without a clean exit, not by the cgroup's OOM killer (its oom_kill counter did not move)"
    usage, limit = record.get("usage"), record.get("limit")
    if isinstance(usage, int) and isinstance(limit, int) and limit and usage >= 0.9 * limit:
        return "ended without a clean exit near the memory limit (likely the OOM killer; no OOM counter to confirm)"
    return "ended without a clean exit (killed, crashed or its machine stopped)"


__all__ = ["FlightRecorder", "deaths", "explain", "flight_dir", "notebook_key", "process_start"]
