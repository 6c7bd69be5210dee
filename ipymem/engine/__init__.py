"""Measurement: memory probes, the sampler, and the measuring engines.

The namespace census (``%memwho``) is :mod:`.namespace` and :mod:`.rssparts`.
Nothing here imports IPython, ipywidgets or matplotlib; the engines take
plain callables and return the plain results of :mod:`ipymem.models`.
"""

from . import peaks
from .alloctrace import alloctrace
from .linetrace import profile_lines
from .memit import memit
from .namespace import census
from .peaks import lifetime_peak
from .probes import Probe, make_probe, shared_probe
from .sampler import Sampler, Timeline

__all__ = [
    "Probe",
    "Sampler",
    "Timeline",
    "alloctrace",
    "census",
    "lifetime_peak",
    "make_probe",
    "memit",
    "peaks",
    "profile_lines",
    "shared_probe",
]
