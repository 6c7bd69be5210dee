"""Code objects defined inside other code objects."""

from __future__ import annotations

import inspect
from types import CodeType


def nested_functions(code: CodeType) -> list[CodeType]:
    """The functions defined inside ``code``, at any depth (methods of classes defined there included).

    Comprehensions, generator expressions and lambdas are left out: their
    cost belongs to the line that contains them, as everywhere in ipymem;
    class bodies are left out too (they run once, at the definition).
    """
    out = []
    for const in code.co_consts:
        if isinstance(const, CodeType):
            if const.co_flags & inspect.CO_OPTIMIZED and not const.co_name.startswith("<"):
                out.append(const)
            out.extend(nested_functions(const))
    return out


__all__ = ["nested_functions"]
