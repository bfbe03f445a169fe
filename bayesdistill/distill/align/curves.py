"""Pruning curves: how a teacher's predictive degrades as its layers are narrowed by alignment.

- :func:`narrow`: the architecture of a chain network with every hidden layer's units reduced by a
  fraction (a freshly initialized copy: an architecture, not a pruned network).
- :func:`aligned_network`: a :class:`~bayesdistill.BNN` of a student network whose q(w) is the
  teacher's aligned posterior (the aligned teacher itself, untrained).
- :func:`pruning_curve`: for each fraction, align the teacher to its narrowed architecture
  (:func:`~bayesdistill.align`, one criterion, with or without compensation), use the aligned
  posterior as the network's q(w) *without any training*, and evaluate it. The curve
  (:class:`PruningCurve`) measures what a unit-selection criterion (and least-squares
  compensation on probe data) keeps of the teacher's function: the starting point of a
  distilled student.

>>> curve = bd.distill.pruning_curve(teacher, data.test, criterion="snr", fractions=(0, .25, .5, .75))
>>> curve.values   # accuracy (or RMSE) per fraction; fraction 0 is the teacher itself
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import torch
from torch import nn

from ...bnn.likelihoods import Categorical
from ...bnn.network import BNN
from ...errors import DataError, UnsupportedLayerError
from ..student import student_from_teacher
from .chain import LAYERS, NORMS, Layer, parse_chain
from .criteria import Criterion, criterion_needs_probe, resolve_criterion
from .driver import align
from .plan import AlignmentPlan

__all__ = ["narrow", "pruning_curve", "PruningCurve", "aligned_network", "DEFAULT_FRACTIONS"]

#: Fractions of hidden units removed by :func:`pruning_curve` by default.
DEFAULT_FRACTIONS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


# ----------------------------------------------------------------------------- narrow
def _check_fraction(fraction: float) -> float:
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise TypeError(f"fraction must be a number in [0, 1), got {fraction!r}") from None
    if not 0.0 <= f < 1.0:
        raise ValueError(f"fraction must be in [0, 1) (the fraction of hidden units removed), got {fraction!r}")
    return f


def _factory_dtype(module: nn.Module) -> dict[str, Any]:
    """dtype/device of a module's tensors (weights may be empty buffer slots in a BNN's net)."""
    for t in list(module._parameters.values()) + list(module._buffers.values()):
        if t is not None and t.is_floating_point():
            return {"dtype": t.dtype, "device": t.device}
    return {}


def _rebuild_layer(layer: Layer, in_units: int, out_units: int) -> nn.Module:
    """A fresh Linear/Conv with the hyperparameters of ``layer.module`` and new sizes."""
    m = layer.module
    if type(m) not in LAYERS:
        raise UnsupportedLayerError(
            f"narrow: layer {layer.path!r} is a {type(m).__name__} (a subclass of "
            f"{type(m).__mro__[1].__name__}); narrow rebuilds only plain nn.Linear, nn.Conv1d and nn.Conv2d"
        )
    kw = _factory_dtype(m)
    if isinstance(m, nn.Linear):
        return nn.Linear(in_units, out_units, bias=layer.has_bias, **kw)
    return type(m)(
        in_units, out_units, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
        groups=m.groups, bias=layer.has_bias, padding_mode=m.padding_mode, **kw,
    )


def _rebuild_norm(path: str, m: nn.Module, units: int) -> nn.Module:
    if type(m) not in NORMS:
        raise UnsupportedLayerError(
            f"narrow: normalization module {path!r} is a {type(m).__name__}; narrow rebuilds only "
            "plain nn.BatchNorm1d and nn.BatchNorm2d"
        )
    kw = _factory_dtype(m)
    if m.affine and m.bias is None and "bias" not in m._buffers:  # BatchNorm(..., bias=False), torch >= 2.x
        kw["bias"] = False
    return type(m)(units, eps=m.eps, momentum=m.momentum, affine=m.affine,
                   track_running_stats=m.track_running_stats, **kw)


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def narrow(net: nn.Sequential, fraction: float) -> nn.Sequential:
    """A copy of a chain network with every hidden layer narrowed by ``fraction``.

    Every Linear/Conv1d/Conv2d layer except the output layer keeps ``round((1 - fraction) *
    units)`` units (at least 1); the next layer reads the new number of inputs (across a
    ``Flatten`` into a Linear layer the positions per channel are preserved: ``channels x
    positions`` features become ``new_channels x positions``), and BatchNorm layers after a
    narrowed layer get the new size. Input and output sizes are unchanged.

    The layers are rebuilt from their hyperparameters (sizes, kernel, stride, padding, bias) and
    freshly initialized (from the global torch RNG); weights are never read, so this works on the
    network inside a :class:`~bayesdistill.BNN` (``bnn.net``, whose Bayesian weights are empty
    buffer slots). Parameter-free modules (activations, ``Flatten``, pooling, dropout) are copied.
    Use :func:`~bayesdistill.align` to carry a teacher's posterior onto the result.

    Args:
        net: a chain (``nn.Sequential``, nested ones allowed) of Linear/Conv1d/Conv2d layers,
            BatchNorm1d/2d and parameter-free modules.
        fraction: fraction of each hidden layer's units to remove, in ``[0, 1)``.

    Raises:
        UnsupportedLayerError: naming the module, for anything else (a module with parameters that
            is not one of those layers, a module whose forward order cannot be known, grouped
            convolutions, a Linear layer whose inputs are not a whole number of positions per
            channel of the layer before it).
    """
    f = _check_fraction(fraction)
    if not isinstance(net, nn.Sequential):
        raise UnsupportedLayerError(
            f"narrow expects a chain network (nn.Sequential), got {type(net).__name__}; write the "
            "network as an nn.Sequential"
        )
    chain = parse_chain(net, None, "network")
    layers = chain.layers
    new_out = [L.out_units if t == len(layers) - 1 else max(1, round((1.0 - f) * L.out_units))
               for t, L in enumerate(layers)]
    new_in = [layers[0].in_units]
    for t in range(1, len(layers)):
        prev, cur = layers[t - 1], layers[t]
        if cur.kind == "linear" and prev.kind == "conv":
            if cur.in_units % prev.out_units:
                raise UnsupportedLayerError(
                    f"narrow: layer {cur.path!r} reads {cur.in_units} features after the {prev.out_units} "
                    f"channels of {prev.path!r}, not a whole number of positions per channel"
                )
            new_in.append(new_out[t - 1] * (cur.in_units // prev.out_units))
        elif cur.in_units == prev.out_units:
            new_in.append(new_out[t - 1])
        else:
            raise UnsupportedLayerError(
                f"narrow: layer {cur.path!r} reads {cur.in_units} inputs but {prev.path!r} gives "
                f"{prev.out_units}; narrow cannot relate them"
            )
    for L in layers:  # grouped convolutions: checked by parse_chain, but be explicit for subclasses
        if getattr(L.module, "groups", 1) != 1:
            raise UnsupportedLayerError(f"narrow: layer {L.path!r} is a grouped convolution")
    out = copy.deepcopy(net)
    for t, L in enumerate(layers):
        _set_module(out, L.path, _rebuild_layer(L, new_in[t], new_out[t]))
        for npath, norm in L.norms():
            _set_module(out, npath, _rebuild_norm(npath, norm, new_out[t]))
    return out


# ----------------------------------------------------------------------------- pruning curve
def aligned_network(teacher: BNN, student_net: nn.Module, plan: AlignmentPlan) -> BNN:
    """A :class:`BNN` of ``student_net`` whose q(w) is the teacher's posterior after ``plan``.

    The aligned teacher itself, untrained: :func:`~bayesdistill.distill.student_from_teacher`
    with ``init="teacher"`` (q(w) = the aligned means *and* scales, the aligned normalization
    statistics, a copy of the teacher's likelihood, its ``dataset_size``; the prior is the
    aligned teacher prior with unit scale, irrelevant for prediction).
    """
    return student_from_teacher(teacher, student_net, plan=plan, init="teacher")


@dataclass(frozen=True)
class PruningCurve:
    """The test metrics of a teacher aligned to narrower copies of itself, one entry per fraction.

    Attributes:
        criterion: the unit-selection criterion's name.
        compensation: whether the next layers were re-fitted on probe data.
        metric: ``"accuracy"`` (classification) or ``"rmse"`` (regression): what ``values`` hold.
        fraction: fractions of hidden units removed.
        values: the metric per fraction.
        nll: the test NLL per fraction (nats per example).
        units: the hidden widths of the narrowed network per fraction.
        output_error: relative output error of the aligned teacher on the probe data per
            fraction (``None`` without probe data).
    """

    criterion: str
    compensation: bool
    metric: str
    fraction: list[float]
    values: list[float]
    nll: list[float]
    units: list[list[int]]
    output_error: list[Optional[float]]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (the fields by name)."""
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PruningCurve":
        """The inverse of :meth:`to_dict`; also reads the former dicts that held the values under
        the metric's name (``{"accuracy": [...], "metric": "accuracy", ...}``)."""
        d = dict(data)
        if "values" not in d and d.get("metric") in d:
            d["values"] = d.pop(d["metric"])
        missing = [k for k in cls.__dataclass_fields__ if k not in d]
        if missing:
            raise ValueError(f"PruningCurve.from_dict: missing {missing}")
        return cls(**{k: copy.deepcopy(d[k]) for k in cls.__dataclass_fields__})


