"""``BNN``: any ``nn.Module`` as a Pyro model with mean-field Gaussian weights.

Given a network f(x; w), a prior p(w) and a likelihood p(y | f(x; w)), :class:`BNN` provides

* ``bnn.model(x, y=None)``: samples every Bayesian parameter tensor from its prior (one Pyro
  sample site per tensor, named by its parameter path, e.g. ``"features.0.weight"``), runs the
  unmodified network with those weights, and observes ``y`` inside
  ``pyro.plate("data", dataset_size, subsample=...)``;
* ``bnn.guide(x, y=None)``: the mean-field posterior q(w) = prod N(loc, softplus(rho)^2),
  emitting ``Normal(loc, scale).to_event(k)`` sites so that mean-field ELBOs use the closed-form
  KL divergence.

Both are plain Pyro callables: ``pyro.infer.SVI`` and ``pyro.infer.Predictive`` work on them
directly. :func:`bayesdistill.fit` trains them faster with the same semantics.

Implementation notes: the guide's variational parameters live in
two flat tensors (``loc``, ``rho``) so that one optimizer step, one softplus and the parameter
registration each touch two tensors, whatever the depth of the network. Bayesian parameters of
the wrapped network are turned into non-persistent buffers; a forward pass writes the sampled
tensors into those buffer slots and restores them afterwards, which costs two dict writes per
tensor (cheaper than ``torch.func.functional_call``) and works under ``torch.func.vmap`` for the
vectorized predictive.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Optional, Union

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions.distribution import COERCIONS as _COERCIONS
from torch import Tensor, nn

from .._checks import check_int, check_number
from ..errors import DataError, PosteriorMismatchError, ShapeMismatchError, UnsupportedLayerError
from . import local_reparam as _lrt
from .kl import fused_normal_kl
from .likelihoods import Categorical, Likelihood
from .posterior import MeanFieldPosterior, ParamInfo
from .priors import Normal as NormalPrior
from .priors import Prior

__all__ = ["BNN", "BAYESIAN_LAYERS", "NORM_LAYERS"]

#: Layers whose parameters become Bayesian by default.
BAYESIAN_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.Embedding,
    nn.MultiheadAttention,
)
#: Normalization layers: deterministic unless ``bayesian_norm=True``.
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)

Selector = Union[None, str, Sequence[str], Callable[[str, nn.Module], bool]]
_counter = itertools.count()


def _softplus_inv(x: Tensor) -> Tensor:
    """Inverse of softplus, stable for small and large x > 0."""
    return x + torch.log(-torch.expm1(-x))


def _selected(selector: Selector, path: str, module: nn.Module) -> bool:
    if selector is None:
        return False
    if callable(selector) and not isinstance(selector, str):
        return bool(selector(path, module))
    patterns = [selector] if isinstance(selector, str) else list(selector)
    # a pattern selects a module and everything inside it: "encoder" keeps encoder.* deterministic
    parts = path.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(prefix, p) for p in patterns for prefix in prefixes)


def _check_selector(net: nn.Module, selector: Selector) -> None:
    """Raise if a ``deterministic=`` pattern names no module (a typo would silently do nothing)."""
    if selector is None or (callable(selector) and not isinstance(selector, str)):
        return
    patterns = [selector] if isinstance(selector, str) else list(selector)
    paths = [p for p, _ in net.named_modules() if p]
    if any(True for _ in net.parameters(recurse=False)):
        paths.append("")  # the root module's own parameters: deterministic=[""]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(p, pattern) for p in paths):
            raise KeyError(
                f"deterministic={pattern!r} matches no module of {type(net).__name__}; "
                f"module paths: {', '.join(paths[:20])}{' ...' if len(paths) > 20 else ''}"
            )


class _Site:
    """One Bayesian parameter tensor: its module, attribute, flat slice and site name."""

    __slots__ = ("name", "module", "attr", "shape", "numel", "offset", "lrt")

    def __init__(self, name: str, module: nn.Module, attr: str, shape: torch.Size, offset: int, lrt: bool):
        self.name, self.module, self.attr = name, module, attr
        self.shape, self.numel, self.offset, self.lrt = shape, shape.numel(), offset, lrt


class BNN(nn.Module):
    """A mean-field Bayesian neural network built from an unmodified ``nn.Module``.

    Args:
        net: the network f(x; w). Parameters of ``Linear``, ``Conv1d/2d/3d``,
            ``ConvTranspose1d/2d``, ``Bilinear``, ``Embedding`` and ``MultiheadAttention`` become
            Bayesian; normalization layers stay deterministic unless ``bayesian_norm=True``. Any
            other module with parameters raises :class:`UnsupportedLayerError` unless it is kept
            deterministic by ``deterministic``. The BNN keeps its own deep copy of ``net``.
        prior: a :mod:`bayesdistill.priors` object (default ``priors.Normal(0, 1)``). Its
            ``(loc, scale)`` become the buffers ``prior_loc``/``prior_scale`` (flat, one value per
            weight). A prior with ``learn_scale=True`` (``priors.Normal(..., learn_scale=True)``,
            ``priors.TeacherPosterior(q, scale="learned")``) adds the parameter
            ``prior_log_scale`` of shape ``[num_sites]`` (one entry per Bayesian parameter tensor,
            in :attr:`site_names` order, initialized at 0): tensor ``l``'s prior scale is then
            ``prior_scale * exp(prior_log_scale[l])``, learned with q(w) by maximizing the ELBO
            (empirical Bayes). :meth:`prior_scales` shows the effective scales either way.
        likelihood: a :mod:`bayesdistill.likelihoods` object (default ``Categorical()``).
        dataset_size: N, the number of training examples; the batch log-likelihood is scaled by
            N / batch_size. ``None`` means "the batch is the whole data set".
        deterministic: module paths (``fnmatch`` patterns, e.g. ``"features.*"``) or a callable
            ``(path, module) -> bool`` selecting modules kept as point estimates. A pattern selects
            every module whose path (as in ``net.named_modules()``) matches it, and everything
            inside that module: ``"encoder"`` keeps ``encoder.0``, ``encoder.1.weight``, ...
            deterministic. A pattern that matches no module path raises ``KeyError`` listing the
            paths. A callable is asked for each module that owns parameters.
        bayesian_norm: make normalization-layer affine parameters Bayesian too.
        init: initial posterior means: ``"module"`` (the network's own initialization),
            ``"prior-mean"`` (the prior's means, e.g. a teacher's aligned means), a
            :class:`MeanFieldPosterior` (means *and* scales copied from it, and its point estimates
            whose names and shapes the network has, e.g. BatchNorm statistics), or ``"auto"``
            (default): ``"prior-mean"`` when the prior is a
            :class:`~bayesdistill.priors.TeacherPosterior` (starting at the aligned teacher is
            where distillation's gain comes from: docs/distillation.md), else ``"module"``.
            Initialization and prior stay independent: pass ``init="module"`` with a teacher
            prior to measure the prior alone.
        init_scale: initial posterior standard deviation (weight units), default 1e-2.
        name: the prefix under which :func:`pyro.module` registers the parameters (unique by
            default, so that a teacher and a student never share Pyro param-store entries).

    Shapes: ``model(x, y)`` takes the network's input batch ``x`` and targets ``y`` of the
    likelihood's shape (``[B]`` int64 for ``Categorical``, ``[B, D]`` float for ``Normal``).

    Raises:
        TypeError: ``net`` is not a module; a ``TeacherPosterior`` plan returns no
            ``MeanFieldPosterior``.
        ValueError: a bad ``dataset_size``, ``init_scale`` or ``init``; a prior scale <= 0.
        KeyError: a ``deterministic`` pattern that matches no module; a ``Normal`` pattern prior
            with no pattern for a parameter.
        UnsupportedLayerError: a module with parameters that cannot be made Bayesian, or no
            Bayesian parameter at all.
        ShapeMismatchError: a prior loc/scale that does not broadcast to its parameter; a
            ``TeacherPosterior`` without a student parameter or with another shape for it.
        PosteriorMismatchError: ``init=q`` from another network.
    """

    def __init__(
        self,
        net: nn.Module,
        prior: Optional[Prior] = None,
        likelihood: Optional[Likelihood] = None,
        dataset_size: Optional[int] = None,
        *,
        deterministic: Selector = None,
        bayesian_norm: bool = False,
        init: Union[str, MeanFieldPosterior] = "auto",
        init_scale: float = 1e-2,
        name: Optional[str] = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"BNN expects an nn.Module, got {type(net).__name__}")
        if dataset_size is not None:
            dataset_size = check_int("dataset_size", dataset_size, minimum=1)
        init_scale = check_number("init_scale", init_scale, minimum=0.0, exclusive_minimum=True)
        self.net = copy.deepcopy(net)
        self.prior = prior if prior is not None else NormalPrior(0.0, 1.0)
        self.likelihood = likelihood if likelihood is not None else Categorical()
        self.dataset_size = dataset_size
        self.kl_weight = 1.0
        self.pyro_name = name or f"bnn{next(_counter)}"
        #: whether ``model``/``guide`` register the parameters in Pyro's param store (needed by
        #: ``pyro.infer.SVI``, whose optimizer reads the store); the training engine, which optimizes
        #: them directly, turns it off for speed
        self.register_params = True
        self._subsample_cache: dict[tuple[int, torch.device], Tensor] = {}

        _check_selector(self.net, deterministic)
        sites, info, inits = self._convert(deterministic, bayesian_norm)
        if not sites:
            raise UnsupportedLayerError(
                f"{type(net).__name__} has no Bayesian parameters (no Linear/Conv/... layer outside "
                "the deterministic selection); nothing to infer"
            )
        self._sites: list[_Site] = sites
        self._numels = [s.numel for s in sites]
        self.param_info: dict[str, ParamInfo] = info

        # prior -> flat buffers (device-safe: they move with .to())
        ploc, pscale = self._prior_tensors(sites, inits)
        self.register_buffer("prior_loc", ploc)
        self.register_buffer("prior_scale", pscale)
        if not (self.prior_scale > 0).all():
            raise ValueError("prior scales must be > 0")

        # variational parameters, flat
        if isinstance(init, str) and init == "auto":
            from .priors import TeacherPosterior

            init = "prior-mean" if isinstance(self.prior, TeacherPosterior) else "module"
        loc0, scale0 = self._initial_posterior(init, sites, inits, init_scale)
        self.loc = nn.Parameter(loc0.to(self.prior_loc.device).clone())
        self.rho = nn.Parameter(_softplus_inv(scale0.to(self.prior_loc.device).clone()))
        # empirical Bayes: one learnable log-multiplier of the prior scale per parameter tensor
        self.learn_prior_scale = bool(getattr(self.prior, "learn_scale", False))
        if self.learn_prior_scale:
            self.prior_log_scale = nn.Parameter(
                torch.zeros(len(sites), dtype=self.prior_scale.dtype, device=self.prior_scale.device)
            )
        if isinstance(init, MeanFieldPosterior) and init.point_estimates:
            self.load_point_estimates(init.point_estimates)
        # the flat loc is the only copy of the means: the buffer slots stay empty between passes
        for s in sites:
            s.module._buffers[s.attr] = None

    # ------------------------------------------------------------------ construction
    def _prior_tensors(self, sites: list["_Site"], inits: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The prior's flat ``(loc, scale)`` over all sites, broadcast to each parameter's shape."""
        p_locs, p_scales = self.prior.materialize({s.name: s.shape for s in sites})
        ploc, pscale = [], []
        for s in sites:
            for what, table, out in (("loc", p_locs, ploc), ("scale", p_scales, pscale)):
                t = torch.as_tensor(table[s.name], dtype=inits[s.name].dtype)
                try:
                    out.append(t.expand(s.shape).reshape(-1))
                except RuntimeError:
                    raise ShapeMismatchError(
                        f"prior {what} for parameter {s.name!r} has shape {tuple(t.shape)}, which "
                        f"does not broadcast to the parameter's shape {tuple(s.shape)}"
                    ) from None
        return torch.cat(ploc).detach().clone(), torch.cat(pscale).detach().clone()

    def _initial_posterior(self, init: Union[str, MeanFieldPosterior], sites: list["_Site"],
                           inits: dict[str, Tensor], init_scale: float) -> tuple[Tensor, Tensor]:
        """The flat initial means and scales of q(w) for ``init`` (``"auto"`` already resolved)."""
        if isinstance(init, MeanFieldPosterior):
            init.check_compatible({s.name: s.shape for s in sites}, "BNN")
            loc0 = torch.cat([init.locs[s.name].detach().reshape(-1).cpu() for s in sites])
            scale0 = torch.cat([init.scales[s.name].detach().reshape(-1).cpu() for s in sites])
        elif init == "module":
            loc0 = torch.cat([inits[s.name].reshape(-1) for s in sites])
            scale0 = torch.full_like(loc0, float(init_scale))
        elif init == "prior-mean":
            loc0 = self.prior_loc.clone()
            scale0 = torch.full_like(loc0, float(init_scale))
        else:
            raise ValueError(f"init must be 'auto', 'module', 'prior-mean' or a MeanFieldPosterior, got {init!r}")
        return loc0, scale0

    def _convert(self, deterministic: Selector, bayesian_norm: bool):
        sites, info, inits = [], {}, {}
        offset = 0
        # layers whose weights their parent reads directly, never calling their forward (so local
        # reparameterization, which replaces that forward, must leave them alone): the output
        # projection of nn.MultiheadAttention
        read_directly = {id(m.out_proj) for m in self.net.modules() if isinstance(m, nn.MultiheadAttention)}
        for path, module in self.net.named_modules():
            own = [(a, p) for a, p in module._parameters.items() if p is not None]
            if not own:
                continue
            if _selected(deterministic, path, module):
                continue
            is_norm = isinstance(module, NORM_LAYERS)
            if is_norm and not bayesian_norm:
                continue
            if not (isinstance(module, BAYESIAN_LAYERS) or is_norm):
                raise UnsupportedLayerError(
                    f"module {path or '<root>'!r} ({type(module).__name__}) has parameters "
                    f"{[a for a, _ in own]} but is not a layer bayesdistill can make Bayesian "
                    f"(supported: {', '.join(t.__name__ for t in BAYESIAN_LAYERS)}, and normalization "
                    f"layers with bayesian_norm=True). Keep it as a point estimate with "
                    f"deterministic=[{path!r}]"
                )
            lrt = isinstance(module, _lrt.LRT_LAYERS) and type(module).forward in {
                t.forward for t in _lrt.LRT_LAYERS
            } and id(module) not in read_directly
            for attr, p in own:
                if not p.is_floating_point():
                    continue
                name = f"{path}.{attr}" if path else attr
                value = p.detach().clone()
                del module._parameters[attr]
                module.register_buffer(attr, value, persistent=False)
                sites.append(_Site(name, module, attr, value.shape, offset, lrt))
                info[name] = ParamInfo(path, type(module).__name__, attr)
                inits[name] = value
                offset += value.numel()
        # keep parameter order of the original network: named_modules visits modules in
        # registration order and attributes in registration order, as named_parameters does
        return sites, info, inits

    # ------------------------------------------------------------------ views
    @property
    def site_names(self) -> list[str]:
        """Names of the Bayesian parameters (= Pyro sample sites), in network order."""
        return [s.name for s in self._sites]

    @property
    def shapes(self) -> dict[str, torch.Size]:
        """Bayesian parameter name -> shape."""
        return {s.name: s.shape for s in self._sites}

    @property
    def num_weights(self) -> int:
        """Number of Bayesian weights (scalars)."""
        return int(self.loc.numel())

    def scale(self) -> Tensor:
        """Flat posterior standard deviations softplus(rho), shape ``[num_weights]``."""
        return F.softplus(self.rho)

    def _split(self, flat: Tensor) -> list[Tensor]:
        return [t.view(s.shape) for t, s in zip(flat.split(self._numels), self._sites)]

    def _effective_prior_scale(self) -> Tensor:
        """Flat prior standard deviations ``[num_weights]``, with learned multipliers if any.

        One flat tensor per call (split into per-site views by the model), so that the fused KL
        of :class:`~bayesdistill.infer.MeanFieldELBO` glues the views back without a copy.
        """
        if not self.learn_prior_scale:
            return self.prior_scale
        # = exp(prior_log_scale).repeat_interleave(numels); expand + cat is ~4x cheaper than
        # repeat_interleave (an index_select whose backward is a scatter) forward and backward
        mult = torch.cat([m.expand(n) for m, n in zip(self.prior_log_scale.exp().unbind(), self._numels)])
        return self.prior_scale * mult

    def prior_scales(self) -> dict[str, Tensor]:
        """Effective prior standard deviation per Bayesian parameter, name -> tensor of its shape.

        With a learned prior scale (``learn_scale=True``) this is ``base * exp(prior_log_scale)``
        at the current value of the multipliers; otherwise the fixed prior scales. Detached copies.
        """
        with torch.no_grad():
            flat = self._effective_prior_scale()
        return {s.name: t.detach().clone() for s, t in zip(self._sites, self._split(flat))}

    # ------------------------------------------------------------------ Pyro program
    @property
    def model(self) -> Callable[..., Tensor]:
        """The Pyro model ``model(x, y=None) -> network output``."""
        return self._model

    @property
    def guide(self) -> Callable[..., None]:
        """The Pyro mean-field guide ``guide(x, y=None)``."""
        return self._guide

    def _kl_scale(self):
        w = self.kl_weight
        if w == 0.0:  # poutine.scale rejects 0; a zero weight drops the KL terms (e.g. annealing from 0)
            return poutine.mask(mask=False)
        return nullcontext() if w == 1.0 else poutine.scale(scale=w)

    def _model(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if self.register_params:
            pyro.module(self.pyro_name, self)
        weights = {}
        prior_scale = self.prior_scale if not self.learn_prior_scale else self._effective_prior_scale()
        with self._kl_scale():
            for s, loc, scale in zip(self._sites, self._split(self.prior_loc), self._split(prior_scale)):
                weights[s.name] = pyro.sample(s.name, _site_normal(loc, scale, len(s.shape)))
        lead = _leading_shape(weights, self._sites)
        if lead:
            # vectorized particles (an outer plate, e.g. Predictive(parallel=True)): run the
            # network once per weight draw in one batched pass
            flat = {s.name: weights[s.name].expand(*lead, *s.shape).reshape(-1, *s.shape) for s in self._sites}
            out = torch.func.vmap(lambda w: self.forward_with(x, w))(flat)
            if len(lead) > 1 and lead[-1] == 1:
                # draws made under an outer plate (prior predictive, Predictive(parallel=True)
                # without a guide) are aligned with the plate dims: their last batch dim is the
                # slot of the "data" plate (dim -1), which the output's batch dim takes
                lead = lead[:-1]
            out = out.reshape(*lead, *out.shape[1:])
        else:
            out = self.forward_with(x, weights, _lrt.current())
        batch = out.shape[len(lead)]
        size = self.dataset_size or batch
        with pyro.plate("data", size=size, subsample=self._subsample(batch, out.device)):
            self.likelihood.observe(out, y)
        return out

    def _guide(self, x: Optional[Tensor] = None, y: Optional[Tensor] = None) -> None:
        if self.register_params:
            pyro.module(self.pyro_name, self)
        handler = _lrt.current()
        lrt = handler is not None
        scale = F.softplus(self.rho)
        # one noise draw for all weights; each site still emits its own Normal(loc, scale).
        # Under local reparameterization most sites are not sampled at all: draw per site then.
        draws = [None] * len(self._sites) if lrt else self._split(torch.addcmul(self.loc, scale, torch.randn_like(scale)))
        with self._kl_scale():
            for s, loc, sc, w in zip(self._sites, self._split(self.loc), self._split(scale), draws):
                pyro.sample(s.name, _site_normal(loc, sc, len(s.shape), w),
                            infer={_lrt.INFER_KEY: True} if (lrt and s.lrt and handler.accepts(s.module)) else {})

    def _subsample(self, batch: int, device: torch.device) -> Tensor:
        key = (batch, device)
        idx = self._subsample_cache.get(key)
        if idx is None:
            idx = self._subsample_cache[key] = torch.arange(batch, device=device)
        return idx

    # ------------------------------------------------------------------ forward passes
    def forward_with(
        self,
        x: Tensor,
        weights: dict[str, Tensor],
        lrt: Optional[_lrt.LocalReparameterization] = None,
    ) -> Tensor:
        """Run the network with the given Bayesian weights (name -> tensor of the parameter's shape).

        With an active :class:`LocalReparameterization` handler that recorded this network's
        guide moments, Linear/Conv layers sample their pre-activations instead.
        """
        moments = lrt.moments if lrt is not None else None
        patched = []
        try:
            for s in self._sites:
                s.module._buffers[s.attr] = weights[s.name]
            if moments:
                for s in self._sites:
                    if s.lrt and s.attr == "weight" and s.name in moments:
                        bias_name = s.name[: -len("weight")] + "bias"
                        b = moments.get(bias_name, (None, None))
                        s.module.forward = _bind_lrt(s.module, *moments[s.name], *b)
                        patched.append(s.module)
            return self.net(*x) if isinstance(x, tuple) else self.net(x)
        finally:
            for m in patched:
                del m.forward
            for s in self._sites:
                s.module._buffers[s.attr] = None

    def forward(self, x: Tensor) -> Tensor:
        """The network at the posterior mean weights (a deterministic point prediction)."""
        return self.forward_with(x, dict(zip(self.site_names, self._split(self.loc))))

    def sample_weights(self, num_samples: int, generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
        """Draw ``num_samples`` weight sets from q; each tensor is ``[num_samples, *shape]``."""
        loc, scale = self.loc.detach(), self.scale().detach()
        eps = torch.randn((num_samples, loc.numel()), generator=generator, device=loc.device, dtype=loc.dtype)
        flat = loc + scale * eps
        return {s.name: t.view(num_samples, *s.shape) for s, t in zip(self._sites, flat.split(self._numels, dim=1))}

    #: ``vectorize="auto"`` uses one vmapped pass when the work per sample is small (kernel
    #: launches and Python dominate: GPUs, small CPU batches) and S plain passes otherwise: on
    #: CPU a batch of a few hundred examples is compute-bound, and vmap's batched kernels
    #: (grouped convolutions, bmm + separate bias) are slower than S ordinary ones (see
    #: docs/benchmarks.md).
    AUTO_VECTORIZE_MAX_BATCH_CPU = 32

    def _use_vmap(self, x: Tensor, vectorize: Union[bool, str]) -> bool:
        if vectorize == "auto":
            first = x[0] if isinstance(x, tuple) else x
            return first.device.type != "cpu" or first.shape[0] <= self.AUTO_VECTORIZE_MAX_BATCH_CPU
        if not isinstance(vectorize, bool):
            raise ValueError(f"vectorize must be True, False or 'auto', got {vectorize!r}")
        return vectorize

    @torch.no_grad()
    def outputs(self, x: Tensor, weights: dict[str, Tensor], vectorize: Union[bool, str] = "auto") -> Tensor:
        """Network outputs ``[S, B, *out]`` for stacked weight draws (name -> ``[S, *shape]``).

        ``vectorize``: ``True`` (one ``torch.func.vmap`` pass; layers without a batching rule
        fall back to sequential passes), ``False`` (S passes) or ``"auto"`` (see
        :attr:`AUTO_VECTORIZE_MAX_BATCH_CPU`). Both give the same outputs for the same draws.
        Runs the network in its current mode (``predict`` switches to eval mode).
        """
        if self._use_vmap(x, vectorize):
            try:
                return torch.func.vmap(lambda w: self.forward_with(x, w))(weights)
            except (RuntimeError, NotImplementedError):
                pass  # an op without a batching rule: do it sample by sample
        num_samples = next(iter(weights.values())).shape[0]
        return torch.stack([self.forward_with(x, {k: v[i] for k, v in weights.items()}) for i in range(num_samples)])

    @torch.no_grad()
    def predict(
        self,
        x: Tensor,
        num_samples: int = 32,
        *,
        vectorize: Union[bool, str] = "auto",
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """Network outputs under ``num_samples`` posterior weight samples: ``[S, B, *out]``.

        ``vectorize`` as in :meth:`outputs`. The network runs in eval mode (dropout off,
        BatchNorm running statistics).
        """
        was_training = self.training
        self.eval()
        try:
            return self.outputs(x, self.sample_weights(num_samples, generator), vectorize)
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ posterior
    def posterior(self) -> MeanFieldPosterior:
        """A detached copy of q(w) as a :class:`MeanFieldPosterior` (with point estimates)."""
        locs = {s.name: t.detach().clone() for s, t in zip(self._sites, self._split(self.loc))}
        scales = {s.name: t.detach().clone() for s, t in zip(self._sites, self._split(self.scale()))}
        return MeanFieldPosterior(locs, scales, dict(self.param_info), self.point_estimates(), {})

    def point_estimates(self) -> dict[str, Tensor]:
        """Deterministic parameters and persistent buffers of the network and the likelihood."""
        out = {}
        for prefix, mod in (("net.", self.net), ("likelihood.", self.likelihood)):
            for k, v in mod.state_dict().items():
                out[prefix + k] = v.detach().clone()
        return out

    @torch.no_grad()
    def load_point_estimates(self, points: dict[str, Tensor]) -> list[str]:
        """Copy the point estimates whose names and shapes this network has; ignore the rest.

        ``points`` maps ``"net.<path>"`` / ``"likelihood.<path>"`` to tensors, as in
        :attr:`MeanFieldPosterior.point_estimates` (e.g. the aligned BatchNorm statistics of a
        teacher posterior). Returns the names that were copied.
        """
        copied: list[str] = []
        for prefix, mod in (("net.", self.net), ("likelihood.", self.likelihood)):
            own = mod.state_dict()
            take = {
                k[len(prefix):]: v for k, v in points.items()
                if k.startswith(prefix) and k[len(prefix):] in own and own[k[len(prefix):]].shape == v.shape
            }
            if take:
                mod.load_state_dict(take, strict=False)
                copied += [prefix + k for k in take]
        return copied

    @torch.no_grad()
    def load_posterior(self, q: MeanFieldPosterior) -> "BNN":
        """Set q(w) (and the point estimates) from ``q``; names and shapes must match exactly."""
        q.check_compatible(self.shapes, "BNN")
        mine = self.point_estimates()
        if q.point_estimates and set(q.point_estimates) != set(mine):
            raise PosteriorMismatchError(
                f"the posterior's point estimates {sorted(q.point_estimates)} do not match this "
                f"network's {sorted(mine)}"
            )
        dev = self.loc.device
        self.loc.copy_(torch.cat([q.locs[n].reshape(-1) for n in self.site_names]).to(dev))
        self.rho.copy_(_softplus_inv(torch.cat([q.scales[n].reshape(-1) for n in self.site_names]).to(dev)))
        if q.point_estimates:
            for prefix, mod in (("net.", self.net), ("likelihood.", self.likelihood)):
                sd = {k[len(prefix):]: v for k, v in q.point_estimates.items() if k.startswith(prefix)}
                mod.load_state_dict(sd, strict=True)
        return self

    # ------------------------------------------------------------------ checks
    @torch.no_grad()
    def check_data(self, x: Union[Tensor, tuple[Tensor, ...]], y: Optional[Tensor] = None) -> Tensor:
        """Validate one batch against the network and likelihood before any long computation.

        ``x`` is the network's input batch, or a tuple of input batches for a network whose
        ``forward`` takes several inputs. Raises :class:`DataError` for inputs that are not
        tensors or not finite, inputs the network cannot run on (naming their shapes), an output
        the likelihood cannot score, or targets of the wrong shape, dtype or range. Returns the
        network output.
        """
        inputs = x if isinstance(x, tuple) else (x,)
        for i, t in enumerate(inputs):
            where = f"input {i} of the tuple" if isinstance(x, tuple) else "inputs"
            if not torch.is_tensor(t):
                raise DataError(f"{where} must be a torch.Tensor, got {type(t).__name__}")
            if t.is_floating_point() and not torch.isfinite(t).all():
                bad = (~torch.isfinite(t)).nonzero()[0].tolist()
                raise DataError(f"{where} contain NaN or inf (first at index {bad})")
        if y is not None and not torch.is_tensor(y):
            raise DataError(f"targets must be a torch.Tensor, got {type(y).__name__}")
        device = self.loc.device
        moved = tuple(t.to(device) for t in inputs)
        was_training = self.training
        self.eval()  # a check must not update BatchNorm running statistics (or draw dropout noise)
        try:
            out = self(moved if isinstance(x, tuple) else moved[0])
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in inputs)
            raise DataError(
                f"the network could not run on inputs of shape {shapes}: {' '.join(str(err).split())}"
            ) from err
        finally:
            self.train(was_training)
        self.likelihood.check(out, None if y is None else y.to(out.device))
        return out

    def kl(self) -> Tensor:
        """KL(q || p) in nats, exact (closed form), unscaled by ``kl_weight``; a 0-d tensor.

        p uses the effective prior scales (:meth:`prior_scales`), learned multipliers included, so
        the KL is differentiable in ``prior_log_scale`` too.
        """
        return fused_normal_kl([(self.loc, self.scale(), self.prior_loc, self._effective_prior_scale())])

    def extra_repr(self) -> str:
        return (
            f"num_weights={self.num_weights}, sites={len(self._sites)}, dataset_size={self.dataset_size}, "
            f"prior={self.prior!r}" + (", learned prior scales" if self.learn_prior_scale else "")
        )


def _leading_shape(weights: dict[str, Tensor], sites: list[_Site]) -> tuple[int, ...]:
    """Batch dims that plates put in front of the weight draws (``()`` in ordinary SVI)."""
    lead: tuple[int, ...] = ()
    for s in sites:
        extra = weights[s.name].dim() - len(s.shape)
        if extra > 0:
            shape = tuple(weights[s.name].shape[:extra])
            lead = tuple(torch.broadcast_shapes(lead, shape)) if lead else shape
    return lead


class _PresampledNormal(dist.Normal):
    """``Normal(loc, scale)`` whose next ``rsample()`` returns a draw made beforehand.

    The draw must be ``loc + scale * eps`` with ``eps ~ N(0, I)`` (a reparameterized sample of
    this very distribution): the BNN guide draws the noise for all weights in one call and
    hands each site its slice. Expanded copies or draws with a sample shape (vectorized
    particles, ``Predictive``) fall back to fresh noise, so the semantics are exactly Normal's.
    """

    def __init__(self, loc: Tensor, scale: Tensor, draw: Optional[Tensor]):
        super().__init__(loc, scale, validate_args=False)
        self._draw = draw

    def expand(self, batch_shape, _instance=None):
        # an expanded copy needs fresh noise of its own: it is a plain Normal
        return dist.Normal(self.loc, self.scale, validate_args=False).expand(batch_shape, _instance)

    def rsample(self, sample_shape=torch.Size()):
        draw = getattr(self, "_draw", None)
        if draw is not None and not sample_shape:
            return draw
        return super().rsample(sample_shape)


_NO_SHAPE = torch.Size()


def _site_normal(loc: Tensor, scale: Tensor, event_dim: int, draw: Optional[Tensor] = None) -> dist.TorchDistribution:
    """``Normal(loc, scale).to_event(event_dim)`` for ``loc``/``scale`` of the same shape.

    The same objects the generic constructors build, without their argument broadcasting and
    checks: the model and the guide build one per parameter tensor per step, and the generic
    path costs ~4 us more each (measured), which adds up on small networks. With a draw it is
    a :class:`_PresampledNormal`. When Pyro's distribution coercions are active (e.g. the
    funsor backend) the generic constructors run, so that they see every distribution.
    """
    if _COERCIONS:
        return _PresampledNormal(loc, scale, draw).to_event(event_dim)
    base = _PresampledNormal.__new__(_PresampledNormal)
    base.loc, base.scale, base._draw = loc, scale, draw
    base._batch_shape, base._event_shape, base._validate_args = loc.shape, _NO_SHAPE, False
    if event_dim == 0:
        return base
    ind = dist.Independent.__new__(dist.Independent)
    ind.base_dist, ind.reinterpreted_batch_ndims = base, event_dim
    ind._batch_shape, ind._event_shape, ind._validate_args = loc.shape[: loc.dim() - event_dim], \
        loc.shape[loc.dim() - event_dim:], False
    return ind


def _bind_lrt(module, w_loc, w_scale, b_loc, b_scale):
    def forward(x):
        return _lrt.lrt_forward(module, x, w_loc, w_scale, b_loc, b_scale)

    return forward
