"""Formatting of byte counts and durations.

Standard library only. Memory is carried as integer bytes everywhere in
ipymem; it becomes MiB (or another unit) only here, at the edge, so that
arithmetic on results never accumulates rounding error.
"""

from __future__ import annotations

MIB = 1024 * 1024

#: Decimal places a report can show: past this a figure is noise, and 10**9 places is a 1 GB string.
MAX_PRECISION = 12


def precision_int(text: str) -> int:
    """``--precision N``: an integer from 0 to :data:`MAX_PRECISION`, checked before anything runs."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected an integer from 0 to {MAX_PRECISION}, got {text!r}") from None
    if not 0 <= value <= MAX_PRECISION:
        raise ValueError(f"expected an integer from 0 to {MAX_PRECISION}, got {text!r}")
    return value


_UNITS = {"B": 1, "KiB": 1024, "MiB": MIB, "GiB": 1024 * MIB}


def to_unit(nbytes: int | float, unit: str = "MiB") -> float:
    """Convert a byte count to ``unit`` (one of B, KiB, MiB, GiB)."""
    try:
        return nbytes / _UNITS[unit]
    except KeyError:
        raise ValueError(f"unknown unit {unit!r}; expected one of {', '.join(_UNITS)}") from None


def fmt_bytes(nbytes: int | float | None, precision: int = 2, unit: str = "MiB", sign: bool = False) -> str:
    """``fmt_bytes(209715200) == '200.00 MiB'``; ``None`` becomes an empty string.

    ``sign=True`` always shows a sign, for increments, so that a gain and a
    release read differently at a glance.
    """
    if nbytes is None:
        return ""
    value = to_unit(nbytes, unit)
    spec = f"{'+' if sign else ''},.{precision}f"
    text = format(value, spec)
    if sign and text.lstrip("+-").strip("0.,") == "":
        text = format(0.0, f",.{precision}f")  # never print "-0.00" or "+0.00"
    return f"{text} {unit}"


def fmt_number(nbytes: int | float | None, precision: int = 2, unit: str = "MiB", sign: bool = False) -> str:
    """Like :func:`fmt_bytes` without the unit suffix, for table columns."""
    text = fmt_bytes(nbytes, precision, unit, sign)
    return text.rsplit(" ", 1)[0] if text else ""


def glance(nbytes: int) -> str:
    """``612 MiB`` below a GiB, ``1.00 GiB`` above: a memory figure against a limit, read at a glance."""
    if abs(nbytes) >= 1 << 30:
        return f"{nbytes / 2**30:,.2f} GiB"
    return f"{nbytes / 2**20:,.0f} MiB"


def fmt_seconds(seconds: float | None) -> str:
    """Human duration with three significant figures: ``'12.3 ms'``, ``'4.56 s'``."""
    if seconds is None:
        return ""
    if seconds < 0:
        return "-" + fmt_seconds(-seconds)
    for limit, scale, suffix in ((1e-3, 1e6, "µs"), (1.0, 1e3, "ms")):
        if seconds < limit:
            return f"{seconds * scale:.3g} {suffix}"
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {rest:.0f} s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours} h {minutes} min"
