"""Callbacks of the training engine: everything around the SVI step that is not the step.

A callback subclasses :class:`Callback` and overrides the hooks it needs; the engine calls them
in ascending :attr:`Callback.order` (ties: the order given). Every callback can be resumed
exactly: :meth:`Callback.state_dict` goes into the checkpoint after each epoch and
:meth:`Callback.load_state_dict` gets it back on resume. A callback's :meth:`Callback.settings`
are part of the run's settings, which a resumed run must repeat.

Hooks (``engine`` is the :class:`~bayesdistill.infer.SVIEngine`):

- ``on_fit_start(engine)``: before the first epoch (after a resumed state is loaded, for
  callbacks ordered before :class:`~bayesdistill.infer.Checkpoint`, before it);
- ``on_epoch_start(engine, epoch)``: ``epoch`` is 1-based;
- ``on_epoch_end(engine, record)``: ``record`` is the epoch's history row, which a callback may
  extend; set ``engine.should_stop = True`` to stop after this epoch;
- ``on_nonfinite(engine, epoch, step)``: the loss became NaN/inf (``step`` ``None`` when only
  known per epoch); the engine raises :class:`~bayesdistill.NonFiniteLossError` afterwards;
- ``on_fit_end(engine)``: after the last epoch, also after an error.

Built-in: :class:`FunctionCallback` (a plain ``(record, bnn) -> bool`` function),
:class:`KLSchedule`, :class:`LRSchedule`, :class:`NonFiniteGuard`, :class:`Evaluate`,
:class:`EarlyStopping`, :class:`ProgressBar`, :class:`CSVLogger`, :class:`TensorBoardLogger`;
checkpointing is :class:`~bayesdistill.infer.Checkpoint` (``infer/checkpoint.py``).
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from .._checks import check_int, check_number
from .._io import atomic_write
from ..errors import NonFiniteLossError

if TYPE_CHECKING:
    from .engine import SVIEngine

__all__ = [
    "Callback",
    "FunctionCallback",
    "KLSchedule",
    "LRSchedule",
    "NonFiniteGuard",
    "Evaluate",
    "EarlyStopping",
    "ProgressBar",
    "CSVLogger",
    "TensorBoardLogger",
    "history_csv",
]


class Callback:
    """Base class of the engine's callbacks (all hooks do nothing)."""

    #: callbacks run in ascending order; checkpointing runs last (order 1000)
    order: int = 0

    def on_fit_start(self, engine: "SVIEngine") -> None:
        pass

    def on_epoch_start(self, engine: "SVIEngine", epoch: int) -> None:
        pass

    def on_epoch_end(self, engine: "SVIEngine", record: dict[str, Any]) -> None:
        pass

    def on_nonfinite(self, engine: "SVIEngine", epoch: int, step: Optional[int]) -> None:
        pass

    def on_fit_end(self, engine: "SVIEngine") -> None:
        pass

    def settings(self) -> dict[str, Any]:
        """Settings a resumed run must repeat (plain values); default none."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a bit-identical resume needs; default nothing."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class FunctionCallback(Callback):
    """A plain function ``(record, bnn) -> bool | None`` run after each epoch; ``True`` stops."""

    def __init__(self, fn: Callable[[dict[str, Any], Any], Optional[bool]]):
        if not callable(fn):
            raise TypeError(f"a callback must be a bd.infer.Callback or a callable (record, bnn), got {fn!r}")
        self.fn = fn

    def on_epoch_end(self, engine: "SVIEngine", record: dict[str, Any]) -> None:
        if self.fn(record, engine.bnn) is True:
            engine.should_stop = True


def _weight_at(schedule: Union[float, Callable[[int], float]], epoch: int) -> float:
    w = float(schedule(epoch)) if callable(schedule) else float(schedule)
    if not (w >= 0 and math.isfinite(w)):
        raise ValueError(f"kl_weight must be a finite number >= 0, got {w} at epoch {epoch}")
    return w


class KLSchedule(Callback):
    """Set the KL weight per epoch: ``weight(epoch)`` (1-based), e.g. ``lambda e: min(1, e / 10)``
    for a warm-up. The weight multiplies the KL through the guide and prior sites' scale."""

    def __init__(self, weight: Callable[[int], float]):
        if not callable(weight):
            raise TypeError(f"KLSchedule expects a callable epoch -> weight, got {weight!r}")
        self.weight = weight

    def on_epoch_start(self, engine: "SVIEngine", epoch: int) -> None:
        engine.bnn.kl_weight = _weight_at(self.weight, epoch)

    def settings(self) -> dict[str, Any]:
        return {"kl_weight": "schedule"}


