"""A PyTorch Lightning module around a :class:`~bayesdistill.BNN` and its objective.

For those whose training lives in Lightning: ``Trainer(strategy="ddp", devices=K)``, Lightning's
checkpointing, loggers and callbacks work as with any ``LightningModule``. The idioms follow
Pyro's ``examples/svi_lightning.py``: the ELBO is a module (``MeanFieldELBO()(model, guide)``),
the parameters live on the module (not in Pyro's global parameter store) and one ``torch.optim``
optimizer updates them all. Needs the optional extra: ``pip install "bayesdistill[lightning]"``.

Under DDP, Lightning averages the gradients over ranks, and the BNN's plate scales each rank's
batch likelihood by ``dataset_size / B_local``: set ``dataset_size`` to the *global* number of
training examples (``bd.fit`` takes it from the data; here the BNN's value is used as given).
Lightning's ``DistributedSampler`` pads the data to a multiple of the number of processes
(repeating a few examples); ``bd.fit`` splits exactly (``bayesdistill.infer.distributed``).

    import lightning.pytorch as pl
    module = bd.infer.lightning.SVIModule(bnn, lr=3e-3, kl_weight=0.5, distill=[bd.distill.KD(teacher)],
                                          example=bd.infer.Batch(x[:1024], y[:1024]))
    pl.Trainer(max_epochs=10, strategy="ddp", devices=2, accelerator="cpu").fit(module, loader)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import pyro
import torch

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "bayesdistill.infer.lightning needs PyTorch Lightning: pip install 'bayesdistill[lightning]' "
        "(or pip install lightning)"
    ) from err

from .._checks import check_int, check_number
from ..bnn.network import BNN
from .batches import default_batch
from .distributed import noise_seed
from .elbo import MeanFieldELBO
from .objective import Objective, Term

__all__ = ["SVIModule"]


class SVIModule(pl.LightningModule):
    """Stochastic variational inference of ``bnn`` as a ``LightningModule``.

    Args:
        bnn: the Bayesian network (trained in place; its ``dataset_size`` is the global N).
        lr: Adam learning rate.
        kl_weight: multiplies the KL (``bnn.kl_weight``).
        num_particles: particles per ELBO estimate.
        distill: terms of the objective (``bd.distill.KD``, ``VID``, ...).
        example: network inputs (up to ~1024 examples) on which terms with shape-dependent parts
            (VID regressors, Hint projections) are built; needed when ``distill`` has such terms.
            A labelled :class:`~bayesdistill.infer.Batch` ``Batch(x, y)`` also lets terms fit what
            depends on labels (the teacher temperature of ``KD(calibration="temperature")``; with
            inputs only such a term warns and uses the teacher's logits as they are).
        seed: with a seed, each epoch's weight noise is seeded per rank and epoch (independent
            across ranks); Lightning's ``seed_everything`` seeds the rest.

    Logs ``train/loss``, ``train/nll`` and ``train/kl`` (nats, the KL unweighted) per step and
    epoch, the terms' metrics as ``distill/<term>/<metric>``, and ``val/nll`` in validation.
    """

    def __init__(self, bnn: BNN, *, lr: float = 1e-3, kl_weight: float = 1.0, num_particles: int = 1,
                 distill: Sequence[Term] = (), example: Optional[torch.Tensor] = None, seed: Optional[int] = None):
        super().__init__()
        if not isinstance(bnn, BNN):
            raise TypeError(f"SVIModule expects a bd.BNN, got {type(bnn).__name__}")
        self.bnn = bnn
        self.lr = check_number("lr", lr, minimum=0.0, exclusive_minimum=True)
        self.bnn.kl_weight = check_number("kl_weight", kl_weight, minimum=0.0)
        self.seed = None if seed is None else check_int("seed", seed)
        self.objective = Objective(bnn, list(distill)) if distill else None
        if self.objective is not None:
            self.terms = self.objective.terms  # registered: trained, checkpointed, moved with the module
            if example is not None:
                self.objective.setup(example)
            elif _needs_setup(self.terms):
                raise ValueError("SVIModule: these terms build parts from data (feature shapes); pass example= "
                                 "(a batch of network inputs)")
        model, guide = (self.objective.model, self.objective.guide) if self.objective else (bnn.model, bnn.guide)
        self.elbo = MeanFieldELBO(num_particles=check_int("num_particles", num_particles, minimum=1))
        self.loss_fn = self.elbo(model, guide)  # Pyro's ELBO as a module
        self.bnn.register_params = False  # one torch optimizer over the module's parameters

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def on_train_epoch_start(self) -> None:
        if self.seed is not None:
            pyro.set_rng_seed(noise_seed(self.seed, self.global_rank, self.current_epoch + 1))

    def _loss(self, raw: Any) -> torch.Tensor:
        b = default_batch(raw)
        with pyro.validation_enabled(False):
            if self.objective is None:
                return self.loss_fn(b.x, b.y)
            return self.loss_fn(b.x, b.y, None, b.side)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        parts = self.elbo.last_parts
        w = self.bnn.kl_weight
        sync = self.trainer.world_size > 1 if self._trainer is not None else False
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, sync_dist=sync)
        self.log("train/nll", parts["nll"], on_step=False, on_epoch=True, sync_dist=sync)
        if w > 0:
            self.log("train/kl", parts["kl"] / w, on_step=False, on_epoch=True, sync_dist=sync)
        if self.objective is not None:
            for k, v in self.objective.step_metrics().items():
                self.log(k, v, on_step=False, on_epoch=True, sync_dist=sync)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        b = default_batch(batch)
        out = self.bnn(b.x)
        nll = -self.bnn.likelihood.log_prob(out, b.y).mean()
        self.log("val/nll", nll, on_epoch=True, sync_dist=True)


def _needs_setup(terms: torch.nn.ModuleList) -> bool:
    # a term that overrides setup builds parts from data
    return any(type(t).setup is not Term.setup for t in terms)
