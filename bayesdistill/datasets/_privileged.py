r"""Privileged information: the synthetic setups of Lopez-Paz, Bottou, Schölkopf & Vapnik (2016).

"Unifying distillation and privileged information" (ICLR 2016), section 5: logistic-regression
problems in which every training example comes as a triplet ``(x, x*, y)``: regular features
``x`` (available at training and test time), privileged features ``x*`` (training time only)
and a binary label ``y``. A teacher learns from ``(x*, y)``; the student learns from ``(x, y)``
and imitates the teacher's soft labels on the same examples (generalized distillation,
:class:`bayesdistill.distill.PrivilegedKD`).

With ``rng = numpy.random.default_rng(seed)``, ``alpha ~ N(0, I_d)`` is drawn first, then the
training set, then the test set (each by the experiment's generator below, in the order listed):

1. **clean labels** (``"privileged-clean-labels"``): ``x ~ N(0, I_d)``, ``x* = <alpha, x>``
   (one feature), ``eps ~ N(0, 1)``, ``y = 1[x* + eps > 0]``;
2. **clean features** (``"privileged-clean-features"``): ``x* ~ N(0, I_d)``,
   ``eps ~ N(0, I_d)``, ``x = x* + eps``, ``y = 1[<alpha, x*> > 0]``;
3. **relevant features** (``"privileged-relevant-features"``): ``x ~ N(0, I_d)``,
   ``x* = x_J`` with ``J = {0, 1, 2}`` (the authors' code; any fixed ``|J| = 3`` is the same
   problem by symmetry), ``y = 1[<alpha_J, x*> > 0]``;
4. **sample-dependent relevant features**, two versions:

   - ``variant="text"`` (``"privileged-sample-dependent"``), the paper's definition: for each
     example a random ``J_i`` (``|J_i| = 3``, the columns in random order), ``x* = x_{J_i}``,
     ``y = 1[<alpha_{J_i}, x*> > 0]``;
   - ``variant="code"`` (``"privileged-sample-dependent-code"``), what the authors' generating
     code (``synthetic_04`` in github.com/lopezpaz/distillation_privileged_information,
     ``code/synthetic.py``) does and what the published numbers (96 / 55 / 56) follow: one
     random ``J`` per *call*, i.e. per data set, so every example of a set shares it, and the
     training and the test set are drawn by separate calls with **different** ``J``; the
     weights are ``alpha[:3]`` whatever ``J`` is, and the threshold is the median of
     ``<alpha[:3], x_J>`` over the set (balanced classes), not 0. A teacher on ``x*`` sees "the
     three chosen columns" in both sets and generalizes; a student on ``x`` learns the training
     set's columns and is tested on other columns, hence its near-chance accuracy.
   - ``variant="code-top3"`` (``"privileged-sample-dependent-top3"``): ``synthetic_04`` with the
     line its final version comments out (``xs = np.sort(xs, axis=1)[:, ::-1][:, 0:3]``): ``x*``
     are the three largest entries of each ``x_i`` in decreasing order (a sample-dependent ``J_i``
     that is a function of ``x_i``), ``y = 1[<alpha[:3], x*> > median]``. The label is linear in
     ``x*`` but not in ``x``.

Inputs are standardized with the training set's mean and (population) standard deviation, per
feature, separately for ``x`` and ``x*``, as the authors' code does with scikit-learn's
``StandardScaler`` (``standardize=False`` keeps the raw draws). Computed in ``float64``, stored as
``float32``; labels are ``int64`` in ``{0, 1}`` (class 1: the condition holds).

The paper states 10,000 test examples (its code has 1,000): the default is 10,000.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from ._base import DatasetBundle

__all__ = ["PrivilegedDataset", "privileged_synthetic", "PRIVILEGED_EXPERIMENTS"]

#: registry name -> (experiment, variant)
PRIVILEGED_EXPERIMENTS: Mapping[str, tuple[int, str]] = {
    "privileged-clean-labels": (1, "text"),
    "privileged-clean-features": (2, "text"),
    "privileged-relevant-features": (3, "text"),
    "privileged-sample-dependent": (4, "text"),
    "privileged-sample-dependent-code": (4, "code"),
    "privileged-sample-dependent-top3": (4, "code-top3"),
}

_TITLES = {1: "clean labels", 2: "clean features", 3: "relevant features", 4: "sample-dependent relevant features"}


class PrivilegedDataset(TensorDataset):
    """Examples ``(x, x*, y)``: a ``TensorDataset`` of ``(x, y, privileged)`` whose items are dicts.

    ``dataset[i] == {"x": x[i], "privileged": privileged[i], "y": y[i]}``, so a ``DataLoader``
    yields dict batches, which :func:`bayesdistill.fit` reads as ``Batch(x, y,
    side={"privileged": ...})``; the training engine slices the tensors directly (its fast path)
    and names the third one by :attr:`side_names`. :attr:`tensors` starts with ``(x, y)``, so
    ``bundle.tensors("train")`` is the regular view.

    Args:
        x: regular inputs ``[N, ...]``; y: targets ``[N, ...]``; privileged: privileged inputs
            ``[N, ...]`` (any feature shape).

    Raises:
        ValueError: tensors of different lengths (their lengths named), or 0-d tensors.
    """

    #: the names of the tensors after (x, y), read by the training engine's fast path
    side_names = ("privileged",)

    def __init__(self, x: Tensor, y: Tensor, privileged: Tensor):
        for name, t in (("x", x), ("y", y), ("privileged", privileged)):
            if not torch.is_tensor(t):
                raise TypeError(f"PrivilegedDataset: {name} must be a tensor, got {type(t).__name__}")
            if t.dim() == 0:
                raise ValueError(f"PrivilegedDataset: {name} needs a batch dimension (examples first), got a 0-d tensor")
        if not (len(x) == len(y) == len(privileged)):
            raise ValueError(
                f"PrivilegedDataset: x, y and privileged differ in length: {len(x)}, {len(y)} and {len(privileged)}"
            )
        super().__init__(x, y, privileged)

    @property
    def x(self) -> Tensor:
        return self.tensors[0]

    @property
    def y(self) -> Tensor:
        return self.tensors[1]

    @property
    def privileged(self) -> Tensor:
        return self.tensors[2]

    def __getitem__(self, index: Any) -> dict[str, Tensor]:  # type: ignore[override]
        return {"x": self.x[index], "privileged": self.privileged[index], "y": self.y[index]}

    def regular(self) -> TensorDataset:
        """The student's view ``(x, y)``."""
        return TensorDataset(self.x, self.y)

    def teacher_view(self) -> TensorDataset:
        """The teacher's view ``(x*, y)``."""
        return TensorDataset(self.privileged, self.y)

    def subset(self, index: Tensor) -> "PrivilegedDataset":
        """The examples at ``index`` (a tensor of indices), privileged inputs kept."""
        return PrivilegedDataset(self.x[index], self.y[index], self.privileged[index])

    def __repr__(self) -> str:
        return (f"PrivilegedDataset(n={len(self)}, x={tuple(self.x.shape[1:])}, "
                f"privileged={tuple(self.privileged.shape[1:])})")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _draw(experiment: int, variant: str, alpha: np.ndarray, n: int, rng: np.random.Generator):
    """One data set of ``n`` examples: ``(x, x*, y)`` as float64 / bool arrays (paper's generators)."""
    d = alpha.size
    if experiment == 1:
        x = rng.standard_normal((n, d))
        eps = rng.standard_normal(n)
        xs = (x @ alpha)[:, None]
        y = (xs[:, 0] + eps) > 0
    elif experiment == 2:
        xs = rng.standard_normal((n, d))
        eps = rng.standard_normal((n, d))
        x = xs + eps
        y = (xs @ alpha) > 0
    elif experiment == 3:
        x = rng.standard_normal((n, d))
        xs = x[:, :3].copy()
        y = (xs @ alpha[:3]) > 0
    elif variant == "text":
        x = rng.standard_normal((n, d))
        J = np.argsort(rng.random((n, d)), axis=1)[:, :3]  # a random 3-subset per example, random order
        xs = np.take_along_axis(x, J, axis=1)
        y = (xs * alpha[J]).sum(1) > 0
    elif variant == "code-top3":  # synthetic_04 with its commented-out line: the 3 largest entries
        x = rng.standard_normal((n, d))
        xs = -np.sort(-x, axis=1)[:, :3]
        score = xs @ alpha[:3]
        y = score > np.median(score)
    else:  # the authors' synthetic_04: one J per call, weights alpha[:3], median threshold
        x = rng.standard_normal((n, d))
        J = rng.permutation(d)[:3]
        xs = x[:, J]
        score = xs @ alpha[:3]
        y = score > np.median(score)
        return x, xs, y, J
    return x, xs, y, None


