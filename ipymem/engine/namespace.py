"""Namespace census (``%memwho``): which names hold memory, and what ``del`` would give back.

The walk
--------
Each root (a user name, or a hidden holder such as ``Out[12]``) is walked
iteratively (an explicit stack: no recursion limit), following the
references the garbage collector knows (``gc.get_referents``) plus the ones
it does not see for types we know: a numpy array's ``base`` and the
elements of an object array, a function's closure and defaults (not its
globals), a traceback's frames and their locals.  Types, modules, code,
builtins and module dictionaries are never entered: they are the program,
not the data.  Nothing user-defined is called: an object's own size is
``sys.getsizeof`` only when ``__sizeof__`` is implemented in C (a
``__sizeof__`` written in Python, such as pandas', reports what we are
walking anyway, so the basic size is used instead).  pyarrow arrays and CPU
torch tensors are sized by their buffers (deduplicated by address), because
their memory is not Python objects.  Optional libraries are recognised from
``sys.modules`` and ``type(x).__module__``, never imported.

"Size" counts every object reachable from a root once.  "Freed if deleted"
counts the objects that only this root reaches *and* that nothing outside
the walk refers to.  The second condition is decided by reference counts:
an object whose ``sys.getrefcount`` exceeds the references the walk found
to it (edges from walked objects plus namespace bindings) is held from
outside (a module global, a cache, a frame, IPython's last result...), and
so is everything it reaches.  That is exact for CPython's reference
counting; objects kept alive only by a reference cycle through such an
outside holder are, correctly, not counted as freed.

Cost: each object is expanded once per root that reaches it (shared parts
once per sharer), the bookkeeping is two dictionaries keyed by ``id``, and
the walk stops at a time budget, saying what it covered.  No reference to a
walked object survives the call.
"""

from __future__ import annotations

import collections
import fnmatch
import gc
import itertools
import operator
import re
import sys
import time
import types
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ..models.memwho import HOLDER, NAME, MemwhoParams, MemwhoResult, MemwhoRow
from .rssparts import rss_breakdown, trim_memory

MULTI = -1  # reached by more than one root
OUTSIDE = -2  # reached from an object that something outside the walk refers to

#: Names IPython's output cache binds in the user namespace: ``_``, ``__``, ``___``, ``_12``.
_CACHE_NAME = re.compile(r"^(_{1,3}|_\d+)$")

#: Hidden holders smaller than this (bytes they alone keep alive) are not shown without ``-a``.
HOLDER_MIN = 1 << 20

#: A walk longer than this (seconds) starts calling the progress callback, then about twice a second.
PROGRESS_AFTER = 1.0

#: Sharing or outside holding smaller than this (and than 1% of the row) is not listed: interned strings, dtypes.
SHARE_MIN = 4096

# Kinds of types, decided once per type.
_GENERIC, _SKIP, _NDARRAY, _FUNCTION, _FRAME, _MMAP, _ARROW, _TORCH, _PYSIZEOF, _INT, _LEAF = range(11)

_SKIP_TYPES = (
    type,
    types.ModuleType,
    types.CodeType,
    types.BuiltinFunctionType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.MemberDescriptorType,
    types.GetSetDescriptorType,
    type(type.__dict__),  # mappingproxy
)


#: Exact types with no references to follow, sized by ``sys.getsizeof`` alone (the walk's fast path).
_LEAF_TYPES = frozenset({str, bytes, bytearray, float, complex, bool, type(None), range})


def _edge_temps() -> int:
    """References the walk itself holds to a child while it looks at it (the referents list, the loop variable,
    getrefcount's argument), measured on this interpreter the way the walk's loop holds them."""
    holder = [object()]
    for c in gc.get_referents(holder):
        return sys.getrefcount(c) - 1  # minus holder's own reference
    raise AssertionError("unreachable")


_EDGE_TEMPS = _edge_temps()


class _Plain:
    pass


#: Leaf types an object array's elements are sized in bulk for (see ``_Walker._bulk``).
_BULK_LEAVES = frozenset({str, bytes, float, int, complex})
#: An element's reference count in ``_bulk`` when the array is its only holder (array, list, the argument).
_BULK_RC = 3


