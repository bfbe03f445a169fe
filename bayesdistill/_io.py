"""Atomic file writes: a crash at any moment leaves the old file (or none), never a torn one."""

from __future__ import annotations

import glob
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Union

__all__ = ["atomic_write", "remove_stale_temporaries", "read_torch_file", "check_plain"]


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


def read_torch_file(path: Union[str, os.PathLike], what: str, error: type = None) -> Any:
    """``torch.load(path, weights_only=True)`` (no code from the file runs), with one clear error.

    Raises ``FileNotFoundError`` for a missing file and ``error`` (default
    :class:`~bayesdistill.errors.FileFormatError`) naming ``what`` was expected for a file that
    cannot be read (truncated, random bytes, a pickle of arbitrary objects, a folder).
    """
    import torch

    from .errors import FileFormatError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} file at {str(path)!r}")
    if path.is_dir():
        raise (error or FileFormatError)(f"{str(path)!r} is a folder, not a {what} file")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol is reported by the error below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged zip/pickle data
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise (error or FileFormatError)(
            f"{str(path)!r} could not be read as a {what} ({type(err).__name__}: {first[:200]}); it may be "
            "truncated, or not a file bayesdistill wrote"
        ) from err


def check_plain(value: Any, where: str, *, what: str, tensors: bool = False) -> None:
    """Refuse what ``torch.load(weights_only=True)`` cannot read back: only ``None``, ``str``,
    ``int``, ``float``, ``bool`` (exact types: a subclass such as ``torch.__version__`` or
    ``numpy.float64`` is pickled as its own class), lists, tuples, dicts with ``str`` keys and,
    with ``tensors=True``, tensors.

    Raises:
        TypeError: naming ``what`` (the file) and ``where`` (the path inside it) of the first
            value that cannot be saved.
    """
    if value is None or type(value) in (str, int, float, bool):
        return
    if tensors:
        import torch

        if isinstance(value, torch.Tensor):
            return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]", what=what, tensors=tensors)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{what} {where}: keys must be str, got {k!r}")
            check_plain(v, f"{where}[{k!r}]", what=what, tensors=tensors)
        return
    allowed = "tensors and plain values" if tensors else "plain values"
    raise TypeError(f"{what} {where} holds a {type(value).__name__} ({value!r}); only {allowed} (str, int, float, "
                    "bool, None, lists, dicts) can be saved; convert it, e.g. str(path) or float(x)")
