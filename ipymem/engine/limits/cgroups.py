"""The memory limit that will actually kill this kernel, and how close the container is to it.

A kernel in a container (JupyterHub on Kubernetes, Docker, a batch job's
cgroup) is killed when its *cgroup* runs out, long before the host does.
:func:`find_limit` reads, in order of what binds:

* cgroup v2: ``memory.max`` of this process's cgroup and of every ancestor up
  to the mount point (the tightest binds), ``memory.high`` (throttling, not a
  kill), ``memory.current``, ``memory.stat`` (``inactive_file``: page cache the
  kernel reclaims before it kills anyone), ``memory.events`` (``oom_kill``);
* cgroup v1: ``hierarchical_memory_limit`` in ``memory.stat`` (the tightest of
  the hierarchy), ``memory.limit_in_bytes``, ``memory.usage_in_bytes``,
  ``total_inactive_file``, ``memory.oom_control`` (``oom_kill``);
* ``MEM_LIMIT`` (bytes; what JupyterHub spawners set and jupyter-resource-usage
  reads): a limit the frontend shows, enforced by whoever set it;
* the host: ``MemTotal`` / ``MemAvailable`` and swap from ``/proc/meminfo``.

The *working set* is the cgroup's usage minus its inactive file cache, as the
kubelet counts it: it includes every process of the container (other kernels,
Dask workers), not only this one.  All reads go through ``root`` so tests can
point the module at a fake tree.  Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import time
from typing import Any

from ...models.limits import LimitSource, LimitUse

#: A v1 limit at or above this is "no limit" (the kernel writes PAGE_COUNTER_MAX rounded to pages).
V1_UNLIMITED = 1 << 62


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    """An integer file; ``None`` for ``max``, missing or unreadable files."""
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max" or not text:
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def stat_value(text: str | None, key: str) -> int | None:
    """One ``key value`` line of a ``memory.stat`` / ``memory.events`` / ``oom_control`` file."""
    if not text:
        return None
    prefix = key + " "
    for line in text.splitlines():
        if line.startswith(prefix):
            try:
                return int(line[len(prefix) :].strip())
            except ValueError:
                return None
    return None


def _mounts(root: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(v2 mounts, v1 memory mounts) as (mount root inside the hierarchy, mount point) from mountinfo."""
    v2: list[tuple[str, str]] = []
    v1: list[tuple[str, str]] = []
    text = _read(os.path.join(root, "proc/self/mountinfo"))
    for line in (text or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or not tail:
            continue
        mroot, point = fields[3], fields[4]
        if tail[0] == "cgroup2":
            v2.append((mroot, point))
        elif tail[0] == "cgroup" and len(tail) >= 3 and "memory" in tail[2].split(","):
            v1.append((mroot, point))
    if text is None:  # no mountinfo (a fake tree): the usual places
        v2, v1 = [("/", "/sys/fs/cgroup")], [("/", "/sys/fs/cgroup/memory")]
    return v2, v1


def _directory(root: str, mounts: list[tuple[str, str]], path: str) -> str | None:
    """The directory of cgroup ``path`` under one of ``mounts``, or None.

    In a container with its own cgroup namespace ``/proc/self/cgroup`` says
    ``/`` and the mount's root is the container's cgroup; without one, the
    path is the full host path and the mount's root its prefix.
    """
    for mroot, point in mounts:
        rel = path
        if mroot != "/" and (path == mroot or path.startswith(mroot.rstrip("/") + "/")):
            rel = path[len(mroot) :]
        candidate = os.path.join(root, point.lstrip("/"), rel.lstrip("/"))
        if os.path.isdir(candidate):
            return os.path.normpath(candidate)
    return None


def own_cgroup(root: str = "/") -> tuple[str, str] | None:
    """``(version, directory)`` of this process's memory cgroup, or None where there is none to read.

    v1 wins where the memory controller is mounted as v1 (hybrid hosts also
    mount an empty v2 tree); v2 only counts where ``memory.max`` exists there
    (the memory controller is enabled for that cgroup).
    """
    text = _read(os.path.join(root, "proc/self/cgroup")) or ""
    v1_path = v2_path = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif "memory" in parts[1].split(","):
            v1_path = parts[2]
    v2_mounts, v1_mounts = _mounts(root)
    if v1_path is not None:
        d = _directory(root, v1_mounts, v1_path)
        if d is not None and os.path.exists(os.path.join(d, "memory.usage_in_bytes")):
            return "v1", d
    if v2_path is not None:
        d = _directory(root, v2_mounts, v2_path)
        if d is not None and (
            os.path.exists(os.path.join(d, "memory.max")) or os.path.exists(os.path.join(d, "memory.current"))
        ):
            return "v2", d
    return None


def _ancestors(directory: str, top: str) -> list[str]:
    """``directory`` and its parents up to (not above) ``top``."""
    out = [directory]
    while True:
        parent = os.path.dirname(out[-1])
        if parent == out[-1] or not parent.startswith(top) or len(parent) < len(top):
            break
        out.append(parent)
    return out


def _cgroup_limit(version: str, directory: str, top: str) -> LimitSource | None:
    if version == "v2":
        best: LimitSource | None = None
        high: int | None = None
        for d in _ancestors(directory, top):
            value = _read_int(os.path.join(d, "memory.max"))
            h = _read_int(os.path.join(d, "memory.high"))
            if h is not None and (high is None or h < high):
                high = h
            if value is not None and (best is None or value < best.limit):
                swap = _read_int(os.path.join(d, "memory.swap.max"))
                best = LimitSource("cgroup v2", value, os.path.join(d, "memory.max"), d, swap=swap)
        if best is None:
            return None
        return LimitSource(best.kind, best.limit, best.file, best.directory, high=high, swap=best.swap)
    stat = _read(os.path.join(directory, "memory.stat"))
    hier = stat_value(stat, "hierarchical_memory_limit")
    own = _read_int(os.path.join(directory, "memory.limit_in_bytes"))
    limit = min(v for v in (hier, own) if v is not None) if (hier is not None or own is not None) else None
    if limit is None or limit >= V1_UNLIMITED:
        return None
    where = directory  # the ancestor that sets it: its usage is the one that hits the limit
    for d in _ancestors(directory, top):
        if _read_int(os.path.join(d, "memory.limit_in_bytes")) == limit:
            where = d
            break
    memsw = _read_int(os.path.join(where, "memory.memsw.limit_in_bytes"))
    swap = memsw - limit if memsw is not None and memsw < V1_UNLIMITED else None
    return LimitSource("cgroup v1", limit, os.path.join(where, "memory.limit_in_bytes"), where, swap=swap)


def meminfo(root: str = "/") -> dict[str, int]:
    """``/proc/meminfo`` in bytes (``MemTotal``, ``MemAvailable``, ``SwapFree``...)."""
    return parse_meminfo(_read(os.path.join(root, "proc/meminfo")) or "")


def parse_meminfo(text: str) -> dict[str, int]:
    """The ``Key:   123 kB`` lines of ``/proc/meminfo`` in bytes."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"2147483648"``, ``"2G"``, ``"512MiB"``, ``"1.5 GB"`` -> bytes (binary units); ``ValueError`` otherwise.

    MEM_LIMIT is bytes (what JupyterHub's spawners write); a suffix is
    accepted because people set it by hand too.
    """
    m = _SIZE.match(text.strip())
    if m is None:
        raise ValueError(f"expected a size such as 2147483648, 2G or 512MiB, got {text!r}")
    factor = 1024 ** ("KMGT".index(m.group(2).upper()) + 1) if m.group(2) else 1
    value = int(float(m.group(1)) * factor)
    if value <= 0:
        raise ValueError(f"expected a positive size, got {text!r}")
    return value


def find_limit(root: str = "/", env: dict[str, str] | None = None) -> tuple[LimitSource, list[LimitSource]]:
    """The binding limit, and every limit found (tightest first).

    The host's RAM is always among them, so there is always a binding limit.
    A cgroup limit above the host's RAM does not bind (the host runs out
    first) and is listed but not chosen.
    """
    env = os.environ if env is None else env
    found: list[LimitSource] = []
    cg = own_cgroup(root)
    if cg is not None:
        version, directory = cg
        top = os.path.normpath(os.path.join(root, "sys/fs/cgroup"))
        src = _cgroup_limit(version, directory, top)
        if src is not None:
            found.append(src)
    raw = env.get("MEM_LIMIT")
    if raw:
        with contextlib.suppress(ValueError):  # a malformed variable is no limit
            found.append(LimitSource("MEM_LIMIT", parse_size(raw), "MEM_LIMIT"))
    info = meminfo(root)
    total = info.get("MemTotal")
    if total:
        found.append(LimitSource("host", total, "/proc/meminfo", swap=info.get("SwapTotal")))
    found.sort(key=lambda s: s.limit)
    return (found[0] if found else LimitSource("host", 0, "/proc/meminfo")), found


def _libc_pread() -> Any:
    """libc's ``pread`` through ``ctypes.PyDLL`` (the GIL is kept during the call), or None."""
    try:
        fn = ctypes.PyDLL(None).pread
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_ssize_t
    fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long)
    return fn