def _split_elements(arr: Any) -> tuple[list[Any], list[Any]]:
    """An object array's elements: ``(leaf elements only it holds, the others)``, at C speed where it can."""
    items = list(arr.flat)
    counts = list(map(sys.getrefcount, items))  # here: the array, ``items`` and the argument
    if set(map(type, items)) <= _BULK_LEAVES:
        only = list(map(_BULK_RC.__eq__, counts))
    else:
        leaf = _BULK_LEAVES
        only = [c == _BULK_RC and type(x) in leaf for x, c in zip(items, counts, strict=True)]
    counts = None
    uniq = list(itertools.compress(items, only))
    rest = list(itertools.compress(items, map(operator.not_, only)))
    return uniq, rest


def _object_elements(arr: Any) -> bool:
    """An object array that owns its elements (no base: a view's elements are its base's)."""
    try:
        return arr.base is None and arr.dtype.hasobject and arr.dtype.fields is None and arr.size > 64
    except Exception:
        return False


#: What ``sys.getsizeof`` adds to ``__sizeof__`` for a GC-tracked object (GC header, pre-header).
_GC_PRE = sys.getsizeof(_Plain()) - object.__sizeof__(_Plain())
_HAVE_GC = 1 << 14  # Py_TPFLAGS_HAVE_GC

#: From 3.11 a one-digit int is allocated as a whole ``PyLongObject`` (32 bytes on 64-bit builds) while
#: ``sys.getsizeof`` says 28: a namespace of a million ints would read 4 MB short of what ``del`` frees.
_INT_ONE_DIGIT = sys.getsizeof(1)
_INT_ONE_DIGIT_ALLOC = (_INT_ONE_DIGIT + 7) & ~7 if sys.version_info >= (3, 11) else _INT_ONE_DIGIT


@dataclass
class Progress:
    """Passed to the progress callback of a long walk (about twice a second after the first second)."""

    objects: int
    elapsed: float
    names_walked: int
    names_total: int
    current: str


class _Budget(Exception):
    pass


def census(
    namespace: Mapping[str, Any],
    *,
    hidden: Collection[str] = (),
    holders: Mapping[str, Any] | None = None,
    bookkeeping: Collection[Any] = (),
    pattern: str | None = None,
    top: int | None = None,
    show_all: bool = False,
    budget: float = 5.0,
    trim: bool = False,
    progress: Callable[[Progress], None] | None = None,
) -> MemwhoResult:
    """Walk ``namespace`` and return the :class:`MemwhoResult`.

    ``hidden`` are names of the namespace not to list (IPython's own, as
    ``%who`` hides them); names starting with ``_`` are hidden too, except
    that the output-cache names (``_``, ``__``, ``_12``) count as hidden
    holders.  ``holders`` are further references to report as holders when
    they keep memory alive, by label (``{"Out[12]": obj}``): each must be a
    real reference not in ``namespace`` (here: the ``Out`` dict's entries).
    ``sys.last_value``/``last_traceback``/``last_exc`` are added here.
    ``bookkeeping`` are more references the caller knows of that belong to
    those holders (IPython keeps each cached output in three places): they
    are counted as references, so they do not read as "held from outside".
    ``pattern`` (a glob) and ``top`` filter the rows shown, not the walk:
    sharing is only known after walking everything.  ``trim`` first runs
    :func:`trim_memory` and reports the RSS it returned.

    Ctrl-C stops the walk: the result then has ``outcome="interrupted"`` and
    what was walked (the caller re-raises, after showing it).
    """
    start = time.perf_counter()
    trimmed = trim_memory() if trim else None
    roots, bindings, root_refs = _roots(namespace, set(hidden), holders, show_all)
    if pattern is not None:  # the names asked for first, so a walk cut short covers them
        roots.sort(key=lambda r: not fnmatch.fnmatchcase(r[0], pattern))
    for obj in bookkeeping:  # the reference it stands for, and the collection's own
        bindings[id(obj)] = bindings.get(id(obj), 0) + 2
    obj = None
    walker = _Walker(len(roots), start + budget, progress, start, namespace)
    try:
        walker.walk_all(roots, bindings, root_refs)
    finally:
        roots_meta = [(r[0], r[2], tuple(r[3]), _describe(r[1]), _shallow(r[1])) for r in roots]
        roots.clear()  # no reference to user objects survives
    rows = walker.rows(roots_meta)
    walker.clear()

    shown = [r for r in rows if _shown(r, pattern, show_all)]
    hidden_rows = len(rows) - len(shown)
    shown.sort(key=lambda r: (-r.size, r.name))
    if top is not None:
        shown = shown[:top]
    notes = []
    if walker.interrupted:
        notes.append(
            f"interrupted (KeyboardInterrupt) after {walker.objects:,} objects: "
            f"{walker.done} of {len(roots_meta)} names walked in full; the others show at least what was walked"
        )
    elif not walker.complete:
        notes.append(
            f"walk stopped at its time budget of {budget:g} s after {walker.objects:,} objects: "
            f"{walker.done} of {len(roots_meta)} names walked in full; sizes of the others are at least what is "
            "shown, and 'freed if deleted' assumes the unwalked names share nothing "
            "(%config MemoryMagics.memwho_budget = SECONDS for more)"
        )
    breakdown = rss_breakdown(walker.total, walker.total_file)
    return MemwhoResult(
        rows=tuple(shown),
        breakdown=breakdown,
        params=MemwhoParams(pattern=pattern, top=top, show_all=show_all, budget=budget, trim=trim),
        total=walker.total,
        objects=walker.objects,
        names_walked=walker.done,
        names_total=len(roots_meta),
        complete=walker.complete,
        duration=time.perf_counter() - start,
        trimmed=trimmed,
        hidden_rows=hidden_rows,
        rows_total=len(rows),
        outcome="interrupted" if walker.interrupted else "ok",
        error="KeyboardInterrupt" if walker.interrupted else None,
        notes=tuple(notes),
    )


