"""ipymem: memory profiling inside IPython and Jupyter.

``%load_ext ipymem`` registers ``%memit``.  The engine (``ipymem.engine``)
and the result objects (``ipymem.models``) work without IPython too.
"""

from __future__ import annotations

from typing import Any

from .api import memit, memtrace, memwho, mprun, profile
from .engine.peaks import lifetime_peak
from .models import AllocResult, Comparison, MemitResult, MemitRun, MemwhoResult, MprunResult, Sample, compare

__version__ = "0.1.0"
__all__ = [
    "AllocResult",
    "Comparison",
    "MemitResult",
    "MemitRun",
    "MemwhoResult",
    "MprunResult",
    "Sample",
    "compare",
    "lifetime_peak",
    "load_ipython_extension",
    "memit",
    "memtrace",
    "memwho",
    "mprun",
    "profile",
    "unload_ipython_extension",
]

_MAGIC_NAMES = {"line": ("memit", "mprun", "memtrace", "memwatch", "memwho"), "cell": ("memit", "mprun", "memtrace")}


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics (``%load_ext ipymem``)."""
    from .magics import MemoryMagics

    ipython.register_magics(MemoryMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics and release what ipymem holds (``%unload_ext ipymem``)."""
    from .engine.probes import close_shared_probe
    from .magics import MemoryMagics

    table = ipython.magics_manager.magics
    for kind, names in _MAGIC_NAMES.items():
        for name in names:
            func = table[kind].get(name)
            if getattr(func, "__self__", None).__class__ is MemoryMagics:
                del table[kind][name]
    registry = ipython.magics_manager.registry
    instance = registry.pop(MemoryMagics.__name__, None)
    if instance is not None:
        instance.close_memwatch()
        if instance in getattr(ipython, "configurables", ()):
            ipython.configurables.remove(instance)
    close_shared_probe()
