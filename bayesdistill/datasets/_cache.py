"""On-disk ``.npz`` cache for generated datasets, with atomic writes."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from .._io import atomic_write

__all__ = ["CACHE_ENV_VAR", "cached_arrays", "default_cache_dir", "resolve_cache_dir"]

#: The environment variable naming the data cache folder (default: the user cache directory).
CACHE_ENV_VAR = "BAYESDISTILL_CACHE"

Arrays = dict[str, np.ndarray]


def default_cache_dir() -> Path:
    """The cache directory used when none is passed explicitly.

    ``$BAYESDISTILL_CACHE`` if set and non-empty, else the platform's user
    cache directory for ``bayesdistill`` (``platformdirs.user_cache_dir``).
    """
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("bayesdistill"))


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else :func:`default_cache_dir` (not created here)."""
    return (
        Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    )


def _read(path: Path) -> Arrays:
    # Own the file handle: np.load leaks it when the archive is malformed.
    with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _write_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` via a temporary file and ``os.replace``.

    Readers therefore see either the old file, no file, or the complete new
    one, never a partial write.
    """
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def cached_arrays(
    path: Path,
    build: Callable[[], Arrays],
    is_valid: Callable[[Arrays], bool],
) -> Arrays:
    """Load arrays from the ``.npz`` at ``path``, (re)building them if needed.

    A missing file, or one that cannot be read or fails ``is_valid`` (e.g.
    truncated, or from an older layout), is rebuilt with ``build()`` and
    rewritten. Failing to write the cache only warns: the data are returned
    either way.
    """
    if path.exists():
        try:
            arrays = _read(path)
            if is_valid(arrays):
                return arrays
            reason = "unexpected contents"
        except Exception as exc:  # whatever makes a file unreadable, rebuild it
            reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"Ignoring corrupt dataset cache {path} ({reason}); regenerating it.",
            RuntimeWarning,
            stacklevel=3,
        )

    arrays = build()
    try:
        _write_atomic(path, arrays)
    except OSError as exc:
        warnings.warn(
            f"Could not write dataset cache {path}: {exc}. Continuing without it.",
            RuntimeWarning,
            stacklevel=3,
        )
    return arrays