def _roots(
    namespace: Mapping[str, Any], hidden: set[str], holders: Mapping[str, Any] | None, show_all: bool
) -> tuple[list[list[Any]], dict[int, int], dict[int, int]]:
    """The roots ``[label, object, kind, aliases]``, the references bindings hold, and the roots' own count.

    A function of its own so that no loop variable outlives it holding a
    user object (the walk counts references: a stray one reads as a holder).
    """
    roots: list[list[Any]] = []
    by_obj: dict[int, list[Any]] = {}
    bindings: dict[int, int] = {}  # id -> references from the namespace and holders (the walk does not see them)

    def add_holder(label: str, obj: Any) -> None:
        if _atom(obj):
            return
        root = by_obj.get(id(obj))
        if root is None:
            root = by_obj[id(obj)] = [label, obj, HOLDER, []]
            roots.append(root)
        elif root[2] == HOLDER:
            if label.startswith("Out[") and not root[0].startswith("Out["):  # the output cache's own name leads
                root[3].append(root[0])
                root[0] = label
            else:
                root[3].append(label)

    # A snapshot: a thread may add globals meanwhile.  Keys that are not exact strings are read past
    # their methods (a str subclass's startswith is user code); other keys are not names.
    entries = [(str.__getitem__(n, slice(None)), o) for n, o in list(namespace.items()) if issubclass(type(n), str)]
    for name, obj in entries:
        bindings[id(obj)] = bindings.get(id(obj), 0) + 1
        if name == "__builtins__" or issubclass(type(obj), (types.ModuleType, type)):
            continue
        if show_all or not (name.startswith("_") or name in hidden):
            roots.append([name, obj, NAME, []])
    for name, obj in entries:
        if not show_all and _CACHE_NAME.match(name):
            add_holder(name, obj)
    for label, obj in (holders or {}).items():  # the reference it stands for, and the mapping's own
        bindings[id(obj)] = bindings.get(id(obj), 0) + 2
        add_holder(label, obj)
    for attr in ("last_exc", "last_value", "last_traceback"):
        obj = getattr(sys, attr, None)
        if obj is not None:
            bindings[id(obj)] = bindings.get(id(obj), 0) + 1
            add_holder(f"sys.{attr}", obj)
    obj = None
    entries.clear()
    # Biggest first by shallow size, so a walk cut short covers what matters most.
    roots.sort(key=lambda r: (r[2] != NAME, -_shallow(r[1])))
    root_refs: dict[int, int] = {}
    for r in roots:
        root_refs[id(r[1])] = root_refs.get(id(r[1]), 0) + 1
    return roots, bindings, root_refs


def _shown(row: MemwhoRow, pattern: str | None, show_all: bool) -> bool:
    if pattern is not None and not any(fnmatch.fnmatchcase(n, pattern) for n in (row.name, *row.aliases)):
        return False
    if row.kind == HOLDER and not show_all:
        return (row.freed_if_deleted or 0) >= HOLDER_MIN
    return True


