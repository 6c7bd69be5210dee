"""Code objects defined inside other code objects, and their qualified names."""

from __future__ import annotations

import inspect
import types
from types import CodeType


def nested_functions(code: CodeType, qualname: str | None = None) -> list[tuple[CodeType, str]]:
    """``(code, qualified name)`` of the functions defined inside ``code``, at any depth.

    Methods of classes defined there are included; comprehensions,
    generator expressions and lambdas are left out (their cost belongs to the
    line that contains them, as everywhere in ipymem), and so are class
    bodies (they run once, at the definition).  The names are built as
    Python builds ``__qualname__`` (``f.<locals>.g``), since code objects
    carry theirs only from 3.11 on.
    """
    prefix = qualname or getattr(code, "co_qualname", code.co_name)
    out: list[tuple[CodeType, str]] = []
    is_function = bool(code.co_flags & inspect.CO_OPTIMIZED)
    for const in code.co_consts:
        if not isinstance(const, CodeType) or const.co_name.startswith("<"):
            continue
        name = f"{prefix}.<locals>.{const.co_name}" if is_function else f"{prefix}.{const.co_name}"
        if const.co_flags & inspect.CO_OPTIMIZED:
            out.append((const, name))
        out.extend(nested_functions(const, name))
    return out


def stand_in(code: CodeType, qualname: str) -> types.FunctionType:
    """A function object of ``code`` named ``qualname``, never called: how a target is named to the line tracer."""
    cells = tuple(types.CellType() for _ in code.co_freevars)
    func = types.FunctionType(code, {}, code.co_name, None, cells)
    func.__qualname__ = qualname
    return func


__all__ = ["nested_functions", "stand_in"]
