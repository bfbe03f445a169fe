r"""Function-space distillation as terms of the student's Pyro objective.

When teacher and student differ in kind, knowledge moves through outputs and features. Each
term here adds a per-example log-factor (or an observed site) to the student's model inside a
``pyro.plate`` over the data, so it enters the same ELBO as the likelihood and the KL to the
prior (the teacher-posterior prior included):

.. math::

    \mathcal{L} = \mathbb{E}_q\Big[\sum_i (1 - a)\log p(y_i | x_i, w)
                  + \sum_k \lambda_k \log f_k(x_i; w)\Big] - \mathrm{KL}(q \| p)

* :class:`KD` (Hinton et al. 2015): log f = -T^2 KL(softmax(z_t/T) || softmax(z_s/T)); with
  weight a the likelihood is scaled by (1 - a).
* :class:`PKT` (Passalis & Tefas 2018): cosine-kernel affinities over the batch, row-normalized
  into conditional distributions P (teacher) and Q (student); log f_i = -KL(P_i || Q_i).
* :class:`Hint` (FitNets, Romero et al. 2015): log f = -mean (W s + b - t)^2 with a learned
  projection W (a 1x1 convolution for feature maps).
* :class:`VID` (Ahn et al. 2019): an amortized Gaussian variational family q(t | s) = N(t; mu(s),
  diag(sigma_c^2)) whose log-density at the teacher's features is an observed Pyro site, scaled
  by the pair weight; mu is a small regressor, sigma_c^2 = softplus(alpha_c) + 1e-5 per channel,
  initialized at 5. Its parameters are learned by the same SVI. H(t) + E[log q(t|s)] is a lower
  bound on the mutual information I(t; s), reported per pair in nats.

Features are read by forward hooks on module paths (:class:`FeatureTaps`): nobody rewrites
``forward()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn

from ..bnn.network import BNN
from ..bnn.taps import FeatureTaps  # moved to bnn/taps.py; importable from here as before

__all__ = ["FeatureTaps", "TeacherFeatures", "DistillTerm", "KD", "PKT", "Hint", "VID", "ScaleSite"]


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


class ScaleSite(Messenger):
    """Multiply the scale of the sample site ``name`` by ``factor`` (e.g. the likelihood by 1 - a)."""

    def __init__(self, name: str, factor: float):
        super().__init__()
        self.name, self.factor = name, float(factor)

    def _pyro_sample(self, msg) -> None:
        if msg["name"] == self.name:
            msg["scale"] = self.factor * msg["scale"]


class DistillTerm(nn.Module):
    """Base class of a function-space term.

    Subclasses set ``student_paths``/``teacher_paths`` (module paths to tap; ``""`` is not
    allowed, the network output is always available) and implement :meth:`log_factor`, the
    per-example contribution ``[B]`` in nats (higher = student closer to teacher), *before*
    the term's weight. :meth:`observe` adds it to the Pyro model as ``pyro.factor`` inside the
    caller's data plate, scaled by ``weight``.

    After each call ``last`` holds the detached batch mean of the term's loss (= -log_factor).
    ``weight`` is part of the term's ``state_dict`` (as extra state), so a weight changed during
    training (a schedule in a ``fit`` callback, the heavy student's decay) is checkpointed and
    restored on resume.
    """

    likelihood_weight: float = 1.0

    def __init__(self, teacher: Union[BNN, nn.Module], weight: float, name: str, teacher_mode: str = "mean"):
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"{type(self).__name__}: weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.name = name
        self.teacher_features = TeacherFeatures(teacher, teacher_mode)
        self.student_paths: list[str] = []
        self.teacher_paths: list[str] = []
        self.last: dict[str, Tensor] = {}

    def get_extra_state(self) -> dict[str, float]:
        return {"weight": self.weight}

    def set_extra_state(self, state: Mapping[str, float]) -> None:
        self.weight = float(state["weight"])

    def setup(self, s_out: Tensor, s_feats: Mapping[str, Tensor], t_out: Tensor, t_feats: Mapping[str, Tensor]) -> None:
        """Build shape-dependent parts (projections, regressors) from one batch; default none."""

    def log_factor(self, s_out, s_feats, t_out, t_feats) -> Tensor:
        raise NotImplementedError

    def observe(self, s_out, s_feats, t_out, t_feats) -> None:
        lf = self.log_factor(s_out, s_feats, t_out, t_feats)
        self.last = {"loss": (-lf).detach().mean()}
        pyro.factor(f"distill.{self.name}", self.weight * lf)


class KD(DistillTerm):
    """Hinton knowledge distillation: ``(1 - a) CE(y, z_s) + a T^2 KL(softmax(z_t/T) || softmax(z_s/T))``.

    Hinton, Vinyals & Dean (2015). ``weight`` is a in [0, 1]; the student's likelihood is scaled
    by 1 - a (on labelled batches). Outputs must be logits ``[B, C]`` of the same C.
    """

    def __init__(self, teacher: Union[BNN, nn.Module], temperature: float = 4.0, weight: float = 0.9, teacher_mode: str = "mean"):
        if not 0 <= weight <= 1:
            raise ValueError(f"KD: weight (alpha) must lie in [0, 1], got {weight}")
        if not temperature > 0:
            raise ValueError(f"KD: temperature must be > 0, got {temperature}")
        super().__init__(teacher, weight, "kd", teacher_mode)
        self.temperature = float(temperature)

    @property
    def likelihood_weight(self) -> float:  # type: ignore[override]
        """1 - a: follows ``weight`` when a schedule changes it."""
        return 1.0 - self.weight

    def log_factor(self, s_out, s_feats, t_out, t_feats) -> Tensor:
        if s_out.shape != t_out.shape:
            raise ValueError(f"KD needs student and teacher logits of the same shape; got {tuple(s_out.shape)} and {tuple(t_out.shape)}")
        T = self.temperature
        log_p_t = F.log_softmax(t_out / T, dim=-1)
        log_p_s = F.log_softmax(s_out / T, dim=-1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
        return -(T * T) * kl


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


class PKT(DistillTerm):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) on one feature pair.

    K(a, b) = (cos(a, b) + 1) / 2 over the batch (self-pairs excluded), rows normalized to
    P (teacher) and Q (student); log f_i = -KL(P_i || Q_i). Features are flattened per example;
    their sizes may differ.
    """

    def __init__(self, teacher, student_path: str, teacher_path: str, weight: float = 1.0, teacher_mode: str = "mean", eps: float = 1e-7):
        super().__init__(teacher, weight, f"pkt.{student_path}", teacher_mode)
        self.student_paths, self.teacher_paths = [student_path], [teacher_path]
        self.eps = eps

    def _cond(self, f: Tensor) -> Tensor:
        f = F.normalize(_flat(f), dim=1, eps=self.eps)
        k = (f @ f.T + 1.0) / 2.0
        k = k * (1 - torch.eye(k.shape[0], dtype=k.dtype, device=k.device))
        return k / k.sum(1, keepdim=True).clamp_min(self.eps)

    def log_factor(self, s_out, s_feats, t_out, t_feats) -> Tensor:
        p = self._cond(t_feats[self.teacher_paths[0]])
        q = self._cond(s_feats[self.student_paths[0]])
        return -(p * ((p + self.eps).log() - (q + self.eps).log())).sum(1)


class _Projection(nn.Module):
    """Linear map (vectors) or 1x1 convolution (maps) from student to teacher feature size."""

    def __init__(self, s: Tensor, t: Tensor, hidden: Optional[int] = None):
        super().__init__()
        self.maps = s.dim() > 2 and t.dim() > 2
        if self.maps:
            conv = nn.Conv1d if s.dim() == 3 else nn.Conv2d
            cin, cout = s.shape[1], t.shape[1]
            if hidden:
                self.net = nn.Sequential(conv(cin, hidden, 1), nn.ReLU(), conv(hidden, hidden, 1), nn.ReLU(), conv(hidden, cout, 1))
            else:
                self.net = conv(cin, cout, 1)
            self.spatial = tuple(t.shape[2:])
        else:
            din, dout = _flat(s).shape[1], _flat(t).shape[1]
            self.net = nn.Sequential(nn.Linear(din, hidden), nn.ReLU(), nn.Linear(hidden, dout)) if hidden else nn.Linear(din, dout)
            self.spatial = None
        self.net.to(s.device, s.dtype)

    def forward(self, s: Tensor) -> Tensor:
        if self.maps:
            if tuple(s.shape[2:]) != self.spatial:
                pool = F.adaptive_avg_pool1d if s.dim() == 3 else F.adaptive_avg_pool2d
                s = pool(s, self.spatial)
            return self.net(s)
        return self.net(_flat(s))


class Hint(DistillTerm):
    """FitNets hint: ``-mean((W s + b - t)^2)`` per example, with a learned projection W.

    Romero et al. (2015). ``pairs`` maps teacher module paths to student module paths.
    """

    def __init__(self, teacher, pairs: Mapping[str, str], weight: float = 1.0, teacher_mode: str = "mean"):
        super().__init__(teacher, weight, "hint", teacher_mode)
        self.pairs = dict(pairs)
        self.teacher_paths, self.student_paths = list(self.pairs), list(self.pairs.values())
        self.proj = nn.ModuleDict()

    def setup(self, s_out, s_feats, t_out, t_feats) -> None:
        for i, (tp, sp) in enumerate(self.pairs.items()):
            self.proj[str(i)] = _Projection(s_feats[sp], t_feats[tp])

    def log_factor(self, s_out, s_feats, t_out, t_feats) -> Tensor:
        total = 0.0
        for i, (tp, sp) in enumerate(self.pairs.items()):
            pred = self.proj[str(i)](s_feats[sp])
            t = t_feats[tp]
            total = total + (_flat(pred) - _flat(t).reshape(pred.shape[0], -1)).square().mean(1)
        return -total


class VID(DistillTerm):
    r"""Variational information distillation (Ahn et al., CVPR 2019) as amortized q(t | s).

    For each pair (teacher module path -> student module path), q(t | s) = N(mu(s), diag(sigma^2))
    with one variance per channel, sigma_c^2 = softplus(alpha_c) + 1e-5 (initialized at 5.0), and
    mu a regressor: three 1x1 convolutions with ReLUs for feature maps (spatial sizes matched by
    adaptive average pooling of the student map), a 2-layer MLP for vectors, or a linear map with
    ``regressor="linear"`` (VID-LP, for the student's last layer). A map meeting a vector is
    flattened. Each pair adds the observed site ``vid.<i>`` with the teacher's features as the
    observation, scaled by the pair's weight:

        log q(t | s) = - sum_{c,h,w} [ log sigma_c + (t - mu(s))^2 / (2 sigma_c^2) ] - D/2 log(2 pi)

    Args:
        teacher: the teacher (BNN or nn.Module).
        pairs: teacher path -> student path.
        weight: lambda, a float for all pairs or a mapping teacher path -> float.
        regressor: ``"mlp"`` (default) or ``"linear"`` (VID-LP).
        hidden: width of the regressor's hidden layers (default: the teacher's channels/features).
        init_variance: initial sigma_c^2 (5.0 in the paper).

    ``last`` holds per pair ``"vid.<i>.log_q"``: the batch mean of log q(t|s) (nats per example).
    (A second VID term in one objective is renamed ``vid1``, ``vid2``, ...: sites ``vid1.<i>``.)
    """

    def __init__(
        self,
        teacher,
        pairs: Mapping[str, str],
        weight: Union[float, Mapping[str, float]] = 1.0,
        *,
        regressor: str = "mlp",
        hidden: Optional[int] = None,
        init_variance: float = 5.0,
        eps: float = 1e-5,
        teacher_mode: str = "mean",
    ):
        super().__init__(teacher, 1.0, "vid", teacher_mode)
        if regressor not in ("mlp", "linear"):
            raise ValueError(f"VID regressor must be 'mlp' or 'linear', got {regressor!r}")
        if not init_variance > eps:
            raise ValueError(f"VID init_variance must exceed eps={eps}, got {init_variance}")
        self.pairs = dict(pairs)
        self.teacher_paths, self.student_paths = list(self.pairs), list(self.pairs.values())
        self.pair_weights = [float(weight[tp]) if isinstance(weight, Mapping) else float(weight) for tp in self.pairs]
        self.regressor, self.hidden, self.init_variance, self.eps = regressor, hidden, float(init_variance), float(eps)
        self.mu = nn.ModuleDict()
        self.alpha = nn.ParameterDict()

    def setup(self, s_out, s_feats, t_out, t_feats) -> None:
        for i, (tp, sp) in enumerate(self.pairs.items()):
            s, t = s_feats[sp], t_feats[tp]
            hidden = None if self.regressor == "linear" else (self.hidden or (t.shape[1] if t.dim() > 2 else _flat(t).shape[1]))
            if t.dim() > 2 and s.dim() <= 2:
                # vector meets map: regress the flattened map
                self.mu[str(i)] = _Projection(s, t.reshape(t.shape[0], -1), hidden)
            else:
                self.mu[str(i)] = _Projection(s, t, hidden)
            channels = t.shape[1]
            a0 = math.log(math.expm1(self.init_variance - self.eps))
            self.alpha[str(i)] = nn.Parameter(torch.full((channels,), a0, dtype=t.dtype, device=t.device))

    def variance(self, i: int) -> Tensor:
        """sigma_c^2 of pair i, ``[channels]``."""
        return F.softplus(self.alpha[str(i)]) + self.eps

    def q(self, i: int, s: Tensor, t: Tensor) -> dist.TorchDistribution:
        """q(t | s) of pair i as a distribution with batch shape ``[B]`` (event = the feature)."""
        mu = self.mu[str(i)](s)
        mu = mu.reshape(t.shape)
        var = self.variance(i)
        scale = var.sqrt().reshape(1, -1, *([1] * (t.dim() - 2)))
        return dist.Normal(mu, scale.expand_as(mu), validate_args=False).to_event(t.dim() - 1)

    def observe(self, s_out, s_feats, t_out, t_feats) -> None:
        self.last = {}
        loss = 0.0
        for i, (tp, sp) in enumerate(self.pairs.items()):
            t = t_feats[tp]
            qd = self.q(i, s_feats[sp], t)
            with pyro.poutine.scale(scale=self.pair_weights[i]):
                pyro.sample(f"{self.name}.{i}", qd, obs=t)
            with torch.no_grad():
                log_q = qd.log_prob(t)
                self.last[f"{self.name}.{i}.log_q"] = log_q.mean()
                loss = loss - self.pair_weights[i] * log_q.mean()
        # the term's loss (= -log_factor, batch mean), as every DistillTerm reports it
        self.last = {"loss": torch.as_tensor(loss), **self.last}

    def log_factor(self, s_out, s_feats, t_out, t_feats) -> Tensor:
        total = 0.0
        for i, (tp, sp) in enumerate(self.pairs.items()):
            t = t_feats[tp]
            total = total + self.pair_weights[i] * self.q(i, s_feats[sp], t).log_prob(t)
        return total


def gaussian_entropy(features: Tensor) -> float:
    """Entropy (nats) of a diagonal Gaussian fitted to ``features`` ``[N, ...]`` (per example).

    H = sum_d 1/2 log(2 pi e var_d), variances floored at 1e-12. Caveats for the reported
    ``mi_bound = H(t) + E[log q(t|s)]``: the Gaussian fit over-estimates the entropy of
    non-Gaussian features (so the "bound" may exceed the true lower bound), and a dead ReLU
    unit (variance 0) contributes about -12.4 nats; read the bound's change over epochs, not its
    absolute value.
    """
    f = _flat(features).double()
    var = f.var(0, unbiased=True).clamp_min(1e-12)
    return float(0.5 * (torch.log(2 * math.pi * math.e * var)).sum())


class DistillObjective:
    """The student's model and guide with function-space terms added (used by :func:`bd.fit`).

    ``model(x, y=None, size=None)``: the student's Pyro model on a batch; with labels the
    likelihood is observed (scaled by the product of the terms' ``likelihood_weight``, e.g.
    1 - a for KD); without labels (a transfer batch) the likelihood site is hidden and only the
    distillation terms act. The terms sit in ``pyro.plate("distill", size, subsample=...)`` so
    that, like the likelihood, their batch sum is scaled to the data set (``size`` examples: the
    labelled set, or the transfer set for transfer batches).

    The pair works with plain :class:`pyro.infer.SVI` too: call :meth:`setup` on one batch
    first (it builds the terms' shape-dependent modules); the model then registers the terms'
    parameters with ``pyro.module`` under ``"<student pyro_name>.distill"``.
    """

    def __init__(self, bnn: BNN, terms: Sequence[DistillTerm]):
        for t in terms:
            if not isinstance(t, DistillTerm):
                raise TypeError(f"distill= expects bd.distill terms (KD, VID, PKT, Hint), got {type(t).__name__}")
        self.bnn = bnn
        seen: set[str] = set()
        for i, t in enumerate(terms):  # unique names: sites and history columns must not collide
            base, k = t.name, 1
            while t.name in seen:
                t.name = f"{base}{k}"
                k += 1
            seen.add(t.name)
        self.terms = nn.ModuleList(terms)
        self.student_paths = list(dict.fromkeys(p for t in terms for p in t.student_paths))
        FeatureTaps(bnn.net, self.student_paths, "student")  # validate paths now
        for t in terms:
            FeatureTaps(t.teacher_features.net, t.teacher_paths, "teacher")
        self.entropies: dict[str, float] = {}
        self._arange: dict[tuple[int, torch.device], Tensor] = {}

    def parameters(self):
        return self.terms.parameters()

    @property
    def likelihood_weight(self) -> float:
        """Product of the terms' ``likelihood_weight`` (read per model call: weights may change)."""
        return math.prod(t.likelihood_weight for t in self.terms)

    @staticmethod
    def _key(t: DistillTerm) -> tuple[int, str]:
        # terms share one teacher pass only if they share the teacher *and* its mode
        return id(t.teacher_features.teacher), t.teacher_features.mode

    def _teacher(self, x: Tensor) -> dict[tuple[int, str], tuple[Tensor, dict[str, Tensor]]]:
        groups: dict[tuple[int, str], tuple[TeacherFeatures, list[str]]] = {}
        for t in self.terms:
            key = self._key(t)
            tf, paths = groups.setdefault(key, (t.teacher_features, []))
            paths.extend(p for p in t.teacher_paths if p not in paths)
        return {k: tf(x, paths) for k, (tf, paths) in groups.items()}

    @torch.no_grad()
    def setup(self, x: Tensor) -> None:
        """Build the terms' shape-dependent modules from one batch and fit H(t) for VID pairs."""
        was = self.bnn.training
        self.bnn.eval()
        try:
            with FeatureTaps(self.bnn.net, self.student_paths, "student") as taps:
                s_out = self.bnn(x)
            s_feats = dict(taps.features)
        finally:
            self.bnn.train(was)
        teach = self._teacher(x)
        for t in self.terms:
            t_out, t_feats = teach[self._key(t)]
            t.setup(s_out, s_feats, t_out, t_feats)
            if isinstance(t, VID):
                for i, tp in enumerate(t.pairs):
                    self.entropies[f"{t.name}.{i}"] = gaussian_entropy(t_feats[tp])

    def model(self, x: Tensor, y: Optional[Tensor] = None, size: Optional[int] = None) -> Tensor:
        from contextlib import ExitStack

        if self.bnn._register_params and len(list(self.terms.parameters())):
            # plain pyro.infer.SVI / Predictive: the terms' parameters (VID regressors and
            # variances, Hint projections) go into the param store next to the student's, so
            # that SVI's optimizer trains them; bd.fit optimizes them directly instead
            pyro.module(f"{self.bnn.pyro_name}.distill", self.terms)
        with ExitStack() as stack:
            taps = stack.enter_context(FeatureTaps(self.bnn.net, self.student_paths, "student"))
            if y is None:
                stack.enter_context(pyro.poutine.block(hide=["obs"]))
            elif (lw := self.likelihood_weight) != 1.0:
                stack.enter_context(ScaleSite("obs", lw))
            out = self.bnn.model(x, y)
        teach = self._teacher(x)
        batch = x.shape[0]
        key = (batch, x.device)
        if key not in self._arange:
            self._arange[key] = torch.arange(batch, device=x.device)
        n = size or (self.bnn.dataset_size or batch)
        with pyro.plate("distill", size=n, subsample=self._arange[key]):
            for t in self.terms:
                t_out, t_feats = teach[self._key(t)]
                t.observe(out, taps.features, t_out, t_feats)
        return out

    def guide(self, x: Tensor, y: Optional[Tensor] = None, size: Optional[int] = None) -> None:
        self.bnn.guide(x, y)

    def step_values(self) -> dict[str, Tensor]:
        """The terms' detached values of the last model call (name -> 0-d tensor)."""
        out = {}
        for t in self.terms:
            for k, v in t.last.items():
                out[t.name if k == "loss" else k] = v
        return out
