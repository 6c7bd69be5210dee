"""Output files the user asked for (``%mprun -T``, ``python -m ipymem -o`` / ``--plot``).

Checked before anything runs: a profile that took minutes must not be
thrown away because its report cannot be written.  Standard library only.
"""

from __future__ import annotations

import os


def writable_file(path: str) -> str:
    """``path`` if a file can be written there; ``ValueError`` saying why not otherwise.

    The directory must exist, the path must not be a directory, and an
    existing file (or, for a new file, its directory) must be writable.
    Nothing is created: a check that leaves an empty file behind would
    surprise the user when the run is then cancelled.
    """
    if not path:
        raise ValueError("expected a file name")
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        raise ValueError(f"{path!r} is a directory, not a file")
    folder = os.path.dirname(os.path.abspath(expanded))
    if not os.path.isdir(folder):
        raise ValueError(f"directory {folder!r} does not exist")
    if os.path.exists(expanded):
        if not os.access(expanded, os.W_OK):
            raise ValueError(f"{path!r} is not writable")
    elif not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"directory {folder!r} is not writable")
    return expanded


__all__ = ["writable_file"]
