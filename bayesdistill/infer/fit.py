"""``fit``: stochastic variational inference for a :class:`~bayesdistill.BNN`.

One SVI step is: trace the BNN's mean-field guide, replay its model against the draw, take the
negative ELBO of :class:`~bayesdistill.infer.MeanFieldELBO` (expected NLL on the batch scaled
to the data set, plus the exact KL), backpropagate, and update all variational parameters with
one ``torch.optim`` optimizer. The hot path follows ``DESIGN.md`` section 2: Pyro validation and
parameter-store registration are off, tensors stay on the device, and the host synchronizes
once per epoch on CUDA (once per step on CPU, where checking the loss is free).

Checkpoints (``checkpoint_dir=``) hold the variational parameters, the optimizer and scheduler
state, every RNG state and the history; they are written atomically after each epoch, and
``resume=True`` continues from the last one so that a crash loses no finished epoch (a resumed
CPU run is bit-identical to an uninterrupted one).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pyro
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm import tqdm

from ..bnn.local_reparam import LAYER_CHOICES, LocalReparameterization
from ..bnn.network import BNN
from ..bnn.posterior import atomic_save
from ..errors import DataError, NonFiniteLossError
from .elbo import MeanFieldELBO

__all__ = ["fit", "FitResult", "Batches", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1

Data = Union[Dataset, DataLoader, tuple[Tensor, Tensor]]
Callback = Callable[[dict[str, float], BNN], Optional[bool]]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per epoch: ``epoch``, ``elbo`` (nats, full data set), ``nll``
            (expected negative log-likelihood of the data set, nats), ``kl`` (KL(q||p), nats,
            unweighted), ``loss`` (the objective optimized: nll + kl_weight * kl, averaged over
            the epoch's steps), ``kl_weight``, ``lr``, ``time_s`` (wall time of the epoch), and
            ``eval_*`` metrics when ``eval_data`` was given.
        bnn: the trained network (the same object that was passed in).
        stopped_early: a callback asked to stop.
        checkpoint: path of the last checkpoint written, if any.
    """

    history: list[dict[str, float]]
    bnn: BNN
    stopped_early: bool = False
    checkpoint: Optional[Path] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def column(self, key: str) -> list[float]:
        """One history column, e.g. ``result.column("elbo")``."""
        return [row[key] for row in self.history]

    def to_csv(self, path: Union[str, Path]) -> Path:
        """Write the history as CSV (one row per epoch)."""
        import csv

        path = Path(path)
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        return path


class Batches:
    """Mini-batches ``(x, y)`` on a device, reproducible per (seed, epoch).

    A ``TensorDataset`` or an ``(x, y)`` tuple is moved to the device once and sliced with a
    per-epoch permutation (no per-example Python work); any other ``Dataset`` goes through a
    ``DataLoader`` whose shuffling generator is seeded per epoch; a ``DataLoader`` is used as
    given.
    """

    def __init__(self, data: Data, batch_size: int, device: torch.device, seed: int, shuffle: bool = True):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.device, self.seed, self.batch_size, self.shuffle = device, seed, batch_size, shuffle
        self.loader: Optional[DataLoader] = None
        self.tensors: Optional[tuple[Tensor, ...]] = None
        if isinstance(data, tuple) and all(torch.is_tensor(t) for t in data):
            if len({t.shape[:1] for t in data}) > 1:  # TensorDataset would raise a bare AssertionError
                raise DataError(
                    "inputs and targets differ in length: the (x, y) tensors have shapes "
                    f"{[tuple(t.shape) for t in data]}"
                )
            data = TensorDataset(*data)
        if isinstance(data, TensorDataset):
            self.tensors = tuple(t.to(device) for t in data.tensors)
        elif isinstance(data, DataLoader):
            self.loader = data
        elif isinstance(data, Dataset):
            self.dataset = data
        else:
            raise DataError(
                f"training data must be a torch Dataset, a DataLoader or an (x, y) tuple of tensors, "
                f"got {type(data).__name__}"
            )

    def __len__(self) -> int:
        if self.tensors is not None:
            return math.ceil(len(self.tensors[0]) / self.batch_size)
        if self.loader is not None:
            return len(self.loader)
        return math.ceil(len(self.dataset) / self.batch_size)  # type: ignore[arg-type]

    @property
    def num_examples(self) -> int:
        if self.tensors is not None:
            return len(self.tensors[0])
        return len(self.loader.dataset if self.loader is not None else self.dataset)  # type: ignore[arg-type]

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, ...]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.tensors is not None:
            n = len(self.tensors[0])
            order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
            order = order.to(self.device)
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                yield tuple(t.index_select(0, idx) for t in self.tensors)
            return
        loader = self.loader or DataLoader(self.dataset, self.batch_size, shuffle=self.shuffle, generator=gen)
        for batch in loader:
            if torch.is_tensor(batch):
                batch = (batch,)
            yield tuple(t.to(self.device, non_blocking=True) for t in batch)

    def first(self) -> tuple[Tensor, ...]:
        return next(iter(self.epoch(0)))


