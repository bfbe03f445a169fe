"""Generalized distillation in one call: teacher on privileged inputs, student, distilled student.

Lopez-Paz, Bottou, Schölkopf & Vapnik, "Unifying distillation and privileged information"
(ICLR 2016). Given triplets ``(x, x*, y)`` (a :class:`~bayesdistill.datasets.PrivilegedDataset`,
e.g. ``bd.datasets.load("privileged-clean-labels", seed=s)``), :func:`generalized_distillation`
fits, each by the package's SVI (:func:`bayesdistill.fit`):

1. the **teacher**, a Bayesian network on ``(x*, y)`` (default: Bayesian softmax regression
   ``bd.BNN(nn.Linear(d*, C))``);
2. the **student**, the same kind of network on ``(x, y)`` alone (the baseline);
3. the **distilled** student, on ``(x, y)`` with :class:`~bayesdistill.distill.PrivilegedKD`:
   the likelihood scaled by ``1 - lambda`` and the KL to the teacher's tempered soft labels on
   ``x*`` with weight ``lambda`` (``teacher_mode="sample"`` by default: one teacher posterior
   draw per step, i.e. the teacher's posterior predictive in expectation).

Every network has the prior ``Normal(0, prior_scale^2)`` on every weight and bias. Student and
distilled student start from the same initialization (a paired comparison). Test accuracy is
that of the posterior predictive (``bd.evaluate``, ``num_samples`` draws); the teacher is
tested on the test set's privileged inputs, the students on its regular inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn

from .._checks import check_choice, check_int, check_number
from ..bnn import priors
from ..bnn.network import BNN
from ..datasets import DatasetBundle, PrivilegedDataset
from ..errors import DataError
from ..infer.fit import FitResult, fit
from ..infer.predictive import evaluate
from .terms.privileged import PrivilegedKD

__all__ = ["generalized_distillation", "GeneralizedDistillationResult", "ROLES", "TEACHER_MODES"]

#: the three fits, in order
ROLES = ("teacher", "student", "distilled")
#: how the teacher gives its soft labels: one posterior draw per step, or its posterior mean
TEACHER_MODES = ("sample", "mean")


@dataclass
class GeneralizedDistillationResult:
    """The three fitted BNNs, their test metrics and histories.

    Attributes:
        models: role (``"teacher"``, ``"student"``, ``"distilled"``) -> the fitted BNN.
        metrics: role -> ``bd.evaluate`` metrics on the test set (``accuracy``, ``nll``, ``ece``, ...).
        fits: role -> :class:`~bayesdistill.infer.FitResult`.
        settings: the arguments of the run (numbers and strings only).
    """

    models: dict[str, BNN]
    metrics: dict[str, dict[str, float]]
    fits: dict[str, FitResult]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> dict[str, float]:
        """role -> test accuracy (fraction)."""
        return {r: float(m["accuracy"]) for r, m in self.metrics.items()}

    @property
    def gain(self) -> float:
        """Accuracy of the distilled student minus the student's (fraction)."""
        return self.accuracy["distilled"] - self.accuracy["student"]


def _splits(data: Any) -> tuple[PrivilegedDataset, PrivilegedDataset]:
    if isinstance(data, DatasetBundle):
        train, test = data.train, data.test
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        train, test = data
    else:
        raise TypeError("generalized_distillation: data must be a DatasetBundle of PrivilegedDataset splits "
                        f"(bd.datasets.load('privileged-...')) or a (train, test) pair of them, got {type(data).__name__}")
    for what, d in (("training", train), ("test", test)):
        if not isinstance(d, PrivilegedDataset):
            raise DataError(
                f"generalized_distillation: the {what} split must be a bd.datasets.PrivilegedDataset (x, y and "
                f"the privileged inputs x*), got {type(d).__name__}"
            )
    if tuple(train.privileged.shape[1:]) != tuple(test.privileged.shape[1:]):
        raise DataError(f"generalized_distillation: privileged inputs of shape {tuple(train.privileged.shape[1:])} "
                        f"in training and {tuple(test.privileged.shape[1:])} in test")
    if tuple(train.x.shape[1:]) != tuple(test.x.shape[1:]):
        raise DataError(f"generalized_distillation: regular inputs of shape {tuple(train.x.shape[1:])} "
                        f"in training and {tuple(test.x.shape[1:])} in test")
    return train, test


def _softmax_regression(inputs: int, classes: int) -> nn.Module:
    return nn.Linear(inputs, classes)


