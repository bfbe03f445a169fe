r"""The base of the distillation terms: the teacher as the term's reference, and feature pairs.

A distillation term is a :class:`~bayesdistill.infer.Term` of the student's Pyro objective: it
adds a per-example log-factor inside the data plate, so it enters the same ELBO as the
likelihood and the KL to the prior:

.. math::

    \mathcal{L} = \mathbb{E}_q\Big[\sum_i \lambda_0 \log p(y_i | x_i, w)
                  + \sum_k \lambda_k \log f_k(x_i; w)\Big] - \mathrm{KL}(q \| p)

- :class:`DistillTerm`: a term that compares the student with a teacher (the term's
  *reference*, read through :class:`TeacherFeatures`; terms sharing a teacher and its mode share
  one teacher pass per step);
- :class:`PairTerm`: a distillation term over feature pairs ``pairs={teacher_path:
  student_path}`` with a weight that is a float (all pairs) or a mapping ``teacher_path ->
  float`` (a weight per pair); without ``pairs`` the pair is the teacher's last hidden layer ->
  the student's (:func:`default_pairs`, resolved when the objective is built).

Features are read by forward hooks on module paths (:class:`~bayesdistill.bnn.FeatureTaps`):
nobody rewrites ``forward()``.

**The weight convention** (docs/function-space.md, "Weights"). A term's log-factor is in nats
per example on the scale of one label's log-likelihood, whatever the size or scale of the
features it reads, so that ``weight=1`` means "as much as one label" for every term and every
feature shape:

- terms over feature elements reduce them by their mean (``reduction="mean"``, the default of
  :class:`VID`, :class:`Hint`, :class:`TinyBERT`): a feature map duplicated along its channels
  gives the same log-factor. ``reduction="sum"`` keeps the exact sum (for VID the exact
  log-density of q(t | s), D times the mean for D elements);
- squared errors are in units of the teacher feature's variance (``normalize="variance"``,
  Hint and TinyBERT), PKT's KL in units of the teacher's KL from uniform (``normalize="uniform"``):
  scales measured on the probe batch in :meth:`~bayesdistill.infer.Term.setup`, from the data;
- KD at T = 1 is the log-likelihood of the teacher's soft label, sharing each example's one label
  with the true label (``(1 - a)`` and ``a``).

Within the ELBO a weight ``lambda`` on a log-factor ``log f`` is the tempered factor
``f^lambda`` of a generalized-Bayes pseudo-likelihood; with ``reduction="mean"`` VID's factor is
``q(t | s)^(lambda / D)``. The ELBO then bounds the log-evidence of that tempered model (see
:class:`VID`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import pyro
import torch
from torch import Tensor, nn

from ...bnn.network import BNN
from ...bnn.taps import FeatureTaps, last_hidden_layer
from ...infer.batches import Batch
from ...infer.objective import Term

__all__ = ["TeacherFeatures", "DistillTerm", "PairTerm", "default_pairs", "REDUCTIONS", "check_reduction"]

#: A weight: one number for all pairs, or a number per pair (teacher path -> weight).
Weight = Union[float, Mapping[str, float]]

#: How a term over feature elements reduces them per example: ``"mean"`` (per element, the
#: default: weights comparable across feature sizes) or ``"sum"`` (the exact log-density).
REDUCTIONS = ("mean", "sum")


def check_reduction(owner: str, reduction: Any) -> str:
    """``reduction`` if it is one of :data:`REDUCTIONS`, else ``ValueError`` naming ``owner``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{owner}: reduction must be 'mean' (per feature element) or 'sum' (the exact "
                         f"log-density), got {reduction!r}")
    return reduction


