r"""The posterior editor: a teacher's mean-field posterior edited layer by layer.

:class:`PosteriorEditor` holds the means and scales of every layer of a chain (and the entries of
its normalization layers) and applies the two operations of alignment:

* **phi** (:meth:`~PosteriorEditor.restrict`): keep some units of layer t: rows of U_t (and bias
  and normalization entries) and the columns of U_{t+1} that read them (every position of a
  channel when a ``Flatten`` lies between a convolution and a Linear layer). Under a mean-field
  posterior, conditioning on the removed weights and marginalizing them reduces to restricting
  (mu, sigma) to the kept weights.
* **psi** (:meth:`~PosteriorEditor.fold`): remove layer t, replacing its (square) map by a
  channel map M: U_{t+1} M replaces the pair (means; scales by Var(sum_c W_oc M_ci)).

and the compensation of a removal (:meth:`~PosteriorEditor.refit`): ridge least squares of the
next layer's means on probe inputs. :meth:`~PosteriorEditor.run` evaluates the edited teacher at
its means (eval-mode semantics), :meth:`~PosteriorEditor.export` returns the result as a
:class:`MeanFieldPosterior` over the student's parameter names.

Internal to alignment (public so that removal rules and criteria can be written against it).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...bnn.posterior import MeanFieldPosterior, ParamInfo
from ...errors import ShapeMismatchError, UnsupportedLayerError
from .chain import Chain, Layer, columns_per_unit

__all__ = ["PosteriorEditor", "relative_error"]

_STATS = ("running_mean", "running_var", "num_batches_tracked")


def eval_module(m: nn.Module, h: Tensor) -> Tensor:
    """A parameter-free module with eval-mode semantics (dropout is the identity), whatever its mode."""
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return h
    return m(h)


def relative_error(pred: Tensor, target: Tensor) -> float:
    """||target - pred||^2 / ||target - mean(target)||^2 (the mean over the batch dimension)."""
    num = (pred - target).square().sum()
    den = (target - target.mean(0, keepdim=True)).square().sum().clamp_min(1e-12)
    return float(num / den)


def conv_design(m: nn.Module, inputs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Patches ``[N * positions, C_in * k]`` and targets ``[N * positions, C_out]`` of a conv."""
    if isinstance(m, nn.Conv1d):
        patches = F.unfold(inputs.unsqueeze(2), (1, m.kernel_size[0]), dilation=(1, m.dilation[0]),
                           padding=(0, m.padding[0]), stride=(1, m.stride[0]))
    else:
        patches = F.unfold(inputs, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    X = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    Y = target.reshape(target.shape[0], target.shape[1], -1).transpose(1, 2).reshape(-1, target.shape[1])
    return X, Y


def _norm_entries(layer: Layer, q: MeanFieldPosterior) -> dict[str, dict[str, Any]]:
    """The normalization layers after ``layer``: module, (loc, scale or None) of weight/bias, statistics."""
    norms = {}
    for npath, m in layer.norms():
        entry: dict[str, Any] = {"module": m}
        for attr in ("weight", "bias"):
            key = f"{npath}.{attr}"
            if key in q.locs:
                entry[attr] = (q.locs[key].detach().clone(), q.scales[key].detach().clone())
            elif f"net.{key}" in q.point_estimates:
                entry[attr] = (q.point_estimates[f"net.{key}"].detach().clone(), None)
        for stat in _STATS:
            key = f"net.{npath}.{stat}"
            if key in q.point_estimates:
                entry[stat] = q.point_estimates[key].detach().clone()
        norms[npath] = entry
    return norms


def _unit_group(layer: Layer, nxt: Optional[Layer]) -> int:
    """Columns of the next layer that one unit of ``layer`` feeds (a flatten: positions per channel)."""
    return 1 if nxt is None else columns_per_unit(layer, nxt, "alignment")
    if nxt.kind == "linear" and layer.kind == "conv":
        if nxt.in_units % layer.out_units:
            raise UnsupportedLayerError(
                f"layer {nxt.path!r} reads {nxt.in_units} features after the {layer.out_units} "
                f"channels of {layer.path!r}; alignment needs a whole number of positions per channel"
            )
        return nxt.in_units // layer.out_units
    if nxt.in_units != layer.out_units:
        raise UnsupportedLayerError(
            f"layer {nxt.path!r} reads {nxt.in_units} inputs but {layer.path!r} gives "
            f"{layer.out_units}; alignment cannot relate them"
        )
    return 1


class PosteriorEditor:
    """A teacher's posterior being edited in place, layer by layer (means, scales, norms).

    Attributes:
        chain: the teacher's parsed chain; ``layers`` its layers.
        Wm, Ws, bm, bs: per layer, the weight means/scales and bias means/scales (``None``
            without a bias), in the current (edited) shapes.
        norms: per layer, ``{norm path: {"module", "weight", "bias", statistics}}``.
        kept: per layer, the original indices of the units still there.
        removed: per layer, whether it was folded away.
        group: per layer, the columns of the next layer one unit feeds.
    """

    def __init__(self, chain: Chain, q: MeanFieldPosterior):
        self.chain = chain
        self.layers = chain.layers
        self.Wm: list[Tensor] = []
        self.Ws: list[Tensor] = []
        self.bm: list[Optional[Tensor]] = []
        self.bs: list[Optional[Tensor]] = []
        self.norms: list[dict[str, dict[str, Any]]] = []
        for layer in self.layers:
            self._load_layer(layer, q)
            self.norms.append(_norm_entries(layer, q))
        self.kept = [list(range(layer.out_units)) for layer in self.layers]
        self.removed = [False] * len(self.layers)
        nexts = self.layers[1:] + [None]
        self.group = [_unit_group(layer, nxt) for layer, nxt in zip(self.layers, nexts)]
        self.info = dict(q.info)
        # the likelihood's point estimates (e.g. a learned noise scale) do not depend on the network
        self.likelihood_points = {k: v.detach().clone() for k, v in q.point_estimates.items()
                                  if k.startswith("likelihood.")}

    def _load_layer(self, layer: Layer, q: MeanFieldPosterior) -> None:
        w = f"{layer.path}.weight"
        if w not in q.locs:
            raise ShapeMismatchError(
                f"the teacher posterior has no entry {w!r} for layer {layer.path!r}; it has {list(q.locs)}"
            )
        self.Wm.append(q.locs[w].detach().clone())
        self.Ws.append(q.scales[w].detach().clone())
        b = f"{layer.path}.bias"
        self.bm.append(q.locs[b].detach().clone() if b in q.locs else None)
        self.bs.append(q.scales[b].detach().clone() if b in q.locs else None)

    # -- geometry ---------------------------------------------------------------------------
    def out_grouped(self, t: int, which: str = "m") -> Tensor:
        """Next layer's weight means (``"m"``) or scales (``"s"``) viewed ``[next_out, units_t, g]``."""
        w = self.Wm[t + 1] if which == "m" else self.Ws[t + 1]
        return w.reshape(w.shape[0], len(self.kept[t]), -1)

    # -- forward ----------------------------------------------------------------------------
    def layer_output(self, t: int, h: Tensor) -> Tensor:
        """Layer t's pre-activations at its current means."""
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
                h = eval_module(m, h)
        return h

    @torch.no_grad()
    def run(self, x: Tensor) -> tuple[dict[int, Tensor], dict[int, Tensor], dict[int, Tensor], Tensor]:
        """Inputs, pre-activations and post-activations of every live layer; and the output."""
        h = x
        for _, m in self.chain.prefix:
            h = eval_module(m, h)
        ins, pres, posts = {}, {}, {}
        for t in range(len(self.layers)):
            if self.removed[t]:
                continue
            ins[t] = h
            h = self.layer_output(t, h)
            pres[t] = h
            h = self._after(t, h)
            posts[t] = h
        return ins, pres, posts, h

    # -- edits ------------------------------------------------------------------------------
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
            self._restrict_inputs(t + 1, idx, len(self.kept[t]))
        self.kept[t] = [self.kept[t][i] for i in keep]

    def _restrict_inputs(self, u: int, idx: Tensor, units: int) -> None:
        """Keep the columns (input channels) ``idx`` of layer u's weights, of ``units`` input units."""
        for attr in ("Wm", "Ws"):
            w = getattr(self, attr)[u]
            grouped = w.reshape(w.shape[0], units, -1)[:, idx]
            if self.layers[u].kind == "linear":
                getattr(self, attr)[u] = grouped.reshape(w.shape[0], -1)
            else:
                getattr(self, attr)[u] = grouped.reshape(w.shape[0], len(idx), *w.shape[2:])

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
        """Replace layer t's weight (and bias, if it has one) means."""
        self.Wm[t] = w.clone()
        if b is not None and self.bm[t] is not None:
            self.bm[t] = b.clone()

    # -- compensation -----------------------------------------------------------------------
    @torch.no_grad()
    def refit(self, u: int, inputs: Tensor, target: Tensor, ridge: float = 1e-4) -> tuple[float, float]:
        """Ridge least squares for layer u's means: ``layer_u(inputs) ~= target``.

        Returns the relative reconstruction error (||target - pred||^2 / ||target - mean||^2)
        before and after the re-fit. The scales are left as they are.
        """
        m = self.layers[u].module
        before = relative_error(self.layer_output(u, inputs), target)
        if isinstance(m, nn.Linear):
            X, Y = inputs.reshape(inputs.shape[0], -1), target
        else:
            X, Y = conv_design(m, inputs, target)
        has_b = self.bm[u] is not None
        if has_b:
            X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], 1)
        X64, Y64 = X.double(), Y.double()
        gram = X64.T @ X64
        lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        sol = torch.linalg.solve(gram + lam * eye, X64.T @ Y64).to(self.Wm[u].dtype)
        w, b = (sol[:-1].T, sol[-1]) if has_b else (sol.T, None)
        self.set_means(u, w.reshape(self.Wm[u].shape), b)
        return before, relative_error(self.layer_output(u, inputs), target)

    # -- result -----------------------------------------------------------------------------
    def export(self, param_map: dict[str, str], student_shapes: dict[str, list[int]]) -> MeanFieldPosterior:
        """The edited posterior over the student's parameter names (``param_map``: teacher -> student).

        Raises :class:`ShapeMismatchError` if an aligned parameter does not have the shape the
        student expects (``student_shapes``).
        """
        locs: dict[str, Tensor] = {}
        scales: dict[str, Tensor] = {}
        info: dict[str, ParamInfo] = {}
        points: dict[str, Tensor] = {}
        for t in (t for t in range(len(self.layers)) if not self.removed[t]):
            self._export_layer(t, param_map, locs, scales, info)
            self._export_norms(t, param_map, locs, scales, points)
        points.update({k: v.clone() for k, v in self.likelihood_points.items()})
        for name, shape in student_shapes.items():
            if name in locs and tuple(locs[name].shape) != tuple(shape):
                raise ShapeMismatchError(
                    f"aligned parameter {name!r} has shape {tuple(locs[name].shape)} but the student expects "
                    f"{tuple(shape)}; the student's layer does not match the aligned teacher layer"
                )
        return MeanFieldPosterior(locs, scales, info, points, {"aligned_from": "teacher"})

    def _export_layer(self, t: int, param_map: dict[str, str], locs: dict, scales: dict, info: dict) -> None:
        tpath = self.layers[t].path
        for attr, m, s in (("weight", self.Wm[t], self.Ws[t]), ("bias", self.bm[t], self.bs[t])):
            if m is None:
                continue
            tname = f"{tpath}.{attr}"
            sname = param_map[tname]
            locs[sname], scales[sname] = m.detach().clone(), s.detach().clone()
            old = self.info.get(tname)
            spath = sname.rsplit(".", 1)[0]
            info[sname] = ParamInfo(spath, old.module_type if old else type(self.layers[t].module).__name__, attr)

    def _export_norms(self, t: int, param_map: dict[str, str], locs: dict, scales: dict, points: dict) -> None:
        for npath, entry in self.norms[t].items():
            snpath = param_map.get(npath, npath)
            for attr in ("weight", "bias"):
                if attr in entry:
                    m, s = entry[attr]
                    if s is not None:
                        locs[f"{snpath}.{attr}"], scales[f"{snpath}.{attr}"] = m.clone(), s.clone()
                    else:
                        points[f"net.{snpath}.{attr}"] = m.clone()
            for stat in _STATS:
                if stat in entry:
                    points[f"net.{snpath}.{stat}"] = entry[stat].clone()
