"""The saved model: one file that brings back a ready :class:`~bayesdistill.BNN` in one call.

::

    bd.save_model(bnn, "model.pt", model="cnn-deep", input_shape=(40,), output_dim=10, dataset="mnist1d")
    bnn = bd.load_model("model.pt")                       # built, posterior and prior loaded
    bnn = bd.load_model("mine.pt", allow_imports=["mypkg"])   # a model factory of your own

The schema ``bayesdistill.Model``, version 1 (a dict of tensors and plain data, read with
``torch.load(weights_only=True)``: loading never executes code from the file):

- ``architecture``: ``{"model": name, "kwargs": {...}}``: a built-in model
  (``bd.models.available()``) or an import path ``package.module:factory`` called as
  ``factory(input_shape, output_dim, **kwargs)``; ``input_shape``, ``output_dim``, ``task``;
- ``posterior``: the :class:`~bayesdistill.MeanFieldPosterior` state (means, scales, point
  estimates such as normalization statistics and a learned likelihood noise, its metadata);
- ``likelihood``: ``{"name": "categorical"}`` or ``{"name": "normal", "scale": s, "learn_scale": b}``;
- ``prior``: ``{"name": "normal", "loc", "scale", "learn_scale"}``, or ``{"name":
  "teacher-posterior", "scale", "temperature", "aligned"}`` with the (aligned) teacher posterior in
  the student's shapes in ``prior_tensors``, or ``{"name": "materialized", "class": ...}`` for other
  priors (restored as the tensors they materialized to); ``prior_state``: the BNN's prior buffers
  (and learned log-multipliers), restored exactly; ``variational``: the BNN's flat ``loc`` and
  ``rho`` (the posterior's scales are ``softplus(rho)``), so that a loaded model predicts
  bit-identically to the saved one;
- ``bnn``: ``dataset_size``, ``kl_weight``; ``dataset``: the data set's name (or import path);
- ``training``: the run's settings; ``environment``: torch threads, world size, versions;
  ``metadata``: anything else (plain data).

A factory named by import path is imported only when ``allow_imports`` permits it (``True``, or
the top-level packages allowed); otherwise :class:`~bayesdistill.experiments.ImportNotAllowedError`
names the module and the fix. The posterior files that ``bayesdistill fit`` wrote before (a
``MeanFieldPosterior`` whose metadata name the architecture) load through the same
:func:`load_model` (with the prior ``Normal(0, prior_scale)`` they record).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .._io import atomic_write, check_plain
from ..bnn import BNN, NORM_LAYERS, MeanFieldPosterior, likelihoods, priors
from ..errors import PosteriorFormatError, PosteriorMismatchError, ShapeMismatchError, UnsupportedLayerError
from .factories import AllowImports, ImportPath, build_model, is_import_path
from .recipes import REGRESSION_NOISE
from .runs import environment as run_environment
from .runs import resolve_device

__all__ = ["ModelFile", "Architecture", "SavedPrior", "save_model", "load_model", "read_model_file",
           "describe_prior", "make_prior", "describe_likelihood", "make_likelihood",
           "MODEL_FORMAT", "MODEL_VERSION", "MODEL_FILE_NAME", "POSTERIOR_FILE_NAME"]

MODEL_FORMAT = "bayesdistill.Model"
MODEL_VERSION = 1
#: The file names the pipelines write into a run folder (``load_model`` of a folder reads these).
MODEL_FILE_NAME = "model.pt"
POSTERIOR_FILE_NAME = "posterior.pt"
_POSTERIOR_FORMAT = "bayesdistill.MeanFieldPosterior"
_LEGACY_KEYS = ("model", "input_shape", "output_dim")
_NORM_NAMES = {t.__name__ for t in NORM_LAYERS}


@dataclass(frozen=True)
class Architecture:
    """A network by name: a built-in model or an import path, with its keyword arguments."""

    model: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def by_import_path(self) -> bool:
        return is_import_path(self.model)


class SavedPrior(priors.Prior):
    """A prior restored from a model file as the tensors it materialized to (for prior classes
    that are not built in): ``locs`` and ``scales`` per parameter name."""

    def __init__(self, locs: Mapping[str, Tensor], scales: Mapping[str, Tensor], learn_scale: bool = False,
                 description: str = ""):
        self.locs, self.scales = dict(locs), dict(scales)
        self.learn_scale = bool(learn_scale)
        self.description = description

    def materialize(self, shapes):
        missing = [k for k in shapes if k not in self.locs]
        if missing:
            raise ShapeMismatchError(f"the saved prior has no tensors for {missing}")
        return {k: self.locs[k] for k in shapes}, {k: self.scales[k] for k in shapes}

    def __repr__(self) -> str:
        return f"SavedPrior({len(self.locs)} tensors{', ' + self.description if self.description else ''})"


# --------------------------------------------------------------------------- prior and likelihood
def _per_site(bnn: BNN, flat: Tensor) -> dict[str, Tensor]:
    out, offset = {}, 0
    for name, shape in bnn.shapes.items():
        n = int(torch.Size(shape).numel())
        out[name] = flat[offset:offset + n].detach().reshape(shape).cpu().clone()
        offset += n
    return out


def _plain_spec(value: Any) -> Any:
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, Mapping) else float(value)


def describe_prior(bnn: BNN) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    """The prior of ``bnn`` as (plain description, tensors)."""
    prior = bnn.prior
    if isinstance(prior, priors.Normal):
        return {"name": "normal", "loc": _plain_spec(prior.loc), "scale": _plain_spec(prior.scale),
                "learn_scale": bool(prior.learn_scale)}, {}
    if isinstance(prior, priors.TeacherPosterior):
        q = prior.plan.apply(prior.posterior) if prior.plan is not None else prior.posterior
        names = bnn.site_names
        scale = prior.scale if isinstance(prior.scale, str) else float(prior.scale)
        return ({"name": "teacher-posterior", "scale": scale, "temperature": float(prior.temperature),
                 "aligned": prior.plan is not None},
                {"locs": {k: q.locs[k].detach().cpu().clone() for k in names},
                 "scales": {k: q.scales[k].detach().cpu().clone() for k in names}})
    return ({"name": "materialized", "class": f"{type(prior).__module__}.{type(prior).__qualname__}",
             "learn_scale": bool(getattr(prior, "learn_scale", False))},
            {"locs": _per_site(bnn, bnn.prior_loc), "scales": _per_site(bnn, bnn.prior_scale)})


def make_prior(spec: Mapping[str, Any], tensors: Mapping[str, Mapping[str, Tensor]]) -> priors.Prior:
    """Inverse of :func:`describe_prior`."""
    name = spec.get("name")
    if name == "normal":
        return priors.Normal(loc=spec.get("loc", 0.0), scale=spec.get("scale", 1.0),
                             learn_scale=bool(spec.get("learn_scale", False)))
    if name == "teacher-posterior":
        q = MeanFieldPosterior(dict(tensors["locs"]), dict(tensors["scales"]))
        return priors.TeacherPosterior(q, scale=spec["scale"], temperature=float(spec.get("temperature", 1.0)))
    if name == "materialized":
        return SavedPrior(tensors["locs"], tensors["scales"], bool(spec.get("learn_scale")), str(spec.get("class")))
    raise PosteriorFormatError(f"unknown prior {name!r} in the model file")


def describe_likelihood(likelihood: Any) -> dict[str, Any]:
    """The likelihood as plain data (its learned parameters travel with the point estimates)."""
    if type(likelihood) is likelihoods.Categorical:
        return {"name": "categorical"}
    if type(likelihood) is likelihoods.Normal:
        return {"name": "normal", "scale": float(likelihood.scale.detach()), "learn_scale": bool(likelihood.learn_scale)}
    raise TypeError(f"save_model saves the built-in likelihoods (Categorical, Normal), not {type(likelihood).__name__}")


def make_likelihood(spec: Mapping[str, Any]) -> Any:
    name = spec.get("name")
    if name == "categorical":
        return likelihoods.Categorical()
    if name == "normal":
        return likelihoods.Normal(scale=float(spec.get("scale", 1.0)), learn_scale=bool(spec.get("learn_scale", False)))
    raise PosteriorFormatError(f"unknown likelihood {name!r} in the model file")


# --------------------------------------------------------------------------- the file
@dataclass
class ModelFile:
    """The content of a saved model (schema ``bayesdistill.Model`` v1); :meth:`build` makes the BNN."""

    architecture: Architecture
    input_shape: tuple[int, ...]
    output_dim: int
    task: str
    posterior: MeanFieldPosterior
    likelihood: dict[str, Any]
    prior: dict[str, Any]
    prior_tensors: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    prior_state: dict[str, Tensor] = field(default_factory=dict)
    variational: dict[str, Tensor] = field(default_factory=dict)
    bnn: dict[str, Any] = field(default_factory=dict)
    dataset: Optional[str] = None
    training: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "model"
    legacy: bool = False

    def state(self) -> dict[str, Any]:
        """The on-disk dict."""
        return {
            "format": MODEL_FORMAT, "version": MODEL_VERSION,
            "architecture": {"model": self.architecture.model, "kwargs": dict(self.architecture.kwargs)},
            "input_shape": [int(d) for d in self.input_shape], "output_dim": int(self.output_dim), "task": self.task,
            "posterior": self.posterior.state(), "likelihood": dict(self.likelihood), "prior": dict(self.prior),
            "prior_tensors": {k: dict(v) for k, v in self.prior_tensors.items()},
            "prior_state": dict(self.prior_state), "variational": dict(self.variational), "bnn": dict(self.bnn),
            "dataset": self.dataset,
            "training": dict(self.training), "environment": dict(self.environment), "metadata": dict(self.metadata),
        }

    @classmethod
    def from_state(cls, state: Any, source: str = "state") -> "ModelFile":
        """Inverse of :meth:`state`; also reads a posterior file with architecture metadata."""
        if isinstance(state, dict) and state.get("format") == _POSTERIOR_FORMAT:
            return cls._from_posterior(MeanFieldPosterior.from_state(state, source=source), source)
        if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
            raise PosteriorFormatError(f"{source} is neither a bayesdistill model file nor a posterior file")
        if state.get("version") != MODEL_VERSION:
            raise PosteriorFormatError(f"{source} has model format version {state.get('version')!r}; this "
                                       f"bayesdistill reads version {MODEL_VERSION}. Upgrade bayesdistill")
        try:
            arch = state["architecture"]
            return cls(Architecture(str(arch["model"]), dict(arch.get("kwargs") or {})),
                       tuple(int(d) for d in state["input_shape"]), int(state["output_dim"]), str(state["task"]),
                       MeanFieldPosterior.from_state(state["posterior"], source=source),
                       dict(state["likelihood"]), dict(state["prior"]), dict(state.get("prior_tensors") or {}),
                       dict(state.get("prior_state") or {}), dict(state.get("variational") or {}),
                       dict(state.get("bnn") or {}), state.get("dataset"),
                       dict(state.get("training") or {}), dict(state.get("environment") or {}),
                       dict(state.get("metadata") or {}), source)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            if isinstance(err, PosteriorFormatError):
                raise
            raise PosteriorFormatError(f"{source} is a damaged model file: missing or bad field ({err})") from err

    @classmethod
    def _from_posterior(cls, q: MeanFieldPosterior, source: str) -> "ModelFile":
        """A posterior written by ``bayesdistill fit`` (architecture in its metadata)."""
        meta = q.metadata
        missing = [k for k in _LEGACY_KEYS if k not in meta]
        if missing:
            raise PosteriorFormatError(
                f"{source} holds a posterior without architecture metadata (missing {missing}); it was not written "
                "by 'bayesdistill fit'. Rebuild the network in Python and use "
                "bnn.load_posterior(MeanFieldPosterior.load(path)), or save whole models with bd.save_model")
        task = meta.get("task") or ("regression" if meta.get("likelihood") == "normal" else "classification")
        likelihood = ({"name": "normal", "scale": REGRESSION_NOISE, "learn_scale": True} if task == "regression"
                      else {"name": "categorical"})
        prior = {"name": "normal", "loc": 0.0, "scale": float(meta.get("prior_scale", 1.0)), "learn_scale": False}
        training = {k: meta[k] for k in ("seed", "train_fraction", "epochs") if k in meta}
        return cls(Architecture(str(meta["model"]), dict(meta.get("model_kwargs") or {})),
                   tuple(int(d) for d in meta["input_shape"]), int(meta["output_dim"]), task, q, likelihood, prior,
                   dataset=meta.get("dataset"), training=training, metadata=dict(meta), source=source, legacy=True)

    @property
    def seed(self) -> int:
        """The seed the run used (0 if not recorded)."""
        return int(self.training.get("seed", 0))

    def build(self, *, allow_imports: AllowImports = False, device: Union[str, torch.device, None] = None) -> BNN:
        """The ready :class:`~bayesdistill.BNN`: the network built, the posterior, prior and likelihood loaded."""
        net = build_model(self.architecture.model, self.input_shape, self.output_dim, self.architecture.kwargs,
                          allow_imports=allow_imports)
        info = self.posterior.info
        bayesian = {i.module for i in info.values()}
        kw: dict[str, Any] = {}
        if bayesian:
            kw = {"deterministic": lambda path, module: path not in bayesian,
                  "bayesian_norm": any(i.module_type in _NORM_NAMES for i in info.values())}
        try:
            bnn = BNN(net, prior=make_prior(self.prior, self.prior_tensors), likelihood=make_likelihood(self.likelihood),
                      dataset_size=self.bnn.get("dataset_size"), init="module", **kw)
            bnn.load_posterior(self.posterior)
        except (PosteriorMismatchError, ShapeMismatchError, UnsupportedLayerError) as err:
            raise type(err)(f"{self.source}: the saved posterior does not fit the network "
                            f"{self.architecture.model!r} built from its architecture ({err})") from err
        self._restore(bnn, self.prior_state, "prior state")
        self._restore(bnn, self.variational, "variational parameters")
        bnn.kl_weight = float(self.bnn.get("kl_weight", 1.0))
        return bnn.to(resolve_device(device)) if device is not None else bnn

    @torch.no_grad()
    def _restore(self, bnn: BNN, tensors: Mapping[str, Tensor], what: str) -> None:
        """Copy saved tensors into the BNN's attributes of the same names (exact state)."""
        for name, value in tensors.items():
            own = getattr(bnn, name, None)
            if not torch.is_tensor(own) or own.shape != value.shape:
                raise PosteriorFormatError(f"{self.source}: the saved {what} {name!r} does not fit the network")
            own.copy_(value)