def _first_input(data: Any) -> Any:
    """A batch of two inputs of evaluation data (tensor, ``(x, y)``, Dataset or DataLoader)."""
    from .driver import probe_inputs

    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.TensorDataset):
        first = data[0]
        x = first[0] if isinstance(first, (tuple, list)) else first
        return x.unsqueeze(0)
    return probe_inputs(data)[:2]


def pruning_curve(
    teacher: BNN,
    data: Any,
    *,
    criterion: Union[str, Criterion] = "snr",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    compensation: bool = False,
    probe: Any = None,
    num_samples: int = 16,
    seed: int = 0,
    architecture: Optional[Callable[[float], nn.Module]] = None,
) -> PruningCurve:
    """Test metrics of the teacher aligned to narrower copies of itself, without training.

    For each fraction f: ``narrow(teacher.net, f)`` gives the architecture, :func:`~bayesdistill.align`
    maps the teacher's posterior onto it (``criterion``; ``compensation`` re-fits each next layer
    on ``probe``), and :func:`aligned_network` (the aligned posterior as q(w), same likelihood) is
    evaluated on ``data`` by :func:`~bayesdistill.evaluate` (``num_samples`` draws, ``seed``). At
    f = 0 nothing is removed and the metrics are the teacher's own.

    Args:
        teacher: a trained :class:`~bayesdistill.BNN` whose network is a chain.
        data: labelled evaluation data (e.g. ``bundle.test``).
        criterion: ``"snr"``, ``"random"``, ``"data"`` (needs ``probe``), another registered
            criterion or a callable (see :func:`~bayesdistill.align`).
        fractions: fractions of hidden units removed, each in ``[0, 1)``.
        compensation: re-fit the next layer's means on the probe data after each removal.
        probe: teacher inputs (tensor, ``(x, y)`` tuple, Dataset): needed by
            ``compensation=True`` and criteria that read activations (``"data"``), ignored
            otherwise (so the removal rule is ``"permutation"`` without them).
        num_samples: posterior draws of the predictive.
        seed: seeds the random criterion and the evaluation draws.
        architecture: ``fraction -> network``, the narrowed architecture for networks
            :func:`narrow` cannot rebuild (residual networks, Transformers: e.g.
            ``lambda f: bd.models.resnet(10, widths=[round((1 - f) * w) for w in widths])``);
            default :func:`narrow`. Those networks are aligned on their graph, traced on the
            first input of ``data``.

    Returns:
        A :class:`PruningCurve` (``curve.values``: accuracy or RMSE per fraction, as
        ``curve.metric`` says).

    Raises:
        DataError: ``compensation=True`` or ``criterion="data"`` without ``probe``.
        UnsupportedLayerError: the teacher's network is not a chain :func:`narrow` can rebuild.
    """
    from ...infer.predictive import evaluate

    if not isinstance(teacher, BNN):
        raise TypeError(f"pruning_curve expects the teacher as a bd.BNN, got {type(teacher).__name__}")
    fracs = [_check_fraction(f) for f in fractions]
    if not fracs:
        raise ValueError("pruning_curve: fractions is empty")
    _, name = resolve_criterion(criterion)
    needs_probe = bool(compensation) or criterion_needs_probe(criterion)
    if needs_probe and probe is None:
        what = "compensation=True" if compensation else f"criterion={name!r}"
        raise DataError(f"pruning_curve: {what} needs probe= (inputs of the teacher, e.g. its training inputs)")
    metric = "accuracy" if isinstance(teacher.likelihood, Categorical) else "rmse"
    example = _first_input(data) if architecture is not None else None
    rows = []
    for f in fracs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the narrowed net's (unused) initialization
            student_net = narrow(teacher.net, f) if architecture is None else architecture(f)
        plan = align(teacher, student_net, criterion=criterion, probe=probe if needs_probe else None,
                     compensation=bool(compensation), seed=seed, example=example)
        scores = evaluate(aligned_network(teacher, student_net, plan), data, num_samples=num_samples, seed=seed)
        units = [int(L["student_units"]) for L in plan.layers if not L["removed"]][:-1]  # hidden widths
        rows.append((f, float(scores[metric]), float(scores["nll"]), units, plan.output_error))
    fraction, values, nll, units, errors = (list(col) for col in zip(*rows))
    return PruningCurve(criterion=name, compensation=bool(compensation), metric=metric, fraction=fraction,
                        values=values, nll=nll, units=units, output_error=errors)
