"""Where RSS goes: process RSS split into labelled parts, and ``--trim``.

Each part comes from its own source, read through the standard library and
ctypes (nothing to install, nothing imported that the user did not):

* **objects the names hold**: the census walk's total (:mod:`.namespace`).
* **other Python heap**: tracemalloc's traced bytes minus the walked ones
  when tracemalloc is tracing; otherwise the allocators' own statistics
  (glibc ``mallinfo2()`` in-use bytes, which include native libraries, plus
  pymalloc's allocated blocks) minus the walked ones.
* **free in glibc malloc**: ``mallinfo2().fordblks``, less the pages of the
  main heap that are not resident (``mincore`` over the program break, else
  ``/proc/self/smaps`` ``[heap]`` Size -
  Rss: what ``malloc_trim`` already gave back), so the figure is memory
  the allocator keeps, resident, for reuse.
* **free in pymalloc**: available blocks and unused pools of pymalloc's
  arenas (``_PyObject_DebugMallocStats``, written to an in-memory stream).
* **file-backed and shared**: ``/proc/self/smaps_rollup`` Rss - Anonymous
  (libraries' code, memory-mapped files, shared memory).
* **the rest**: RSS minus the parts that could be read; never forced to
  zero, because the parts are allocation sizes, not resident pages.

A source missing on this platform gives a part of ``None`` ("unavailable").
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import re
import sys
import tracemalloc

from ..models.memwho import RssBreakdown, RssPart
from .probes import shared_probe


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


_libc: ctypes.CDLL | bool | None = False


def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc with ``mallinfo2`` (2.33+), else ``None``."""
    global _libc
    if _libc is False:
        _libc = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(lib, "mallinfo2") and hasattr(lib, "malloc_trim"):
                    lib.mallinfo2.restype = _Mallinfo2
                    lib.malloc_trim.argtypes = [ctypes.c_size_t]
                    lib.malloc_trim.restype = ctypes.c_int
                    _libc = lib
    return _libc  # type: ignore[return-value]


def mallinfo() -> dict[str, int] | None:
    """glibc's ``mallinfo2()`` as a dict (bytes), or ``None`` where it is not available."""
    lib = _glibc()
    if lib is None:
        return None
    info = lib.mallinfo2()
    return {name: int(getattr(info, name)) for name, _ in _Mallinfo2._fields_}


def pymalloc_stats() -> dict[str, int] | None:
    """pymalloc's arena statistics (bytes): ``allocated``, ``available``, ``unused_pools``, ``arenas``.

    ``None`` where the interpreter does not use pymalloc or the stream cannot be made.
    """
    lib = _glibc() or _any_libc()
    func = getattr(ctypes.pythonapi, "_PyObject_DebugMallocStats", None)
    if lib is None or func is None or not hasattr(lib, "open_memstream"):
        return None
    buf, size = ctypes.c_void_p(), ctypes.c_size_t()
    lib.open_memstream.restype = ctypes.c_void_p
    lib.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)]
    lib.fclose.argtypes = [ctypes.c_void_p]
    lib.free.argtypes = [ctypes.c_void_p]
    func.argtypes = [ctypes.c_void_p]
    func.restype = ctypes.c_int
    stream = lib.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not stream:
        return None
    try:
        used = func(stream)
    finally:
        lib.fclose(stream)
    try:
        text = ctypes.string_at(buf.value, size.value).decode("ascii", "replace") if buf.value else ""
    finally:
        lib.free(buf)
    if not used:
        return None

    def number(pattern: str) -> int | None:
        m = re.search(pattern + r"\s*=\s*([\d,]+)", text)
        return int(m.group(1).replace(",", "")) if m else None

    out = {
        "allocated": number(r"# bytes in allocated blocks"),
        "available": number(r"# bytes in available blocks"),
        "unused_pools": number(r"\d+ unused pools \* \d+ bytes"),
        "arenas": number(r"\d+ arenas \* \d+ bytes/arena"),
    }
    if out["allocated"] is None or out["available"] is None:
        return None
    return {k: v or 0 for k, v in out.items()}


def _any_libc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError):
        return ctypes.CDLL(None)
    return None


