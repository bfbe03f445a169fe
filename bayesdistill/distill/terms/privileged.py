r"""Generalized distillation (Lopez-Paz, Bottou, Schölkopf & Vapnik, ICLR 2016): KD from a
teacher that reads privileged inputs.

The data come as triplets ``(x, x*, y)``; ``x*`` (privileged information) exists at training
time only. The teacher was trained on ``(x*, y)``; the student reads ``x`` and imitates the
teacher's soft labels ``s_i = softmax(f_t(x*_i) / T)`` on the same examples, with imitation
weight ``lambda``:

.. math::

    (1 - \lambda)\, \mathrm{CE}(y_i, \sigma(f_s(x_i)))
      + \lambda\, T^2\, \mathrm{KL}\big(\sigma(f_t(x^\star_i)/T) \,\|\, \sigma(f_s(x_i)/T)\big)

(the paper's cross-entropy to the soft labels differs from the KL by the soft labels' entropy, a
constant). In the student's ELBO the likelihood is scaled by ``1 - lambda`` and the KL enters as
a per-example log-factor in the data plate, like :class:`~bayesdistill.distill.KD`. With a
Bayesian teacher and ``teacher_mode="sample"`` every step draws one teacher posterior sample, so
the expected gradient is that of imitating the teacher's (tempered) posterior predictive
``E_q[softmax(f_t(x*; w) / T)]``.

The privileged inputs travel with the batch as a side input (``batch.side[key]``, default key
``"privileged"``): a data set yielding dicts ``{"x", "privileged", "y"}``, or a
:class:`~bayesdistill.datasets.PrivilegedDataset` (the built-in synthetic setups,
``bd.datasets.load("privileged-clean-labels")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ...bnn.network import BNN
from ...errors import DataError
from ...infer.batches import Batch
from .kd import KD
from .registry import TermOption, register_term

__all__ = ["PrivilegedKD"]


@register_term(
    "privileged_kd",
    description="generalized distillation: KD from a teacher that reads the privileged inputs batch.side[key]",
    options=[
        TermOption("temperature", float, 1.0, "softmax temperature T", range="(0, inf)"),
        TermOption("weight", float, 1.0, "imitation weight lambda; the likelihood is scaled by 1 - lambda",
                   range="(0, 1]"),
        TermOption("key", str, "privileged", "the batch's side input the teacher reads"),
    ],
    build=lambda teacher, pairs, temperature, weight, key: [
        PrivilegedKD(teacher, temperature=temperature, weight=weight, key=key)],
    tasks=("classification",),
)
class PrivilegedKD(KD):
    """KD whose teacher reads the privileged inputs ``batch.side[key]`` instead of ``batch.x``.

    Args:
        teacher: the teacher on privileged inputs (a :class:`~bayesdistill.BNN` or an
            ``nn.Module``), e.g. ``bd.BNN(nn.Linear(d_star, C))`` fit on ``(x*, y)``.
        temperature: T (paper: 1).
        weight: the imitation weight lambda in (0, 1] (paper: 1, pure imitation); the student's
            likelihood is scaled by ``1 - lambda``.
        key: the side input holding ``x*``. A side input that is a tuple (the ``"extra"`` tensors
            of a plain ``TensorDataset(x, y, x_star)``) is read at ``index``.
        index: see ``key``; default 0.
        privileged_shape: the shape of one privileged example (e.g. ``(3,)``); checked on every
            batch when given. Without it the teacher's own forward pass is the check.
        teacher_mode: ``"mean"`` (the posterior-mean network) or ``"sample"`` (one posterior draw
            per step: the teacher's posterior predictive in expectation).
        calibration: ``"none"`` (default: the paper's soft labels ``softmax(f_t(x*) / T)`` as
            they are) or ``"temperature"`` (temperature-scaled on the labelled probe batch; see
            :class:`~bayesdistill.distill.KD`).
        name: the term's name (default ``"privileged_kd"``).

    Raises (before training, when the objective is set up on the first batch, and on any later
    batch): :class:`~bayesdistill.errors.DataError` when the batch has no side input ``key``
    (naming the side inputs it has), when it is not a tensor, when its number of rows differs
    from the batch's, when it does not have ``privileged_shape``, or when the teacher cannot run
    on it (naming the shape).
    """

    def __init__(self, teacher: Union[BNN, nn.Module], temperature: float = 1.0, weight: float = 1.0,
                 teacher_mode: str = "mean", *, calibration: str = "none", name: Optional[str] = None,
                 key: str = "privileged",
                 index: int = 0, privileged_shape: Optional[Sequence[int]] = None):
        if not isinstance(key, str) or not key:
            raise TypeError(f"PrivilegedKD: key must be a non-empty str (a side input's name), got {key!r}")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"PrivilegedKD: index must be an int >= 0, got {index!r}")
        super().__init__(teacher, temperature=temperature, weight=weight, teacher_mode=teacher_mode,
                         calibration=calibration, name=name or "privileged_kd")
        self.key, self.index = key, index
        self.privileged_shape = None if privileged_shape is None else tuple(int(d) for d in privileged_shape)

    def reference_key(self):
        # the teacher reads other inputs than a KD term on the same teacher: its own pass
        return id(self.teacher_features.teacher), self.teacher_features.mode, "side", self.key, self.index

    def privileged_inputs(self, batch: Batch) -> Tensor:
        """``batch.side[key]`` checked against the batch (see the class's Raises)."""
        side = batch.side
        if self.key not in side:
            have = sorted(side)
            raise DataError(
                f"{self.name}: the batch has no side input {self.key!r} with the teacher's privileged inputs; "
                f"its side inputs: {have or 'none'}. Give the data as dicts {{'x', '{self.key}', 'y'}} "
                f"(or a bd.datasets.PrivilegedDataset), or name the side input: PrivilegedKD(..., key=...)"
            )
        value: Any = side[self.key]
        if isinstance(value, (tuple, list)):
            if self.index >= len(value):
                raise DataError(f"{self.name}: side input {self.key!r} holds {len(value)} tensors, "
                                f"no index {self.index}")
            value = value[self.index]
        if not torch.is_tensor(value):
            raise DataError(f"{self.name}: the privileged inputs side[{self.key!r}] must be a tensor, "
                            f"got {type(value).__name__}")
        if value.dim() == 0 or value.shape[0] != len(batch):
            raise DataError(
                f"{self.name}: the privileged inputs have shape {tuple(value.shape)} but the batch holds "
                f"{len(batch)} examples; x* needs one row per example"
            )
        if self.privileged_shape is not None and tuple(value.shape[1:]) != self.privileged_shape:
            raise DataError(
                f"{self.name}: privileged inputs of shape {tuple(value.shape[1:])} per example, the teacher "
                f"expects {self.privileged_shape}"
            )
        if value.is_floating_point() and value.device.type == "cpu" and not bool(torch.isfinite(value).all()):
            raise DataError(f"{self.name}: the privileged inputs contain NaN or inf")
        return value

    def reference(self, batch: Batch, paths: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        xs = self.privileged_inputs(batch)
        try:
            return self.teacher_features(xs, paths)
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            raise DataError(
                f"{self.name}: the teacher could not run on the privileged inputs of shape {tuple(xs.shape)} "
                f"({xs.dtype}): {' '.join(str(err).split())[:300]}"
            ) from err
