"""The SVI training engine: one place for everything a step needs, callbacks for the rest.

One SVI step traces the (student's) guide, replays its model against the draw, takes the
negative ELBO of :class:`~bayesdistill.MeanFieldELBO` (expected NLL on the batch scaled to the
data set, plus the exact KL, plus the weighted log-factors of any terms), backpropagates, and
updates all variational parameters (and the terms' parameters) with one ``torch.optim.Adam``.
The hot path keeps Pyro validation and param-store registration off and the tensors on the
device; the host synchronizes once per step on CPU (where checking the loss is free, and a bad
step is caught before its update) and once per epoch on CUDA.

The engine follows ``numpyro.infer.SVI``'s shape: :meth:`SVIEngine.init`, :meth:`SVIEngine.step`
(with the non-finite check of a *stable* update), :meth:`SVIEngine.run_epoch` and a thin
:meth:`SVIEngine.run`; :meth:`SVIEngine.state_dict` is everything a bit-identical resume needs.
Checkpoints, schedules, held-out evaluation, progress and logging are
:mod:`~bayesdistill.infer.callbacks`.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pyro
import torch
from torch import Tensor

from .._checks import check_int, check_number
from ..bnn.local_reparam import LAYER_CHOICES, LocalReparameterization
from ..bnn.network import BNN
from ..errors import DataError
from . import distributed
from .batches import Batch, BatchAdapter, Batches, Data
from .callbacks import Callback, FunctionCallback
from .elbo import MeanFieldELBO
from .objective import Objective, Term

__all__ = ["SVIEngine", "FitResult", "EpochStats"]

#: How many training inputs the terms' setup (feature shapes, VID's H(t)) sees.
SETUP_EXAMPLES = 1024


@dataclass
class FitResult:
    """What a training run returns.

    Attributes:
        history: one dict per epoch: ``epoch``; ``elbo``, ``nll`` and ``kl`` (nats, whole data
            set: the averages over the epoch's steps of the ELBO estimate, its expected negative
            log-likelihood and KL(q||p) unweighted, the very values the optimizer saw);
            ``loss`` (the objective optimized, nll + kl_weight * kl plus the weighted terms,
            averaged over the steps); ``kl_weight``; ``lr`` (the learning rate of the epoch's
            steps); ``time_s`` (wall time of the epoch); ``distill/<term>/<metric>`` columns of
            distillation terms; ``eval_*`` columns of held-out evaluation.
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
        """Write the history as CSV (one row per epoch), atomically."""
        from .._io import atomic_write
        from .callbacks import history_csv

        text = history_csv(self.history)
        return atomic_write(path, lambda fh: fh.write(text), binary=False)