def privileged_synthetic(
    experiment: int,
    *,
    n_train: int = 200,
    n_test: int = 10_000,
    dim: int = 50,
    seed: int = 0,
    standardize: bool = True,
    variant: str = "text",
) -> DatasetBundle:
    """One draw of the paper's synthetic experiment ``experiment`` (1-4) as a bundle of
    :class:`PrivilegedDataset` (see the module docstring for the generators).

    Args:
        experiment: 1 clean labels, 2 clean features, 3 relevant features, 4 sample-dependent
            relevant features.
        n_train: training examples (paper: 200).
        n_test: test examples (paper: 10,000).
        dim: d, the number of features (paper: 50, >= 3).
        seed: seeds ``alpha`` and the data (``numpy.random.default_rng``); one seed is one of the
            paper's repetitions.
        standardize: standardize ``x`` and ``x*`` with the training set's statistics.
        variant: experiment 4 only: ``"text"`` (the paper's definition), ``"code"`` (the
            authors' generating code) or ``"code-top3"`` (that code with its commented-out line).

    Returns:
        A :class:`DatasetBundle` (``task="classification"``, 2 classes, ``input_shape=(dim,)``)
        whose ``train``/``test`` are :class:`PrivilegedDataset`; ``info`` holds
        ``privileged_shape``, ``alpha`` (float32 ``[dim]``), ``experiment``, ``variant`` and,
        for the code variant, the column sets ``J_train`` and ``J_test``.
    """
    if isinstance(experiment, bool) or experiment not in (1, 2, 3, 4):
        raise ValueError(f"experiment must be 1, 2, 3 or 4, got {experiment!r}")
    if variant not in ("text", "code", "code-top3"):
        raise ValueError(f"variant must be 'text', 'code' or 'code-top3', got {variant!r}")
    if variant != "text" and experiment != 4:
        raise ValueError(f"variant={variant!r} differs from the text only for experiment 4")
    n_train = _check_int("n_train", n_train, 2)
    n_test = _check_int("n_test", n_test, 1)
    dim = _check_int("dim", dim, 3)
    seed = _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    alpha = rng.standard_normal(dim)
    x_tr, s_tr, y_tr, j_tr = _draw(experiment, variant, alpha, n_train, rng)
    x_te, s_te, y_te, j_te = _draw(experiment, variant, alpha, n_test, rng)
    if standardize:
        for a, b in ((x_tr, x_te), (s_tr, s_te)):
            mean, std = a.mean(0), a.std(0)
            std = np.where(std > 0, std, 1.0)
            a -= mean
            a /= std
            b -= mean
            b /= std

    def ds(x, s, y) -> PrivilegedDataset:
        f = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        return PrivilegedDataset(f(x), torch.from_numpy(y.astype(np.int64)), f(s))

    name = next(k for k, v in PRIVILEGED_EXPERIMENTS.items() if v == (experiment, variant))
    info: dict[str, Any] = {
        "source": "Lopez-Paz, Bottou, Schölkopf & Vapnik, Unifying distillation and privileged information "
                  "(ICLR 2016), section 5",
        "experiment": experiment,
        "title": _TITLES[experiment],
        "variant": variant,
        "privileged_shape": (int(s_tr.shape[1]),),
        "alpha": torch.from_numpy(alpha.astype(np.float32)),
        "seed": seed,
        "standardized": bool(standardize),
    }
    if j_tr is not None:
        info["J_train"], info["J_test"] = j_tr.tolist(), j_te.tolist()
    return DatasetBundle(
        name=name,
        task="classification",
        train=ds(x_tr, s_tr, y_tr),
        test=ds(x_te, s_te, y_te),
        num_classes=2,
        input_shape=(dim,),
        output_dim=2,
        info=info,
    )