_PREAD = _libc_pread() if sys.platform.startswith("linux") else None


def _open(path: str) -> int | None:
    if not path:
        return None
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


class UsageMeter:
    """Reads the usage that the binding limit is compared with, cheaply and repeatedly.

    For a cgroup: its usage (``memory.current`` / ``memory.usage_in_bytes``)
    less its inactive file cache (``memory.stat``, read when the meter opens
    and again, by :meth:`refresh_cache`, before anything acts on a reading:
    cache comes and goes with file I/O).  Files are kept open and read by
    :meth:`_pread`.
    For the host: ``MemTotal - MemAvailable``.  For ``MEM_LIMIT``: this
    process's RSS (``rss`` callable), which is what jupyter-resource-usage
    compares it with.
    """

    def __init__(self, source: LimitSource, rss: object = None) -> None:
        self.source = source
        self._rss = rss
        self._cache = 0
        self._buf = ctypes.create_string_buffer(64)
        self._stat_buf = ctypes.create_string_buffer(16384)
        self._stat_fd: int | None = None
        self._cache_key = ""
        d = source.directory
        current = stat = ""
        if source.kind == "cgroup v2":
            current, stat, self._cache_key = (
                os.path.join(d, "memory.current"),
                os.path.join(d, "memory.stat"),
                "inactive_file",
            )
        elif source.kind == "cgroup v1":
            current, stat = os.path.join(d, "memory.usage_in_bytes"), os.path.join(d, "memory.stat")
            self._cache_key = "total_inactive_file"
        elif source.kind == "host":
            current, self._buf = "/proc/meminfo", ctypes.create_string_buffer(4096)
        self._fd = _open(current)
        self._stat_fd = _open(stat)
        self.refresh_cache()

    def _pread(self, fd: int, buf: Any) -> bytes | None:
        """The whole (small) file at ``fd``, read without releasing the GIL where libc's ``pread`` is at hand.

        ``os.pread`` releases the GIL, and a thread that gives it up waits for
        the switch interval plus the main thread's running C call to get it
        back (10-25 ms under a loop of 8 MiB allocations in a 1 GiB cgroup,
        measured): near a limit that is tens of MiB of growth unseen.  Reading
        a cgroup file takes microseconds, so holding the GIL costs nothing.
        """
        try:
            if _PREAD is not None:
                n = _PREAD(fd, buf, len(buf), 0)
                return buf.raw[:n] if n > 0 else None
            return os.pread(fd, len(buf), 0)
        except OSError:
            return None

    def refresh_cache(self) -> int:
        """Re-read the reclaimable cache of the cgroup (bytes)."""
        if self._stat_fd is not None:
            data = self._pread(self._stat_fd, self._stat_buf)
            if data is not None:
                self._cache = stat_value(data.decode("ascii", "replace"), self._cache_key) or 0
        return self._cache

    def usage(self) -> int | None:
        """The raw usage (cgroup: with its page cache); None when unreadable."""
        if self._fd is not None:
            data = self._pread(self._fd, self._buf)
            if not data:
                return None
            if self.source.kind == "host":
                info = parse_meminfo(data.decode("ascii", "replace"))
                total, avail = info.get("MemTotal"), info.get("MemAvailable")
                return total - avail if total is not None and avail is not None else None
            try:
                return int(data.split()[0])
            except (ValueError, IndexError):
                return None
        if callable(self._rss):
            return int(self._rss())
        return None

    def working_set(self) -> int | None:
        """Usage less the cache the kernel would reclaim first (the kubelet's figure)."""
        u = self.usage()
        if u is None:
            return None
        return max(0, u - self._cache)

    def oom_kills(self) -> int | None:
        """The cgroup's OOM-kill counter (v2 ``memory.events``, v1 ``memory.oom_control``)."""
        return oom_kills(self.source)

    def close(self) -> None:
        for fd in (self._fd, self._stat_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._stat_fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


_BINDING: tuple[float, tuple[str | None, ...], LimitSource] | None = None
#: Seconds a found limit is reused by the reports (a cell's report reads ~10 files to find it: 0.2 ms).
BINDING_TTL = 5.0


def binding_limit() -> LimitSource:
    """:func:`find_limit`'s binding limit, reused for :data:`BINDING_TTL` seconds while ``MEM_LIMIT`` is unchanged."""
    global _BINDING
    now = time.monotonic()
    key = (os.environ.get("MEM_LIMIT"),)
    cached = _BINDING
    if cached is not None and now - cached[0] < BINDING_TTL and cached[1] == key:
        return cached[2]
    source = find_limit()[0]
    _BINDING = (now, key, source)
    return source


class LimitWindow:
    """The container's usage against the binding limit around one measurement (``%memit``, ``%memwatch``).

    The cgroup keeps no peak that one measurement may reset, so the peak is
    *at least* the start plus this process's own exact RSS increment at its
    peak (other processes of the container may have added to it meanwhile).
    """

    def __init__(self, rss: Any = None) -> None:
        self.source = binding_limit()
        meter = UsageMeter(self.source, rss=rss)
        self._meter = meter
        self.start = meter.working_set()

    def finish(self, rss_rise: int = 0) -> LimitUse | None:
        """The :class:`LimitUse`, given this process's RSS rise at its peak (bytes); None where nothing was read."""
        end = self._meter.working_set()
        self._meter.close()
        if self.start is None or end is None or not self.source.limit:
            return None
        return LimitUse(self.source, self.start, end, max(end, self.start + max(0, rss_rise)))


def oom_kills(source: LimitSource) -> int | None:
    """OOM kills counted by the cgroup that sets ``source``, or None where none is kept."""
    if source.kind == "cgroup v2":
        return stat_value(_read(os.path.join(source.directory, "memory.events")), "oom_kill")
    if source.kind == "cgroup v1":
        return stat_value(_read(os.path.join(source.directory, "memory.oom_control")), "oom_kill")
    return None


__all__ = [
    "LimitSource",
    "LimitWindow",
    "UsageMeter",
    "find_limit",
    "meminfo",
    "oom_kills",
    "own_cgroup",
    "parse_size",
    "stat_value",
]
