"""Measurement: memory probes, the sampler, and the measuring engines.

The namespace census (``%memwho``) is :mod:`.namespace` and :mod:`.rssparts`.
Nothing here imports IPython, ipywidgets or matplotlib; the engines take
plain callables and return the plain results of :mod:`ipymem.models`.
"""

from .alloctrace import alloctrace
from .linetrace import profile_lines
from .memit import memit
from .namespace import census
from .probes import Probe, make_probe, shared_probe
from .sampler import Sampler, Timeline

__all__ = [
    "Probe",
    "Sampler",
    "Timeline",
    "alloctrace",
    "census",
    "make_probe",
    "memit",
    "profile_lines",
    "shared_probe",
]
