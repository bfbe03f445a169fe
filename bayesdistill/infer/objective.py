r"""The student's objective: a :class:`~bayesdistill.BNN`'s Pyro model with terms added.

A :class:`Term` adds a per-example log-factor to the model, inside a ``pyro.plate`` over the
data, so it enters the same ELBO as the likelihood and the KL to the prior:

.. math::

    \mathcal{L} = \mathbb{E}_q\Big[\sum_i \lambda_0 \log p(y_i | x_i, w)
                  + \sum_k \lambda_k \log f_k(x_i; w)\Big] - \mathrm{KL}(q \| p)

where :math:`\lambda_0` is the product of the terms' ``likelihood_weight`` (e.g. 1 - a for
Hinton's KD) and :math:`\lambda_k` a term's ``weight``. A term may compare the network with a
*reference* on the same batch (a teacher network): terms whose :meth:`Term.reference_key` agree
share one reference pass per step. Features are read by module path with
:class:`~bayesdistill.bnn.FeatureTaps`, so nobody rewrites ``forward()``.

The concrete distillation terms (KD, VID, PKT, Hint, TinyBERT, ...) live in
:mod:`bayesdistill.distill.terms`; this module knows none of them by name or type.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any, Optional

import pyro
import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn

from ..bnn.network import BNN
from ..bnn.taps import FeatureTaps
from .batches import Batch

__all__ = ["Term", "Objective", "ScaleSite", "METRIC_PREFIX"]

#: History columns of a term's metrics are ``METRIC_PREFIX + "<term name>/<metric>"``.
METRIC_PREFIX = "distill/"


class ScaleSite(Messenger):
    """Multiply the scale of the sample site ``name`` by ``factor`` (e.g. the likelihood by 1 - a)."""

    def __init__(self, name: str, factor: float):
        super().__init__()
        self.name, self.factor = name, float(factor)

    def _pyro_sample(self, msg) -> None:
        if msg["name"] == self.name:
            msg["scale"] = self.factor * msg["scale"]


class Term(nn.Module):
    """Base class of a term of the objective (an ``nn.Module``: its parameters are trained too).

    Subclasses set :attr:`name` and :attr:`student_paths` (module paths of the student whose
    outputs the term reads; the network output is always available) and implement
    :meth:`log_factor`, the per-example contribution ``[B]`` in nats (higher = better) before
    the weight; or override :meth:`observe` to emit Pyro sites of their own (and then report
    their metrics in :attr:`metrics`). A term that needs work around the step (e.g. a critic
    trained after each epoch) returns callbacks from :meth:`callbacks`. A term that reads a reference (a teacher) overrides
    :meth:`reference_key`, :meth:`reference_paths` and :meth:`reference`. What depends on the
    student network (e.g. default module paths) is resolved in :meth:`bind`, which the
    :class:`Objective` calls before it reads :attr:`student_paths`.

    ``weight`` is part of the term's ``state_dict`` (extra state), so a weight changed during
    training (a schedule, the heavy student's decay) is checkpointed and restored on resume.

    Attributes:
        metrics: the detached per-step metrics of the last model call (name -> 0-d tensor);
            :meth:`observe` sets ``{"loss": mean of -log_factor}`` (nats per example). The
            engine averages them per epoch into history columns ``distill/<name>/<metric>``.
    """

    #: multiplies the likelihood of labelled batches (the product over all terms is used)
    likelihood_weight: float = 1.0
    #: a module the term's reference runs (e.g. the teacher): the engine moves it to the
    #: training device; ``None`` when there is none
    reference_module: Optional[nn.Module] = None

    def __init__(self, name: str, weight: float = 1.0):
        super().__init__()
        self.name = name
        self.weight = _check_weight(type(self).__name__, weight)
        self.student_paths: list[str] = []
        self.metrics: dict[str, Tensor] = {}

    # -- state ----------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, float]:
        return {"weight": self.weight}

    def set_extra_state(self, state: Mapping[str, float]) -> None:
        self.weight = float(state["weight"])

    # -- the student ----------------------------------------------------------------------
    def bind(self, bnn: BNN) -> None:
        """Resolve what depends on the student (e.g. default feature paths) before the objective
        reads :attr:`student_paths`; called when the objective is built. Default: nothing."""

    # -- the reference (a teacher) ------------------------------------------------------------
    def reference_key(self) -> Optional[Hashable]:
        """Terms with equal keys share one reference pass per step; ``None``: no reference."""
        return None

    def reference_paths(self) -> list[str]:
        """Module paths of the reference whose outputs this term reads."""
        return []

    def reference(self, batch: Batch, paths: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """The reference's output and tapped features ``{path: tensor}`` on ``batch`` (no gradient)."""
        raise NotImplementedError(f"{type(self).__name__} has no reference")

    def validate(self) -> None:
        """Check what can be checked before training (e.g. that module paths exist); raise
        ``KeyError``/``ValueError`` naming the problem. Called when the objective is built."""

    def callbacks(self) -> list[Any]:
        """Callbacks (:class:`~bayesdistill.infer.Callback`) the term needs around the SVI step, e.g.
        critics trained on their own optimizer after each epoch; the training engine adds them to
        its callbacks (their state is checkpointed with the others). Default: none."""
        return []

    # -- the term -------------------------------------------------------------------------
    def setup(self, s_out: Tensor, s_feats: Mapping[str, Tensor], r_out: Any, r_feats: Mapping[str, Tensor]) -> None:
        """Build shape-dependent parts (projections, regressors) from a probe batch; default none."""

    def setup_targets(self, y: Tensor, s_out: Tensor, r_out: Any) -> None:
        """Fit what depends on the probe batch's labels ``y`` (e.g. :class:`~bayesdistill.distill.KD`'s
        teacher temperature); called after :meth:`setup` when the probe batch is labelled. Default none."""

    def log_factor(self, s_out: Tensor, s_feats: Mapping[str, Tensor], r_out: Any,
                   r_feats: Mapping[str, Tensor]) -> Tensor:
        """Per-example log-factor ``[B]`` (nats) before the weight."""
        raise NotImplementedError

    def observe(self, s_out: Tensor, s_feats: Mapping[str, Tensor], r_out: Any, r_feats: Mapping[str, Tensor]) -> None:
        """Add the weighted log-factor to the model (inside the caller's data plate)."""
        lf = self.log_factor(s_out, s_feats, r_out, r_feats)
        self.metrics = {"loss": (-lf).detach().mean()}
        pyro.factor(f"distill.{self.name}", self.weight * lf)


def _check_weight(owner: str, weight: Any) -> float:
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: weight must be a number, got {weight!r}") from None
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"{owner}: weight must be a finite number >= 0, got {weight!r}")
    return w