class EpochStats:
    """On-device accumulators of one epoch (no host synchronization per step)."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.nll = torch.zeros((), device=device)
        self.kl = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.terms: dict[str, Tensor] = {}
        self.steps = 0
        self.term_calls = 0


def _resolve_device(bnn: BNN, device: Union[str, torch.device, None],
                    group: Optional[distributed.ProcessGroup] = None) -> torch.device:
    if device is None:
        return bnn.loc.device
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={str(device)!r} was requested but CUDA is not available here; use device='cpu'")
    if device.type == "cuda" and device.index is None and group is not None:
        device = torch.device("cuda", group.local_rank)  # one GPU per process under torchrun
    return device


def _local_reparam_layers(local_reparam: Union[bool, str, None]) -> Optional[str]:
    if local_reparam is True:
        return "all"
    if local_reparam is False or local_reparam is None:
        return None
    if isinstance(local_reparam, str) and local_reparam in LAYER_CHOICES:
        return local_reparam
    raise ValueError(f"local_reparam must be True, False, 'all' or 'linear', got {local_reparam!r}")


class SVIEngine:
    """Stochastic variational inference for a :class:`~bayesdistill.BNN`, step by step.

    Args:
        bnn: the network; trained in place.
        data: labelled training data: a ``TensorDataset``, an ``(x, y)`` tuple, any ``Dataset``
            or a ``DataLoader`` (used as given) whose batches the adapter ``batch`` reads (see
            :mod:`bayesdistill.infer.batches`).
        batch_size: examples per step (ignored for a ``DataLoader``).
        lr: Adam learning rate (> 0).
        device: where to train (default: where the BNN is).
        seed: seeds Pyro/torch/numpy/random and the batch order; ``None`` leaves the global
            RNGs alone (the batch order then comes from the global torch RNG).
        kl_weight: a constant multiplier of the KL (``< 1``: a "cold" posterior); a schedule is
            the :class:`~bayesdistill.infer.KLSchedule` callback.
        num_particles: Monte Carlo particles per ELBO estimate.
        local_reparam: ``True``/``"all"`` (Linear and Conv layers) or ``"linear"``: sample
            pre-activations instead of weights (Kingma et al. 2015); the KL stays exact.
        clip_grad_norm: clip the global gradient norm to this value (> 0).
        weight_decay: Adam weight decay (>= 0; normally 0: the KL is the regularizer).
        terms: :class:`~bayesdistill.infer.Term` objects added to the objective (distillation).
        transfer: unlabelled inputs on which only the terms act; each labelled step also takes
            one transfer batch.
        batch: an adapter from what the data yield to a :class:`~bayesdistill.infer.Batch`.
        callbacks: :class:`~bayesdistill.infer.Callback` objects (or plain functions
            ``(record, bnn) -> bool``, where ``True`` stops training); the terms' own callbacks
            (:meth:`Term.callbacks <bayesdistill.infer.Term.callbacks>`) are added after them.

    The engine validates every argument when it is built and the data against the network in
    :meth:`init` (before the first step).
    """

    def __init__(
        self,
        bnn: BNN,
        data: Data,
        *,
        batch_size: int = 128,
        lr: float = 1e-3,
        device: Union[str, torch.device, None] = None,
        seed: Optional[int] = 0,
        kl_weight: float = 1.0,
        num_particles: int = 1,
        local_reparam: Union[bool, str] = False,
        clip_grad_norm: Optional[float] = None,
        weight_decay: float = 0.0,
        terms: Sequence[Term] = (),
        transfer: Optional[Data] = None,
        batch: Optional[BatchAdapter] = None,
        callbacks: Sequence[Any] = (),
    ) -> None:
        if not isinstance(bnn, BNN):
            raise TypeError(f"training expects a bd.BNN, got {type(bnn).__name__}; wrap your network with bd.BNN(net, ...)")
        self.bnn = bnn
        self.data = data
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.lr = check_number("lr", lr, minimum=0.0, exclusive_minimum=True)
        self.seed = None if seed is None else check_int("seed", seed)
        self.kl_weight = check_number("kl_weight", kl_weight, minimum=0.0)
        self.num_particles = check_int("num_particles", num_particles, minimum=1)
        self.lrt_layers = _local_reparam_layers(local_reparam)
        self.local_reparam = local_reparam
        self.clip_grad_norm = (None if clip_grad_norm is None else
                               check_number("clip_grad_norm", clip_grad_norm, minimum=0.0, exclusive_minimum=True))
        self.weight_decay = check_number("weight_decay", weight_decay, minimum=0.0)
        if batch is not None and not callable(batch):
            raise TypeError(f"batch must be a callable adapter (raw batch) -> (x, y), got {batch!r}")
        self.adapter = batch
        self.terms = list(terms)
        if transfer is not None and not self.terms:
            raise ValueError("transfer= only makes sense with distill= terms (the likelihood needs labels)")
        self.transfer = transfer
        # a term may bring callbacks of its own (e.g. critics trained after each epoch): after the given ones
        callbacks = [*callbacks, *(cb for t in self.terms if isinstance(t, Term) for cb in t.callbacks())]
        self.callbacks = sorted((cb if isinstance(cb, Callback) else FunctionCallback(cb) for cb in callbacks),
                                key=lambda cb: cb.order)
        self.group = distributed.current()
        self.device = _resolve_device(bnn, device, self.group)
        # state
        self.epoch = 0  # last finished epoch
        self.epochs = 0  # the epoch to train up to (set by run)
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self.should_stop = False
        self.checkpoint_path: Optional[Path] = None
        self.is_main_process = self.group is None or self.group.is_main
        self.objective: Optional[Objective] = None
        self._initialized = False
        self._data_fingerprints: Optional[dict[str, Any]] = None

    # ------------------------------------------------------------------ set-up
    def init(self) -> "SVIEngine":
        """Move the network to the device, seed, validate the data against the network, set up
        the terms on the first training inputs and build the optimizer. Idempotent."""
        if self._initialized:
            return self
        bnn, device, group = self.bnn, self.device, self.group
        bnn.to(device)
        if self.seed is not None:
            pyro.set_rng_seed(self.seed)
        # the batch order is seeded by `seed`; without one it comes from the global torch RNG
        self.batch_seed = self.seed if self.seed is not None else int(torch.randint(2**31 - 1, ()))
        if group is not None:  # one batch order for all ranks
            self.batch_seed = int(group.broadcast_object(self.batch_seed))
        rank, world = (group.rank, group.world_size) if group is not None else (0, 1)
        self.batches = Batches(self.data, self.batch_size, device, self.batch_seed, adapter=self.adapter,
                               rank=rank, world_size=world)
        self._check_dataset_size()
        self.validate_data()
        self.model, self.guide = bnn.model, bnn.guide
        self.transfer_batches: Optional[Batches] = None
        if self.terms:
            self._init_objective()
        params = list(bnn.parameters()) + (list(self.objective.parameters()) if self.objective is not None else [])
        self.optimizer = _adam(params, self.lr, self.weight_decay)
        self.params = [p for p in params if p.requires_grad]
        if group is not None:  # every rank starts from rank 0's parameters and buffers
            group.broadcast_(params + self._buffers())
        self.elbo = MeanFieldELBO(num_particles=self.num_particles)
        self.check_each_step = device.type == "cpu"
        bnn.kl_weight = self.kl_weight
        self._initialized = True
        return self

    def _check_dataset_size(self) -> None:
        n = self.batches.num_examples
        size = self.bnn.dataset_size
        if size is None and n > 0:
            # the likelihood of a batch is scaled by N / B: without N the KL would swamp the data
            self.bnn.dataset_size = n
        elif size is not None and n > 0 and size != n:
            warnings.warn(
                f"the BNN's dataset_size is {size} but the training data hold {n} examples; the "
                f"likelihood of each batch is scaled by dataset_size / batch size, so the data term "
                f"counts {size / n:.3g}x. Pass dataset_size={n} to bd.BNN unless this is intended",
                stacklevel=3,
            )

    def validate_data(self) -> None:
        """Check the training data against the network and likelihood (raises :class:`DataError`)."""
        b = self.batches
        if b.tensors is not None:  # finite: checked by Batches
            x, *rest = b.tensors
            if not rest:
                raise DataError("training data hold inputs only; fit needs (inputs, targets)")
            y = rest[0]
            # check the whole label vector against the output of the first batch
            out = self.bnn.check_data(x[: self.batch_size])
            self.bnn.likelihood.check(out[:1].expand(len(y), *out.shape[1:]), y)
            return
        first = b.first()
        if first.y is None:
            raise DataError("training batches hold inputs only; fit needs (inputs, targets)")
        self.bnn.check_data(first.x, first.y)

    def _init_objective(self) -> None:
        objective = Objective(self.bnn, self.terms)
        for t in objective.terms:  # a reference (the teacher) runs on the student's device
            ref = getattr(t, "reference_module", None)
            if isinstance(ref, torch.nn.Module):
                ref.to(self.device)
        objective.setup(self.batches.head(SETUP_EXAMPLES))
        objective.terms.to(self.device)
        self.objective = objective
        self.model, self.guide = objective.model, objective.guide
        if self.transfer is not None:
            rank, world = (self.group.rank, self.group.world_size) if self.group is not None else (0, 1)
            self.transfer_batches = Batches(self.transfer, self.batch_size, self.device, self.batch_seed + 1,
                                            adapter=self.adapter, what="transfer data", rank=rank, world_size=world)
            first = self.transfer_batches.first()
            try:
                self.bnn.check_data(first.x)
            except DataError as err:
                raise DataError(f"transfer data do not fit the network: {err}") from err

    # ------------------------------------------------------------------ settings and state
    def settings(self) -> dict[str, Any]:
        """The run's settings and data fingerprints: what a resumed run must repeat."""
        self.init()
        out: dict[str, Any] = {
            "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed, "kl_weight": self.kl_weight,
            "num_particles": self.num_particles, "local_reparam": self.lrt_layers,
            "clip_grad_norm": self.clip_grad_norm, "weight_decay": self.weight_decay,
            **self._fingerprints(),
            "terms": [f"{t.name}:{type(t).__name__}" for t in self.terms],
        }
        for cb in self.callbacks:
            out.update(cb.settings())
        return out

    def _fingerprints(self) -> dict[str, Any]:
        if self._data_fingerprints is None:  # hashing the data once is enough
            self._data_fingerprints = {
                "data": self.batches.fingerprint(),
                "transfer": self.transfer_batches.fingerprint() if self.transfer_batches is not None else None,
            }
        return self._data_fingerprints

    def _callback_keys(self) -> list[str]:
        keys, seen = [], {}
        for cb in self.callbacks:
            name = type(cb).__name__
            seen[name] = seen.get(name, -1) + 1
            keys.append(name if seen[name] == 0 else f"{name}{seen[name]}")
        return keys

    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-identical resume needs (plain data and tensors only)."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "bnn": self.bnn.state_dict(),
            "terms": self.objective.terms.state_dict() if self.objective is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(self.device),
            "batch_seed": self.batch_seed,
            "kl_weight": self.bnn.kl_weight,
            "history": [dict(r) for r in self.history],
            "callbacks": {k: cb.state_dict() for k, cb in zip(self._callback_keys(), self.callbacks)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bnn.load_state_dict(state["bnn"])
        if self.objective is not None and state.get("terms") is not None:
            self.objective.terms.load_state_dict(state["terms"])
        self.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], self.device)
        self.batch_seed = int(state["batch_seed"])
        self.batches.seed = self.batch_seed
        if self.transfer_batches is not None:
            self.transfer_batches.seed = self.batch_seed + 1
        self.bnn.kl_weight = float(state["kl_weight"])
        self.history = [dict(r) for r in state["history"]]
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        stored = state.get("callbacks", {})
        for key, cb in zip(self._callback_keys(), self.callbacks):
            if key in stored:
                cb.load_state_dict(stored[key])

    # ------------------------------------------------------------------ the step
    def _loss(self, batch: Batch) -> Tensor:
        if self.objective is None:
            return self.elbo.differentiable_loss(self.model, self.guide, batch.x, batch.y)
        return self.elbo.differentiable_loss(self.model, self.guide, batch.x, batch.y, None, batch.side)

    def step(self, batch: Batch, stats: Optional[EpochStats] = None, transfer: Optional[Iterator[Batch]] = None) -> Tensor:
        """One SVI update on ``batch`` (plus one transfer batch when ``transfer`` is given).

        A non-finite loss is recorded in ``stats.first_bad`` and, on CPU, stops the update (the
        parameters are not touched). Returns the detached loss.
        """
        stats = stats if stats is not None else EpochStats(self.device)
        loss, parts, ok = self.backward(batch, stats, transfer)
        if not ok:
            return loss
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm)
        self.optimizer.step()
        self.global_step += 1
        stats.loss += loss
        stats.nll += parts["nll"]
        stats.kl += parts["kl"]
        return loss

    def backward(self, batch: Batch, stats: EpochStats, transfer: Optional[Iterator[Batch]] = None
                 ) -> tuple[Tensor, dict[str, Tensor], bool]:
        """The negative ELBO of ``batch`` and its gradient in the parameters' ``.grad`` (averaged
        over ranks in a multi-process run). Returns ``(detached loss, its parts, ok)``; ``ok`` is
        ``False`` when the update must be skipped (a non-finite loss on CPU or on any rank)."""
        stats.steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with LocalReparameterization(self.lrt_layers) if self.lrt_layers else nullcontext():
                loss = self._loss(batch)
                parts = self.elbo.last_parts
                if self.objective is not None:
                    parts = dict(parts)
                    _add(stats.terms, self.objective.step_metrics())
                    stats.term_calls += 1
                    if transfer is not None:
                        loss = loss + self._transfer_loss(next(transfer), stats)
                        parts["nll"] = parts["nll"] + self.elbo.last_parts["nll"]
        except (RuntimeError, IndexError, ValueError, TypeError) as err:
            # data that are not tensors are only checked batch by batch: name the bad batch
            self._explain_batch_error(batch, stats.steps, err)
            raise
        finite = torch.isfinite(loss)
        if self.group is not None:  # every rank takes part in the all-reduce, a bad one included
            loss.backward()
            ok = bool(self._average_gradients(finite))
        elif self.check_each_step:  # CPU: checking now is free, and stops before the backward pass
            ok = bool(finite)
            if ok:
                loss.backward()
        else:  # CUDA: record the first bad step on the device, read it once per epoch
            stats.first_bad = torch.where((stats.first_bad < 0) & ~finite, stats.steps, stats.first_bad)
            loss.backward()
            ok = True
        if not ok:
            stats.first_bad.fill_(stats.steps)
        return loss.detach(), parts, ok

    def _average_gradients(self, finite: Tensor) -> Tensor:
        """One all-reduce of the flattened gradients and the finiteness flag; returns whether
        every rank's loss was finite."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [(~finite).to(grads[0].dtype).reshape(1)])
        self.group.all_reduce_mean_(flat)  # type: ignore[union-attr]
        offset = 0
        for p, g in zip(self.params, grads):
            p.grad = flat[offset: offset + g.numel()].view_as(g)
            offset += g.numel()
        return flat[-1] == 0

    def _buffers(self) -> list[Tensor]:
        mods = [self.bnn] + ([self.objective.terms] if self.objective is not None else [])
        return [b for m in mods for b in m.buffers() if b.is_floating_point() or b.dtype == torch.long]

    def _transfer_loss(self, tb: Batch, stats: EpochStats) -> Tensor:
        # the KL was counted once, on the labelled batch: a transfer batch adds only its terms
        kl_w, self.bnn.kl_weight = self.bnn.kl_weight, 0.0
        try:
            n = self.transfer_batches.num_examples  # type: ignore[union-attr]
            loss = self.elbo.differentiable_loss(self.model, self.guide, tb.x, None, n, tb.side)
        finally:
            self.bnn.kl_weight = kl_w
        _add(stats.terms, self.objective.step_metrics())  # type: ignore[union-attr]
        stats.term_calls += 1
        return loss

    def _explain_batch_error(self, batch: Batch, step: int, err: Exception) -> None:
        """Raise a :class:`DataError` naming the batch if it does not fit the network/likelihood."""
        try:
            self.bnn.check_data(batch.x, batch.y)
        except DataError as bad:
            raise DataError(f"batch {step} of epoch {self.epoch + 1}: {bad}") from err

    # ------------------------------------------------------------------ epochs
    def _transfer_iter(self, epoch: int) -> Optional[Iterator[Batch]]:
        if self.transfer_batches is None:
            return None
        return _cycle(self.transfer_batches, epoch * 10_007)  # seeded per epoch: resumable

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (1-based ``epoch``) and return its history record."""
        t0 = time.perf_counter()
        stats = EpochStats(self.device)
        transfer = self._transfer_iter(epoch)
        if self.group is not None:  # independent weight noise per rank and epoch, resumable
            pyro.set_rng_seed(distributed.noise_seed(self.batch_seed, self.group.rank, epoch))
        for batch in self.batches.epoch(epoch):
            self.step(batch, stats, transfer)
            if (self.check_each_step or self.group is not None) and int(stats.first_bad) >= 0:
                break
        if self.group is not None:
            self._reduce(stats)
        bad = int(stats.first_bad)  # one host sync per epoch
        if bad >= 0 or not math.isfinite(float(stats.loss)):
            self._nonfinite(epoch, bad if bad >= 0 else None)
        return self._record(epoch, stats, time.perf_counter() - t0)

    def _reduce(self, stats: EpochStats) -> None:
        """Average the epoch's sums over ranks (equal step counts); rank 0's buffers to all."""
        group = self.group
        keys = sorted(stats.terms)
        flat = torch.stack([stats.loss, stats.nll, stats.kl] + [stats.terms[k] for k in keys]).double()
        group.all_reduce_mean_(flat)  # type: ignore[union-attr]
        stats.loss, stats.nll, stats.kl = (v.to(stats.loss.dtype) for v in flat[:3])
        stats.terms = {k: flat[3 + i].float() for i, k in enumerate(keys)}
        group.all_reduce_max_(stats.first_bad)  # type: ignore[union-attr]
        group.broadcast_(self._buffers())  # type: ignore[union-attr]

    def _nonfinite(self, epoch: int, step: Optional[int]) -> None:
        for cb in self.callbacks:
            cb.on_nonfinite(self, epoch, step)
        from .callbacks import nonfinite_error

        raise nonfinite_error(self, epoch, step)

    def _record(self, epoch: int, stats: EpochStats, seconds: float) -> dict[str, float]:
        steps = max(stats.steps, 1)
        nll = float(stats.nll) / steps
        w = self.bnn.kl_weight
        if w > 0:
            kl = float(stats.kl) / steps / w  # the unweighted KL of the epoch's steps
        else:
            with torch.no_grad():
                kl = float(self.bnn.kl())
        record: dict[str, float] = {
            "epoch": epoch,
            "elbo": -(nll + kl),
            "nll": nll,
            "kl": kl,
            "loss": float(stats.loss) / steps,
            "kl_weight": w,
            "lr": self.optimizer.param_groups[0]["lr"],
            "time_s": seconds,
        }
        calls = max(stats.term_calls, 1)
        for k, v in stats.terms.items():
            record[k] = float(v) / calls
        return record

    def run(self, epochs: int) -> FitResult:
        """Train until ``epochs`` epochs are done (the total, resumed epochs included)."""
        self.epochs = check_int("epochs", epochs, minimum=0)
        self.init()
        saved_register, was_training = self.bnn.register_params, self.bnn.training
        self.bnn.register_params = False
        self.bnn.train()
        try:
            for cb in self.callbacks:
                cb.on_fit_start(self)
            with pyro.validation_enabled(False):
                while self.epoch < self.epochs and not self.should_stop:
                    self._run_one(self.epoch + 1)
        finally:
            for cb in self.callbacks:
                cb.on_fit_end(self)
            self.bnn.register_params = saved_register
            self.bnn.train(was_training)
        ckpt = self.checkpoint_path if self.checkpoint_path is not None and self.checkpoint_path.exists() else None
        return FitResult(self.history, self.bnn, self.should_stop, ckpt)

    def _run_one(self, epoch: int) -> None:
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch)
        record = self.run_epoch(epoch)
        self.epoch = epoch
        self.history.append(record)
        # callbacks run before the checkpoint (ordered last) is written, so that what they add to
        # the record, or change in the terms, is checkpointed
        errors: list[BaseException] = []
        for cb in self.callbacks:
            if errors and cb.order < 1000:
                continue  # a failing callback still leaves the epoch's checkpoint behind
            try:
                cb.on_epoch_end(self, record)
            except BaseException as err:  # noqa: BLE001 - re-raised below
                errors.append(err)
        if errors:
            raise errors[0]


def _add(sums: dict[str, Tensor], values: dict[str, Tensor]) -> None:
    for k, v in values.items():
        sums[k] = sums[k] + v if k in sums else v.clone()


def _cycle(batches: Batches, epoch: int) -> Iterator[Batch]:
    """Transfer batches forever, reshuffled per pass (seeded, so resumable runs repeat them)."""
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def _rng_state(device: torch.device) -> dict[str, Any]:
    """All RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    # RNG states must be CPU ByteTensors; torch.load(map_location="cuda") moves them to the GPU
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _adam(params: list, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam, with the fused kernel where torch has one for these tensors (one pass over the
    parameters instead of about eight: it matters for the BNN's two flat tensors, twice the
    network's weights, e.g. 0.6 s -> 0.1 s per step for ResNet-18's on one CPU thread)."""
    if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):  # no fused kernel in this torch / for this dtype
            pass
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
