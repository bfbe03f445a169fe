"""Distilling a Bayesian student on transfer inputs only (reconstructed, noise, or any inputs).

The training engine fits a BNN on labelled data, so the inputs are labelled with the teacher's
own posterior-predictive argmax (no real label is used), and the student imitates the teacher's
tempered soft labels through the :class:`~bayesdistill.distill.KD` term. With the default
``weight=1`` (pure imitation) the likelihood of those labels has weight ``1 - weight = 0``: they
only satisfy the engine, and the student learns from the soft labels alone. The same function
distils on real training inputs (the "KD on real data" reference) and on random noise, so the
methods differ only in their transfer inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..._checks import check_int
from ...bnn.network import BNN
from ...errors import DataError
from ...infer.fit import FitResult, fit
from ..terms.kd import KD
from .reconstruct import Reconstruction, reconstruct
from .record import ActivationRecord

__all__ = ["teacher_labels", "distill_on_inputs", "data_free_student", "DataFreeResult"]


@torch.no_grad()
def teacher_labels(teacher: Union[BNN, nn.Module], x: Tensor, *, num_samples: int = 32, batch_size: int = 1024,
                   seed: int = 0) -> Tensor:
    """The teacher's predicted class per input: the argmax of its posterior predictive (a BNN,
    ``num_samples`` draws) or of its output (a module); ``[n]`` int64 on the CPU."""
    num_samples = check_int("num_samples", num_samples, minimum=1)
    out = []
    gen = torch.Generator().manual_seed(seed)
    was = teacher.training
    teacher.eval()
    try:
        for lo in range(0, len(x), batch_size):
            xb = x[lo:lo + batch_size]
            if isinstance(teacher, BNN):
                xb = xb.to(teacher.loc.device)
                w = teacher.sample_weights(num_samples, generator=gen.manual_seed(seed + lo))
                probs = teacher.outputs(xb, w).softmax(-1).mean(0)
            else:
                dev = next(iter(teacher.parameters()), torch.empty(0)).device
                probs = teacher(xb.to(dev)).softmax(-1)
            out.append(probs.argmax(-1).cpu())
    finally:
        teacher.train(was)
    return torch.cat(out)


def distill_on_inputs(
    student: BNN,
    teacher: Union[BNN, nn.Module],
    inputs: Tensor,
    *,
    temperature: float = 8.0,
    weight: float = 1.0,
    teacher_mode: str = "sample",
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 3e-3,
    lr_schedule: Optional[str] = "cosine",
    seed: int = 0,
    progress: bool = False,
    **fit_options: Any,
) -> FitResult:
    """Fit ``student`` by SVI on ``inputs`` labelled by the teacher (:func:`teacher_labels`), with
    a :class:`~bayesdistill.distill.KD` term (``temperature``, ``weight``, ``teacher_mode``).

    ``student.dataset_size`` should be ``len(inputs)`` (it is set when ``None``).
    ``**fit_options`` go to :func:`bayesdistill.fit` (``kl_weight``, ``device``, ...).
    """
    if not torch.is_tensor(inputs) or inputs.dim() < 2:
        raise DataError("distill_on_inputs: inputs must be a tensor [n, ...] of transfer inputs")
    labels = teacher_labels(teacher, inputs, seed=seed)
    # the labels are the teacher's own: nothing to calibrate its soft labels against
    term = KD(teacher, temperature=temperature, weight=weight, teacher_mode=teacher_mode, calibration="none")
    return fit(student, (inputs, labels), epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
               seed=seed, progress=progress, distill=[term], **fit_options)


@dataclass
class DataFreeResult:
    """A data-free distillation: the reconstructed inputs and the student's fit."""

    reconstruction: Reconstruction
    fit: FitResult


def data_free_student(
    student: BNN,
    teacher: Union[BNN, nn.Module],
    record: ActivationRecord,
    n: int,
    *,
    reconstruct_options: Optional[dict[str, Any]] = None,
    **distill_options: Any,
) -> DataFreeResult:
    """Data-free distillation in one call: :func:`~bayesdistill.distill.datafree.reconstruct`
    ``n`` inputs from the teacher's ``record`` (``reconstruct_options``: ``steps``, ``lr``,
    ``objective``, ``device``, ``seed``, ...), then :func:`distill_on_inputs` (``**distill_options``:
    ``temperature`` (default the record's), ``epochs``, ``lr``, ...). No training data is used."""
    rec = reconstruct(teacher, record, n, **(reconstruct_options or {}))
    distill_options.setdefault("temperature", record.temperature)
    if student.dataset_size is None:
        student.dataset_size = len(rec)
    result = distill_on_inputs(student, teacher, rec.x, **distill_options)
    return DataFreeResult(rec, result)