def _atom(obj: Any) -> bool:
    # type(), not isinstance(): isinstance reads obj.__class__, which a lazy object runs code for
    return obj is None or issubclass(type(obj), (bool, int, float, str, types.ModuleType, type))


def _shallow(obj: Any) -> int:
    try:
        return sys.getsizeof(obj) if _native_sizeof(type(obj)) else 0
    except Exception:
        return 0


_native_cache: dict[type, bool] = {}


def _native_sizeof(tp: type) -> bool:
    """True if ``tp.__sizeof__`` is implemented in C (calling it runs no user code)."""
    known = _native_cache.get(tp)
    if known is None:
        known = True
        for klass in tp.__mro__:
            if "__sizeof__" in klass.__dict__:
                known = not isinstance(klass.__dict__["__sizeof__"], (types.FunctionType, classmethod, staticmethod))
                break
        _native_cache[tp] = known
    return known


class _Walker:
    """The bookkeeping of one census (see the module docstring)."""

    def __init__(self, nroots: int, deadline: float, progress: Any, start: float, namespace: Any) -> None:
        self.label: dict[int, int] = {}  # id -> root index, MULTI or OUTSIDE
        self.inref: dict[int, int] = {}  # id -> references found to it (edges + bindings)
        self.keep: dict[int, tuple[Any, int]] = {}  # id -> (object, refcount beyond the walk's own)
        self.size = [0] * nroots
        self.freed = [0] * nroots
        self.file = [0] * nroots
        self.count = [0] * nroots
        self.walked = [False] * nroots
        self.shared: list[dict[int, int]] = [{} for _ in range(nroots)]  # root -> other root -> bytes both reach
        self.held: list[dict[str, int]] = [{} for _ in range(nroots)]  # root -> outside holder -> bytes it keeps
        self.total = 0
        self.total_file = 0
        self.objects = 0
        self.done = 0
        self.complete = True
        self.interrupted = False
        self.deadline = deadline
        self.progress = progress
        self.start = start
        self.next_progress = start + PROGRESS_AFTER
        self.kinds: dict[type, int] = {}
        self.mods = sys.modules.get("numpy"), sys.modules.get("mmap")
        self.skip_ids = {id(namespace)}
        self.ns_type = type(namespace)
        self.module_globals: dict[int, str] = {}
        self._buffer_size: dict[int, int] = {}  # pyarrow/torch buffer or bulk-sized elements key -> bytes
        self._multi_roots: dict[int, set[int]] = {}  # MULTI id -> the roots that reach it
        for modname, mod in list(sys.modules.items()):
            try:  # past any __getattribute__: a lazily loaded module must not be loaded by looking at it
                d = object.__getattribute__(mod, "__dict__")
            except Exception:
                continue
            if not isinstance(d, dict):
                continue
            self.skip_ids.add(id(d))
            if d is namespace:
                continue
            for attr, value in list(d.items()):
                if not _atom(value) and not callable(value) and not attr.startswith("__"):
                    self.module_globals.setdefault(id(value), f"{modname}.{attr}")
            value = d = mod = None  # no stray reference to a walked object

    # -- types -----------------------------------------------------------------
    def kind(self, tp: type) -> int:
        k = self.kinds.get(tp)
        if k is None:
            k = self.kinds[tp] = self._classify(tp)
        return k

    def _classify(self, tp: type) -> int:
        np, mmap = self.mods
        if issubclass(tp, _SKIP_TYPES):
            return _SKIP
        if tp is int:
            return _INT
        if tp in _LEAF_TYPES:
            return _LEAF
        if np is not None and issubclass(tp, np.ndarray):
            return _NDARRAY
        if issubclass(tp, types.FunctionType):
            return _FUNCTION
        if issubclass(tp, (types.FrameType,)):
            return _FRAME
        if mmap is not None and issubclass(tp, mmap.mmap):
            return _MMAP
        module = getattr(tp, "__module__", "") or ""
        if module.startswith("pyarrow") and tp.__name__ in ("Array", "ChunkedArray", "RecordBatch", "Table", "Buffer"):
            return _ARROW
        if module.startswith("pyarrow") and any(k.__name__ in ("Array", "ChunkedArray") for k in tp.__mro__):
            return _ARROW
        if module.startswith("torch") and any(k.__name__ == "Tensor" for k in tp.__mro__):
            return _TORCH
        if not _native_sizeof(tp):
            return _PYSIZEOF
        return _GENERIC

    def own_size(self, obj: Any, kind: int) -> int:
        """Bytes of this object alone (buffers owned by it included)."""
        if kind == _INT:
            s = sys.getsizeof(obj)
            return _INT_ONE_DIGIT_ALLOC if s == _INT_ONE_DIGIT else s
        if kind in (_GENERIC, _LEAF, _NDARRAY, _FUNCTION, _FRAME, _MMAP):
            try:
                return sys.getsizeof(obj)
            except Exception:
                return 0
        # A __sizeof__ in Python (pandas), or one that adds buffers the walk counts itself (pyarrow, torch).
        tp = type(obj)
        return object.__sizeof__(obj) + (_GC_PRE if tp.__flags__ & _HAVE_GC else 0)

    def referents(self, obj: Any, kind: int) -> list[Any]:
        """What ``obj`` refers to, as the walk follows it."""
        if kind == _NDARRAY:
            out = []
            if obj.base is not None:
                out.append(obj.base)
            elif obj.dtype.hasobject and obj.dtype.fields is None:
                out.extend(obj.flat)
            return out
        if kind == _FUNCTION:
            g = obj.__globals__
            return [r for r in gc.get_referents(obj) if r is not g]
        if kind == _FRAME:
            if obj.f_locals is obj.f_globals:  # a module-level frame: its "locals" are a namespace
                return []
            return list(obj.f_locals.values())
        if kind in (_ARROW, _TORCH, _INT, _LEAF):
            return []
        return gc.get_referents(obj)

    def buffers(self, obj: Any, kind: int) -> list[tuple[int, int]]:
        """(address, bytes) of the native buffers of a pyarrow or torch object (deduplicated by address)."""
        out: list[tuple[int, int]] = []
        try:
            if kind == _TORCH:
                if getattr(obj.device, "type", "cpu") == "cpu" and not getattr(obj, "is_sparse", False):
                    storage = obj.untyped_storage()
                    out.append((storage.data_ptr(), storage.nbytes()))
                return out
            name = type(obj).__name__
            if name == "Buffer":
                return [(obj.address, obj.size)]
            if name == "Table" or name == "RecordBatch":
                parts = list(obj.columns)
            elif name == "ChunkedArray":
                parts = list(obj.chunks)
            else:
                parts = [obj]
            for part in parts:
                if type(part).__name__ == "ChunkedArray":
                    parts.extend(part.chunks)
                    continue
                for buf in part.buffers():
                    if buf is not None:
                        out.append((buf.address, buf.size))
        except Exception:
            return out
        return out

    # -- the walk --------------------------------------------------------------
    def walk_all(self, roots: list[list[Any]], bindings: dict[int, int], root_refs: dict[int, int]) -> None:
        for root in roots:
            k = id(root[1])
            self.inref[k] = self.inref.get(k, 0) + bindings.get(k, 0)
        try:
            for i, root in enumerate(roots):
                self.current = root[0]
                self._walk(i, roots, root_refs)
                self.walked[i] = True
                self.done += 1
            self._outside()
        except _Budget:
            self.complete = False
        except KeyboardInterrupt:
            self.complete = False
            self.interrupted = True

    def _walk(self, r: int, roots: list[list[Any]], root_refs: dict[int, int]) -> None:
        # The root is fetched here, not passed: an argument stays referenced by the caller during the call.
        obj = roots[r][1]
        label, inref, keep = self.label, self.inref, self.keep
        kind_of, kinds_get = self.kind, self.kinds.get
        label_get, inref_get, root_refs_get = self.label.get, self.inref.get, root_refs.get
        skip_ids, multi_roots, ns_type = self.skip_ids, self._multi_roots, self.ns_type
        getrefcount, getsizeof, get_referents = sys.getrefcount, sys.getsizeof, gc.get_referents
        local: set[int] = set()  # objects of other roots' regions this root reaches
        size = freed = nfile = count = new = 0
        shared = self.shared[r]
        k = id(obj)
        if k in skip_ids or kind_of(type(obj)) == _SKIP:
            return
        lab = label_get(k)
        if lab is None:
            label[k] = r
        else:
            local.add(k)
            self._mark_multi(k, obj, lab, r)
        stack = [obj]
        push, pop = stack.append, stack.pop
        del obj
        tick = 0
        edge_temps = _EDGE_TEMPS + 1  # the walk's own references to a child, plus its one real referrer
        try:
            while stack:
                o = pop()
                k = id(o)
                tp = type(o)
                kind = kinds_get(tp)
                if kind is None:
                    kind = kind_of(tp)
                if kind == _GENERIC:
                    s = getsizeof(o)
                    refs = get_referents(o)
                elif kind == _LEAF:
                    s = getsizeof(o)
                    refs = ()
                elif kind == _INT:
                    s = getsizeof(o)
                    if s == _INT_ONE_DIGIT:
                        s = _INT_ONE_DIGIT_ALLOC
                    refs = ()
                else:
                    s = self.own_size(o, kind)
                    if kind == _NDARRAY and _object_elements(o):
                        refs, nbulk = self._bulk(o, r, local, k not in local)
                        size += nbulk[0]
                        count += nbulk[1]
                        new += nbulk[2]
                    else:
                        refs = self.referents(o, kind)
                    if kind == _MMAP:
                        try:
                            f = len(o)
                        except Exception:
                            f = 0
                        nfile += f
                        if k not in local:
                            self.total_file += f
                    elif kind in (_ARROW, _TORCH):
                        size += self._native(o, kind, r, local)  # buffers keep their own books
                size += s
                count += 1
                first = k not in local
                if first:
                    freed += s
                    new += 1
                    # References beyond the walk's own (this loop's ``o``, getrefcount's argument, the roots list).
                    extra = getrefcount(o) - 2 - root_refs_get(k, 0)
                    if extra > 1 or k in root_refs:
                        keep[k] = (o, extra)
                else:  # reached by other roots too (label MULTI)
                    for j in multi_roots.get(k, ()):
                        if j != r:
                            shared[j] = shared.get(j, 0) + s
                for c in refs:
                    tick += 1
                    if tick >= 4096:  # one container can hold millions: the budget holds inside it too
                        tick = 0
                        self._flush(r, size, freed, nfile, count, new)
                        size = freed = nfile = count = new = 0
                        self._check_time()
                    ck = id(c)
                    # Count the edge only for objects referred to more than once: the others cannot be
                    # held from outside (their one reference is this edge), and need no entry.
                    if first and getrefcount(c) > edge_temps:
                        inref[ck] = inref_get(ck, 0) + 1
                    tc = type(c)
                    ckind = kinds_get(tc)
                    if ckind is None:
                        ckind = kind_of(tc)
                    if ckind == _SKIP or ((tc is dict or tc is ns_type) and ck in skip_ids):  # module dicts
                        continue
                    lab = label_get(ck)
                    if lab is None:
                        label[ck] = r
                        push(c)
                    elif lab == r or ck in local:
                        continue
                    else:
                        local.add(ck)
                        self._mark_multi(ck, c, lab, r)
                        push(c)
                c = None  # a loop variable left pointing at the next object would read as one more holder
                refs = o = None
                tick += 4
                if tick >= 4096:
                    tick = 0
                    self._flush(r, size, freed, nfile, count, new)
                    size = freed = nfile = count = new = 0
                    self._check_time()
        finally:
            self._flush(r, size, freed, nfile, count, new)
            stack.clear()

    def _flush(self, r: int, size: int, freed: int, nfile: int, count: int, new: int) -> None:
        """Fold the walk's running counts into the books (so progress and a cut-short walk see them)."""
        self.size[r] += size
        self.freed[r] += freed
        self.total += freed
        self.file[r] += nfile
        self.count[r] += count
        self.objects += new

    def _native(self, obj: Any, kind: int, r: int, local: set[int]) -> int:
        """Bytes of the pyarrow/torch buffers of ``obj`` new to root ``r`` (its size); shared buffers marked so."""
        return sum(self._buffer(-address - 1, nbytes, r, local) for address, nbytes in self.buffers(obj, kind))

    def _buffer(self, k: int, nbytes: int, r: int, local: set[int]) -> int:
        """Book ``nbytes`` under key ``k`` (negative: never an ``id()``) for root ``r``; the bytes new to ``r``.

        A buffer no root reached before is entered in the freed and total
        books here; one another root reached is shared (and freed by neither).
        """
        label, shared = self.label, self.shared[r]
        lab = label.get(k)
        if lab is None:
            label[k] = r
            self._buffer_size[k] = nbytes
            self.freed[r] += nbytes
            self.total += nbytes
        elif lab == r or k in local:
            return 0
        else:
            local.add(k)
            self._mark_multi(k, None, lab, r)
            for j in self._multi_roots.get(k, ()):
                if j != r:
                    shared[j] = shared.get(j, 0) + nbytes
        return nbytes

    def _bulk(self, arr: Any, r: int, local: set[int], first: bool) -> tuple[list[Any], tuple[int, int, int]]:
        """The elements of an object array, sized in bulk: ``(distinct elements to walk, (bytes, objects, new))``.

        An element of a leaf type (``str``, ``float``, ``int``...) that only
        this array refers to (its reference count says so) can be reached by
        nothing else: its bytes are summed at C speed (``map``) and booked as
        one pseudo-buffer of the array, keyed by the array, so a second root
        reaching the array shares them and the outside-holder pass frees them
        with the array.  The other elements (shared, or containers) are
        returned once each, their repeated references counted, for the walk.
        A 10^6-row object column costs ~0.1 s instead of ~2 s (and no
        per-element bookkeeping, which under tracemalloc cost far more).
        """
        uniq, rest = _split_elements(arr)
        kinds = set(map(type, uniq))
        # The leaf types are not GC-tracked, so getsizeof is __sizeof__; the unbound method of one type
        # allocates no bound method per call (which tracemalloc would trace: 10x slower under it).
        nbytes = sum(map(next(iter(kinds)).__sizeof__, uniq)) if len(kinds) == 1 else sum(map(sys.getsizeof, uniq))
        if int in kinds:
            nbytes += (_INT_ONE_DIGIT_ALLOC - _INT_ONE_DIGIT) * sum(
                1 for x in uniq if type(x) is int and sys.getsizeof(x) == _INT_ONE_DIGIT
            )
        nuniq = len(uniq)
        uniq = None
        key = -id(arr) - 1
        is_new = key not in self.label
        booked = self._buffer(key, nbytes, r, local) if nuniq else 0
        distinct: dict[int, Any] = dict(zip(map(id, rest), rest, strict=True))
        if first and len(distinct) < len(rest):
            inref = self.inref
            for ck, m in collections.Counter(map(id, rest)).items():
                if m > 1:  # the walk's loop counts one edge; the others are the same element repeated
                    inref[ck] = inref.get(ck, 0) + m - 1
        rest = None
        return list(distinct.values()), (booked, nuniq if booked else 0, nuniq if is_new else 0)

    def _mark_multi(self, k: int, obj: Any, lab: int, r: int) -> None:
        """Object or buffer ``k`` (first reached by root ``lab``) is reached by root ``r`` too."""
        if lab >= 0:
            size = self._buffer_size[k] if k < 0 else self.own_size(obj, self.kind(type(obj)))
            self.freed[lab] -= size
            self.label[k] = MULTI
            self._multi_roots[k] = {lab, r}
        elif lab == MULTI:
            self._multi_roots.setdefault(k, set()).add(r)

    def _outside(self) -> None:
        """Objects something outside the walk refers to, and everything they reach, are freed by no ``del``.

        The bytes are charged to the holder that reaches them first: a module
        global by its name, anything else as "other references".
        """
        label, inref, modglobals = self.label, self.inref, self.module_globals
        seeds = [obj for k, (obj, extra) in self.keep.items() if extra > inref.get(k, 0)]
        seeds.sort(key=lambda o: id(o) not in modglobals)  # named holders first
        seen: set[int] = set()
        tick = 0
        while seeds:
            stack = [seeds.pop(0)]
            holder = modglobals.get(id(stack[0]), "other references")
            while stack:
                o = stack.pop()
                k = id(o)
                if k in seen:
                    continue
                seen.add(k)
                lab = label.get(k)
                if lab is None or lab == OUTSIDE:
                    continue
                kind = self.kind(type(o))
                self._to_holder(k, lab, self.own_size(o, kind), holder)
                if kind in (_NDARRAY, _ARROW, _TORCH):  # their bytes booked as buffers go with them
                    keys = [-a - 1 for a, _ in self.buffers(o, kind)] if kind != _NDARRAY else [-k - 1]
                    for bk in keys:
                        blab = label.get(bk)
                        if blab is not None and blab != OUTSIDE:
                            self._to_holder(bk, blab, self._buffer_size[bk], holder)
                if kind == _NDARRAY and _object_elements(o):
                    refs = _split_elements(o)[1]  # the elements only it holds are in its bulk key above
                else:
                    refs = self.referents(o, kind) if kind != _GENERIC else gc.get_referents(o)
                for c in refs:
                    if id(c) in label and id(c) not in seen:
                        stack.append(c)
                c = o = refs = None
                tick += 1
                if tick >= 1024:
                    tick = 0
                    self._check_time()
            stack.clear()

    def _to_holder(self, k: int, lab: int, nbytes: int, holder: str) -> None:
        """Object or buffer ``k`` (label ``lab``) is kept by an outside ``holder``: no root's ``del`` frees it."""
        for r in (lab,) if lab >= 0 else self._multi_roots.get(k, ()):
            if lab >= 0:
                self.freed[r] -= nbytes
            held = self.held[r]
            held[holder] = held.get(holder, 0) + nbytes
        self.label[k] = OUTSIDE

    def _check_time(self) -> None:
        now = time.perf_counter()
        if now >= self.deadline:
            raise _Budget
        if self.progress is not None and now >= self.next_progress:
            self.next_progress = now + 0.5
            self.progress(
                Progress(
                    objects=self.objects,
                    elapsed=now - self.start,
                    names_walked=self.done,
                    names_total=len(self.size),
                    current=getattr(self, "current", ""),
                )
            )

    def rows(self, meta: list[tuple[str, str, tuple[str, ...], str, int]]) -> list[MemwhoRow]:
        names = [m[0] for m in meta]
        n = len(meta)
        both = [dict(d) for d in self.shared]
        for i in range(n):  # sharing is symmetric: a later root saw it, an earlier one did not
            for j, b in self.shared[i].items():
                both[j][i] = max(both[j].get(i, 0), b)
        out = []
        for i, (name, kind, aliases, typ, shallow) in enumerate(meta):
            size = self.size[i] if self.walked[i] else max(self.size[i], shallow)  # at least the object itself
            worth = max(SHARE_MIN, size // 100)  # sharing an interned string or a dtype is not news
            held = sorted((h for h, b in self.held[i].items() if b >= worth), key=lambda h: h == "other references")
            out.append(
                MemwhoRow(
                    name=name,
                    type=typ,
                    size=size,
                    freed_if_deleted=max(0, self.freed[i]) if self.walked[i] else None,
                    shared_with=tuple(sorted(names[j] for j, b in both[i].items() if j != i and b >= worth)),
                    held_by=tuple(held),
                    kind=kind,
                    aliases=aliases,
                    file_backed=self.file[i],
                    objects=self.count[i],
                    complete=self.walked[i],
                )
            )
        return out

    def clear(self) -> None:
        self.keep.clear()
        self.label.clear()
        self.inref.clear()
        self._multi_roots.clear()
        self._buffer_size.clear()
        self.module_globals.clear()


def _describe(obj: Any) -> str:
    """Type name with shape, dtype or length where it has one, read without calling user code."""
    tp = type(obj)
    name = tp.__name__
    module = getattr(tp, "__module__", "") or ""
    try:
        if module.startswith(("numpy", "pandas", "torch")) and hasattr(obj, "shape"):
            shape = tuple(obj.shape)
            dtype = getattr(obj, "dtype", None)
            if module.startswith("pandas") and name == "DataFrame":
                return f"DataFrame {shape[0]}×{shape[1]}"
            dims = "×".join(str(d) for d in shape) if shape else "scalar"
            return f"{name} {dtype} {dims}" if dtype is not None else f"{name} {dims}"
        if module.startswith("pyarrow") and hasattr(obj, "num_rows"):
            return f"{name} {obj.num_rows}×{obj.num_columns}"
        if module.startswith("pyarrow") and hasattr(obj, "type") and hasattr(obj, "__len__"):
            return f"{name} {obj.type} len {len(obj)}"
        if tp in (list, tuple, dict, set, frozenset, str, bytes, bytearray):  # exact: a subclass's len is user code
            return f"{name} len {len(obj)}"
        if tp is types.FunctionType and obj.__closure__:
            return f"function (closure of {len(obj.__closure__)})"
    except Exception:
        pass
    return name