def _resolve_device(bnn: BNN, device: Union[str, torch.device, None]) -> torch.device:
    if device is None:
        return bnn.loc.device
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={str(device)!r} was requested but CUDA is not available here; use device='cpu'")
    return device


def _validate(bnn: BNN, batches: Batches) -> None:
    """Check the data against the network and likelihood before training starts."""
    if batches.tensors is not None:
        x, *rest = batches.tensors
        if x.is_floating_point() and not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x.reshape(len(x), -1))).any(1).nonzero()[0])
            raise DataError(f"training inputs contain NaN or inf (first in example {bad})")
        if not rest:
            raise DataError("training data hold inputs only; fit needs (inputs, targets)")
        y = rest[0]
        if y.is_floating_point() and not torch.isfinite(y).all():
            raise DataError("training targets contain NaN or inf")
        if len(y) != len(x):
            raise DataError(f"inputs and targets differ in length: {len(x)} inputs, {len(y)} targets")
        # check the whole label vector against the output of the first batch
        out = bnn.check_data(x[: batches.batch_size])
        bnn.likelihood.check(out[:1].expand(len(y), *out.shape[1:]), y)
        return
    batch = batches.first()
    if len(batch) < 2:
        raise DataError("training batches hold inputs only; fit needs (inputs, targets)")
    bnn.check_data(batch[0], batch[1])


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    # RNG states must be CPU ByteTensors; torch.load(map_location="cuda") moves them to the GPU
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _make_scheduler(optimizer: torch.optim.Optimizer, lr_schedule: Any, epochs: int):
    if lr_schedule is None:
        return None
    if lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if callable(lr_schedule):
        return lr_schedule(optimizer)
    raise ValueError(f"lr_schedule must be None, 'cosine' or a callable(optimizer) -> scheduler, got {lr_schedule!r}")


def _kl_weight_at(kl_weight: Union[float, Callable[[int], float]], epoch: int) -> float:
    w = float(kl_weight(epoch)) if callable(kl_weight) else float(kl_weight)
    if not (w >= 0 and math.isfinite(w)):
        raise ValueError(f"kl_weight must be a finite number >= 0, got {w} at epoch {epoch}")
    return w