class Objective:
    """The student's model and guide with terms added (``bd.fit(bnn, data, distill=terms)``).

    ``model(x, y=None, size=None, side=None)``: the student's Pyro model on a batch; with labels
    the likelihood is observed (scaled by the product of the terms' ``likelihood_weight``); without
    labels (a transfer batch) the likelihood site is hidden and only the terms act. The terms sit
    in ``pyro.plate("distill", size, subsample=...)`` so that, like the likelihood, their batch
    sum is scaled to the data set (``size`` examples: the labelled set, or the transfer set for
    transfer batches). ``side`` holds the batch's named side inputs (see
    :class:`~bayesdistill.infer.Batch`), which references may read.

    The pair works with plain :class:`pyro.infer.SVI` too: call :meth:`setup` on one batch first
    (it builds the terms' shape-dependent modules); the model then registers the terms'
    parameters with ``pyro.module`` under ``"<student pyro_name>.distill"``.
    """

    def __init__(self, bnn: BNN, terms: Sequence[Term]):
        for t in terms:
            if not isinstance(t, Term):
                raise TypeError(
                    f"distill= expects terms of the objective (the bd.distill terms, or any subclass "
                    f"of bd.infer.Term), got {type(t).__name__}"
                )
        if len({id(t) for t in terms}) < len(terms):
            raise ValueError("the same term object appears twice in distill=; build one object per term")
        self.bnn = bnn
        for t in terms:
            t.bind(bnn)
        seen: set[str] = set()
        for t in terms:  # unique names: sites and history columns must not collide
            base, k = t.name, 1
            while t.name in seen:
                t.name = f"{base}{k}"
                k += 1
            seen.add(t.name)
        self.terms = nn.ModuleList(terms)
        self.student_paths = list(dict.fromkeys(p for t in terms for p in t.student_paths))
        FeatureTaps(bnn.net, self.student_paths, "student")  # validate the paths now
        for t in terms:
            t.validate()
        self._arange: dict[tuple[int, torch.device], Tensor] = {}

    def parameters(self):
        return self.terms.parameters()

    @property
    def likelihood_weight(self) -> float:
        """Product of the terms' ``likelihood_weight`` (read per model call: weights may change)."""
        return math.prod(t.likelihood_weight for t in self.terms)

    def _references(self, batch: Batch) -> dict[Hashable, tuple[Any, dict[str, Tensor]]]:
        groups: dict[Hashable, tuple[Term, list[str]]] = {}
        for t in self.terms:
            key = t.reference_key()
            if key is None:
                continue
            first, paths = groups.setdefault(key, (t, []))
            paths.extend(p for p in t.reference_paths() if p not in paths)
        return {k: first.reference(batch, paths) for k, (first, paths) in groups.items()}

    def _reference_of(self, refs: Mapping[Hashable, tuple[Any, dict[str, Tensor]]], t: Term):
        key = t.reference_key()
        return refs[key] if key is not None else (None, {})

    @torch.no_grad()
    def setup(self, batch: Any) -> None:
        """Build the terms' shape-dependent modules from a probe batch (up to ~1024 examples):
        a :class:`~bayesdistill.infer.Batch` or the network's input tensor. With labels
        (``batch.y``) the terms also fit what depends on them (:meth:`Term.setup_targets`)."""
        if not isinstance(batch, Batch):
            batch = Batch(batch)
        bnn = self.bnn
        was = bnn.training
        bnn.eval()
        try:
            with FeatureTaps(bnn.net, self.student_paths, "student") as taps:
                s_out = bnn(batch.x)
            s_feats = dict(taps.features)
        finally:
            bnn.train(was)
        refs = self._references(batch)
        for t in self.terms:
            r_out, r_feats = self._reference_of(refs, t)
            t.setup(s_out, s_feats, r_out, r_feats)
            if batch.y is not None:
                t.setup_targets(batch.y, s_out, r_out)

    def model(self, x: Any, y: Optional[Tensor] = None, size: Optional[int] = None,
              side: Optional[Mapping[str, Any]] = None) -> Tensor:
        bnn = self.bnn
        if bnn.register_params and any(p.requires_grad for p in self.terms.parameters()):
            # plain pyro.infer.SVI / Predictive: the terms' parameters (VID regressors and
            # variances, Hint projections) go into the param store next to the student's, so
            # that SVI's optimizer trains them; the training engine optimizes them directly.
            # Frozen ones (e.g. critics trained by their own optimizer) stay out, on purpose.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not registered in the param store because requires_grad=False")
                pyro.module(f"{bnn.pyro_name}.distill", self.terms)
        with ExitStack() as stack:
            taps = stack.enter_context(FeatureTaps(bnn.net, self.student_paths, "student"))
            if y is None:
                stack.enter_context(pyro.poutine.block(hide=["obs"]))
            elif (lw := self.likelihood_weight) != 1.0:
                stack.enter_context(ScaleSite("obs", lw))
            out = bnn.model(x, y)
        refs = self._references(Batch(x, y, dict(side or {})))
        n_batch = out.shape[0]
        key = (n_batch, out.device)
        if key not in self._arange:
            self._arange[key] = torch.arange(n_batch, device=out.device)
        n = size or (bnn.dataset_size or n_batch)
        with pyro.plate("distill", size=n, subsample=self._arange[key]):
            for t in self.terms:
                t.observe(out, taps.features, *self._reference_of(refs, t))
        return out

    def guide(self, x: Any, y: Optional[Tensor] = None, size: Optional[int] = None,
              side: Optional[Mapping[str, Any]] = None) -> None:
        self.bnn.guide(x, y)

    def step_metrics(self) -> dict[str, Tensor]:
        """The terms' detached metrics of the last model call: ``{"distill/<name>/<metric>": 0-d tensor}``."""
        return {f"{METRIC_PREFIX}{t.name}/{k}": v for t in self.terms for k, v in t.metrics.items()}