def save_model(bnn: BNN, path: Union[str, os.PathLike], *, model: str, input_shape: Sequence[int], output_dim: int,
               model_kwargs: Optional[Mapping[str, Any]] = None, dataset: Optional[str] = None,
               training: Optional[Mapping[str, Any]] = None, metadata: Optional[Mapping[str, Any]] = None,
               posterior_metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Save ``bnn`` whole (architecture, posterior, likelihood, prior) so that :func:`load_model`
    brings it back; writes atomically and returns the path.

    Args:
        bnn: the trained BNN.
        model: how the network is built: a built-in name (``bd.models.available()``) or an import
            path ``package.module:factory`` (called as ``factory(input_shape, output_dim,
            **model_kwargs)``; nothing is imported here).
        input_shape: the network's input shape (no batch dimension).
        output_dim: the network's number of outputs (classes, or regression outputs).
        model_kwargs: the factory's keyword arguments (plain values).
        dataset: the data set's name (or import path), recorded.
        training: the run's settings (plain values), recorded.
        metadata: anything else (plain values).
        posterior_metadata: the saved posterior's own metadata (default: empty).

    Returns:
        The path written (the file appears whole or not at all).

    Raises:
        TypeError: ``bnn`` is not a :class:`~bayesdistill.BNN`, ``model`` is not a non-empty
            string, or a value that is not plain data (numbers, strings, lists, dicts, tensors).
        FactoryError: a malformed import path (a ``ValueError``).
    """
    if not isinstance(bnn, BNN):
        raise TypeError(f"save_model saves a bd.BNN, got {type(bnn).__name__}")
    if not isinstance(model, str) or not model:
        raise TypeError(f"model= names the architecture (a built-in name or package.module:factory), got {model!r}")
    if is_import_path(model):
        ImportPath.parse(model, "model")  # well-formed; not imported
    q = bnn.posterior()
    q.metadata = dict(posterior_metadata or {})
    variational = {"loc": bnn.loc.detach().cpu().clone(), "rho": bnn.rho.detach().cpu().clone()}
    prior, prior_tensors = describe_prior(bnn)
    prior_state = {"prior_loc": bnn.prior_loc.detach().cpu().clone(),
                   "prior_scale": bnn.prior_scale.detach().cpu().clone()}
    if getattr(bnn, "learn_prior_scale", False):
        prior_state["prior_log_scale"] = bnn.prior_log_scale.detach().cpu().clone()
    mf = ModelFile(Architecture(model, dict(model_kwargs or {})), tuple(int(d) for d in input_shape), int(output_dim),
                   bnn.likelihood.task or "classification", q, describe_likelihood(bnn.likelihood), prior, prior_tensors,
                   prior_state, variational, {"dataset_size": bnn.dataset_size, "kl_weight": float(bnn.kl_weight)},
                   dataset,
                   dict(training or {}), run_environment(bnn.loc.device), dict(metadata or {}))
    state = mf.state()
    check_plain(state, "state", what="model file", tensors=True)
    return atomic_write(path, lambda fh: torch.save(state, fh))


def read_model_file(path: Union[str, os.PathLike]) -> ModelFile:
    """Read a model file (or a posterior file written by ``bayesdistill fit``, or a run folder
    holding one: ``model.pt`` first, else ``posterior.pt``) without building anything."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / MODEL_FILE_NAME, path / POSTERIOR_FILE_NAME]
        path = next((p for p in candidates if p.is_file()), candidates[0])
    if not path.exists():
        raise FileNotFoundError(f"no posterior file or model file at {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged zip/pickle data
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise PosteriorFormatError(
            f"{str(path)!r} could not be read as a posterior or model file ({type(err).__name__}: {first}); it may be "
            "truncated or not a file written by bd.save_model or MeanFieldPosterior.save (nothing in it was run)"
        ) from err
    return ModelFile.from_state(state, source=repr(str(path)))


def load_model(path: Union[str, os.PathLike], *, allow_imports: AllowImports = False,
               device: Union[str, torch.device, None] = None) -> BNN:
    """The ready :class:`~bayesdistill.BNN` saved at ``path`` (:func:`save_model`, or a posterior
    file written by ``bayesdistill fit``, or a run folder).

    Args:
        allow_imports: a model named by import path is imported only if allowed: ``True``, or the
            top-level packages allowed (``["mypkg"]``).
        device: where the BNN goes (``"cpu"``, ``"cuda"``, ``"auto"``; default: CPU).

    Raises:
        FileNotFoundError: nothing at ``path``.
        PosteriorFormatError: the file is damaged, of another format, or lacks the architecture.
        ImportNotAllowedError: the model's factory is named by import path and not allowed.
        FactoryError: the factory cannot be imported or does not build the saved network.
    """
    return read_model_file(path).build(allow_imports=allow_imports, device=device)

