"""A real memory cgroup for tests and benchmarks: a child of this process's own, removed afterwards.

Only a child of the test process's own memory cgroup is ever created,
limited, or removed; nothing else is touched.  ``child_cgroup()`` raises
``Unavailable`` with the reason where none can be made (not root, no memory
controller, a read-only hierarchy), so callers skip with that reason.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass


class Unavailable(Exception):
    """No writable memory cgroup here; the message says why."""


@dataclass
class Cgroup:
    version: str
    path: str

    def _file(self, v1: str, v2: str) -> str:
        return os.path.join(self.path, v1 if self.version == "v1" else v2)

    def set_limit(self, nbytes: int) -> None:
        with open(self._file("memory.limit_in_bytes", "memory.max"), "w") as f:
            f.write(str(nbytes))

    def add(self, pid: int) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def pids(self) -> list[int]:
        with open(os.path.join(self.path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]

    def _read(self, v1: str, v2: str) -> str:
        with open(self._file(v1, v2)) as f:
            return f.read()

    def oom_kills(self) -> int:
        for line in self._read("memory.oom_control", "memory.events").splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def usage(self) -> int:
        return int(self._read("memory.usage_in_bytes", "memory.current").split()[0])

    def peak(self) -> int | None:
        """The cgroup's high-water mark of usage (v1 max_usage_in_bytes, v2 memory.peak where the kernel has it)."""
        try:
            return int(self._read("memory.max_usage_in_bytes", "memory.peak").split()[0])
        except (OSError, ValueError):
            return None

    def reset_peak(self) -> bool:
        """Reset the high-water mark (v1 only; v2's memory.peak resets per open file, not for everyone)."""
        if self.version != "v1":
            return False
        with open(self._file("memory.max_usage_in_bytes", "memory.peak"), "w") as f:
            f.write("0")
        return True


def own_memory_cgroup() -> tuple[str, str]:
    """(version, directory) of this process's memory cgroup, as /proc/self/cgroup names it."""
    with open("/proc/self/cgroup") as f:
        lines = f.read().splitlines()
    for line in lines:
        num, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            d = "/sys/fs/cgroup/memory" + path
            if os.path.isdir(d):
                return "v1", d
    for line in lines:
        num, controllers, path = line.split(":", 2)
        if num == "0" and controllers == "":
            d = os.path.normpath("/sys/fs/cgroup" + path)
            if os.path.exists(os.path.join(d, "memory.max")) or os.path.exists(
                os.path.join(d, "cgroup.subtree_control")
            ):
                return "v2", d
    raise Unavailable("no memory cgroup in /proc/self/cgroup")


@contextlib.contextmanager
def child_cgroup(limit: int, name: str = "ipymem-test") -> Iterator[Cgroup]:
    """A new child cgroup of this process's own, limited to ``limit`` bytes; removed on exit, even after a failure.

    Processes still in it at the end are moved back to the parent first
    (never killed: the caller stops what it started).
    """
    if os.geteuid() != 0:
        raise Unavailable("not root: cannot create a memory cgroup")
    version, parent = own_memory_cgroup()
    if version == "v2":
        with open(os.path.join(parent, "cgroup.controllers")) as f:
            if "memory" not in f.read().split():
                raise Unavailable(f"the memory controller is not enabled in {parent}")
    path = os.path.join(parent, f"{name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.mkdir(path)
    except OSError as exc:
        raise Unavailable(f"cannot create a child of {parent}: {exc}") from None
    group = Cgroup(version, path)
    try:
        if version == "v2" and not os.path.exists(os.path.join(path, "memory.max")):
            raise Unavailable(f"the memory controller is not delegated to children of {parent}")
        group.set_limit(limit)
        if version == "v1":
            with contextlib.suppress(OSError), open(os.path.join(path, "memory.swappiness"), "w") as f:
                f.write("0")  # no swap here; keep the test honest where there is
        yield group
    finally:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError, ValueError):
                for pid in group.pids():
                    with contextlib.suppress(OSError), open(os.path.join(parent, "cgroup.procs"), "w") as f:
                        f.write(str(pid))
            try:
                os.rmdir(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
