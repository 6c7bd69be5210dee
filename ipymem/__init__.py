"""ipymem: memory profiling inside IPython and Jupyter.

``%load_ext ipymem`` registers ``%memit``.  The engine (``ipymem.engine``)
and the result objects (``ipymem.models``) work without IPython too.
"""

from __future__ import annotations

from typing import Any

from .api import guard, memit, memtrace, memwho, mprun, profile
from .engine.limits.guard import MemoryLimitError
from .engine.peaks import lifetime_peak
from .models import AllocResult, Comparison, MemitResult, MemitRun, MemwhoResult, MprunResult, Sample, compare

__version__ = "0.1.0"
__all__ = [
    "AllocResult",
    "Comparison",
    "MemitResult",
    "MemitRun",
    "MemoryLimitError",
    "MemwhoResult",
    "MprunResult",
    "Sample",
    "compare",
    "guard",
    "lifetime_peak",
    "load_ipython_extension",
    "memit",
    "memtrace",
    "memwho",
    "mprun",
    "profile",
    "unload_ipython_extension",
]

_MAGIC_NAMES = {
    "line": ("memit", "mprun", "memtrace", "memwatch", "memwho", "memguard"),
    "cell": ("memit", "mprun", "memtrace"),
}


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics (``%load_ext ipymem``), and tell how this notebook's last kernel died if it did.

    The post-mortem reads the flight records that ``%memguard on`` leaves
    while it runs: one whose kernel is gone without a clean exit is told
    once (and removed), so "the kernel appears to have died" gets a reason.
    """
    from .magics import MemoryMagics
    from .magics.memguard import GuardMagics, post_mortem

    ipython.register_magics(MemoryMagics, GuardMagics)
    try:
        stories = post_mortem()
    except Exception:  # a broken cache directory must not stop the extension from loading
        stories = []
    GuardMagics.last_deaths = stories
    for story in stories:
        print(story)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics and release what ipymem holds (``%unload_ext ipymem``)."""
    from .engine.probes import close_shared_probe
    from .magics import MemoryMagics
    from .magics.memguard import GuardMagics

    table = ipython.magics_manager.magics
    ours = (MemoryMagics, GuardMagics)
    for kind, names in _MAGIC_NAMES.items():
        for name in names:
            func = table[kind].get(name)
            if type(getattr(func, "__self__", None)) in ours:
                del table[kind][name]
    registry = ipython.magics_manager.registry
    for cls in ours:
        instance = registry.pop(cls.__name__, None)
        if instance is None:
            continue
        if isinstance(instance, MemoryMagics):
            instance.close_memwatch()
        else:
            instance.close()
        if instance in getattr(ipython, "configurables", ()):
            ipython.configurables.remove(instance)
    close_shared_probe()
