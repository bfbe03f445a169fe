r"""Layer alignment: map a teacher's posterior onto a smaller student's shapes.

Bayesian distillation (Grabovoy & Strijov, 2021, "Bayesian distillation of deep learning
models") gives the student the prior p(w_student) = q(w_teacher | alignment): the teacher's
mean-field posterior after the teacher has been reduced to the student's structure by two
operations,

* **phi (width)**: remove unit j of layer t: delete row j of U_t (and bias entry j, and entry
  j of the normalization layers after it) and the column(s) of U_{t+1} that read unit j
  (every position of channel j when a ``Flatten`` lies between a convolution and a Linear
  layer). Under a mean-field posterior, conditioning on the removed weights and
  marginalizing them reduces to restricting (mu, sigma) to the kept weights.
* **psi (depth)**: remove layer t. With an idempotent activation (ReLU), a square U_t = I gives
  ReLU(I ReLU(h)) = ReLU(h), so layer t can be dropped (the paper's rule). ReLU is also
  positively homogeneous, so any U_t = P D (a permutation times a positive diagonal) is exactly
  removable: ReLU(P D h) = P D h for h >= 0, and U_{t+1} P D replaces the pair. The
  scaled permutation P D closest to U_t is found by ``scipy.optimize.linear_sum_assignment``;
  the relative residual ||U_t - P D|| / ||U_t|| says how exact the removal is. A non-square
  layer is first shrunk by phi.

Units are removed iteratively (score, remove the worst ``step`` fraction of the excess,
re-score) by a criterion: ``"random"`` (the paper's experiments), ``"snr"`` (mean |mu|/sigma of
the unit's incoming and outgoing weights), ``"data"`` (the energy of the unit's centred
contribution to the next layer's pre-activations on probe data, i.e. the increase in that
layer's reconstruction error when the unit is removed and its mean folded into the bias) or a
callable.

**Compensation** (with probe data): after each removal the next layer's means are re-fitted
by ridge least squares so that the pruned teacher reproduces the full teacher's pre-activations
of that layer on the probe inputs (the removed units' mean contribution lands in the bias).
The relative reconstruction error before and after the re-fit is reported per layer.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ..bnn.network import BNN
from ..bnn.posterior import MeanFieldPosterior, ParamInfo, atomic_save
from ..errors import DataError, ShapeMismatchError, UnsupportedLayerError
from .chain import Chain, Layer, parse_chain

__all__ = ["align", "AlignmentPlan", "UnitContext", "CRITERIA"]

PLAN_FORMAT = "bayesdistill.AlignmentPlan"
PLAN_VERSION = 1


# ----------------------------------------------------------------------------- criteria
@dataclass
class UnitContext:
    """What a unit-scoring criterion sees for the units of one layer (current positions).

    Attributes:
        layer: teacher module path of the layer being pruned.
        round: pruning round (0-based) within this layer.
        w_loc, w_scale: incoming weights, ``[units, ...]`` (rows of U_t, kernels for convs).
        b_loc, b_scale: bias ``[units]`` or ``None``.
        out_loc, out_scale: outgoing weights of the next layer grouped per unit,
            ``[next_out, units, g]`` (g = positions per channel after a flatten, kernel size of a
            next convolution, 1 for Linear -> Linear).
        activations: the units' activations on the probe data ``[N, units, ...]`` (after the
            layer's activation/normalization), or ``None`` without probe data.
        next_layer: the next layer's module (for criteria that need its geometry).
        generator: a seeded ``torch.Generator`` for random criteria.
        compensated: whether the next layer is re-fitted after the removal (``compensation``
            with probe data): a removed unit's mean output is then absorbed by the next bias,
            otherwise its whole contribution is lost.
    """

    layer: str
    round: int
    w_loc: Tensor
    w_scale: Tensor
    b_loc: Optional[Tensor]
    b_scale: Optional[Tensor]
    out_loc: Tensor
    out_scale: Tensor
    activations: Optional[Tensor]
    next_layer: nn.Module
    generator: torch.Generator
    compensated: bool = True

    @property
    def units(self) -> int:
        return self.w_loc.shape[0]


def _score_random(ctx: UnitContext) -> Tensor:
    return torch.rand(ctx.units, generator=ctx.generator).to(ctx.w_loc.device)


def _score_snr(ctx: UnitContext) -> Tensor:
    parts = [(ctx.w_loc.abs() / ctx.w_scale).reshape(ctx.units, -1)]
    if ctx.b_loc is not None:
        parts.append((ctx.b_loc.abs() / ctx.b_scale).reshape(ctx.units, 1))
    out = (ctx.out_loc.abs() / ctx.out_scale).transpose(0, 1).reshape(ctx.units, -1)
    parts.append(out)
    return torch.cat(parts, dim=1).mean(dim=1)


def _score_data(ctx: UnitContext) -> Tensor:
    if ctx.activations is None:
        raise DataError('criterion "data" needs probe data: pass data= to bd.align (inputs of the teacher)')
    a = ctx.activations
    if ctx.compensated:  # the re-fit absorbs a removed unit's mean into the next bias
        a = a - a.mean(dim=0, keepdim=True)
    nxt = ctx.next_layer
    energies = []
    for start in range(0, ctx.units, 16):
        sl = slice(start, start + 16)
        if isinstance(nxt, nn.Linear):
            # contribution of unit j: A_j [N, g] @ W[:, j, :]^T
            contrib = torch.einsum("njg,ojg->njo", a[:, sl].reshape(a.shape[0], -1, ctx.out_loc.shape[2]), ctx.out_loc[:, sl])
            energies.append(contrib.square().sum(-1).mean(0))
        else:
            w = ctx.out_loc[:, sl]  # [O, c, k...] flattened to [O, c, g]
            c = w.shape[1]
            kernel = nxt.kernel_size
            wk = w.reshape(w.shape[0], c, *kernel).transpose(0, 1).reshape(c * w.shape[0], 1, *kernel)
            conv = F.conv1d if isinstance(nxt, nn.Conv1d) else F.conv2d
            out = conv(a[:, sl], wk, None, nxt.stride, nxt.padding, nxt.dilation, groups=c)
            out = out.reshape(a.shape[0], c, w.shape[0], -1)
            energies.append(out.square().sum((2, 3)).mean(0))
    return torch.cat(energies)


CRITERIA: dict[str, Callable[[UnitContext], Tensor]] = {
    "random": _score_random,
    "snr": _score_snr,
    "data": _score_data,
}


# ----------------------------------------------------------------------------- working state
def _eval_module(m: nn.Module, h: Tensor) -> Tensor:
    """A parameter-free module with eval-mode semantics (dropout is the identity), whatever its mode."""
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return h
    return m(h)


class _Work:
    """The teacher's posterior being edited in place, layer by layer (means, scales, norms)."""

    def __init__(self, chain: Chain, q: MeanFieldPosterior):
        self.chain = chain
        self.layers = chain.layers
        self.Wm: list[Tensor] = []
        self.Ws: list[Tensor] = []
        self.bm: list[Optional[Tensor]] = []
        self.bs: list[Optional[Tensor]] = []
        self.norms: list[dict[str, dict[str, Any]]] = []
        for layer in self.layers:
            w = f"{layer.path}.weight"
            if w not in q.locs:
                raise ShapeMismatchError(
                    f"the teacher posterior has no entry {w!r} for layer {layer.path!r}; "
                    f"it has {list(q.locs)}"
                )
            self.Wm.append(q.locs[w].detach().clone())
            self.Ws.append(q.scales[w].detach().clone())
            b = f"{layer.path}.bias"
            self.bm.append(q.locs[b].detach().clone() if b in q.locs else None)
            self.bs.append(q.scales[b].detach().clone() if b in q.locs else None)
            norms = {}
            for npath, m in layer.norms():
                entry: dict[str, Any] = {"module": m}
                for attr in ("weight", "bias"):
                    key = f"{npath}.{attr}"
                    if key in q.locs:
                        entry[attr] = (q.locs[key].detach().clone(), q.scales[key].detach().clone())
                    elif f"net.{key}" in q.point_estimates:
                        entry[attr] = (q.point_estimates[f"net.{key}"].detach().clone(), None)
                for stat in ("running_mean", "running_var", "num_batches_tracked"):
                    key = f"net.{npath}.{stat}"
                    if key in q.point_estimates:
                        entry[stat] = q.point_estimates[key].detach().clone()
                norms[npath] = entry
            self.norms.append(norms)
        self.kept = [list(range(layer.out_units)) for layer in self.layers]
        self.removed = [False] * len(self.layers)
        # columns of the next layer that one unit of layer t feeds (flatten: positions per channel)
        self.group = []
        for t, layer in enumerate(self.layers):
            if t + 1 == len(self.layers):
                self.group.append(1)
                continue
            nxt = self.layers[t + 1]
            if nxt.kind == "linear" and layer.kind == "conv":
                if nxt.in_units % layer.out_units:
                    raise UnsupportedLayerError(
                        f"layer {nxt.path!r} reads {nxt.in_units} features after the {layer.out_units} "
                        f"channels of {layer.path!r}; alignment needs a whole number of positions per channel"
                    )
                self.group.append(nxt.in_units // layer.out_units)
            else:
                if nxt.in_units != layer.out_units:
                    raise UnsupportedLayerError(
                        f"layer {nxt.path!r} reads {nxt.in_units} inputs but {layer.path!r} gives "
                        f"{layer.out_units}; alignment cannot relate them"
                    )
                self.group.append(1)

    # -- geometry ---------------------------------------------------------------------------
    def next_index(self, t: int) -> Optional[int]:
        for u in range(t + 1, len(self.layers)):
            if not self.removed[u]:
                return u
        return None

    def out_grouped(self, t: int, which: str = "m") -> Tensor:
        """Next layer's weights viewed ``[next_out, units_t, g]``."""
        u = t + 1
        w = self.Wm[u] if which == "m" else self.Ws[u]
        return w.reshape(w.shape[0], len(self.kept[t]), -1)

    # -- forward ----------------------------------------------------------------------------
    def _layer(self, t: int, h: Tensor) -> Tensor:
        m = self.layers[t].module
        if isinstance(m, nn.Linear):
            return F.linear(h, self.Wm[t], self.bm[t])
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        return conv(h, self.Wm[t], self.bm[t], m.stride, m.padding, m.dilation)

    def _after(self, t: int, h: Tensor) -> Tensor:
        for path, m in self.layers[t].after:
            if path in self.norms[t]:
                e = self.norms[t][path]
                w = e.get("weight", (None,))[0]
                b = e.get("bias", (None,))[0]
                h = F.batch_norm(h, e.get("running_mean"), e.get("running_var"), w, b, False, 0.0, m.eps)
            else:
                h = _eval_module(m, h)
        return h

    @torch.no_grad()
    def run(self, x: Tensor) -> tuple[dict[int, Tensor], dict[int, Tensor], dict[int, Tensor], Tensor]:
        """Inputs, pre-activations and post-activations of every live layer; and the output."""
        h = x
        for _, m in self.chain.prefix:
            h = _eval_module(m, h)
        ins, pres, posts = {}, {}, {}
        for t in range(len(self.layers)):
            if self.removed[t]:
                continue
            ins[t] = h
            h = self._layer(t, h)
            pres[t] = h
            h = self._after(t, h)
            posts[t] = h
        return ins, pres, posts, h

    # -- edits (each is also a replayable op) -----------------------------------------------
    def restrict(self, t: int, keep: list[int]) -> None:
        """phi: keep units ``keep`` (current positions) of layer t."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.Wm[t].device)
        self.Wm[t], self.Ws[t] = self.Wm[t][idx], self.Ws[t][idx]
        if self.bm[t] is not None:
            self.bm[t], self.bs[t] = self.bm[t][idx], self.bs[t][idx]
        for entry in self.norms[t].values():
            for key in ("weight", "bias"):
                if key in entry:
                    m, s = entry[key]
                    entry[key] = (m[idx], None if s is None else s[idx])
            for key in ("running_mean", "running_var"):
                if key in entry:
                    entry[key] = entry[key][idx]
        if t + 1 < len(self.layers):
            u = t + 1
            for attr in ("Wm", "Ws"):
                w = getattr(self, attr)[u]
                units = len(self.kept[t])
                grouped = w.reshape(w.shape[0], units, -1)[:, idx]
                if self.layers[u].kind == "linear":
                    getattr(self, attr)[u] = grouped.reshape(w.shape[0], -1)
                else:
                    getattr(self, attr)[u] = grouped.reshape(w.shape[0], len(keep), *w.shape[2:])
        self.kept[t] = [self.kept[t][i] for i in keep]

    def fold(self, t: int, mix: Tensor) -> None:
        """psi: remove layer t, replacing it by the channel/feature map ``mix`` [out_t, in_t]."""
        u = t + 1
        wm, ws = self.Wm[u], self.Ws[u]
        out, units = wm.shape[0], mix.shape[0]
        gm = wm.reshape(out, units, -1)
        gs = ws.reshape(out, units, -1)
        new_m = torch.einsum("ocg,ci->oig", gm, mix)
        # an input no positive entry maps gets mean 0; its scale must not collapse to 0 (a prior
        # scale of 1e-15 would make the KL explode and SNR scores meaningless): floor it at the
        # smallest scale the next layer had
        new_s = torch.einsum("ocg,ci->oig", gs.square(), mix.square()).sqrt()
        unmapped = (mix == 0).all(0)  # [in_t]
        if unmapped.any():
            new_s[:, unmapped] = gs.min()
        if self.bm[t] is not None and self.bm[u] is not None:
            self.bm[u] = self.bm[u] + torch.einsum("ocg,c->o", gm, self.bm[t])
        shape = (out, -1) if self.layers[u].kind == "linear" else (out, mix.shape[1], *wm.shape[2:])
        self.Wm[u], self.Ws[u] = new_m.reshape(shape), new_s.reshape(shape)
        self.removed[t] = True

    def set_means(self, t: int, w: Tensor, b: Optional[Tensor]) -> None:
        self.Wm[t] = w.clone()
        if b is not None and self.bm[t] is not None:
            self.bm[t] = b.clone()

    # -- compensation -----------------------------------------------------------------------
    def refit(self, u: int, inputs: Tensor, target: Tensor, ridge: float = 1e-4) -> tuple[float, float]:
        """Ridge least squares for layer u's means: ``layer_u(inputs) ~= target``.

        Returns the relative reconstruction error (||target - pred||^2 / ||target - mean||^2)
        before and after the re-fit.
        """
        m = self.layers[u].module
        with torch.no_grad():
            before = _rel_err(self._layer(u, inputs), target)
            if isinstance(m, nn.Linear):
                X = inputs.reshape(inputs.shape[0], -1)
                Y = target
            else:
                X, Y = _conv_design(m, inputs, target)
            has_b = self.bm[u] is not None
            if has_b:
                X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], 1)
            X64, Y64 = X.double(), Y.double()
            gram = X64.T @ X64
            lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
            sol = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), X64.T @ Y64)
            sol = sol.to(self.Wm[u].dtype)
            if has_b:
                w, b = sol[:-1].T, sol[-1]
            else:
                w, b = sol.T, None
            self.set_means(u, w.reshape(self.Wm[u].shape), b)
            after = _rel_err(self._layer(u, inputs), target)
        return before, after


def _rel_err(pred: Tensor, target: Tensor) -> float:
    num = (pred - target).square().sum()
    den = (target - target.mean(0, keepdim=True)).square().sum().clamp_min(1e-12)
    return float(num / den)


def _conv_design(m: nn.Module, inputs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Patches ``[N * positions, C_in * k]`` and targets ``[N * positions, C_out]`` of a conv."""
    if isinstance(m, nn.Conv1d):
        patches = F.unfold(inputs.unsqueeze(2), (1, m.kernel_size[0]), dilation=(1, m.dilation[0]),
                           padding=(0, m.padding[0]), stride=(1, m.stride[0]))
    else:
        patches = F.unfold(inputs, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    X = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    Y = target.reshape(target.shape[0], target.shape[1], -1).transpose(1, 2).reshape(-1, target.shape[1])
    return X, Y


def _scaled_permutation(w: Tensor) -> tuple[Tensor, float]:
    """Closest P D (permutation x positive diagonal) to a square ``w`` [n, n] and the residual.

    Each row i gets one column pi(i) (distinct), chosen to maximize the share of the row's
    energy on a positive entry; D_ii = max(w[i, pi(i)], 0).
    """
    n = w.shape[0]
    pos = w.clamp_min(0)
    share = pos.square() / w.square().sum(1, keepdim=True).clamp_min(1e-30)
    rows, cols = linear_sum_assignment((-share).detach().cpu().double().numpy())
    mix = torch.zeros_like(w)
    mix[torch.as_tensor(rows), torch.as_tensor(cols)] = pos[torch.as_tensor(rows), torch.as_tensor(cols)]
    residual = float((w - mix).norm() / w.norm().clamp_min(1e-30))
    del n
    return mix, residual


def _center_tap(w: Tensor) -> Tensor:
    """A conv kernel's center tap ``[out, in]`` (the part that acts as a channel map)."""
    if w.dim() == 2:
        return w
    idx = tuple(k // 2 for k in w.shape[2:])
    return w[(slice(None), slice(None), *idx)]


# ----------------------------------------------------------------------------- the plan
@dataclass
class AlignmentPlan:
    """How a teacher posterior maps onto a student's shapes (plain, inspectable data).

    Attributes:
        layers: one dict per teacher layer: ``teacher`` (module path), ``student`` (module path
            or ``None`` if the layer was removed), ``kind``, ``teacher_units``, ``student_units``,
            ``kept`` (original indices of the kept units), ``removed`` (bool), ``residual``
            (removal residual ||U - P D|| / ||U||, or ``None``), ``reconstruction`` (list of
            ``{"step", "before", "after"}`` relative errors of the re-fits of this layer), and
            ``trace`` (list of ``[round, unit, score]`` for every removed unit, in order), and
            ``error`` (with probe data: relative reconstruction error of the layer's
            pre-activations against the full teacher's, ``{"restricted": ..., "compensated":
            ...}``: by the unit selections alone, and with the compensating re-fits).
        criterion, removal, compensation, step: the settings that produced the plan.
        param_map: teacher parameter name -> student parameter name.
        ops: the edits in order (replayed by :meth:`apply` on another posterior).
        aligned: the aligned posterior (student names) of the posterior the plan was built from.
        output_error: relative error of the pruned teacher's outputs vs the full teacher's on the
            probe data (``None`` without probe data).
    """

    layers: list[dict[str, Any]]
    criterion: str
    removal: str
    compensation: bool
    step: float
    teacher_shapes: dict[str, list[int]]
    student_shapes: dict[str, list[int]]
    param_map: dict[str, str]
    ops: list[tuple[Any, ...]] = field(default_factory=list)
    aligned: Optional[MeanFieldPosterior] = None
    source: Optional[MeanFieldPosterior] = None
    output_error: Optional[float] = None

    # -- inspection ---------------------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        return not self.ops

    def summary(self) -> str:
        """A table: per teacher layer, width teacher -> student, removal, reconstruction error."""
        lines = [f"AlignmentPlan (criterion={self.criterion}, removal={self.removal}, compensation={self.compensation})"]
        lines.append(f"{'teacher':<14}{'student':<14}{'kind':<8}{'units':>14}  {'removed':<8}{'residual':>10}{'recon':>16}")
        for L in self.layers:
            err = L.get("error")
            recon = f"{err['restricted']:.3f}->{err['compensated']:.3f}" if err else "-"
            res = f"{L['residual']:.3f}" if L["residual"] is not None else "-"
            units = f"{L['teacher_units']} -> {L['student_units'] if not L['removed'] else 0}"
            lines.append(
                f"{L['teacher']:<14}{str(L['student']):<14}{L['kind']:<8}{units:>14}  "
                f"{'yes' if L['removed'] else 'no':<8}{res:>10}{recon:>16}"
            )
        if self.output_error is not None:
            lines.append(f"relative output error of the aligned teacher on the probe data: {self.output_error:.4f}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    # -- applying --------------------------------------------------------------------------
    def apply(self, q: MeanFieldPosterior) -> MeanFieldPosterior:
        """The posterior ``q`` (teacher shapes) mapped to the student's parameter names and shapes.

        For the posterior the plan was built from, this returns the aligned posterior exactly
        (including compensated means). For another posterior with the teacher's shapes, the
        recorded unit selections and layer foldings are replayed; compensated means were fitted
        to the original teacher's function, so a plan with compensation refuses other
        posteriors (re-run :func:`align` on them).
        """
        missing = [k for k in self.teacher_shapes if k not in q.locs]
        if missing:
            raise ShapeMismatchError(f"this plan needs teacher parameters {missing}, which the posterior lacks")
        for k, shape in self.teacher_shapes.items():
            if tuple(q.locs[k].shape) != tuple(shape):
                raise ShapeMismatchError(
                    f"plan applied to the wrong posterior: parameter {k!r} has shape "
                    f"{tuple(q.locs[k].shape)}, the plan was built for {tuple(shape)}"
                )
        if self.aligned is not None and self.source is not None and _same_posterior(q, self.source):
            return self.aligned.to(q.device).clone()
        if any(op[0] == "set" for op in self.ops):
            raise ValueError(
                "this plan re-fitted means on probe data (compensation) for another teacher posterior; "
                "run bd.align again for this posterior, or build the plan with compensation=False"
            )
        chain = _ChainSpec.from_plan(self)
        work = _Work(chain, q)
        for op in self.ops:
            _replay(work, op)
        return _export(work, self, q)

    # -- persistence -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Plain data (tensors only inside ``ops`` and ``aligned``): ``torch.save``-able."""
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "layers": self.layers,
            "criterion": self.criterion,
            "removal": self.removal,
            "compensation": self.compensation,
            "step": self.step,
            "teacher_shapes": self.teacher_shapes,
            "student_shapes": self.student_shapes,
            "param_map": self.param_map,
            "ops": [list(op) for op in self.ops],
            "aligned": self.aligned.state() if self.aligned is not None else None,
            "source": self.source.state() if self.source is not None else None,
            "output_error": self.output_error,
            "chain": getattr(self, "_chain_spec", None),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "AlignmentPlan":
        if not isinstance(state, dict) or state.get("format") != PLAN_FORMAT:
            raise ValueError("not an alignment plan (missing format tag)")
        if state.get("version") != PLAN_VERSION:
            raise ValueError(f"alignment plan format version {state.get('version')!r} is not supported")
        plan = cls(
            layers=state["layers"], criterion=state["criterion"], removal=state["removal"],
            compensation=state["compensation"], step=state["step"], teacher_shapes=state["teacher_shapes"],
            student_shapes=state["student_shapes"], param_map=state["param_map"],
            ops=[tuple(op) for op in state["ops"]],
            aligned=MeanFieldPosterior.from_state(state["aligned"]) if state["aligned"] is not None else None,
            source=MeanFieldPosterior.from_state(state["source"]) if state.get("source") is not None else None,
            output_error=state["output_error"],
        )
        plan._chain_spec = state.get("chain")
        return plan

    def save(self, path: Union[str, Path]) -> Path:
        """Write the plan atomically (``torch.save`` format)."""
        return atomic_save(self.state(), path)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "AlignmentPlan":
        return cls.from_state(torch.load(path, map_location="cpu", weights_only=True))

    def to_json(self, path: Union[str, Path, None] = None) -> str:
        """The inspectable part (layers, settings, shapes, mapping) as JSON; written to ``path`` if given."""
        data = {k: v for k, v in self.state().items() if k not in ("ops", "aligned", "chain", "source")}
        text = json.dumps(data, indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text


class _ChainSpec(Chain):
    """A chain rebuilt from a plan's stored layer geometry (for replaying on another posterior)."""

    @classmethod
    def from_plan(cls, plan: AlignmentPlan) -> Chain:
        spec = getattr(plan, "_chain_spec", None)
        if spec is None:
            raise ValueError("this plan does not carry its teacher's geometry; rebuild it with bd.align")
        layers = []
        for i, d in enumerate(spec):
            if d["kind"] == "linear":
                m: nn.Module = nn.Linear(d["in"], d["out"], bias=d["bias"], device="meta")
            else:
                conv = nn.Conv1d if d["kind"] == "conv1d" else nn.Conv2d
                m = conv(d["in"], d["out"], d["kernel"], stride=d["stride"], padding=d["padding"],
                         dilation=d["dilation"], bias=d["bias"], device="meta")
            after = []
            for npath, nf, eps in d["norms"]:
                norm = (nn.BatchNorm1d if d["kind"] != "conv2d" else nn.BatchNorm2d)(nf, eps=eps, device="meta")
                after.append((npath, norm))
            layers.append(Layer(i, d["path"], m, after))
        return Chain([], layers)


def _chain_spec(chain: Chain) -> list[dict[str, Any]]:
    out = []
    for L in chain.layers:
        m = L.module
        d: dict[str, Any] = {"path": L.path, "in": L.in_units, "out": L.out_units, "bias": L.has_bias,
                             "norms": [[p, n.num_features, n.eps] for p, n in L.norms()]}
        if isinstance(m, nn.Linear):
            d["kind"] = "linear"
        else:
            d.update(kind="conv1d" if isinstance(m, nn.Conv1d) else "conv2d", kernel=list(m.kernel_size),
                     stride=list(m.stride), padding=m.padding if isinstance(m.padding, str) else list(m.padding),
                     dilation=list(m.dilation))
        out.append(d)
    return out


def _replay(work: _Work, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "restrict":
        work.restrict(int(op[1]), [int(i) for i in op[2]])
    elif kind == "fold":
        work.fold(int(op[1]), op[2].to(work.Wm[int(op[1]) + 1]))
    else:  # pragma: no cover - guarded in apply
        raise ValueError(f"cannot replay op {kind!r}")


def _same_posterior(q: MeanFieldPosterior, source: MeanFieldPosterior, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Whether ``q`` is the posterior a plan was built from (up to save/load rounding).

    Element-wise closeness, not a hash: reloading a posterior into a BNN moves scales by ~1e-7
    (softplus round trip), while a permutation of units, which alignment is all about, moves
    them by far more.
    """
    if list(q.locs) != list(source.locs):
        return False
    for k in q.locs:
        a, b = q.locs[k], source.locs[k].to(q.locs[k].device)
        sa, sb = q.scales[k], source.scales[k].to(q.scales[k].device)
        if a.shape != b.shape or not torch.allclose(a, b, rtol=rtol, atol=atol) or not torch.allclose(sa, sb, rtol=rtol, atol=atol):
            return False
    return True


def _export(work: _Work, plan: AlignmentPlan, q: MeanFieldPosterior) -> MeanFieldPosterior:
    """The working state as a posterior over the student's parameter names."""
    locs, scales, info, points = {}, {}, {}, {}
    live = [t for t in range(len(work.layers)) if not work.removed[t]]
    for t in live:
        tpath = work.layers[t].path
        for attr, m, s in (("weight", work.Wm[t], work.Ws[t]), ("bias", work.bm[t], work.bs[t])):
            if m is None:
                continue
            tname = f"{tpath}.{attr}"
            sname = plan.param_map[tname]
            locs[sname], scales[sname] = m.detach().clone(), s.detach().clone()
            old = q.info.get(tname)
            spath = sname.rsplit(".", 1)[0]
            info[sname] = ParamInfo(spath, old.module_type if old else type(work.layers[t].module).__name__, attr)
        for npath, entry in work.norms[t].items():
            snpath = plan.param_map.get(npath, npath)
            for attr in ("weight", "bias"):
                if attr in entry:
                    m, s = entry[attr]
                    if s is not None:
                        locs[f"{snpath}.{attr}"], scales[f"{snpath}.{attr}"] = m.clone(), s.clone()
                    else:
                        points[f"net.{snpath}.{attr}"] = m.clone()
            for stat in ("running_mean", "running_var", "num_batches_tracked"):
                if stat in entry:
                    points[f"net.{snpath}.{stat}"] = entry[stat].clone()
    # the likelihood's point estimates (e.g. a learned noise scale) do not depend on the network
    for name, value in q.point_estimates.items():
        if name.startswith("likelihood."):
            points[name] = value.detach().clone()
    for name, shape in plan.student_shapes.items():
        if name in locs and tuple(locs[name].shape) != tuple(shape):
            raise ShapeMismatchError(
                f"aligned parameter {name!r} has shape {tuple(locs[name].shape)} but the student expects "
                f"{tuple(shape)}; the student's layer does not match the aligned teacher layer"
            )
    return MeanFieldPosterior(locs, scales, info, points, {"aligned_from": "teacher"})


# ----------------------------------------------------------------------------- align
def _probe_inputs(data: Any) -> Optional[Tensor]:
    if data is None:
        return None
    if torch.is_tensor(data):
        return data
    if isinstance(data, (tuple, list)) and data and torch.is_tensor(data[0]):
        return data[0]
    if isinstance(data, torch.utils.data.TensorDataset):
        return data.tensors[0]
    if isinstance(data, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
        loader = data if isinstance(data, torch.utils.data.DataLoader) else torch.utils.data.DataLoader(data, batch_size=512)
        xs = []
        for batch in loader:
            xs.append(batch if torch.is_tensor(batch) else batch[0])
        return torch.cat(xs)
    raise DataError(
        f"probe data must be a tensor of inputs, an (inputs, targets) tuple, a Dataset or a DataLoader; "
        f"got {type(data).__name__}"
    )


def _removable(chain: Chain, t: int) -> Optional[str]:
    """``None`` if layer t can be removed by psi, else the reason."""
    layers = chain.layers
    L = layers[t]
    if t == 0 or t == len(layers) - 1:
        return "the first and the last layer cannot be removed (input and output sizes must match)"
    acts = [m for _, m in L.after]
    if not acts or not all(isinstance(m, (nn.ReLU, nn.Dropout, nn.Identity)) for m in acts) or not any(
        isinstance(m, nn.ReLU) for m in acts
    ):
        return "it must be followed by a ReLU only (an idempotent, positively homogeneous activation)"
    prev_acts = [m for _, m in layers[t - 1].after]
    if not prev_acts or not isinstance(prev_acts[-1], (nn.ReLU, nn.Dropout, nn.Identity)) or not any(
        isinstance(m, nn.ReLU) for m in prev_acts
    ):
        return "its input must come from a ReLU (so that inputs are >= 0)"
    if any(isinstance(m, (nn.Flatten,) + tuple(getattr(nn, n) for n in ("MaxPool1d", "AvgPool1d", "MaxPool2d", "AvgPool2d"))) for m in prev_acts):
        return "a flatten or pooling precedes it"
    if L.kind != layers[t - 1].kind:
        return "it is of another kind than the layer before it"
    m = L.module
    if L.kind == "conv":
        same = all(s == 1 for s in m.stride) and all(d == 1 for d in m.dilation) and (
            m.padding == "same" or all(p == (k - 1) // 2 and k % 2 == 1 for p, k in zip(m.padding, m.kernel_size))
        )
        if not same:
            return "a convolution is removable only with stride 1 and 'same' padding (odd kernel)"
    return None


def _layer_matches(tl: Layer, sl: Layer) -> Optional[str]:
    if tl.kind != sl.kind or type(tl.module) is not type(sl.module):
        return f"teacher layer {tl.path!r} is {tl.describe()} but student layer {sl.path!r} is {sl.describe()}"
    if tl.kind == "conv":
        for attr in ("kernel_size", "stride", "padding", "dilation"):
            if getattr(tl.module, attr) != getattr(sl.module, attr):
                return (
                    f"teacher layer {tl.path!r} and student layer {sl.path!r} differ in {attr}: "
                    f"{getattr(tl.module, attr)} vs {getattr(sl.module, attr)}"
                )
    if sl.out_units > tl.out_units:
        return (
            f"student layer {sl.path!r} has {sl.out_units} units but its teacher layer {tl.path!r} has "
            f"{tl.out_units}: the student must not be wider than the teacher"
        )
    if tl.has_bias != sl.has_bias:
        return f"teacher layer {tl.path!r} and student layer {sl.path!r} differ in having a bias"
    if len(tl.norms()) != len(sl.norms()):
        return f"teacher layer {tl.path!r} and student layer {sl.path!r} have different normalization layers"
    return None


def _removal_residual(w: Tensor) -> float:
    """How far the best ``in`` rows of ``w`` [out, in] are from a scaled permutation."""
    m = _center_tap(w)
    pos = m.clamp_min(0)
    share = pos.square() / m.square().sum(1, keepdim=True).clamp_min(1e-30)
    rows, cols = linear_sum_assignment((-share).double().cpu().numpy())
    rows_t = torch.as_tensor(rows)
    sub = m[rows_t]
    mix = torch.zeros_like(sub)
    mix[torch.arange(len(rows)), torch.as_tensor(cols)] = pos[rows_t, torch.as_tensor(cols)]
    return float((sub - mix).norm() / sub.norm().clamp_min(1e-30))


def _choose_removals(teacher: Chain, student: Chain, q: MeanFieldPosterior, remove: Optional[Sequence[str]]) -> list[int]:
    n, m = len(teacher), len(student)
    if m > n:
        raise ShapeMismatchError(f"the student has {m} layers but the teacher only {n}: a student cannot be deeper")
    paths = [L.path for L in teacher.layers]
    if remove is not None:
        unknown = [p for p in remove if p not in paths]
        if unknown:
            raise KeyError(f"remove={unknown}: no such teacher layer; teacher layers: {paths}")
        cands = [tuple(sorted(paths.index(p) for p in remove))]
        if len(cands[0]) != n - m:
            raise ShapeMismatchError(f"remove= names {len(cands[0])} layers but the teacher has {n} and the student {m}")
    else:
        cands = list(itertools.combinations(range(n), n - m))
    reasons = []
    best, best_score = None, math.inf
    for combo in cands:
        why = None
        for t in combo:
            r = _removable(teacher, t)
            if r is not None:
                why = f"teacher layer {teacher.layers[t].path!r} cannot be removed: {r}"
                break
        kept = [t for t in range(n) if t not in combo]
        if why is None:
            for tl_i, sl in zip(kept, student.layers):
                why = _layer_matches(teacher.layers[tl_i], sl)
                if why:
                    break
        if why is None and teacher.layers[kept[-1]].out_units != student.layers[-1].out_units:
            why = "the output sizes differ"
        if why is None:
            for t in combo:  # the removed layer must shrink to a square map
                prev_kept = max(i for i in kept if i < t)
                width_in = student.layers[kept.index(prev_kept)].out_units
                if teacher.layers[t].out_units < width_in:
                    why = f"teacher layer {teacher.layers[t].path!r} has fewer units ({teacher.layers[t].out_units}) than its input ({width_in})"
                    break
        if why is not None:
            reasons.append(why)
            continue
        score = sum(_removal_residual(q.locs[f"{teacher.layers[t].path}.weight"]) for t in combo)
        if score < best_score:
            best, best_score = list(combo), score
    if best is None:
        raise ShapeMismatchError(
            "the student cannot be reached from the teacher by removing units and layers: "
            + "; ".join(dict.fromkeys(reasons))
        )
    return best


def align(
    teacher: BNN,
    student: Union[nn.Module, BNN],
    *,
    criterion: Union[str, Callable[[UnitContext], Tensor]] = "snr",
    data: Any = None,
    compensation: Optional[bool] = None,
    removal: str = "auto",
    remove: Optional[Sequence[str]] = None,
    step: float = 0.25,
    seed: int = 0,
    max_probe: int = 2048,
) -> AlignmentPlan:
    """Align a trained teacher to a student architecture (Grabovoy & Strijov, 2021).

    Args:
        teacher: the trained :class:`~bayesdistill.BNN` (a chain: ``nn.Sequential`` of
            Linear/Conv1d/Conv2d, BatchNorm, activations, Flatten, pooling).
        student: the student network (``nn.Module`` or :class:`BNN`) with the same layer
            kinds in the same order, no wider and no deeper than the teacher, same input and
            output sizes.
        criterion: ``"snr"`` (default), ``"random"``, ``"data"`` (needs ``data``), or a
            callable ``UnitContext -> scores [units]`` (higher = keep).
        data: probe inputs: a tensor, an ``(inputs, targets)`` tuple, a ``Dataset`` or
            ``DataLoader``. Needed by ``criterion="data"``, compensation and ``removal="refit"``.
        compensation: re-fit the next layer's means after each removal (default: ``True``
            when ``data`` is given).
        removal: how a removed layer is folded away: ``"identity"`` (the paper: condition on
            U_t = I), ``"permutation"`` (closest scaled permutation P D), ``"refit"`` (least
            squares of the next layer on probe data); ``"auto"`` = ``"refit"`` with data, else
            ``"permutation"``.
        remove: teacher layer paths to remove (default: chosen by the smallest removal residual).
        step: fraction of a layer's excess units removed per round before re-scoring
            (1.0 = one shot).
        seed: seeds the ``"random"`` criterion.
        max_probe: at most this many probe inputs are used.

    Returns:
        An :class:`AlignmentPlan`; ``plan.apply(teacher.posterior())`` is the aligned posterior
        (what :class:`~bayesdistill.priors.TeacherPosterior` ``(q, plan=plan)`` uses).

    Raises:
        ShapeMismatchError: the student is wider or deeper, or input/output sizes differ (names
            the layer).
        UnsupportedLayerError: a layer alignment cannot edit (names the module).
        DataError: a criterion or setting needs probe data that were not given, or the probe
            data do not fit the teacher.
    """
    if not isinstance(teacher, BNN):
        raise TypeError(f"align expects the teacher as a bd.BNN, got {type(teacher).__name__}")
    if isinstance(criterion, str) and criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)} or a callable, got {criterion!r}")
    if removal not in ("auto", "identity", "permutation", "refit"):
        raise ValueError(f"removal must be 'auto', 'identity', 'permutation' or 'refit', got {removal!r}")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    student_net = student.net if isinstance(student, BNN) else student
    x = _probe_inputs(data)
    device = teacher.loc.device
    if x is not None:
        x = x[:max_probe].to(device)
        try:
            teacher.check_data(x)
        except DataError as err:
            raise DataError(f"probe data do not fit the teacher: {err}") from err
    if compensation is None:
        compensation = x is not None
    if removal == "auto":
        removal = "refit" if x is not None else "permutation"
    needs_data = [why for why, need in (
        ('criterion="data"', criterion == "data"),
        ("compensation=True", compensation),
        ('removal="refit"', removal == "refit"),
    ) if need]
    if needs_data and x is None:
        raise DataError(f"{', '.join(needs_data)} needs probe data: pass data= (teacher inputs) to bd.align")

    q = teacher.posterior()
    tchain = parse_chain(teacher.net, x, "teacher", run=teacher.forward if x is not None else None)
    schain = parse_chain(student_net, None, "student")
    t_first, s_first = tchain.layers[0], schain.layers[0]
    if t_first.in_units != s_first.in_units:
        raise ShapeMismatchError(
            f"input sizes differ: teacher layer {t_first.path!r} takes {t_first.in_units}, student layer "
            f"{s_first.path!r} takes {s_first.in_units}"
        )
    if tchain.layers[-1].out_units != schain.layers[-1].out_units:
        raise ShapeMismatchError(
            f"output sizes differ: teacher layer {tchain.layers[-1].path!r} gives {tchain.layers[-1].out_units}, "
            f"student layer {schain.layers[-1].path!r} gives {schain.layers[-1].out_units}"
        )
    removed = _choose_removals(tchain, schain, q, remove)
    kept_layers = [t for t in range(len(tchain)) if t not in removed]
    student_of = dict(zip(kept_layers, schain.layers))

    param_map: dict[str, str] = {}
    for t, sl in student_of.items():
        tl = tchain.layers[t]
        for attr in ("weight", "bias"):
            param_map[f"{tl.path}.{attr}"] = f"{sl.path}.{attr}"
        for (tn, _), (sn, _) in zip(tl.norms(), sl.norms()):
            param_map[tn] = sn
    student_shapes: dict[str, list[int]] = {}
    for sl in schain.layers if not isinstance(student, BNN) else []:
        m = sl.module
        w = m.weight if m.weight is not None else m._buffers.get("weight")
        student_shapes[f"{sl.path}.weight"] = list(w.shape) if w is not None else []
        if sl.has_bias:
            student_shapes[f"{sl.path}.bias"] = [sl.out_units]

    if isinstance(student, BNN):
        student_shapes = {k: list(v) for k, v in student.shapes.items()}
    work = _Work(tchain, q)
    score_fn = CRITERIA[criterion] if isinstance(criterion, str) else criterion
    gen = torch.Generator().manual_seed(seed)
    ops: list[tuple[Any, ...]] = []
    records: list[dict[str, Any]] = []
    original = work.run(x) if x is not None else None
    orig_pres = original[1] if original is not None else None

    for t, tl in enumerate(tchain.layers):
        rec: dict[str, Any] = {
            "teacher": tl.path, "student": student_of[t].path if t in student_of else None, "kind": tl.kind,
            "teacher_units": tl.out_units, "student_units": student_of[t].out_units if t in student_of else None,
            "removed": t in removed, "residual": None, "reconstruction": [], "trace": [], "kept": None,
        }
        records.append(rec)
        if t == len(tchain) - 1:
            rec["kept"] = list(work.kept[t])
            continue
        if t in removed:
            target = work.Wm[t].shape[1]  # square: as many units as inputs
        else:
            target = student_of[t].out_units
        rnd = 0
        while len(work.kept[t]) > target:
            units = len(work.kept[t])
            acts = None
            if x is not None:
                _, _, posts, _ = work.run(x)
                a = posts[t]
                # [N, units, g] for vectors (g = positions per channel after a flatten), maps as they are
                acts = a.reshape(a.shape[0], units, -1) if a.dim() == 2 else a
            ctx = UnitContext(
                tl.path, rnd, work.Wm[t], work.Ws[t], work.bm[t], work.bs[t],
                work.out_grouped(t, "m"), work.out_grouped(t, "s"), acts, tchain.layers[t + 1].module, gen,
                compensated=bool(compensation and x is not None),
            )
            scores = torch.as_tensor(score_fn(ctx)).reshape(-1).to(torch.float64).cpu()
            if scores.numel() != units:
                raise ValueError(f"criterion returned {scores.numel()} scores for {units} units of layer {tl.path!r}")
            n_remove = max(1, math.ceil(step * (units - target)))
            order = torch.argsort(scores, stable=True)
            drop = set(order[:n_remove].tolist())
            for pos in order[:n_remove].tolist():
                rec["trace"].append([rnd, work.kept[t][pos], float(scores[pos])])
            keep = [i for i in range(units) if i not in drop]
            work.restrict(t, keep)
            ops.append(("restrict", t, keep))
            if compensation and x is not None:
                ins, _, _, _ = work.run(x)
                before, after = work.refit(t + 1, ins[t + 1], orig_pres[t + 1])
                records_next = rec.setdefault("_next_recon", [])
                records_next.append({"step": rnd, "before": before, "after": after})
                ops.append(("set", t + 1))
            rnd += 1
        rec["kept"] = list(work.kept[t])
        if t in removed:
            w = work.Wm[t]
            tap = _center_tap(w)
            if removal == "identity":
                mix = torch.eye(tap.shape[0], dtype=w.dtype, device=w.device)
                residual = float((w - _embed_tap(mix, w)).norm() / w.norm().clamp_min(1e-30))
            else:
                mix, _ = _scaled_permutation(tap)
                residual = float((w - _embed_tap(mix, w)).norm() / w.norm().clamp_min(1e-30))
            rec["residual"] = residual
            ins_t = work.run(x)[0][t] if x is not None else None
            work.fold(t, mix)
            ops.append(("fold", t, mix.detach().cpu()))
            if removal == "refit" or (compensation and x is not None):
                before, after = work.refit(t + 1, ins_t, orig_pres[t + 1])
                rec.setdefault("_next_recon", []).append({"step": "removal", "before": before, "after": after})
                ops.append(("set", t + 1))
    # attach each re-fit record to the layer whose means were re-fitted
    for t, rec in enumerate(records):
        for r in rec.pop("_next_recon", []):
            records[t + 1]["reconstruction"].append(r)

    output_error = None
    if x is not None:
        # per layer: how well the aligned teacher reproduces the full teacher's pre-activations,
        # with the recorded selections/foldings alone and with the compensating re-fits
        plain = _Work(tchain, q)
        for op in ops:
            if op[0] != "set":
                _replay(plain, op)
        _, plain_pres, _, plain_out = plain.run(x)
        _, comp_pres, _, comp_out = work.run(x)
        for t, rec in enumerate(records):
            if t in comp_pres:  # compare the kept units' pre-activations with the full teacher's
                ref = orig_pres[t].index_select(1, torch.tensor(work.kept[t], device=orig_pres[t].device))
                rec["error"] = {"restricted": _rel_err(plain_pres[t], ref), "compensated": _rel_err(comp_pres[t], ref)}
            else:
                rec["error"] = None
        output_error = _rel_err(comp_out, original[3])

    plan = AlignmentPlan(
        layers=records, criterion=criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "callable"),
        removal=removal, compensation=bool(compensation), step=step,
        teacher_shapes={k: list(v.shape) for k, v in q.locs.items()}, student_shapes=student_shapes,
        param_map=param_map, ops=ops, output_error=output_error,
    )
    plan._chain_spec = _chain_spec(tchain)
    plan.aligned = _export(work, plan, q)
    plan.source = MeanFieldPosterior({k: v.clone() for k, v in q.locs.items()}, {k: v.clone() for k, v in q.scales.items()})
    return plan


def _embed_tap(mix: Tensor, like: Tensor) -> Tensor:
    """``mix`` [out, in] as a weight shaped like ``like`` (center tap for convolutions)."""
    if like.dim() == 2:
        return mix
    out = torch.zeros_like(like)
    idx = tuple(k // 2 for k in like.shape[2:])
    out[(slice(None), slice(None), *idx)] = mix
    return out
