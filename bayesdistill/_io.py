"""Atomic file writes: a crash at any moment leaves the old file (or none), never a torn one."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Union

__all__ = ["atomic_write", "remove_stale_temporaries"]


def atomic_write(path: Union[str, os.PathLike], write: Callable[[IO[Any]], None], *, binary: bool = True) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, then ``os.replace``.

    Creates the parent folder. The file gets the permissions of a normally created file (the
    process umask applied to 0666; ``mkstemp`` alone would leave 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_stale_temporaries(path: Union[str, os.PathLike]) -> list[Path]:
    """Remove the temporary files ``.<name>.*.tmp`` that interrupted writes of ``path`` left
    beside it; returns what was removed."""
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            try:
                stale.unlink()
                removed.append(stale)
            except FileNotFoundError:  # another process cleaned it up first
                pass
    return removed

