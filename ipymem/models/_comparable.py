"""The ``compare`` method every result class has (imported lazily: the comparison module imports the results)."""

from __future__ import annotations

from typing import Any


class Comparable:
    """Mixin of the result classes: ``a.compare(b, c)`` is ``ipymem.compare(a, b, c)``."""

    def compare(self, *others: Any, labels: list[str] | tuple[str, ...] | None = None) -> Any:
        """This result beside ``others`` as a :class:`~ipymem.models.compare.Comparison`; this one is the baseline."""
        from .compare import compare

        return compare(self, *others, labels=labels)
