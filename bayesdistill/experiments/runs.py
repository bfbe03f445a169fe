"""What every pipeline needs around its work: the device, the run folder, threads, processes.

- :func:`resolve_device`: ``"auto"``, ``"cpu"``, ``"cuda:1"`` -> a ``torch.device`` (one-line errors);
- :func:`check_run_folder`: a fresh run into a folder that already holds a run (finished or
  partial) is refused before any work, naming ``resume`` / ``overwrite``; a folder that is a
  file is refused too;
- :func:`torch_threads`: ``torch.set_num_threads`` for the run, restored afterwards;
- :func:`environment`: what the run ran on (threads, processes, versions), recorded with it;
- :func:`process_group` / :func:`is_main`: under ``torchrun`` every rank computes, rank 0 writes;
- :func:`write_json`: atomic JSON files.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from .._io import atomic_write
from .._version import __version__
from ..errors import BayesDistillError, RunExistsError
from ..infer import distributed
from ..infer.checkpoint import CHECKPOINT_NAME

if TYPE_CHECKING:
    from .progress import Stages

__all__ = [
    "ExperimentError",
    "run_stages",
    "resolve_device",
    "check_run_folder",
    "clear_artefacts",
    "open_run_folder",
    "write_metrics",
    "torch_threads",
    "environment",
    "process_group",
    "is_main",
    "barrier",
    "write_json",
    "CHECKPOINT_FOLDER",
]

#: The sub-folder of a run folder holding its checkpoint.
CHECKPOINT_FOLDER = "checkpoints"


class ExperimentError(BayesDistillError, ValueError):
    """A pipeline's input that does not make sense (reported by the CLI in one line)."""


def resolve_device(name: Union[str, torch.device]) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ExperimentError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ExperimentError(f"--device {name} was requested but CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ExperimentError(f"unsupported device {name!r}; use cpu, cuda, cuda:N or auto")
    return device


def check_run_folder(out: Union[str, os.PathLike], artefacts: Iterable[str], *, resume: Optional[bool] = None,
                     overwrite: bool = False) -> Path:
    """Refuse ``out`` unless a run may be written there; returns it as a ``Path``.

    ``out`` may not be a file. A folder holding any of ``artefacts`` or a checkpoint is refused
    (:class:`~bayesdistill.RunExistsError`) unless ``overwrite``, or ``resume`` (``None``: the
    pipeline cannot resume, and the message does not offer it).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {str(out)!r} is a file; choose a folder")
    if resume and overwrite:
        raise ExperimentError("--resume and --overwrite contradict each other: continue the run or replace it")
    if overwrite or resume or not out.is_dir():
        return out
    found = [a for a in artefacts if (out / a).exists()]
    if (out / CHECKPOINT_FOLDER / CHECKPOINT_NAME).exists():
        found.append(f"{CHECKPOINT_FOLDER}/{CHECKPOINT_NAME}")
    if found:
        how = ("resume it (resume=True, CLI --resume), replace it" if resume is not None else "replace it")
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise RunExistsError(f"{str(out)!r} already holds a run ({shown}); {how} "
                             "(overwrite=True, CLI --overwrite) or choose another folder")
    return out


def clear_artefacts(out: Path, artefacts: Iterable[str]) -> None:
    """Remove the named files of an old run (``overwrite``): a replaced run leaves nothing stale."""
    for name in artefacts:
        path = out / name
        if path.is_file():
            path.unlink()


def open_run_folder(out: Path, artefacts: Iterable[str], overwrite: bool) -> Path:
    """Create the run folder; with ``overwrite``, first remove the named files of the run it held."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        clear_artefacts(out, artefacts)
    return out


def write_metrics(out: Path, result: Any, report: Optional[Callable[[dict[str, Any]], str]] = None) -> dict[str, Any]:
    """``metrics.json`` (``result.to_dict()``, atomically) and, with ``report``, ``report.md`` rendered
    from those numbers alone; returns the metrics."""
    metrics = result.to_dict()
    write_json(metrics, out / "metrics.json")
    if report is not None:
        (out / "report.md").write_text(report(metrics))
    return metrics


@contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[int]:
    """Run with ``torch.set_num_threads(threads)`` (``None``: leave torch's setting); restore it after.

    Yields the thread count in effect.
    """
    if threads is None:
        yield torch.get_num_threads()
        return
    if int(threads) < 1:
        raise ExperimentError(f"threads must be >= 1, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def process_group() -> Optional[distributed.ProcessGroup]:
    """The multi-process group of this run (initialized under ``torchrun``), or ``None``."""
    return distributed.current()


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    group = distributed.current()
    return group is None or group.is_main


def run_stages(total: int, label: str, run: Any, step: Any = None) -> "Stages":
    """A pipeline's stage counter: ``total`` stages, plus one when the uncertainty ``step`` computes;
    silent with ``run.quiet`` and on every process but rank 0."""
    from .progress import Stages

    return Stages(total + bool(step is not None and step.computes), label, quiet=run.quiet or not is_main())


def barrier() -> None:
    """Wait for every process of a multi-process run (no-op with one): files written by rank 0
    exist for all once it returns."""
    group = distributed.current()
    if group is not None:
        import torch.distributed as dist

        dist.barrier()


def environment(device: Any = None) -> dict[str, Any]:
    """The run's environment: torch threads, processes (world size), device and versions."""
    import pyro

    group = distributed.current()
    return {
        "torch_threads": torch.get_num_threads(),
        "world_size": group.world_size if group is not None else 1,
        "device": str(device) if device is not None else None,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "pyro": str(pyro.__version__),
        "bayesdistill": __version__,
    }


def write_json(obj: Any, path: Union[str, os.PathLike]) -> Path:
    """Write ``obj`` as indented JSON, atomically."""

    def write(fh) -> None:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")

    return atomic_write(path, write, binary=False)
