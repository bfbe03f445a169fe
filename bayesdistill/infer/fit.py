"""``fit``: stochastic variational inference for a :class:`~bayesdistill.BNN` in one call.

A thin wrapper over :class:`~bayesdistill.infer.SVIEngine`: it turns the common options into
the engine and its callbacks (schedules, held-out evaluation, progress bar, checkpoints with
a CSV history, the non-finite guard) and runs it. Use the engine directly for anything else.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import torch

from ..bnn.network import BNN
from .batches import Data
from .callbacks import CSVLogger, Evaluate, KLSchedule, LRSchedule, NonFiniteGuard, ProgressBar
from .checkpoint import Checkpoint
from .engine import FitResult, SVIEngine
from .objective import Term

__all__ = ["fit", "FitResult"]


def fit(
    bnn: BNN,
    data: Data,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    lr_schedule: Union[None, str, Callable[[torch.optim.Optimizer], Any]] = None,
    kl_weight: Union[float, Callable[[int], float]] = 1.0,
    seed: Optional[int] = 0,
    device: Union[str, torch.device, None] = None,
    distill: Sequence[Term] = (),
    transfer: Optional[Data] = None,
    eval_data: Optional[Data] = None,
    callbacks: Sequence[Any] = (),
    checkpoint_dir: Union[str, os.PathLike, None] = None,
    resume: bool = False,
    progress: bool = True,
    **options: Any,
) -> FitResult:
    """Fit the mean-field posterior of ``bnn`` by SVI (Pyro, :class:`~bayesdistill.MeanFieldELBO`, Adam).

    Args:
        bnn: the Bayesian network; trained in place. Its ``dataset_size`` (N, which scales the
            batch likelihood by N / B) is taken from the data when it is ``None``; a value that
            differs from the number of training examples is warned about.
        data: training data: a ``TensorDataset``, an ``(x, y)`` tuple, any ``Dataset`` or a
            ``DataLoader`` (used as given); batches that are not ``(x, y)`` need ``batch=``.
        epochs: the total number of passes over ``data`` (resumed epochs included).
        batch_size: examples per SVI step.
        lr: Adam learning rate.
        lr_schedule: ``None``, ``"cosine"`` or a callable ``optimizer -> torch LR scheduler``
            (see :class:`~bayesdistill.infer.LRSchedule`).
        kl_weight: multiplies the KL: a float (< 1: a "cold" posterior), or a callable
            ``epoch -> weight`` (1-based epochs) for annealing, e.g. ``lambda e: min(1.0, e / 10)``.
            The network keeps the last weight (``bnn.kl_weight``), so plain Pyro SVI continuing
            from it optimizes the same objective.
        seed: seeds Pyro/torch/numpy/random and the batch order; CPU runs are bit-reproducible
            at a fixed thread count (``torch.get_num_threads()``: results differ in the last
            bits between thread counts). ``None`` leaves the global RNGs alone.
        device: ``"cpu"``, ``"cuda"``, ...; the BNN and batches are moved there (default: where
            the BNN is).
        distill: function-space terms (``bd.distill.KD``, ``VID``, ``PKT``, ``Hint``, ...)
            added to the student's objective; their metrics become ``distill/<term>/<metric>``
            history columns.
        transfer: unlabelled inputs on which only the distillation terms act: each labelled
            step also takes one transfer batch.
        eval_data: held-out data evaluated after each epoch (``eval_*`` columns).
        callbacks: :class:`~bayesdistill.infer.Callback` objects or plain functions
            ``(record, bnn) -> bool | None`` run after each epoch; ``True`` stops training.
        checkpoint_dir: write ``checkpoint.pt`` and ``history.csv`` there after every epoch
            (atomically). A folder that already holds a run is refused unless ``resume`` or
            ``overwrite=True`` (:class:`~bayesdistill.infer.Checkpoint`).
        resume: continue from the checkpoint in ``checkpoint_dir`` if there is one; the run's
            settings and data must be the checkpoint's.
        progress: show a progress bar (one tick per epoch).
        **options: further options of :class:`~bayesdistill.infer.SVIEngine` (``num_particles``,
            ``local_reparam``, ``clip_grad_norm``, ``weight_decay``, ``batch``), of the held-out
            evaluation (``eval_samples``, default 8) and of the checkpoint (``overwrite``,
            ``extend``: allow a resumed run more epochs than planned).

    Returns:
        A :class:`FitResult` with the per-epoch history.

    Raises:
        DataError: the data do not fit the network or the likelihood (raised before training).
        RunExistsError, ResumeMismatchError: see :class:`~bayesdistill.infer.Checkpoint`.
        NonFiniteLossError: the ELBO became NaN/inf; the BNN is restored to its state at the
            start of that epoch (the last good checkpoint on disk is untouched).
    """
    eval_samples = options.pop("eval_samples", 8)
    overwrite, extend = options.pop("overwrite", False), options.pop("extend", False)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir= (where the checkpoint is)")
    cbs: list[Any] = [NonFiniteGuard()]
    if checkpoint_dir is not None:  # first: a folder holding a run is refused before any work
        cbs += [Checkpoint(checkpoint_dir, resume=resume, overwrite=overwrite, extend=extend),
                CSVLogger(os.path.join(checkpoint_dir, "history.csv"))]
    elif overwrite or extend:
        raise ValueError("overwrite= and extend= apply to a checkpoint: pass checkpoint_dir=")
    if callable(kl_weight):
        cbs.append(KLSchedule(kl_weight))
        kl_weight = 1.0
    if lr_schedule is not None:
        cbs.append(LRSchedule(lr_schedule))
    if eval_data is not None:
        cbs.append(Evaluate(eval_data, num_samples=eval_samples))
    if progress:
        cbs.append(ProgressBar())
    engine = SVIEngine(bnn, data, batch_size=batch_size, lr=lr, device=device, seed=seed, kl_weight=kl_weight,
                       terms=list(distill), transfer=transfer, callbacks=[*cbs, *callbacks], **options)
    return engine.run(epochs)
