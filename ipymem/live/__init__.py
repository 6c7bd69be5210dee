"""Live memory charts while a cell runs (ipywidgets + matplotlib, both imported lazily).

* :func:`live_view` -- the context manager the magics wrap their measurement in.
* :class:`MemWatch` -- ``%memwatch on``: a live view for every cell and a compact line after it.
* :func:`plot_timeline` / :func:`render_png` -- re-exported from :mod:`ipymem.render.chart`, where
  the chart lives (results' ``plot()`` draw it without importing this package).

Importing this package imports neither matplotlib nor ipywidgets.
"""

from ..render.chart import Marker, downsample, plot_timeline, render_png
from .view import LiveView, NullView, live_view, widgets_supported
from .watch import MemWatch

__all__ = [
    "LiveView",
    "Marker",
    "MemWatch",
    "NullView",
    "downsample",
    "live_view",
    "plot_timeline",
    "render_png",
    "widgets_supported",
]
