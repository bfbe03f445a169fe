"""Checkpoints: a run folder is precious, a resumed run continues exactly or refuses.

:class:`Checkpoint` writes ``checkpoint.pt`` atomically after every epoch (temporary file,
fsync, ``os.replace``: a crash leaves the previous epoch's checkpoint, never a torn one) and
holds the engine's whole state: the variational and term parameters, the optimizer, every RNG
stream, the history, the callbacks' states and the run's *settings* (learning rate, batch size,
seed, KL weight, particles, schedules, terms, and a fingerprint of the training and transfer
data).

The rules:

- a fresh run (``resume=False``) refuses a folder that already holds a checkpoint, with a
  :class:`~bayesdistill.RunExistsError` that names ``resume`` and ``overwrite``;
  ``overwrite=True`` replaces the old run;
- a resumed run (``resume=True``) compares its settings with the checkpoint's and refuses on
  any difference, naming each one (:class:`~bayesdistill.ResumeMismatchError`); the number of
  epochs may grow only when asked (``extend=True``): the learning-rate schedule then continues
  (:class:`~bayesdistill.infer.LRSchedule`); asking for fewer epochs than the checkpoint holds
  refuses;
- without a checkpoint in the folder, ``resume=True`` starts fresh.

The checkpoint holds tensors and plain data only and is read with ``torch.load(...,
weights_only=True)``: loading a checkpoint never executes code from the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch

from .._io import atomic_write, read_torch_file, remove_stale_temporaries
from ..errors import PosteriorFormatError, ResumeMismatchError, RunExistsError
from .callbacks import Callback, LRSchedule

if TYPE_CHECKING:
    from .engine import SVIEngine

__all__ = ["Checkpoint", "CHECKPOINT_NAME", "load_checkpoint"]

#: The file name of the checkpoint ``fit(checkpoint_dir=...)`` writes in its folder.
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "bayesdistill.checkpoint"
CHECKPOINT_VERSION = 2


def load_checkpoint(path: Union[str, os.PathLike], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :class:`Checkpoint` (``weights_only``: no code runs)."""
    path = Path(path)
    try:
        state = read_torch_file(path, "checkpoint", PosteriorFormatError)
    except PosteriorFormatError as err:
        raise PosteriorFormatError(f"{err}: start a fresh run (overwrite=True, CLI --overwrite)") from err
    if map_location is not None and str(map_location) != "cpu":
        state = _to_device(state, map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise PosteriorFormatError(f"{str(path)!r} is not a bayesdistill checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise PosteriorFormatError(
            f"{str(path)!r} is a checkpoint of format version {state.get('version')!r}; this bayesdistill "
            f"resumes version {CHECKPOINT_VERSION}. Start a fresh run (overwrite=True, CLI --overwrite)"
        )
    return state


def _to_device(value: Any, device: Any) -> Any:
    """Tensors of a loaded state on ``device``, except RNG states, which stay CPU byte tensors."""
    if torch.is_tensor(value):
        return value if value.dtype == torch.uint8 else value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    return value


class Checkpoint(Callback):
    """Write the engine's state to ``directory/checkpoint.pt`` after every epoch; resume from it.

    Args:
        directory: the run's checkpoint folder (created if needed).
        resume: continue from the checkpoint there, if there is one.
        overwrite: replace a run that is already there.
        extend: on resume, allow more epochs than the checkpoint's run planned.
    """

    order = 1000  # after every other callback: what they add to the record is saved

    def __init__(self, directory: Union[str, os.PathLike], *, resume: bool = False, overwrite: bool = False,
                 extend: bool = False):
        self.directory = Path(directory)
        self.path = self.directory / CHECKPOINT_NAME
        if resume and overwrite:
            raise ValueError("resume=True and overwrite=True contradict each other: continue the run or replace it")
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"checkpoint folder {str(self.directory)!r} is a file; choose a folder")
        self.resume, self.overwrite, self.extend = bool(resume), bool(overwrite), bool(extend)
        self.planned = 0  # the number of epochs the run in the folder is planned for
        self.check_fresh()

    def check_fresh(self) -> None:
        """Refuse a fresh run into a folder that holds a run (cheap: call before long work)."""
        if self.path.exists() and not self.resume and not self.overwrite:
            raise RunExistsError(
                f"{str(self.directory)!r} already holds a run (checkpoint.pt); resume it (resume=True, "
                "CLI --resume), replace it (overwrite=True, CLI --overwrite) or choose another folder"
            )

    def on_fit_start(self, engine: "SVIEngine") -> None:
        self.check_fresh()
        engine.settings()  # fingerprint the data now, before training touches anything
        engine.checkpoint_path = self.path
        remove_stale_temporaries(self.path)
        if self.overwrite and self.path.exists():
            self.path.unlink()
        self.planned = engine.epochs
        if self.resume and self.path.exists():
            state = load_checkpoint(self.path, map_location=engine.device)
            self._check_compatible(engine, state)
            engine.load_state_dict(state)
            planned = int(state["settings"]["epochs"])
            if engine.epochs > planned:
                for cb in engine.callbacks:
                    if isinstance(cb, LRSchedule):
                        cb.extend(engine.epoch, engine.epochs)
            self.planned = max(planned, engine.epochs)

    def _check_compatible(self, engine: "SVIEngine", state: dict[str, Any]) -> None:
        where = repr(str(self.path))
        shapes = {k: list(v) for k, v in engine.bnn.shapes.items()}
        if state.get("site_shapes") != shapes:
            raise ResumeMismatchError(
                f"checkpoint {where} was written for another network (its Bayesian parameters and shapes "
                "differ from this one's); point checkpoint_dir at a fresh folder or pass overwrite=True"
            )
        mine, theirs = set(engine.bnn.state_dict()), set(state["bnn"])
        if mine != theirs:
            raise ResumeMismatchError(
                f"checkpoint {where} was written for a differently configured BNN: it has "
                f"{sorted(theirs - mine)} that this BNN lacks and lacks {sorted(mine - theirs)} "
                "(e.g. a learned vs a fixed prior scale); resume with the same configuration or use a fresh folder"
            )
        old, new = dict(state["settings"]), engine.settings()
        planned, done = int(old.pop("epochs")), int(state["epoch"])
        diffs = [f"{k}: the checkpoint has {old.get(k)!r}, this run {new.get(k)!r}"
                 for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if diffs:
            raise ResumeMismatchError(
                f"cannot resume {where} with different settings: " + "; ".join(diffs)
                + ". Resume with the checkpoint's settings, or start a fresh run (overwrite=True or another folder)"
            )
        if engine.epochs < done:
            raise ResumeMismatchError(
                f"checkpoint {where} already holds {done} finished epochs, more than epochs={engine.epochs}; "
                f"ask for epochs >= {done}"
            )
        if engine.epochs > planned and not self.extend:
            raise ResumeMismatchError(
                f"the run in {where} was planned for {planned} epochs; to train it to {engine.epochs} pass "
                "extend=True (CLI --extend): the learning-rate schedule then continues from its current rate"
            )

    def on_epoch_end(self, engine: "SVIEngine", record: dict[str, Any]) -> None:
        if not engine.is_main_process:
            return
        settings = engine.settings()
        settings["epochs"] = self.planned
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            **engine.state_dict(),
            "settings": settings,
            "site_shapes": {k: list(v) for k, v in engine.bnn.shapes.items()},
        }
        atomic_write(self.path, lambda fh: torch.save(state, fh))