class LRSchedule(Callback):
    """Learning-rate schedule over the epochs: ``"cosine"`` or a callable ``optimizer -> torch
    LR scheduler`` (stepped after each epoch).

    ``"cosine"`` sets the rate used in epoch ``e`` of a plan of ``T`` epochs to
    ``lr * (1 + cos(pi (e - 1) / T)) / 2`` (from ``lr`` down towards 0). It is a function of
    the epoch, so a resumed run continues it exactly. When a resumed run is *extended* to more
    epochs (``extend=True``), the remaining epochs follow a new cosine that starts at the rate the
    old plan would have used next (at the last rate used, when the old plan was finished) and
    decays over the new remainder: the rate keeps falling, it never restarts at ``lr``.
    """

    def __init__(self, schedule: Union[str, Callable[[torch.optim.Optimizer], Any]]):
        if not (schedule == "cosine" or callable(schedule)):
            raise ValueError(
                f"lr_schedule must be None, 'cosine' or a callable(optimizer) -> scheduler, got {schedule!r}"
            )
        self.schedule = schedule
        self.scheduler: Any = None
        # cosine plan: segments (first epoch, last epoch, starting factor)
        self.segments: list[tuple[int, int, float]] = []
        self.base_lrs: list[float] = []

    def settings(self) -> dict[str, Any]:
        return {"lr_schedule": "cosine" if self.schedule == "cosine" else "callable"}

    def factor(self, epoch: int) -> float:
        """Multiplier of the base rate in ``epoch`` (cosine plans)."""
        for first, last, start in reversed(self.segments):
            if epoch >= first:
                span = last - first + 1
                return start * 0.5 * (1.0 + math.cos(math.pi * min(epoch - first, span) / span))
        return 1.0

    def on_fit_start(self, engine: "SVIEngine") -> None:
        self.base_lrs = [g["lr"] for g in engine.optimizer.param_groups]
        if self.schedule == "cosine":
            if not self.segments:
                self.segments = [(1, max(engine.epochs, 1), 1.0)]
        elif self.scheduler is None:
            self.scheduler = self.schedule(engine.optimizer)

    def extend(self, done: int, epochs: int) -> None:
        """Continue a cosine plan after epoch ``done`` up to ``epochs`` (see class docstring)."""
        if self.schedule != "cosine" or not self.segments or epochs <= self.segments[-1][1]:
            return
        last = self.segments[-1][1]
        start = self.factor(done + 1) if done < last else self.factor(done)
        self.segments.append((done + 1, epochs, start))

    def on_epoch_start(self, engine: "SVIEngine", epoch: int) -> None:
        if self.schedule == "cosine":
            f = self.factor(epoch)
            for g, base in zip(engine.optimizer.param_groups, self.base_lrs):
                g["lr"] = base * f

    def on_epoch_end(self, engine: "SVIEngine", record: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"segments": [list(s) for s in self.segments], "base_lrs": list(self.base_lrs),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.segments = [tuple(s) for s in state.get("segments", [])]  # type: ignore[misc]
        self.base_lrs = list(state.get("base_lrs", self.base_lrs))
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def _snapshot(state: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a ``state_dict`` that later in-place updates do not touch."""
    return {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in state.items()}


class NonFiniteGuard(Callback):
    """Restore the network (and the terms) to the start of an epoch whose loss became NaN/inf,
    and raise :class:`~bayesdistill.NonFiniteLossError` with a diagnosis. ``bd.fit`` always
    adds it; training never ends in a silent NaN."""

    order = -100  # snapshot before any other callback changes state

    def __init__(self) -> None:
        self.snapshot: Optional[dict[str, Any]] = None
        self.term_snapshot: Optional[dict[str, Any]] = None

    def on_epoch_start(self, engine: "SVIEngine", epoch: int) -> None:
        self.snapshot = _snapshot(engine.bnn.state_dict())
        terms = engine.objective.terms if engine.objective is not None else None
        self.term_snapshot = _snapshot(terms.state_dict()) if terms is not None else None

    def on_nonfinite(self, engine: "SVIEngine", epoch: int, step: Optional[int]) -> None:
        error = nonfinite_error(engine, epoch, step)  # diagnose before restoring
        if self.snapshot is not None:
            engine.bnn.load_state_dict(self.snapshot)
        if self.term_snapshot is not None and engine.objective is not None:
            engine.objective.terms.load_state_dict(self.term_snapshot)
        raise error


def nonfinite_error(engine: "SVIEngine", epoch: int, step: Optional[int]) -> NonFiniteLossError:
    """The error a non-finite loss raises, with the likely cause."""
    where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
    lr = engine.lr
    if not all(torch.isfinite(p).all() for p in engine.bnn.parameters()):
        cause = f"the variational parameters diverged: lower the learning rate (lr={lr}) or set clip_grad_norm"
    else:
        cause = (
            f"the objective itself was not finite with finite parameters: a too high learning rate "
            f"(lr={lr}) that overshot in one step, extreme inputs or targets, or a likelihood/prior "
            "scale near zero; try a lower lr, clip_grad_norm, or standardized data"
        )
    ckpt = engine.checkpoint_path
    kept = f" The last good checkpoint is {str(ckpt)!r}." if ckpt is not None and ckpt.exists() else ""
    return NonFiniteLossError(
        f"the ELBO became NaN/inf at {where}. Likely cause: {cause}. The network was restored to its "
        f"state at the start of epoch {epoch}.{kept}",
        epoch=epoch,
        step=step,
        checkpoint=str(ckpt) if ckpt is not None and ckpt.exists() else None,
    )


class Evaluate(Callback):
    """Evaluate the posterior predictive on held-out data after every ``every`` epochs
    (``bd.evaluate`` with ``num_samples`` draws); adds ``<prefix><metric>`` columns."""

    order = -10  # before user callbacks, which may read the columns

    def __init__(self, data: Any, num_samples: int = 8, every: int = 1, prefix: str = "eval_",
                 batch_size: int = 1024):
        self.data = data
        self.num_samples = check_int("eval_samples", num_samples, minimum=1)
        self.every = check_int("every", every, minimum=1)
        self.prefix, self.batch_size = prefix, batch_size
        self._batches = None

    def on_fit_start(self, engine: "SVIEngine") -> None:
        from .batches import Batches

        self._batches = Batches(self.data, self.batch_size, engine.device, 0, shuffle=False,
                                adapter=engine.adapter, what="evaluation data")
        engine.bnn.check_data(*_first_xy(self._batches))

    def on_epoch_end(self, engine: "SVIEngine", record: dict[str, Any]) -> None:
        from .predictive import evaluate

        if record["epoch"] % self.every:
            return
        scores = evaluate(engine.bnn, self._batches, num_samples=self.num_samples)
        record.update({f"{self.prefix}{k}": v for k, v in scores.items() if k != "num_samples"})
        engine.bnn.train()


def _first_xy(batches: Any) -> tuple[Any, Any]:
    b = batches.first()
    return b.x, b.y


class EarlyStopping(Callback):
    """Stop when the history column ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs (``mode="max"`` for the ELBO or an accuracy, ``"min"`` for a loss)."""

    def __init__(self, monitor: str = "elbo", mode: str = "max", patience: int = 10, min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping: mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.patience = check_int("patience", patience, minimum=1)
        self.min_delta = check_number("min_delta", min_delta, minimum=0.0)
        self.best: Optional[float] = None
        self.wait = 0

    def settings(self) -> dict[str, Any]:
        return {"early_stopping": [self.monitor, self.mode, self.patience, self.min_delta]}

    def on_epoch_end(self, engine: "SVIEngine", record: dict[str, Any]) -> None:
        if self.monitor not in record:
            raise KeyError(f"EarlyStopping: the history has no column {self.monitor!r}; it has {sorted(record)}")
        value = float(record[self.monitor])
        better = self.best is None or (value > self.best + self.min_delta if self.mode == "max"
                                       else value < self.best - self.min_delta)
        if better:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                engine.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))


class ProgressBar(Callback):
    """A tqdm bar with one tick per epoch and the ELBO, NLL and KL as its postfix."""

    order = 900

    def __init__(self, desc: str = "fit") -> None:
        self.desc = desc
        self.bar: Any = None

    def on_fit_start(self, engine: "SVIEngine") -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=engine.epochs, initial=engine.epoch, desc=self.desc, unit="epoch", leave=True,
                        disable=not engine.is_main_process)

    def on_epoch_end(self, engine: "SVIEngine", record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(elbo=f"{record['elbo']:.4g}", nll=f"{record['nll']:.4g}", kl=f"{record['kl']:.4g}")

    def on_fit_end(self, engine: "SVIEngine") -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def history_csv(history: list[Mapping[str, Any]]) -> str:
    """A history (one dict per epoch) as CSV text; columns in order of first appearance."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys or ["epoch"])
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


class CSVLogger(Callback):
    """Write the whole history to ``path`` (CSV) after every epoch, atomically."""

    order = 950

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)

    def on_epoch_end(self, engine: "SVIEngine", record: dict[str, Any]) -> None:
        if engine.is_main_process:
            text = history_csv(engine.history)
            atomic_write(self.path, lambda fh: fh.write(text), binary=False)


class TensorBoardLogger(Callback):
    """Log every numeric history column to TensorBoard (``torch.utils.tensorboard``; needs the
    ``tensorboard`` package: ``pip install tensorboard``)."""

    order = 950

    def __init__(self, log_dir: Union[str, os.PathLike]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # the tensorboard package is missing
            raise ImportError(
                "TensorBoardLogger needs the tensorboard package: pip install tensorboard "
                "(CSVLogger needs nothing)"
            ) from err
        self._writer_cls = SummaryWriter
        self.log_dir = str(log_dir)
        self.writer: Any = None

    def on_epoch_end(self, engine: "SVIEngine", record: dict[str, Any]) -> None:
        if not engine.is_main_process:
            return
        if self.writer is None:
            self.writer = self._writer_cls(self.log_dir)
        for k, v in record.items():
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(k, v, record["epoch"])
        self.writer.flush()

    def on_fit_end(self, engine: "SVIEngine") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