def generalized_distillation(
    data: Union[DatasetBundle, tuple[PrivilegedDataset, PrivilegedDataset]],
    *,
    temperature: float = 1.0,
    imitation: float = 1.0,
    prior_scale: float = 1.0,
    epochs: int = 200,
    batch_size: int = 200,
    lr: float = 0.05,
    lr_schedule: Optional[str] = "cosine",
    teacher_mode: str = "sample",
    num_samples: int = 64,
    seed: int = 0,
    teacher_net: Optional[Callable[[int, int], nn.Module]] = None,
    student_net: Optional[Callable[[int, int], nn.Module]] = None,
    device: Union[str, torch.device, None] = None,
    progress: bool = False,
    roles: tuple[str, ...] = ROLES,
    **fit_options: Any,
) -> GeneralizedDistillationResult:
    """Fit teacher (on ``x*``), student (on ``x``) and distilled student (on ``x`` + the
    teacher's soft labels on ``x*``) and test them; see the module docstring.

    Args:
        data: a bundle whose splits are :class:`~bayesdistill.datasets.PrivilegedDataset`, or a
            ``(train, test)`` pair of them.
        temperature: T of the soft labels (paper: 1).
        imitation: lambda in (0, 1] (paper: 1): the distilled student's likelihood weight is
            ``1 - lambda``.
        prior_scale: the standard deviation of the ``Normal(0, s^2)`` prior on every weight.
        epochs: SVI epochs of every fit.
        batch_size: examples per SVI step of every fit.
        lr: Adam's learning rate of every fit.
        lr_schedule: ``"cosine"`` decays the rate to 0 over the epochs, so the posterior means
            settle; ``None``: constant.
        teacher_mode: ``"sample"`` (one teacher posterior draw per step) or ``"mean"``.
        num_samples: posterior draws of the test-time predictive.
        seed: seeds every fit (``bd.fit(seed=...)``) and the networks' initialization.
        teacher_net: a factory ``(inputs, classes) -> nn.Module`` taking the number of input
            features (default: softmax regression ``nn.Linear(inputs, classes)``, which needs
            inputs of one feature dimension ``[N, d]``).
        student_net: the same for the student.
        device: where to fit (default CPU).
        progress: progress bars.
        roles: which of ``("teacher", "student", "distilled")`` to fit (``"distilled"`` needs
            ``"teacher"``).
        **fit_options: further options of :func:`bayesdistill.fit` for every fit
            (``local_reparam``, ``num_particles``, ``kl_weight``, ...).

    Returns:
        :class:`GeneralizedDistillationResult`.
    """
    train, test = _splits(data)
    temperature = check_number("temperature", temperature, minimum=0.0, exclusive_minimum=True)
    imitation = check_number("imitation", imitation, minimum=0.0, maximum=1.0, exclusive_minimum=True)
    prior_scale = check_number("prior_scale", prior_scale, minimum=0.0, exclusive_minimum=True)
    epochs = check_int("epochs", epochs, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    lr = check_number("lr", lr, minimum=0.0, exclusive_minimum=True)
    check_choice("teacher_mode", teacher_mode, TEACHER_MODES)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    roles = tuple(roles)
    for r in roles:
        check_choice("roles", r, ROLES)
    if "distilled" in roles and "teacher" not in roles:
        raise ValueError("generalized_distillation: the distilled student needs the teacher: roles must hold 'teacher'")
    y = train.y
    classes = int(torch.cat([y, test.y]).max()) + 1 if y.dtype == torch.long else None
    if classes is None or classes < 2:
        raise DataError("generalized_distillation: the labels must be int64 class indices of at least 2 classes")
    d_x, d_s = int(train.x[0].numel()), int(train.privileged[0].numel())
    for what, t, make in (("regular", train.x, student_net), ("privileged", train.privileged, teacher_net)):
        if make is None and t.dim() != 2:
            raise DataError(f"generalized_distillation: the default softmax regression needs {what} inputs [N, d], "
                            f"got {tuple(t.shape)}; pass a network factory ({'student' if what == 'regular' else 'teacher'}_net=)")
    make_t = teacher_net or _softmax_regression
    make_s = student_net or _softmax_regression
    n = len(train)
    prior = priors.Normal(scale=prior_scale)
    kw = dict(epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, seed=seed, progress=progress,
              device=device, **fit_options)

    def bnn(make, inputs: int) -> BNN:
        torch.manual_seed(seed)
        return BNN(make(inputs, classes), prior=prior, dataset_size=n)

    models: dict[str, BNN] = {}
    fits: dict[str, FitResult] = {}
    metrics: dict[str, dict[str, float]] = {}
    if "teacher" in roles:
        models["teacher"] = bnn(make_t, d_s)
        fits["teacher"] = fit(models["teacher"], train.teacher_view(), **kw)
        metrics["teacher"] = evaluate(models["teacher"], test.teacher_view(), num_samples=num_samples, seed=seed)
    if "student" in roles:
        models["student"] = bnn(make_s, d_x)
        fits["student"] = fit(models["student"], train.regular(), **kw)
        metrics["student"] = evaluate(models["student"], test.regular(), num_samples=num_samples, seed=seed)
    if "distilled" in roles:
        models["distilled"] = bnn(make_s, d_x)
        term = PrivilegedKD(models["teacher"], temperature=temperature, weight=imitation, teacher_mode=teacher_mode,
                            privileged_shape=tuple(train.privileged.shape[1:]))
        fits["distilled"] = fit(models["distilled"], train, distill=[term], **kw)
        metrics["distilled"] = evaluate(models["distilled"], test.regular(), num_samples=num_samples, seed=seed)
    settings = {"temperature": temperature, "imitation": imitation, "prior_scale": prior_scale, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "lr_schedule": lr_schedule, "teacher_mode": teacher_mode, "num_samples": num_samples,
                "seed": seed, "n_train": n, "n_test": len(test),
                **{k: v for k, v in fit_options.items() if isinstance(v, (int, float, str, bool))}}
    return GeneralizedDistillationResult(models, {r: {k: float(v) for k, v in m.items() if _is_number(v)}
                                                  for r, m in metrics.items()}, fits, settings)


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True
