"""The ``%memwho`` result: the user's names by what they hold, and what process RSS is made of."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ._comparable import Comparable
from .limits import LimitUse

#: ``MemwhoRow.kind``: a user name, or a hidden holder (output cache, last traceback, ...).
NAME = "name"
HOLDER = "holder"


@dataclass(frozen=True)
class MemwhoRow:
    """One name (or hidden holder) and the memory it holds.

    ``size`` is the bytes of every object reachable from the name, each
    object once (Python objects by ``sys.getsizeof``, numpy arrays by their
    data buffer, pyarrow/torch by their buffers); ``freed_if_deleted`` the part
    of it that nothing else alive reaches, i.e. what ``del name`` gives back to
    the allocator (``None`` when the walk did not finish this name).
    ``file_backed`` is memory-mapped file bytes reachable (mapped, not
    necessarily resident; not in ``size``).  ``shared_with`` names the other
    rows that reach part of the same memory; ``held_by`` what outside the
    table keeps part of it alive (module globals, or "other references").
    """

    name: str
    type: str
    size: int
    freed_if_deleted: int | None
    shared_with: tuple[str, ...] = ()
    held_by: tuple[str, ...] = ()
    kind: str = NAME
    aliases: tuple[str, ...] = ()
    file_backed: int = 0
    objects: int = 0
    complete: bool = True


@dataclass(frozen=True)
class RssPart:
    """One labelled part of process RSS: ``key`` (stable), ``label`` (says which memory), bytes or ``None``.

    ``None`` means the source is unavailable here; ``source`` says where the
    figure came from (or why it is missing).
    """

    key: str
    label: str
    bytes: int | None
    source: str


@dataclass(frozen=True)
class RssBreakdown:
    """Process RSS split into parts that add up to it; ``rest`` is whatever is left and may be negative.

    The parts are estimates from different sources (allocation sizes are
    not resident pages), so "the rest" is reported as computed, never forced
    to zero: a negative rest means some part counted pages that are not resident.
    """

    rss: int | None
    parts: tuple[RssPart, ...]
    details: tuple[tuple[str, int], ...] = ()

    def part(self, key: str) -> int | None:
        """The bytes of the part named ``key`` (``None`` if unavailable or absent)."""
        for p in self.parts:
            if p.key == key:
                return p.bytes
        return None


@dataclass(frozen=True)
class MemwhoParams:
    """The options a ``%memwho`` census ran with."""

    pattern: str | None = None
    top: int | None = None
    show_all: bool = False
    budget: float = 5.0
    trim: bool = False


@dataclass(frozen=True)
class MemwhoResult(Comparable):
    """What ``%memwho`` found: rows largest first, the RSS breakdown, and how complete the walk was.

    ``complete`` is False when the time budget stopped the walk: then rows
    with ``complete=False`` show at least what was walked, and
    ``freed_if_deleted`` of the others assumes the unwalked names share nothing.
    ``trimmed`` is the RSS returned by ``--trim`` (``None`` without it).
    """

    rows: tuple[MemwhoRow, ...]
    breakdown: RssBreakdown
    params: MemwhoParams = field(default_factory=MemwhoParams)
    total: int = 0
    objects: int = 0
    names_walked: int = 0
    names_total: int = 0
    complete: bool = True
    duration: float = 0.0
    trimmed: int | None = None
    hidden_rows: int = 0
    rows_total: int = 0  # rows the walk made, before the pattern, -n and the hiding of small holders
    outcome: str = "ok"
    error: str | None = None
    notes: tuple[str, ...] = ()
    limit: LimitUse | None = None  # the container's usage against the binding limit when the census ran

    @property
    def statement(self) -> str:
        """``%memwho`` and its pattern: the label of this result in comparisons."""
        return "%memwho" + (f" {self.params.pattern}" if self.params.pattern else "")

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def row(self, name: str) -> MemwhoRow:
        """The row of ``name`` (a user name, a holder label such as ``Out[3]``, or one of its aliases)."""
        for r in self.rows:
            if r.name == name or name in r.aliases:
                return r
        raise KeyError(name)

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per row (for DataFrames or CSV), the RSS parts as ``rss_<key>`` columns."""
        extra: dict[str, Any] = {"rss": self.breakdown.rss}
        extra.update({f"rss_{p.key}": p.bytes for p in self.breakdown.parts})
        out = []
        for r in self.rows:
            d = dataclasses.asdict(r)
            d["shared_with"] = ", ".join(r.shared_with)
            d["held_by"] = ", ".join(r.held_by)
            d["aliases"] = ", ".join(r.aliases)
            d.update(extra)
            out.append(d)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) with every stored field."""
        data = dataclasses.asdict(self)
        for raw in data["rows"]:
            for key in ("shared_with", "held_by", "aliases"):
                raw[key] = list(raw[key])
        data["breakdown"]["details"] = dict(self.breakdown.details)
        return data

    def __str__(self) -> str:
        from ..render.memwho import memwho_text

        return memwho_text(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        from ..render.memwho import memwho_html

        return memwho_html(self)
