r"""The growth plan: how a small network's posterior sits inside a larger network, as plain data.

A :class:`GrowthPlan` is the reverse of an :class:`~bayesdistill.AlignmentPlan`. It records, for
every *unit space* of the small network (its inputs, and the outputs of each layer), where each
small unit sits in the large network and what each large unit is (:class:`UnitMap`): an old unit,
a copy of an old unit (Net2WiderNet), or new; per large layer (:class:`GrownLayer`) the small
layer it continues (or none: an inserted layer); and the values of the new weights the mode chose
(``fresh``: zeros, uniform draws, identities). :meth:`GrowthPlan.apply` maps any posterior of the
small network's shapes onto the large network's parameters, exactly and without randomness, so a
plan can be saved, loaded and replayed.

For a large layer that continues small layer ``W`` (means; scales alike), with row ``r`` and input
column ``c`` of the large layer and ``s(.)`` their source units (``-1``: new), ``n(.)`` the number
of large units with that source:

.. math::

    W^{large}_{rc} = \begin{cases} W_{s(r)\,s(c)} / n(s(c)) & s(r) \ge 0,\ s(c) \ge 0 \\
                                   \text{fresh}_{rc} & \text{otherwise} \end{cases}
    \qquad \sigma^{large}_{rc} = \sigma_{s(r)\,s(c)} / \sqrt{n(s(c))}

The division of the outgoing weights of copied units by their number is Net2WiderNet's (Chen,
Goodfellow & Shlens 2016); the scales are divided by the square root so that each old
pre-activation keeps its variance under q (independent copies). With ``n = 1`` (every mode but
``"net2net"``) the old block is the small posterior itself.

*Old* entries (:meth:`GrowthPlan.old_masks`) are those whose row and column are both original
small units (not copies, not new): they carry the small network's knowledge and get its
posterior as prior mean; everything else is new and gets a broad prior
(:class:`~bayesdistill.distill.grow.GrowthPrior`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import torch
from torch import Tensor

from ..._io import atomic_write, read_torch_file
from ...bnn.posterior import MeanFieldPosterior, ParamInfo, atomic_save
from ...errors import FileFormatError, ShapeMismatchError

__all__ = ["UnitMap", "GrownLayer", "GrowthPlan", "GROWTH_MODES", "PLAN_FORMAT", "PLAN_VERSION"]

PLAN_FORMAT = "bayesdistill.GrowthPlan"
PLAN_VERSION = 1

#: The growth modes, and whether each keeps the small network's function exactly.
GROWTH_MODES: dict[str, bool] = {"net2net": True, "embed": True, "zero": True, "uniform": False}


@dataclass(frozen=True)
class UnitMap:
    """One unit space (the inputs, or one layer's outputs) of the small network inside the large one.

    Attributes:
        old: for each small unit, its index in the large network.
        source: for each large unit, the small unit it is or copies, ``-1`` for a new unit.
    """

    old: tuple[int, ...]
    source: tuple[int, ...]

    @property
    def size(self) -> int:
        """Units of the large network."""
        return len(self.source)

    @property
    def small_size(self) -> int:
        return len(self.old)

    def counts(self) -> Tensor:
        """Per large unit, the number of large units sharing its source (1 for new units)."""
        src = torch.tensor(self.source, dtype=torch.long)
        n = torch.bincount(src[src >= 0], minlength=self.small_size)
        return torch.where(src >= 0, n[src.clamp_min(0)], torch.ones_like(src))

    def is_old(self) -> Tensor:
        """``[size]`` bool: the unit is an original small unit (not a copy, not new)."""
        mask = torch.zeros(self.size, dtype=torch.bool)
        mask[list(self.old)] = True
        return mask

    def expand(self, group: int) -> tuple[Tensor, Tensor, Tensor]:
        """The map over input *columns* when each unit feeds ``group`` columns (a flattened conv):
        ``(source column or -1, count, is_old)``, each ``[size * group]``."""
        src = torch.tensor(self.source, dtype=torch.long)
        pos = torch.arange(group)
        col_src = torch.where(src[:, None] >= 0, src[:, None] * group + pos, torch.full((1, group), -1)).reshape(-1)
        counts = self.counts().repeat_interleave(group)
        old = self.is_old().repeat_interleave(group)
        return col_src, counts, old

    def state(self) -> dict[str, Any]:
        return {"old": list(self.old), "source": list(self.source)}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> "UnitMap":
        return cls(tuple(int(i) for i in d["old"]), tuple(int(i) for i in d["source"]))

    def describe(self) -> str:
        new = sum(1 for s in self.source if s < 0)
        copies = self.size - new - self.small_size
        return f"{self.small_size} -> {self.size}" + (f" (+{copies} copies)" if copies else "") + (f" (+{new} new)" if new else "")


@dataclass(frozen=True)
class GrownLayer:
    """One layer of the large network in a growth plan.

    Attributes:
        path: its module path in the large network.
        source: the module path of the small layer it continues; ``None``: an inserted layer.
        kind: ``"linear"`` or ``"conv"``.
        inputs, outputs: indices into :attr:`GrowthPlan.unit_maps` of its input and output spaces.
        group: input columns per input unit (> 1 for a Linear reading a flattened convolution).
        norms: ``(small path, large path)`` of the normalization layers after it.
    """

    path: str
    source: Optional[str]
    kind: str
    inputs: int
    outputs: int
    group: int = 1
    norms: tuple[tuple[Optional[str], str], ...] = ()

    @property
    def inserted(self) -> bool:
        return self.source is None

    def state(self) -> dict[str, Any]:
        return {"path": self.path, "source": self.source, "kind": self.kind, "inputs": self.inputs,
                "outputs": self.outputs, "group": self.group, "norms": [list(n) for n in self.norms]}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> "GrownLayer":
        return cls(str(d["path"]), None if d["source"] is None else str(d["source"]), str(d["kind"]),
                   int(d["inputs"]), int(d["outputs"]), int(d["group"]),
                   tuple((None if a is None else str(a), str(b)) for a, b in d["norms"]))


_STAT_DEFAULTS = {"running_mean": 0.0, "running_var": 1.0, "weight": 1.0, "bias": 0.0}


@dataclass
class GrowthPlan:
    """How a small network's posterior maps onto a larger network (see the module docstring).

    Attributes:
        mode: ``"net2net"``, ``"embed"``, ``"zero"`` or ``"uniform"`` (:data:`GROWTH_MODES`).
        layers: one :class:`GrownLayer` per Linear/Conv layer of the large network.
        unit_maps: the unit spaces: index 0 the inputs, then one per layer output (an inserted
            layer shares its input space).
        fresh: large parameter name -> the mode's values of the new entries (the full tensor; the
            entries continuing the small network are overwritten by :meth:`apply`).
        small_shapes, large_shapes: Bayesian parameter name -> shape.
        new_scale: the posterior scale :meth:`apply` gives new entries.
        function_preserving: whether the mode keeps the small network's function (old outputs on
            old inputs, at the posterior means) exactly.
    """

    mode: str
    layers: list[GrownLayer]
    unit_maps: list[UnitMap]
    fresh: dict[str, Tensor]
    small_shapes: dict[str, list[int]]
    large_shapes: dict[str, list[int]]
    new_scale: float = 1e-2
    seed: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)

    kind: ClassVar[str] = "growth"

    # -- inspection -------------------------------------------------------------------------
    @property
    def function_preserving(self) -> bool:
        return GROWTH_MODES[self.mode]

    @property
    def inputs(self) -> UnitMap:
        """Where the small network's inputs (features or channels) sit among the large one's."""
        return self.unit_maps[0]

    @property
    def outputs(self) -> UnitMap:
        """Where the small network's outputs (classes) sit among the large one's."""
        return self.unit_maps[self.layers[-1].outputs]

    def summary(self) -> str:
        """A table: per large layer, the small layer it continues and how its units grew."""
        lines = [f"GrowthPlan (mode={self.mode}, function preserving: {'yes' if self.function_preserving else 'no'})",
                 f"{'large':<14}{'small':<14}{'kind':<8}{'inputs':>26}{'outputs':>26}"]
        for L in self.layers:
            src = L.source if L.source is not None else "(inserted)"
            lines.append(f"{L.path:<14}{src:<14}{L.kind:<8}{self.unit_maps[L.inputs].describe():>26}"
                         f"{self.unit_maps[L.outputs].describe():>26}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def overview(self) -> dict[str, Any]:
        """Settings and per-layer sizes as JSON-able data."""
        return {"mode": self.mode, "function_preserving": self.function_preserving, "seed": self.seed,
                "layers": [{"large": L.path, "small": L.source, "kind": L.kind,
                            "inputs": [self.unit_maps[L.inputs].small_size, self.unit_maps[L.inputs].size],
                            "outputs": [self.unit_maps[L.outputs].small_size, self.unit_maps[L.outputs].size]}
                           for L in self.layers]}

    def old_masks(self) -> dict[str, Tensor]:
        """Large parameter name -> bool tensor of its shape: ``True`` where the entry is an original
        weight of the small network (row and column both original units); inserted layers: all
        ``False``."""
        out = {}
        for L in self.layers:
            rows = self.unit_maps[L.outputs].is_old() if not L.inserted else None
            for attr in ("weight", "bias"):
                name = f"{L.path}.{attr}"
                if name not in self.large_shapes:
                    continue
                shape = torch.Size(self.large_shapes[name])
                if L.inserted:
                    out[name] = torch.zeros(shape, dtype=torch.bool)
                    continue
                if attr == "bias":
                    out[name] = rows.clone()
                    continue
                _, _, cols = self.unit_maps[L.inputs].expand(L.group)
                mask = rows[:, None] & cols[None, :]
                out[name] = mask.reshape(mask.shape + (1,) * (len(shape) - 2)).expand(shape).clone()
        # Bayesian normalization parameters (bayesian_norm=True): per unit
        for name, shape in self.large_shapes.items():
            if name not in out:
                out[name] = self._norm_mask(name, shape)
        return out

    def _norm_mask(self, name: str, shape: list[int]) -> Tensor:
        path = name.rsplit(".", 1)[0]
        for L in self.layers:
            for small_path, large_path in L.norms:
                if large_path == path and small_path is not None:
                    return self.unit_maps[L.outputs].is_old().clone()
        return torch.zeros(torch.Size(shape), dtype=torch.bool)

    # -- applying ---------------------------------------------------------------------------
    def apply(self, q: MeanFieldPosterior) -> MeanFieldPosterior:
        """The small posterior ``q`` mapped onto the large network's parameters (names and shapes).

        Old and copied entries come from ``q`` (copies' outgoing means divided by the number of
        copies, scales by its square root); new entries are the plan's ``fresh`` values with scale
        :attr:`new_scale`. Normalization statistics of continued layers are carried over per unit
        (copies copy them; new units get mean 0, variance 1, weight 1, bias 0), as are the
        likelihood's point estimates.

        Raises:
            ShapeMismatchError: ``q`` does not have the small network's parameters and shapes.
        """
        self._check_shapes(q)
        locs: dict[str, Tensor] = {}
        scales: dict[str, Tensor] = {}
        info: dict[str, ParamInfo] = {}
        points: dict[str, Tensor] = {}
        dev = q.device
        for L in self.layers:
            for attr in ("weight", "bias"):
                name = f"{L.path}.{attr}"
                if name not in self.large_shapes:
                    continue
                mean = self.fresh[name].to(dev).clone()
                scale = torch.full_like(mean, self.new_scale)
                if not L.inserted:
                    sname = f"{L.source}.{attr}"
                    self._embed(L, attr, q.locs[sname], q.scales[sname], mean, scale)
                locs[name], scales[name] = mean, scale
                info[name] = ParamInfo(L.path, "Linear" if L.kind == "linear" else "Conv", attr)
            self._norms(L, q, locs, scales, points)
        for k, v in q.point_estimates.items():
            if k.startswith("likelihood."):
                points[k] = v.detach().clone()
        return MeanFieldPosterior(locs, scales, info, points, {"grown_from": "small", "growth_mode": self.mode})

    def _embed(self, L: GrownLayer, attr: str, W: Tensor, S: Tensor, mean: Tensor, scale: Tensor) -> None:
        out_map = self.unit_maps[L.outputs]
        rows = torch.tensor(out_map.source, dtype=torch.long, device=W.device)
        r = (rows >= 0).nonzero().squeeze(1)
        if attr == "bias":
            mean[r] = W[rows[r]].to(mean.dtype)
            scale[r] = S[rows[r]].to(scale.dtype)
            return
        col_src, counts, _ = self.unit_maps[L.inputs].expand(L.group)
        col_src, counts = col_src.to(W.device), counts.to(W.device)
        c = (col_src >= 0).nonzero().squeeze(1)
        if W.shape[2:] != mean.shape[2:]:
            raise ShapeMismatchError(f"layer {L.path!r}: kernel {tuple(mean.shape[2:])} in the large network, "
                                     f"{tuple(W.shape[2:])} in the small one")
        div = counts[c].to(W.dtype).reshape(1, -1, *([1] * (W.dim() - 2)))
        block_m = W[rows[r]][:, col_src[c]] / div
        block_s = S[rows[r]][:, col_src[c]] / div.sqrt()
        mean[r[:, None], c[None, :]] = block_m.to(mean.dtype)
        scale[r[:, None], c[None, :]] = block_s.to(scale.dtype)

    def _norms(self, L: GrownLayer, q: MeanFieldPosterior, locs: dict, scales: dict, points: dict) -> None:
        out_map = self.unit_maps[L.outputs]
        rows = torch.tensor(out_map.source, dtype=torch.long)
        r = (rows >= 0).nonzero().squeeze(1)
        for small_path, large_path in L.norms:
            for key, default in (*_STAT_DEFAULTS.items(), ("num_batches_tracked", None)):
                sname = f"{small_path}.{key}" if small_path is not None else None
                lname = f"{large_path}.{key}"
                if key == "num_batches_tracked":
                    src = q.point_estimates.get(f"net.{sname}") if sname else None
                    if src is not None:
                        points[f"net.{lname}"] = src.detach().clone()
                    continue
                bayes = lname in self.large_shapes
                if bayes:
                    value = torch.full((out_map.size,), float(default))
                    sc = torch.full((out_map.size,), self.new_scale)
                    if sname is not None and sname in q.locs:
                        value[r] = q.locs[sname].detach().cpu()[rows[r]].to(value.dtype)
                        sc[r] = q.scales[sname].detach().cpu()[rows[r]].to(sc.dtype)
                    locs[lname], scales[lname] = value.to(q.device), sc.to(q.device)
                    continue
                src = q.point_estimates.get(f"net.{sname}") if sname is not None else None
                if src is None and small_path is not None:
                    continue  # the small network has no such entry (e.g. affine=False)
                value = torch.full((out_map.size,), float(default), dtype=src.dtype if src is not None else torch.float32)
                if src is not None:
                    value[r] = src.detach().cpu()[rows[r]]
                points[f"net.{lname}"] = value.to(q.device)

    def _check_shapes(self, q: MeanFieldPosterior) -> None:
        missing = [k for k in self.small_shapes if k not in q.locs]
        if missing:
            raise ShapeMismatchError(f"this growth plan needs the small network's parameters {missing}, which the "
                                     f"posterior lacks (it has {list(q.locs)})")
        for k, shape in self.small_shapes.items():
            if tuple(q.locs[k].shape) != tuple(shape):
                raise ShapeMismatchError(
                    f"growth plan applied to the wrong posterior: parameter {k!r} has shape "
                    f"{tuple(q.locs[k].shape)}, the plan was built for {tuple(shape)}")

    # -- inputs and outputs -----------------------------------------------------------------
    def embed_inputs(self, x: Tensor, new: Union[float, Tensor] = 0.0) -> Tensor:
        """Inputs of the small network placed at the old input positions of the large one.

        The input units are the last dimension for a Linear first layer and dimension 1 (channels)
        for a convolution; ``new`` fills the new inputs (a number, or a tensor of their values in
        the large network's layout, which the old positions overwrite).
        """
        m = self.inputs
        if m.size == m.small_size and tuple(m.old) == tuple(range(m.size)):
            return x
        dim = -1 if self.layers[0].kind == "linear" else 1
        shape = list(x.shape)
        shape[dim] = m.size
        out = new.clone() if torch.is_tensor(new) else torch.full(shape, float(new), dtype=x.dtype, device=x.device)
        index = torch.tensor(m.old, device=x.device)
        out.index_copy_(dim % x.dim(), index, x)
        return out

    def old_outputs(self, y: Tensor) -> Tensor:
        """The large network's outputs ``[..., K_large]`` restricted to the small one's (in its order)."""
        return y.index_select(-1, torch.tensor(self.outputs.old, device=y.device))

    # -- persistence ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "mode": self.mode,
                "layers": [L.state() for L in self.layers], "unit_maps": [u.state() for u in self.unit_maps],
                "fresh": {k: v.detach().cpu() for k, v in self.fresh.items()},
                "small_shapes": {k: list(v) for k, v in self.small_shapes.items()},
                "large_shapes": {k: list(v) for k, v in self.large_shapes.items()},
                "new_scale": self.new_scale, "seed": self.seed, "records": self.records}

    @classmethod
    def from_state(cls, state: Any) -> "GrowthPlan":
        if not isinstance(state, dict) or state.get("format") != PLAN_FORMAT:
            raise FileFormatError("not a growth plan (missing format tag)")
        if state.get("version") != PLAN_VERSION:
            raise FileFormatError(f"growth plan format version {state.get('version')!r} is not supported (this "
                                  f"bayesdistill reads version {PLAN_VERSION}); rebuild the plan with bd.distill.grow")
        mode = state["mode"]
        if mode not in GROWTH_MODES:
            raise FileFormatError(f"growth plan with unknown mode {mode!r}")
        fresh = state["fresh"]
        if not all(torch.is_tensor(v) for v in fresh.values()):
            raise FileFormatError("growth plan: 'fresh' must hold tensors")
        return cls(mode=mode, layers=[GrownLayer.from_state(d) for d in state["layers"]],
                   unit_maps=[UnitMap.from_state(d) for d in state["unit_maps"]], fresh=dict(fresh),
                   small_shapes={k: list(v) for k, v in state["small_shapes"].items()},
                   large_shapes={k: list(v) for k, v in state["large_shapes"].items()},
                   new_scale=float(state["new_scale"]), seed=int(state["seed"]), records=list(state.get("records", [])))

    def save(self, path: Union[str, Path]) -> Path:
        """Write the plan atomically (``torch.save`` format, tensors and plain data only)."""
        return atomic_save(self.state(), path)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "GrowthPlan":
        """Read a plan written by :meth:`save` (``weights_only``: no code from the file runs);
        :class:`~bayesdistill.errors.FileFormatError` for a damaged or foreign file."""
        state = read_torch_file(path, "growth plan")
        try:
            return cls.from_state(state)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
            if isinstance(err, FileFormatError):
                raise
            raise FileFormatError(f"{str(path)!r} is not a readable growth plan ({err})") from err

    def to_json(self, path: Union[str, Path, None] = None) -> str:
        """The inspectable part (:meth:`overview`) as JSON; written to ``path`` if given."""
        text = json.dumps(self.overview(), indent=2)
        if path is not None:
            atomic_write(path, lambda fh: fh.write(text), binary=False)
        return text


def uniform_bound(fan_in: int) -> float:
    """``1 / sqrt(fan_in)``: the bound of the paper's U[-1/sqrt(n), 1/sqrt(n)] (and PyTorch's default
    Linear/Conv initialization range)."""
    return 1.0 / math.sqrt(max(fan_in, 1))