def _read_text(path: str) -> str | None:
    """A ``/proc`` file's text, or ``None`` where it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("ascii", "replace")
    except OSError:
        return None


def smaps_rollup(path: str = "/proc/self/smaps_rollup") -> dict[str, int] | None:
    """``/proc/self/smaps_rollup`` in bytes (``Rss``, ``Anonymous``, ...), or ``None`` where it is missing."""
    text = _read_text(path)
    if text is None:
        return None
    out = {}
    for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M):
        out[m.group(1)] = int(m.group(2)) * 1024
    return out if "Rss" in out else None


def main_heap(path: str = "/proc/self/smaps") -> tuple[int, int] | None:
    """``(Size, Rss)`` of the ``[heap]`` mapping (glibc's main arena), or ``None``.

    From ``mincore(2)`` over the program break's range where it works (about
    20 µs, whatever the number of mappings), else from ``/proc/self/smaps``
    (6 ms and more: the kernel formats every mapping).
    """
    fast = _heap_mincore() if path == "/proc/self/smaps" else None
    if fast is not None:
        return fast
    text = _read_text(path)
    if text is None:
        return None
    start = text.find("[heap]\n")
    if start < 0:
        return None
    block = text[start : start + 2000]
    size = re.search(r"^Size:\s+(\d+) kB", block, re.M)
    rss = re.search(r"^Rss:\s+(\d+) kB", block, re.M)
    if not size or not rss:
        return None
    return int(size.group(1)) * 1024, int(rss.group(1)) * 1024


_PAGE = 4096
_mincore_ok: bool | None = None


def _heap_mincore() -> tuple[int, int] | None:
    """``(size, resident)`` of the program break's heap: ``start_brk`` (``/proc/self/stat``) to ``sbrk(0)``."""
    global _mincore_ok, _PAGE
    if _mincore_ok is False:
        return None
    try:
        lib = _glibc()
        if lib is None:
            raise OSError("no C library")
        if _mincore_ok is None:
            import mmap

            _PAGE = mmap.PAGESIZE
            lib.sbrk.restype = ctypes.c_void_p
            lib.sbrk.argtypes = [ctypes.c_ssize_t]
            lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
            lib.mincore.restype = ctypes.c_int
        text = _read_text("/proc/self/stat")
        if text is None:
            raise OSError("no /proc/self/stat")
        start = int(text[text.rindex(")") + 2 :].split()[44])  # field 47, start_brk
        end = lib.sbrk(0) or 0
        if not start or end < start or start % _PAGE:
            raise OSError("no program break")
        pages = (end - start + _PAGE - 1) // _PAGE
        if not pages:
            _mincore_ok = True
            return 0, 0
        vec = ctypes.create_string_buffer(pages)
        if lib.mincore(start, end - start, vec) != 0:
            raise OSError("mincore failed")
        _mincore_ok = True
        return end - start, (pages - vec.raw.count(0)) * _PAGE  # the low bit of each byte: page resident
    except (OSError, ValueError, IndexError, AttributeError):
        _mincore_ok = False
        return None


def malloc_free_resident(info: dict[str, int] | None) -> tuple[int | None, bool]:
    """Bytes glibc malloc holds free and resident, and whether that is exact.

    ``fordblks`` less the main heap's non-resident pages (what ``malloc_trim``
    returned).  When glibc's arenas extend beyond ``[heap]`` (thread arenas,
    or a main heap that could not grow in place) the pages returned there
    cannot be told apart, so the figure is an upper bound (``False``).
    """
    if info is None:
        return None, False
    heap = main_heap()
    not_resident = max(0, heap[0] - heap[1]) if heap else 0
    exact = heap is not None and info["arena"] <= heap[0] + (1 << 20)
    return max(0, info["fordblks"] - not_resident), exact