def _snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a ``state_dict`` that later in-place updates do not touch (tensors cloned,
    extra state such as a distillation term's weight copied)."""
    return {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in state.items()}


def fit(
    bnn: BNN,
    data: Data,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    device: Union[str, torch.device, None] = None,
    seed: Optional[int] = 0,
    num_particles: int = 1,
    local_reparam: Union[bool, str] = False,
    kl_weight: Union[float, Callable[[int], float]] = 1.0,
    clip_grad_norm: Optional[float] = None,
    lr_schedule: Union[None, str, Callable[[torch.optim.Optimizer], Any]] = None,
    weight_decay: float = 0.0,
    callbacks: Sequence[Callback] = (),
    distill: Sequence[Any] = (),
    transfer: Optional[Data] = None,
    eval_data: Optional[Data] = None,
    eval_samples: int = 8,
    progress: bool = True,
    checkpoint_dir: Union[str, Path, None] = None,
    resume: bool = False,
) -> FitResult:
    """Fit the mean-field posterior of ``bnn`` by SVI (Pyro, :class:`MeanFieldELBO`, Adam).

    Args:
        bnn: the Bayesian network; trained in place.
        data: training data: a ``TensorDataset``, an ``(x, y)`` tuple, any ``Dataset`` yielding
            ``(x, y)``, or a ``DataLoader`` (used as given).
        epochs: number of passes over ``data`` (the total, counting resumed epochs).
        batch_size: examples per SVI step.
        lr: Adam learning rate.
        device: ``"cpu"``, ``"cuda"``, ...; the BNN and batches are moved there (default: where
            the BNN is).
        seed: seeds Pyro/torch/numpy/random and the batch order; CPU runs are bit-reproducible.
            ``None`` leaves the global RNGs alone.
        num_particles: Monte Carlo particles per ELBO estimate.
        local_reparam: sample pre-activations instead of weights (local reparameterization,
            Kingma et al. 2015); the KL stays exact. ``True`` or ``"all"``: Linear and Conv
            layers; ``"linear"``: Linear layers only (for convolutions the method samples
            positions independently, a different estimator; see ``bd.local_reparameterization``).
        kl_weight: multiplies the KL (through the guide and prior sites' scale): a float, or a
            callable ``epoch -> weight`` (1-based epochs) for annealing, e.g.
            ``lambda e: min(1.0, e / 10)``. Values < 1 give a "cold" posterior.
        clip_grad_norm: clip the global gradient norm to this value.
        lr_schedule: ``None``, ``"cosine"`` (cosine annealing over ``epochs``) or a callable
            ``optimizer -> torch LR scheduler``, stepped once per epoch.
        weight_decay: Adam weight decay on all variational parameters (normally 0: the KL term is
            the regularizer).
        callbacks: callables ``(record, bnn) -> bool | None`` run after each epoch with that
            epoch's history record; returning ``True`` stops training.
        distill: function-space terms (:class:`bayesdistill.distill.KD`, ``VID``, ``PKT``,
            ``Hint``) added to the student's objective; each epoch's history gets one column per
            term (its mean loss, nats per example) and, for VID, ``vid.<i>.log_q`` and
            ``vid.<i>.mi_bound`` (the lower bound H(t) + E[log q(t|s)] on I(t; s), nats).
        transfer: unlabelled inputs (a tensor, a ``TensorDataset`` of inputs, ...) on which only
            the distillation terms act: each labelled step also takes one transfer batch.
        eval_data: optional held-out data evaluated after each epoch (``eval_*`` columns) with
            ``eval_samples`` posterior samples.
        progress: show a progress bar (one tick per epoch).
        checkpoint_dir: write ``checkpoint.pt`` there atomically after every epoch.
        resume: continue from the checkpoint in ``checkpoint_dir`` if there is one.

    Returns:
        A :class:`FitResult` with the per-epoch history.

    Raises:
        DataError: the data do not fit the network or the likelihood (raised before training).
        NonFiniteLossError: the ELBO became NaN/inf; the BNN is restored to its state at the
            start of that epoch (the last good checkpoint on disk is untouched).
    """
    if not isinstance(bnn, BNN):
        raise TypeError(f"fit expects a bd.BNN, got {type(bnn).__name__}; wrap your network with bd.BNN(net, ...)")
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir= (where the checkpoint is)")
    if local_reparam is True:
        lrt_layers: Optional[str] = "all"
    elif local_reparam is False or local_reparam is None:
        lrt_layers = None
    elif isinstance(local_reparam, str) and local_reparam in LAYER_CHOICES:
        lrt_layers = local_reparam
    else:
        raise ValueError(f"local_reparam must be True, False, 'all' or 'linear', got {local_reparam!r}")
    device = _resolve_device(bnn, device)
    bnn.to(device)
    if seed is not None:
        pyro.set_rng_seed(seed)
    # the batch order is seeded by `seed`; without one it comes from the global torch RNG
    batch_seed = seed if seed is not None else int(torch.randint(2**31 - 1, ()))
    batches = Batches(data, batch_size, device, batch_seed)
    _validate(bnn, batches)
    eval_batches = Batches(eval_data, 1024, device, 0, shuffle=False) if eval_data is not None else None

    objective = None
    model, guide = bnn.model, bnn.guide
    transfer_batches = None
    if distill:
        from ..distill.function_space import DistillObjective

        objective = DistillObjective(bnn, list(distill))
        for term in objective.terms:  # the teacher runs on the student's device
            teacher_model = term.teacher_features.teacher
            if isinstance(teacher_model, torch.nn.Module):
                teacher_model.to(device)
        # shapes, and H(t) of VID pairs, from up to 1024 training inputs (not one batch)
        probe = batches.tensors[0][:1024] if batches.tensors is not None else batches.first()[0]
        objective.setup(probe)
        objective.terms.to(device)
        model, guide = objective.model, objective.guide
        if transfer is not None:
            transfer_batches = Batches(transfer if not torch.is_tensor(transfer) else (transfer,), batch_size, device, batch_seed + 1)
    elif transfer is not None:
        raise ValueError("transfer= only makes sense with distill= terms (the likelihood needs labels)")
    train_params = list(bnn.parameters()) + (list(objective.parameters()) if objective is not None else [])
    optimizer = torch.optim.Adam(train_params, lr=lr, weight_decay=weight_decay)
    scheduler = _make_scheduler(optimizer, lr_schedule, epochs)
    elbo = MeanFieldELBO(num_particles=num_particles)
    history: list[dict[str, float]] = []
    start_epoch = 1
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    config = {"batch_size": batch_size, "lr": lr, "seed": seed, "num_particles": num_particles,
              "local_reparam": local_reparam, "num_examples": batches.num_examples}

    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt.get("version") != CHECKPOINT_VERSION or ckpt.get("site_shapes") != {k: tuple(v) for k, v in bnn.shapes.items()}:
            raise ValueError(
                f"checkpoint {str(ckpt_path)!r} was written for another network or format; "
                "point checkpoint_dir at a fresh folder or delete it"
            )
        mine, theirs = set(bnn.state_dict()), set(ckpt["bnn"])
        if mine != theirs:
            raise ValueError(
                f"checkpoint {str(ckpt_path)!r} was written for a differently configured BNN: it has "
                f"{sorted(theirs - mine)} that this BNN lacks and lacks {sorted(mine - theirs)} "
                "(e.g. a learned vs a fixed prior scale); resume with the same configuration or use a fresh folder"
            )
        bnn.load_state_dict(ckpt["bnn"])
        if objective is not None and ckpt.get("distill") is not None:
            objective.terms.load_state_dict(ckpt["distill"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"], device)
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"]) + 1

    params = [p for p in train_params if p.requires_grad]
    check_each_step = device.type == "cpu"
    stopped = False
    saved_register, saved_weight, was_training = bnn._register_params, bnn.kl_weight, bnn.training
    bnn._register_params = False
    bnn.train()
    bar = tqdm(range(start_epoch, epochs + 1), disable=not progress, desc="fit", unit="epoch",
               initial=start_epoch - 1, total=epochs, leave=True)
    try:
        with pyro.validation_enabled(False):
            for epoch in bar:
                t0 = time.perf_counter()
                bnn.kl_weight = _kl_weight_at(kl_weight, epoch)
                snapshot = _snapshot(bnn.state_dict())
                term_snapshot = (
                    _snapshot(objective.terms.state_dict()) if objective is not None else None
                )
                loss_sum = torch.zeros((), device=device)
                nll_sum = torch.zeros((), device=device)
                first_bad = torch.full((), -1, dtype=torch.long, device=device)
                steps = 0
                term_sums: dict[str, Tensor] = {}
                # each epoch starts its own seeded pass over the transfer set: resumable
                transfer_iter = _cycle(transfer_batches, epoch * 10_007) if transfer_batches is not None else None
                for steps, (x, y, *_) in enumerate(batches.epoch(epoch), start=1):
                    optimizer.zero_grad(set_to_none=True)
                    try:
                        with LocalReparameterization(lrt_layers) if lrt_layers else nullcontext():
                            loss = elbo.differentiable_loss(model, guide, x, y)
                            if objective is not None:
                                parts = dict(elbo.last_parts)
                                _add(term_sums, objective.step_values())
                                if transfer_iter is not None:
                                    (xt, *_) = next(transfer_iter)
                                    # the KL was counted once, on the labelled batch: the
                                    # transfer batch adds only its distillation terms
                                    kl_w, bnn.kl_weight = bnn.kl_weight, 0.0
                                    try:
                                        loss = loss + elbo.differentiable_loss(model, guide, xt, None, transfer_batches.num_examples)
                                    finally:
                                        bnn.kl_weight = kl_w
                                    _add(term_sums, objective.step_values())
                                    parts["nll"] = parts["nll"] + elbo.last_parts["nll"]
                                elbo.last_parts = parts
                    except (RuntimeError, IndexError, ValueError) as err:
                        # data that are not tensors are only checked batch by batch: name the
                        # bad batch instead of surfacing a bare indexing error
                        _explain_batch_error(bnn, x, y, epoch, steps, err)
                        raise
                    finite = torch.isfinite(loss)
                    if check_each_step:  # CPU: checking now costs nothing, and stops before the update
                        if not bool(finite):
                            first_bad.fill_(steps)
                            break
                    else:  # CUDA: record the first bad step on the device, read it once per epoch
                        first_bad = torch.where((first_bad < 0) & ~finite, steps, first_bad)
                    loss.backward()
                    if clip_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                    optimizer.step()
                    loss_sum += loss.detach()
                    nll_sum += elbo.last_parts["nll"]
                bad_step = int(first_bad)  # one host sync per epoch
                if bad_step >= 0 or not math.isfinite(float(loss_sum)):
                    error = _nonfinite_error(bnn, epoch, bad_step if bad_step >= 0 else None, lr, ckpt_path)
                    bnn.load_state_dict(snapshot)
                    if term_snapshot is not None:
                        objective.terms.load_state_dict(term_snapshot)  # after the diagnosis, which inspects the diverged parameters
                    raise error
                if scheduler is not None:
                    scheduler.step()
                with torch.no_grad():
                    kl = float(bnn.kl())
                nll = float(nll_sum) / max(steps, 1)
                record = {
                    "epoch": epoch,
                    "elbo": -(nll + kl),
                    "nll": nll,
                    "kl": kl,
                    "loss": float(loss_sum) / max(steps, 1),
                    "kl_weight": bnn.kl_weight,
                    "lr": optimizer.param_groups[0]["lr"],
                    "time_s": time.perf_counter() - t0,
                }
                if objective is not None:
                    calls = max(steps, 1) * (2 if transfer_iter is not None else 1)
                    for k, v in term_sums.items():
                        record[k] = float(v) / calls
                        if k.endswith(".log_q"):
                            pair = k[: -len(".log_q")]
                            record[f"{pair}.mi_bound"] = objective.entropies.get(pair, math.nan) + record[k]
                if eval_batches is not None:
                    from .predictive import evaluate

                    scores = evaluate(bnn, eval_batches, num_samples=eval_samples)
                    record.update({f"eval_{k}": v for k, v in scores.items() if k != "num_samples"})
                    bnn.train()
                history.append(record)
                bar.set_postfix(elbo=f"{record['elbo']:.4g}", nll=f"{nll:.4g}", kl=f"{kl:.4g}")
                # callbacks run before the checkpoint is written, so that what they add to the
                # record (or change in the terms) is checkpointed; a failing callback still
                # leaves this epoch's checkpoint behind
                stop = False
                try:
                    stop = any(cb(record, bnn) is True for cb in callbacks)
                finally:
                    if ckpt_path is not None:
                        atomic_save(
                            {
                                "version": CHECKPOINT_VERSION,
                                "epoch": epoch,
                                "bnn": bnn.state_dict(),
                                "distill": objective.terms.state_dict() if objective is not None else None,
                                "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                                "rng": _rng_state(device),
                                "history": history,
                                "config": config,
                                "site_shapes": {k: tuple(v) for k, v in bnn.shapes.items()},
                            },
                            ckpt_path,
                        )
                if stop:
                    stopped = True
                    break
    finally:
        bar.close()
        bnn._register_params, bnn.kl_weight = saved_register, saved_weight
        bnn.train(was_training)
    return FitResult(history, bnn, stopped, ckpt_path if ckpt_path is not None and ckpt_path.exists() else None)


def _explain_batch_error(bnn: BNN, x: Tensor, y: Tensor, epoch: int, step: int, err: Exception) -> None:
    """Raise a :class:`DataError` naming the batch if it does not fit the network/likelihood."""
    try:
        bnn.check_data(x, y)
    except DataError as bad:
        raise DataError(f"batch {step} of epoch {epoch}: {bad}") from err


def _add(sums: dict[str, Tensor], values: dict[str, Tensor]) -> None:
    for k, v in values.items():
        sums[k] = sums[k] + v if k in sums else v.clone()


def _cycle(batches: Batches, epoch: int) -> Iterator[tuple[Tensor, ...]]:
    """Transfer batches forever, reshuffled per pass (seeded, so resumable runs repeat them)."""
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def _nonfinite_error(bnn: BNN, epoch: int, step: Optional[int], lr: float, ckpt: Optional[Path]) -> NonFiniteLossError:
    where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
    if not all(torch.isfinite(p).all() for p in bnn.parameters()):
        cause = f"the variational parameters diverged: lower the learning rate (lr={lr}) or set clip_grad_norm"
    else:
        cause = (
            f"the objective itself was not finite with finite parameters: a too high learning rate "
            f"(lr={lr}) that overshot in one step, extreme inputs or targets, or a likelihood/prior "
            "scale near zero; try a lower lr, clip_grad_norm, or standardized data"
        )
    kept = f" The last good checkpoint is {str(ckpt)!r}." if ckpt is not None and ckpt.exists() else ""
    return NonFiniteLossError(
        f"the ELBO became NaN/inf at {where}. Likely cause: {cause}. The network was restored to its "
        f"state at the start of epoch {epoch}.{kept}",
        epoch=epoch,
        step=step,
        checkpoint=str(ckpt) if ckpt is not None and ckpt.exists() else None,
    )