class TeacherFeatures:
    """The teacher's outputs and tapped features for a batch, without gradients.

    Args:
        teacher: a trained :class:`~bayesdistill.BNN` or a plain ``nn.Module``.
        mode: for a BNN, ``"mean"`` (the posterior-mean network) or ``"sample"`` (one posterior
            draw per call, so the student sees the teacher's uncertainty over training).
    """

    def __init__(self, teacher: Union[BNN, nn.Module], mode: str = "mean"):
        if mode not in ("mean", "sample"):
            raise ValueError(f"teacher mode must be 'mean' or 'sample', got {mode!r}")
        self.teacher, self.mode = teacher, mode

    @property
    def net(self) -> nn.Module:
        return self.teacher.net if isinstance(self.teacher, BNN) else self.teacher

    @torch.no_grad()
    def __call__(self, x: Tensor, paths: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        t = self.teacher
        was = t.training
        t.eval()
        try:
            with FeatureTaps(self.net, paths, "teacher") as taps:
                if isinstance(t, BNN) and self.mode == "sample":
                    w = t.sample_weights(1)
                    out = t.forward_with(x, {k: v[0] for k, v in w.items()})
                else:
                    out = t(x)
            return out, dict(taps.features)
        finally:
            t.train(was)


def default_pairs(teacher: Union[BNN, nn.Module], student: Union[BNN, nn.Module], owner: str = "term") -> dict[str, str]:
    """The default feature pair: the teacher's last hidden layer -> the student's
    (:func:`~bayesdistill.bnn.last_hidden_layer`); ``ValueError`` naming the network that has none."""
    found = {}
    for what, net in (("teacher", teacher), ("student", student)):
        net = net.net if isinstance(net, BNN) else net
        layer = last_hidden_layer(net)
        if layer is None:
            raise ValueError(
                f"{owner}: the {what} has no activation module before its read-out to take features from "
                "(bd.bnn.last_hidden_layer); name the feature pairs: pairs={teacher_path: student_path}"
            )
        found[what] = layer
    return {found["teacher"]: found["student"]}


class DistillTerm(Term):
    """Base class of a term that compares the student with a teacher.

    Subclasses set ``student_paths``/``teacher_paths`` (module paths to tap; the network output
    is always available) and implement :meth:`log_factor`, the per-example contribution ``[B]``
    in nats (higher = student closer to teacher), *before* the term's weight, on the scale of one
    label's log-likelihood (the module's weight convention: per feature element, in units the
    data define, so that ``weight=1`` is "as much as one label"). The teacher is the
    term's reference (:class:`~bayesdistill.infer.Term`): terms sharing a teacher (and its mode)
    share one teacher pass per step, and the engine moves it to the training device.

    Metrics (:attr:`metrics`, history columns ``distill/<name>/<metric>``): every term reports
    ``loss``, the batch mean of ``-log_factor`` per example *before the weight*, in nats per
    example (for VID: minus the sum over its pairs of log q(t|s) / D, or of the exact log q(t|s)
    with ``reduction="sum"``); pair terms add
    ``pair<i>/loss`` (and their own ``pair<i>/<metric>``). A term reports only its own metrics:
    the engine adds the ``distill/<name>/`` prefix.

    Args:
        teacher: the teacher (a :class:`~bayesdistill.BNN` or a plain ``nn.Module``).
        weight: the term's weight (>= 0); part of the term's state (schedules are checkpointed).
        name: the term's name (history columns, Pyro sites); a second term of the same name in
            one objective becomes ``<name>1``, ...
        teacher_mode: ``"mean"`` or ``"sample"`` (:class:`TeacherFeatures`).
    """

    def __init__(self, teacher: Union[BNN, nn.Module], weight: float, name: str, teacher_mode: str = "mean"):
        super().__init__(name, weight)
        self.teacher_features = TeacherFeatures(teacher, teacher_mode)
        self.teacher_paths: list[str] = []

    @property
    def reference_module(self) -> nn.Module:  # type: ignore[override]
        """The teacher (moved to the training device by the engine)."""
        return self.teacher_features.teacher

    def validate(self) -> None:
        FeatureTaps(self.teacher_features.net, self.teacher_paths, "teacher")

    def reference_key(self):
        return id(self.teacher_features.teacher), self.teacher_features.mode

    def reference_paths(self) -> list[str]:
        return list(self.teacher_paths)

    def reference(self, batch: Batch, paths: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.teacher_features(batch.x, paths)


def _pair_weight(owner: str, key: str, value: Any) -> float:
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: the weight of pair {key!r} must be a number, got {value!r}") from None
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"{owner}: the weight of pair {key!r} must be a finite number >= 0, got {value!r}")
    return w


def _check_pairs_type(owner: str, pairs: Any) -> None:
    if not isinstance(pairs, Mapping):
        raise TypeError(f"{owner}: pairs must be a mapping {{teacher_path: student_path}}, got {pairs!r}"
                        + (f" (the old {owner}(teacher, student_path, teacher_path) is now "
                           f"{owner}(teacher, pairs={{teacher_path: student_path}}))" if isinstance(pairs, str) else ""))


class PairTerm(DistillTerm):
    """A distillation term over feature pairs ``{teacher_path: student_path}``.

    The log-factor is ``weight * sum_i s_i f_i(x)``: ``f_i`` the per-example log-factor of pair
    ``i`` (:meth:`pair_log_factors`), ``s_i`` the pair's share of the weight. A float ``weight``
    gives every pair the same weight (``s_i = 1``, :attr:`weight` = the float); a mapping
    ``teacher_path -> float`` gives a weight per pair (``s_i`` = the mapping's value, and
    :attr:`weight` = 1.0, which schedules such as the heavy student's decay multiply).
    :attr:`pair_weights` are the effective weights ``weight * s_i``.

    Args:
        teacher: the teacher (a :class:`~bayesdistill.BNN` or an ``nn.Module``).
        pairs: teacher module path -> student module path; ``None``: the teacher's last hidden
            layer -> the student's (:func:`default_pairs`), resolved when the objective is built.
        weight: a float for all pairs, or a mapping teacher path -> float naming every pair.
        name: the term's name; teacher_mode: ``"mean"`` or ``"sample"``.

    Metrics: ``loss`` (the sum over pairs of ``pair<i>/loss``, before any weight) and
    ``pair<i>/loss`` = the batch mean of ``-f_i``, nats per example.
    """

    def __init__(self, teacher: Union[BNN, nn.Module], pairs: Optional[Mapping[str, str]], weight: Weight,
                 name: str, teacher_mode: str = "mean"):
        owner = type(self).__name__
        if pairs is not None:
            _check_pairs_type(owner, pairs)  # first: the old (teacher, student_path, teacher_path) calls
        per_pair = isinstance(weight, Mapping)
        super().__init__(teacher, 1.0 if per_pair else weight, name, teacher_mode)
        self.weight_spec: Optional[dict[str, float]] = (
            {str(k): _pair_weight(owner, k, v) for k, v in weight.items()} if per_pair else None)
        self.default_pairs = pairs is None
        self.pairs: dict[str, str] = {}
        self.pair_scales: list[float] = []
        if pairs is not None:
            self._set_pairs(pairs)

    def _set_pairs(self, pairs: Mapping[str, str]) -> None:
        owner = type(self).__name__
        _check_pairs_type(owner, pairs)
        if not pairs:
            raise ValueError(f"{owner}: pairs is empty; name at least one {{teacher_path: student_path}} "
                             "or omit it for the last hidden layers")
        bad = [(t, s) for t, s in pairs.items() if not (isinstance(t, str) and isinstance(s, str))]
        if bad:
            raise TypeError(f"{owner}: pairs must map module paths (str) to module paths (str), got {bad}")
        self.pairs = dict(pairs)
        self.teacher_paths, self.student_paths = list(self.pairs), list(self.pairs.values())
        if self.weight_spec is None:
            self.pair_scales = [1.0] * len(self.pairs)
        else:
            missing = [t for t in self.pairs if t not in self.weight_spec]
            extra = [t for t in self.weight_spec if t not in self.pairs]
            if missing or extra:
                raise ValueError(
                    f"{owner}: a weight mapping names every pair by its teacher path; pairs {list(self.pairs)}"
                    + (f", no weight for {missing}" if missing else "") + (f", no pair for {extra}" if extra else "")
                )
            self.pair_scales = [self.weight_spec[t] for t in self.pairs]

    @property
    def pair_weights(self) -> list[float]:
        """The effective weight of each pair (``weight * s_i``), in pair order."""
        return [self.weight * s for s in self.pair_scales]

    def bind(self, bnn: BNN) -> None:
        if self.default_pairs:
            self._set_pairs(default_pairs(self.teacher_features.net, bnn.net, type(self).__name__))

    # -- the pairs' log-factors ---------------------------------------------------------------
    def pair_log_factors(self, s_out: Tensor, s_feats: Mapping[str, Tensor], t_out: Any,
                         t_feats: Mapping[str, Tensor]) -> list[Tensor]:
        """Per-example log-factors ``[B]`` of each pair (nats), before any weight."""
        raise NotImplementedError

    def log_factor(self, s_out, s_feats, t_out, t_feats) -> Tensor:
        """The sum over the pairs of their log-factors (before any weight)."""
        return torch.stack(self.pair_log_factors(s_out, s_feats, t_out, t_feats)).sum(0)

    def observe(self, s_out, s_feats, t_out, t_feats) -> None:
        parts = self.pair_log_factors(s_out, s_feats, t_out, t_feats)
        losses = [(-lf).detach().mean() for lf in parts]
        self.metrics = {"loss": torch.stack(losses).sum(), **{f"pair{i}/loss": v for i, v in enumerate(losses)}}
        total = sum(s * lf for s, lf in zip(self.pair_scales, parts))
        pyro.factor(f"distill.{self.name}", self.weight * total)