def rss_breakdown(walked: int, walked_file: int = 0) -> RssBreakdown:
    """Split current RSS into labelled parts (see the module docstring); ``walked`` is the census total."""
    rss = shared_probe().rss()
    info = mallinfo()
    pym = pymalloc_stats()
    rollup = smaps_rollup()
    details: list[tuple[str, int]] = []
    parts = [RssPart("objects", "Objects the names hold", walked, "ipymem census")]
    if tracemalloc.is_tracing():
        traced = tracemalloc.get_traced_memory()[0]
        details.append(("tracemalloc_traced", traced))
        parts.append(
            RssPart(
                "heap_other",
                "Other Python heap (traced)",
                traced - walked,
                "tracemalloc traced − objects",
            )
        )
    elif info is not None:
        in_use = info["uordblks"] + info["hblkhd"] + (pym["allocated"] if pym else 0)
        parts.append(
            RssPart(
                "heap_other",
                "Other heap in use (malloc + pymalloc)",
                in_use - walked,
                "mallinfo2 uordblks+hblkhd" + (" + pymalloc blocks" if pym else "") + " − objects",
            )
        )
    else:
        parts.append(RssPart("heap_other", "Other Python heap", None, "unavailable on this platform"))
    free, exact = malloc_free_resident(info)
    if info is None:
        source = "unavailable on this platform"
    elif exact:
        source = "mallinfo2 fordblks − [heap] pages not resident"
    else:
        source = "mallinfo2 fordblks − [heap] not resident; at most (arenas outside [heap])"
    parts.append(RssPart("malloc_free", "Free in glibc malloc (resident)", free, source))
    parts.append(
        RssPart(
            "pymalloc_free",
            "Free in pymalloc arenas",
            (pym["available"] + pym["unused_pools"]) if pym else None,
            "pymalloc arena statistics" if pym else "unavailable on this platform",
        )
    )
    file_backed = None
    if rollup is not None and "Anonymous" in rollup:
        file_backed = rollup["Rss"] - rollup["Anonymous"]
        details.extend((f"smaps_{k}", v) for k, v in rollup.items())
    parts.append(
        RssPart(
            "file",
            "File-backed and shared pages",
            file_backed,
            "smaps_rollup Rss − Anonymous" if file_backed is not None else "unavailable on this platform",
        )
    )
    if walked_file:
        details.append(("walked_file_backed_mapped", walked_file))
    if info:
        details.extend((f"mallinfo2_{k}", v) for k, v in info.items())
    if pym:
        details.extend((f"pymalloc_{k}", v) for k, v in pym.items())
    known = sum(p.bytes for p in parts if p.bytes is not None)
    parts.append(
        RssPart(
            "rest",
            "The rest (interpreter, native, stacks)",
            rss - known,
            "RSS − the parts above, not forced to zero",
        )
    )
    return RssBreakdown(rss=rss, parts=tuple(parts), details=tuple(details))


def trim_memory() -> int:
    """Collect garbage, then ask glibc to return free memory (``malloc_trim(0)``); RSS returned, in bytes.

    Without glibc only the collection runs.  The figure is RSS before minus
    after, so it may be slightly negative if something else allocated meanwhile.
    """
    probe = shared_probe()
    before = probe.rss()
    gc.collect()
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)
    return before - probe.rss()


def allocator_free() -> int | None:
    """Bytes the allocators hold free and resident: glibc malloc's (as in the breakdown) plus pymalloc's.

    Meant for differences, e.g. how much of a cell's retained RSS is free
    memory the allocator kept: resident, because a statement that reuses
    pages ``malloc_trim`` returned grows RSS without growing live objects.
    Under a millisecond (``mallinfo2``, pymalloc's statistics and
    ``mincore`` over the main heap; never ``/proc/self/smaps`` where
    ``mincore`` works), so a measurement's fixed cost stays small.  ``None``
    where neither source is available.
    """
    info, pym = mallinfo(), pymalloc_stats()
    if info is None and pym is None:
        return None
    free = malloc_free_resident(info)[0] or 0
    return free + ((pym["available"] + pym["unused_pools"]) if pym else 0)


#: The retained-RSS hint needs at least this much, and at least half of the retained RSS, kept free.
HINT_MIN = 4 << 20


def retained_hint(retained: int, free_growth: int | None) -> str | None:
    """A note when much of a retained RSS increase is memory the allocator keeps free, not live objects."""
    if free_growth is None or retained < HINT_MIN or free_growth < max(HINT_MIN, retained // 2):
        return None
    kept = min(free_growth, retained)
    return (
        f"{kept / 2**20:,.1f} MiB of the retained RSS is memory the allocator keeps free for reuse, "
        "not live objects; %memwho --trim returns it to the OS"
    )


def reuse_hint(
    increment: int, free_drop: int | None, what: str = "the RSS increment leaves", heap: str = "--heap"
) -> str | None:
    """A note when a statement's new memory went largely into memory the allocator already held free.

    Such memory was counted in RSS before the statement, so the RSS
    increment leaves it out: ``[bytearray(10**6) for _ in range(50)]``
    after a cell that freed 50 MB reads +0.00 MiB.  Without this note the
    zero looks like a measurement.  ``free_drop`` is the fall of
    :func:`allocator_free` (free and resident) over the statement.
    """
    if free_drop is None or free_drop < HINT_MIN or free_drop * 4 < max(increment, 0) + free_drop:
        return None
    return (
        f"{free_drop / 2**20:,.1f} MiB of new memory reused what the allocator already held free "
        f"(freed earlier, still counted in RSS), so {what} it out; {heap} measures the objects"
    )
