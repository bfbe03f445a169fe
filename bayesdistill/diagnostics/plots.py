"""Diagnostic plots: training curves, reliability diagrams and weight signal-to-noise ratios.

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``plt.show()``.
Figures are built with the object API on a bare ``Figure`` (not ``pyplot``), so they need no
display, hold no global ``pyplot`` state (nothing to ``plt.close``) and work with any backend,
Agg included. In a notebook the returned figure displays once, as the cell's value.

>>> from bayesdistill.diagnostics import plots
>>> fig = plots.elbo(result)                   # a FitResult, its history, or a history.csv path
>>> fig = plots.calibration(bnn, data.test)    # reliability diagram, ECE in the title
>>> fig = plots.snr_histogram(bnn.posterior()) # |loc| / scale per layer
>>> fig = plots.alignment(plan)                # bd.align: unit scores while pruning, kept/removed
>>> fig = plots.pruning_curve(teacher, data.test, criterion="snr")  # metrics vs fraction pruned
>>> fig = plots.vid_bounds(result)             # VID lower bounds on I(t; s) per pair, per epoch
>>> fig = plots.cosine_distances(teacher, student, data.test, layer_teacher="8", layer_student="4")
>>> plots.save(fig, "elbo.png")

Units: the ELBO, its expected negative log-likelihood (NLL) and KL(q || p) are in nats for the
whole training set (as in :class:`~bayesdistill.FitResult`); confidences and accuracies are
probabilities; the signal-to-noise ratio is dimensionless; alignment scores are in the
criterion's units (snr: dimensionless; data: squared pre-activation units; random: none).
Distillation-term losses and the VID bounds are in nats per example; cosine distances
(1 - cos) are dimensionless, in [0, 2].
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import Tensor

from .._io import atomic_write
from .metrics import calibration_curve, expected_calibration_error

if TYPE_CHECKING:  # matplotlib is imported on first use: `import bayesdistill` stays fast
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["elbo", "calibration", "snr_histogram", "alignment", "pruning_curve", "vid_bounds", "cosine_distances",
           "save"]

History = Union[Sequence[Mapping[str, float]], str, os.PathLike]


# --------------------------------------------------------------------------- helpers
def _new_figure(nrows: int = 1, ncols: int = 1, *, figsize=(6.4, 4.8), **kw) -> tuple["Figure", Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _history_rows(result_or_history: Any) -> list[dict[str, float]]:
    """A FitResult, a list of per-epoch dicts, or the path of a ``history.csv``."""
    history = getattr(result_or_history, "history", result_or_history)
    if isinstance(history, (str, os.PathLike)):
        with open(history, newline="") as fh:
            rows = []
            for row in csv.DictReader(fh):
                parsed = {}
                for k, v in row.items():
                    try:
                        parsed[k] = float(v)
                    except (TypeError, ValueError):
                        continue  # empty cells (a column only some epochs have) or text
                rows.append(parsed)
            return rows
    if not isinstance(history, Sequence) or not all(isinstance(r, Mapping) for r in history):
        raise TypeError(
            "elbo() expects a FitResult, a list of per-epoch dicts (FitResult.history) or the path "
            f"of a history.csv; got {type(result_or_history).__name__}"
        )
    return [dict(r) for r in history]


def _column(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(rows, start=1):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(row.get("epoch", i)))
            ys.append(float(v))
    return xs, ys


#: History columns of distillation terms (``fit(distill=...)``): the term names of
#: ``bayesdistill.distill`` (a repeated term gets a number: ``vid1``, ``kd1``; PKT is
#: ``pkt.<student path>``). VID's per-pair ``vid.<i>.log_q`` / ``.mi_bound`` are not term losses.
_TERM_COLUMN = re.compile(r"^(?:(?:kd|vid|hint|tinybert)\d*|pkt\..+)$")
_VID_BOUND = re.compile(r"^(vid\d*)\.(\d+)\.mi_bound$")
_VID_PAIR_COLUMN = re.compile(r"^vid\d*\.\d+\.(?:log_q|mi_bound)$")


def _term_columns(rows: list[dict[str, float]]) -> list[str]:
    keys = dict.fromkeys(k for r in rows for k in r)
    return [k for k in keys if _TERM_COLUMN.match(k) and not _VID_PAIR_COLUMN.match(k) and _column(rows, k)[0]]


# --------------------------------------------------------------------------- ELBO
def elbo(result_or_history: Any, ax: Optional["Axes"] = None) -> "Figure":
    """Training curves: the ELBO and its two parts, the expected NLL and KL(q || p), per epoch.

    Args:
        result_or_history: a :class:`~bayesdistill.FitResult`, its ``history`` (a list of dicts
            with ``epoch``, ``elbo``, ``nll``, ``kl``), or the path of a ``history.csv`` written
            by :meth:`FitResult.to_csv`.
        ax: draw ELBO, NLL and KL as three lines on this one axes (returns its figure).

    Without ``ax`` the figure has two panels sharing the epoch axis: the ELBO (top), and the NLL
    and KL (bottom, log scale when both are positive), all in nats over the whole training set.
    When the history holds distillation-term losses (``fit(distill=[...])``: the columns ``kd``,
    ``vid``, ``pkt.<path>``, ``hint``, ``tinybert``, in nats per example), a further panel plots
    them; when it holds held-out metrics (``eval_*`` columns from ``fit(eval_data=...)``), the
    last panel plots those (their own units: accuracy, per-example nats, ...). The VID bounds per
    pair have their own plot, :func:`vid_bounds`.
    """
    from matplotlib.ticker import MaxNLocator

    rows = _history_rows(result_or_history)
    if not rows:
        raise ValueError("elbo(): the history is empty (no epoch was trained)")
    missing = [k for k in ("elbo", "nll", "kl") if not _column(rows, k)[0]]
    if missing:
        raise ValueError(f"elbo(): the history has no {missing} column(s); expected fit()'s history")

    if ax is not None:
        for key, label in (("elbo", "ELBO"), ("nll", "expected NLL"), ("kl", "KL(q || p)")):
            ax.plot(*_column(rows, key), label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats")
        ax.set_title("ELBO = -(NLL + KL)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        return ax.figure

    eval_keys = [
        k for k in dict.fromkeys(k for r in rows for k in r)
        if k.startswith("eval_") and _column(rows, k)[0]
    ]
    term_keys = _term_columns(rows)
    n_panels = 2 + bool(term_keys) + bool(eval_keys)
    fig, axes = _new_figure(n_panels, 1, figsize=(6.4, 2.6 * n_panels + 0.4), sharex=True)
    axes = axes[:, 0]

    top = axes[0]
    top.plot(*_column(rows, "elbo"), color="C0", label="ELBO")
    top.set_ylabel("ELBO (nats)")
    top.set_title("Evidence lower bound (whole training set)")
    top.legend(loc="lower right")
    top.grid(alpha=0.3)

    mid = axes[1]
    x_nll, nll = _column(rows, "nll")
    x_kl, kl = _column(rows, "kl")
    mid.plot(x_nll, nll, color="C1", label="expected NLL")
    mid.plot(x_kl, kl, color="C2", label="KL(q || p)")
    if min(nll + kl) > 0:
        mid.set_yscale("log")
    mid.set_ylabel("nats")
    mid.set_title("-ELBO = NLL + KL")
    mid.legend(loc="best")
    mid.grid(alpha=0.3, which="both")

    if term_keys:
        panel = axes[2]
        values = []
        for i, key in enumerate(term_keys):
            xs, ys = _column(rows, key)
            values += ys
            panel.plot(xs, ys, color=f"C{(i + 3) % 10}", label=key)
        # terms differ by orders of magnitude (VID: hundreds of nats, KD: about one): symlog then
        big, small = max(abs(v) for v in values), min((abs(v) for v in values if v != 0), default=0.0)
        if small > 0 and big / small > 50:
            panel.set_yscale("symlog", linthresh=max(small, 1e-3))
        panel.set_title("distillation terms: loss -log f per example (vid: -lambda log q)")
        panel.set_ylabel("nats per example")
        panel.legend(loc="best", fontsize="small", ncols=2)
        panel.grid(alpha=0.3, which="both")
    if eval_keys:
        bottom = axes[-1]
        for i, key in enumerate(eval_keys):
            bottom.plot(*_column(rows, key), color=f"C{(i + 3) % 10}", label=key[len("eval_"):])
        bottom.set_title("held-out metrics (eval_data)")
        bottom.set_ylabel("value (metric units)")
        bottom.legend(loc="best", fontsize="small", ncols=2)
        bottom.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


# --------------------------------------------------------------------------- calibration
@torch.no_grad()
def _predictive_probs(bnn, data, num_samples: int, seed: Optional[int]) -> tuple[Tensor, Tensor]:
    from ..infer.predictive import predict

    logits, targets = predict(bnn, data, num_samples=num_samples, seed=seed)
    if targets is None:
        raise ValueError("calibration() needs labelled data (inputs and targets)")
    # the same arithmetic (and dtype) as classification_metrics, so the ECE equals evaluate()'s
    logits = logits if logits.dtype == torch.float64 else logits.float()
    log_p = torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])
    return log_p.exp(), targets


def calibration(
    bnn: Any = None,
    data: Any = None,
    *,
    probs: Optional[Tensor] = None,
    targets: Optional[Tensor] = None,
    num_samples: int = 32,
    n_bins: int = 15,
    seed: Optional[int] = 0,
    title: Optional[str] = None,
) -> "Figure":
    """Reliability diagram of a classifier's posterior predictive, with the ECE in the title.

    Call it either with a trained network and labelled data::

        calibration(bnn, data.test, num_samples=32)   # p(y|x) = mean of S softmax outputs

    or with predictive probabilities you already have::

        calibration(probs=p, targets=y)                # p: [N, C] probabilities, y: [N] labels

    The top panel plots, per confidence bin, the accuracy of the top-1 prediction against its
    mean confidence (a perfectly calibrated model lies on the diagonal; bars below it mean
    over-confidence) and the bottom panel the number of test points per bin. Binning and ECE are
    exactly those of :func:`~bayesdistill.diagnostics.expected_calibration_error` and
    :func:`~bayesdistill.evaluate` (``n_bins`` equal-width bins plus a bucket for confidence
    exactly 1), so the title's ECE equals ``evaluate(bnn, data, num_samples=..., seed=...)["ece"]``.
    The value is also stored as ``fig.ece`` (a float, probability units).

    With a regression network (``bd.likelihoods.Normal``) the figure is a coverage diagram
    instead: the fraction of targets inside the central p-interval of the moment-matched
    Gaussian predictive against p, with the mean absolute coverage error in the title
    (``fig.coverage_error``).

    Args:
        bnn: a :class:`~bayesdistill.BNN` (with ``data``), or ``None`` when ``probs`` is given.
        data: labelled data accepted by :func:`~bayesdistill.evaluate`.
        probs, targets: ``[N, C]`` class probabilities and ``[N]`` integer labels.
        num_samples: posterior draws S for the predictive (``bnn`` form only).
        n_bins: number of equal-width confidence bins.
        seed: seed of the posterior draws (``bnn`` form; ``None`` for fresh draws).
        title: a prefix for the title (e.g. the model's name).
    """
    if (bnn is None) == (probs is None):
        raise TypeError("calibration() takes either (bnn, data) or probs=..., targets=..., not both/neither")
    if bnn is not None:
        if data is None:
            raise TypeError("calibration(bnn, data): data is missing")
        if targets is not None:
            raise TypeError("calibration(bnn, data): targets come from data; do not pass targets=")
        from ..bnn.likelihoods import Normal as NormalLikelihood

        if isinstance(getattr(bnn, "likelihood", None), NormalLikelihood):
            return _coverage(bnn, data, num_samples=num_samples, seed=seed, title=title)
        probs, targets = _predictive_probs(bnn, data, num_samples, seed)
    elif targets is None:
        raise TypeError("calibration(probs=...) needs targets=")

    curve = {k: v.detach().cpu() for k, v in calibration_curve(probs, targets, n_bins=n_bins).items()}
    ece = float(expected_calibration_error(probs, targets, n_bins=n_bins))
    counts = curve["count"].double()
    acc, conf = curve["accuracy"], curve["confidence"]
    lower, upper = curve["bin_lower"][:n_bins], curve["bin_upper"][:n_bins]
    # the degenerate last bucket (confidence == 1.0) is drawn in the top bin of the picture
    if counts[n_bins] > 0:
        merged = counts[n_bins - 1] + counts[n_bins]
        for t in (acc, conf):
            a, b = t[n_bins - 1], t[n_bins]
            t[n_bins - 1] = b if counts[n_bins - 1] == 0 else (a * counts[n_bins - 1] + b * counts[n_bins]) / merged
        counts[n_bins - 1] = merged
    acc, conf, counts = acc[:n_bins], conf[:n_bins], counts[:n_bins]
    width = (upper - lower).numpy()
    centers = ((lower + upper) / 2).numpy()
    nonempty = (counts > 0).numpy()

    fig, axes = _new_figure(2, 1, figsize=(5.2, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top, bottom = axes[0, 0], axes[1, 0]
    top.bar(centers[nonempty], acc.numpy()[nonempty], width=width[nonempty], color="C0",
            edgecolor="k", alpha=0.8, label="accuracy")
    top.bar(centers[nonempty], (conf - acc).numpy()[nonempty], bottom=acc.numpy()[nonempty],
            width=width[nonempty], color="C3", alpha=0.3, hatch="//", edgecolor="C3", label="gap to confidence")
    top.set_aspect("auto")
    _unit_square(top, None, "accuracy (top-1)", title,
                 f"reliability diagram: ECE = {ece:.4f}, N = {int(counts.sum())}")

    bottom.bar(centers, counts.numpy(), width=width, color="0.6", edgecolor="k")
    bottom.set_xlabel("confidence (top-1 predictive probability)")
    bottom.set_ylabel("count")
    bottom.grid(alpha=0.3)
    fig.ece = ece
    return fig


def _unit_square(ax, xlabel: Optional[str], ylabel: str, title: Optional[str], what: str) -> None:
    """[0, 1]^2 axes with the diagonal of perfect calibration, labels, legend, grid and title."""
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}\n{what}" if title else what)


@torch.no_grad()
def _coverage(bnn, data, *, num_samples: int, seed: Optional[int], title: Optional[str]) -> "Figure":
    from ..infer.predictive import predict

    means, targets = predict(bnn, data, num_samples=num_samples, seed=seed)
    if targets is None:
        raise ValueError("calibration() needs labelled data (inputs and targets)")
    means = means.double()
    targets = targets.double().reshape(means.shape[1:])
    sigma = bnn.likelihood.scale.detach().double()
    mu = means.mean(0)
    std = (sigma**2 + means.var(0, unbiased=False)).sqrt()
    z = ((targets - mu) / std).abs().reshape(-1).cpu()  # the levels below live on the CPU
    levels = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    half_width = math.sqrt(2.0) * torch.erfinv(levels)  # |z| <= half_width with probability p
    observed = (z.unsqueeze(0) <= half_width.unsqueeze(1)).double().mean(1)
    err = float((observed - levels).abs().mean())

    fig, axes = _new_figure(1, 1, figsize=(5.2, 4.8))
    ax = axes[0, 0]
    ax.plot(levels.numpy(), observed.numpy(), marker="o", color="C0", label="observed")
    _unit_square(ax, "nominal coverage of the central predictive interval", "observed coverage", title,
                 f"predictive interval coverage: mean |error| = {err:.4f}")
    fig.coverage_error = err
    return fig


# --------------------------------------------------------------------------- SNR
def snr_histogram(posterior: Any, ax: Optional["Axes"] = None, log: bool = True, bins: int = 50) -> "Figure":
    """Histogram of the per-weight signal-to-noise ratio ``|loc| / scale``, one curve per layer.

    Weights with SNR well below 1 are dominated by their posterior noise (candidates for
    pruning); weights far above 1 are well determined by the data. Layers are the modules the
    weights belong to (weight and bias of a layer together), in network order.

    Args:
        posterior: a :class:`~bayesdistill.MeanFieldPosterior` (or a ``BNN``, whose
            ``posterior()`` is used).
        ax: draw on this axes instead of a new figure.
        log: logarithmic SNR axis with log-spaced bins (SNRs span orders of magnitude).
        bins: number of bins.
    """
    if hasattr(posterior, "posterior") and callable(posterior.posterior):
        posterior = posterior.posterior()
    if not hasattr(posterior, "snr"):
        raise TypeError(f"snr_histogram() expects a MeanFieldPosterior or a BNN, got {type(posterior).__name__}")
    snr = posterior.snr()
    info = getattr(posterior, "info", {}) or {}
    layers: dict[str, list[Tensor]] = {}
    for name, values in snr.items():
        i = info.get(name)
        key = f"{i.module or '<root>'}: {i.module_type}" if i is not None else name
        layers.setdefault(key, []).append(values.detach().reshape(-1).double().cpu())
    groups = {k: torch.cat(v) for k, v in layers.items()}
    everything = torch.cat(list(groups.values()))
    finite = everything[torch.isfinite(everything)]

    if ax is None:
        fig, axes = _new_figure(1, 1, figsize=(6.4, 4.2))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    if log:
        positive = finite[finite > 0]
        lo = float(positive.min()) if positive.numel() else 1e-3
        hi = float(positive.max()) if positive.numel() else 1.0
        lo, hi = min(lo, 0.1), max(hi, 10.0)
        edges = torch.logspace(math.log10(lo), math.log10(hi), bins + 1, dtype=torch.float64)
        ax.set_xscale("log")
        clip = (edges[0].item(), edges[-1].item())
    else:
        hi = max(float(finite.max()) if finite.numel() else 1.0, 1.0)
        edges = torch.linspace(0.0, hi, bins + 1, dtype=torch.float64)
        clip = (0.0, hi)
    for i, (label, values) in enumerate(groups.items()):
        values = values[torch.isfinite(values)].clamp(*clip)
        ax.hist(values.numpy(), bins=edges.numpy(), histtype="step", linewidth=1.5, color=f"C{i % 10}",
                label=f"{label}, n={values.numel()}")
    ax.axvline(1.0, color="0.3", ls="--", lw=1)
    ax.set_xlabel("signal-to-noise ratio |loc| / scale (dimensionless)")
    ax.set_ylabel("number of weights")
    median = float(finite.median()) if finite.numel() else float("nan")
    ax.set_title(f"posterior SNR per layer ({everything.numel()} weights, median {median:.3g})")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------- alignment
def _plan_layers(plan: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Layer records and settings of an AlignmentPlan, its state/JSON dict, or a plan file."""
    if isinstance(plan, (str, os.PathLike)):
        path = Path(plan)
        if path.suffix == ".json":
            import json

            plan = json.loads(path.read_text())
        else:
            from ..distill.align import AlignmentPlan

            plan = AlignmentPlan.load(path)
    if isinstance(plan, Mapping):
        layers, get = plan.get("layers"), plan.get
    else:
        layers, get = getattr(plan, "layers", None), lambda k, d=None: getattr(plan, k, d)
    if not isinstance(layers, Sequence) or not all(isinstance(L, Mapping) and "teacher" in L for L in layers):
        raise TypeError(
            "alignment() expects an AlignmentPlan (bd.align), its state or to_json() data, or the path of "
            f"plan.json / plan.pt; got {type(plan).__name__}"
        )
    settings = {k: get(k) for k in ("criterion", "removal", "compensation", "output_error")}
    return [dict(L) for L in layers], settings


def _layer_label(L: Mapping[str, Any]) -> str:
    if L.get("removed"):
        return f"{L['teacher']} (layer removed)"
    return f"{L['teacher']} -> {L.get('student')}"


def _draw_trace(ax: "Axes", layers: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    from matplotlib.ticker import MaxNLocator

    drawn, scores = 0, []
    for i, L in enumerate(layers):
        trace = L.get("trace") or []
        if not trace:
            continue
        ys = [float(r[2]) for r in trace]
        scores += ys
        kept = len(L.get("kept") or [])
        ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, lw=1.2, color=f"C{i % 10}",
                label=f"{_layer_label(L)}: kept {kept}/{L['teacher_units']}")
        drawn += 1
    crit = settings.get("criterion") or "?"
    finite = [v for v in scores if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 50:
        ax.set_yscale("log")
    if drawn:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no unit was removed\n(the student has the teacher's widths)", ha="center",
                va="center", transform=ax.transAxes, color="0.4")
    ax.set_xlabel("removal order within the layer (1 = removed first)")
    ax.set_ylabel(f"score of the removed unit ({crit})")
    ax.set_title(f"unit scores while pruning (criterion {crit}, re-scored every round)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def alignment(plan: Any, ax: Optional["Axes"] = None) -> "Figure":
    """An alignment plan (:func:`~bayesdistill.align`): unit scores while pruning, kept/removed units.

    Left panel: per teacher layer, the criterion's score of each removed unit in the order of
    removal (units are removed a fraction at a time and the rest re-scored, so scores rise from
    round to round: a steep rise means the criterion ran out of unimportant units); the legend
    gives the kept units per layer. Right panel: kept and removed units per teacher layer
    (stacked bars); a layer removed as a whole (its units folded into the next layer) is grey;
    with probe data, each bar is annotated with the relative reconstruction error of the layer's
    pre-activations by the unit selection alone -> with the compensating re-fits, and removed
    layers with their removal residual.

    Args:
        plan: an :class:`~bayesdistill.AlignmentPlan`, its ``state()`` or ``to_json()`` data, or
            the path of a ``plan.json`` / ``plan.pt``.
        ax: draw only the score trace on this axes (returns its figure).
    """
    layers, settings = _plan_layers(plan)
    if ax is not None:
        _draw_trace(ax, layers, settings)
        return ax.figure

    fig, axes = _new_figure(1, 2, figsize=(12.0, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    left, right = axes[0, 0], axes[0, 1]
    _draw_trace(left, layers, settings)

    xs = list(range(len(layers)))
    total = [int(L["teacher_units"]) for L in layers]
    kept = [len(L.get("kept") or []) if L.get("kept") is not None else int(L["teacher_units"]) for L in layers]
    removed = [t - k for t, k in zip(total, kept)]
    colors = ["0.7" if L.get("removed") else "C0" for L in layers]
    right.bar(xs, kept, color=colors, edgecolor="k", label="kept units")
    right.bar(xs, removed, bottom=kept, color="C3", alpha=0.35, hatch="//", edgecolor="C3", label="removed units")
    if any(L.get("removed") for L in layers):
        from matplotlib.patches import Patch

        handles, labels = right.get_legend_handles_labels()
        handles.append(Patch(facecolor="0.7", edgecolor="k"))
        labels.append("layer removed (folded)")
        right.legend(handles, labels, loc="upper center", fontsize="x-small", ncols=3)
    else:
        right.legend(loc="upper center", fontsize="x-small", ncols=2)
    top = max(total) if total else 1
    for x, L, t in zip(xs, layers, total):
        notes = []
        err = L.get("error")
        if err:
            notes.append(f"{err['restricted']:.2g}->{err['compensated']:.2g}")
        if L.get("removed") and L.get("residual") is not None:
            notes.append(f"res {L['residual']:.2f}")
        if notes:
            right.text(x, t + 0.02 * top, "\n".join(notes), ha="center", va="bottom", fontsize="x-small")
    right.set_xticks(xs, [_layer_label(L).replace(" (layer removed)", "\n(removed)").replace(" -> ", "\n-> ")
                          for L in layers], fontsize="small")
    right.set_ylim(0, top * 1.4)
    annotated = any(L.get("error") for L in layers)
    right.set_xlabel("teacher layer -> student layer"
                     + ("\n(numbers: reconstruction error, selection -> compensated)" if annotated else ""))
    right.set_ylabel("units (neurons / channels)")
    title = "kept vs removed units per layer"
    if settings.get("output_error") is not None:
        title += f"\nrelative output error on the probe data: {settings['output_error']:.3g}"
    right.set_title(title)
    right.grid(alpha=0.3, axis="y")
    head = ", ".join(f"{k}={settings[k]}" for k in ("criterion", "removal", "compensation") if settings.get(k) is not None)
    fig.suptitle(f"alignment plan ({head})" if head else "alignment plan")
    return fig


# --------------------------------------------------------------------------- pruning curve
def _curve_dict(curve: Any) -> dict[str, Any]:
    """A curve as a dict with its values also under the metric's name (a PruningCurve or its data)."""
    d = curve.to_dict() if hasattr(curve, "to_dict") else dict(curve)
    if "values" in d and d.get("metric") and d["metric"] not in d:
        d[d["metric"]] = d["values"]
    return d


def _curve_label(curve: Mapping[str, Any]) -> str:
    comp = curve.get("compensation")
    suffix = "" if comp is None else (", compensated" if comp else ", no compensation")
    return f"{curve.get('criterion', '?')}{suffix}"


def pruning_curve(
    teacher_or_curves: Any,
    data: Any = None,
    criterion: Union[str, Sequence[str]] = "snr",
    *,
    fractions: Optional[Sequence[float]] = None,
    compensation: Union[bool, Sequence[bool]] = False,
    probe: Any = None,
    num_samples: int = 16,
    seed: int = 0,
    title: Optional[str] = None,
) -> "Figure":
    """Test accuracy (or RMSE) and NLL of a teacher aligned to narrower copies of itself.

    Call it with precomputed curves (:class:`~bayesdistill.distill.PruningCurve` objects returned
    by :func:`bayesdistill.distill.pruning_curve`, or their ``to_dict()`` data; a list overlays
    them, e.g. several criteria, with and without compensation)::

        plots.pruning_curve([curve_snr, curve_snr_comp, curve_random])

    or with a teacher and evaluation data, to compute the curves here::

        plots.pruning_curve(teacher, data.test, criterion=["snr", "random"],
                            compensation=[False, True], probe=data.train)

    (every combination of the given criteria and compensation settings). The left panel plots
    the accuracy (classification, probability units) or RMSE (regression, target units) against
    the fraction of hidden units removed, the right one the NLL (nats per example); colours
    follow the criterion, dashed lines are without compensation. No network is trained: each
    point is the aligned teacher posterior used as q(w). The curves are stored as ``fig.curves``.
    """
    from ..bnn.network import BNN

    if isinstance(teacher_or_curves, BNN):
        if data is None:
            raise TypeError("pruning_curve(teacher, data): data (labelled evaluation data) is missing")
        from ..distill.align import pruning_curve as compute_curve

        crits = [criterion] if isinstance(criterion, str) or callable(criterion) else list(criterion)
        comps = [compensation] if isinstance(compensation, bool) else [bool(c) for c in compensation]
        kw: dict[str, Any] = {"probe": probe, "num_samples": num_samples, "seed": seed}
        if fractions is not None:
            kw["fractions"] = fractions
        curves = [_curve_dict(compute_curve(teacher_or_curves, data, criterion=c, compensation=comp, **kw))
                  for c in crits for comp in comps]
    elif isinstance(teacher_or_curves, Mapping) or hasattr(teacher_or_curves, "to_dict"):
        curves = [_curve_dict(teacher_or_curves)]
    elif isinstance(teacher_or_curves, Sequence) and teacher_or_curves and all(
        isinstance(c, Mapping) or hasattr(c, "to_dict") for c in teacher_or_curves
    ):
        curves = [_curve_dict(c) for c in teacher_or_curves]
    else:
        raise TypeError(
            "pruning_curve() expects a trained BNN (with data) or curve dicts from "
            f"bayesdistill.distill.pruning_curve; got {type(teacher_or_curves).__name__}"
        )
    metrics = set()
    for c in curves:
        metric = c.get("metric") or ("accuracy" if "accuracy" in c else "rmse")
        missing = [k for k in ("fraction", "nll", metric) if k not in c]
        if missing:
            raise ValueError(f"pruning_curve(): a curve lacks {missing}; expected distill.pruning_curve's dicts")
        c["metric"] = metric
        metrics.add(metric)
    if len(metrics) > 1:
        raise ValueError(f"pruning_curve(): cannot overlay curves of different metrics {sorted(metrics)}")
    metric = metrics.pop()

    fig, axes = _new_figure(1, 2, figsize=(11.0, 4.4))
    left, right = axes[0, 0], axes[0, 1]
    crit_colors: dict[str, str] = {}
    for c in curves:
        color = crit_colors.setdefault(str(c.get("criterion")), f"C{len(crit_colors) % 10}")
        style = "--" if c.get("compensation") is False else "-"
        for ax, key in ((left, metric), (right, "nll")):
            ax.plot(c["fraction"], c[key], marker="o", ls=style, color=color, label=_curve_label(c))
    left.set_ylabel("test accuracy" if metric == "accuracy" else "test RMSE (target units)")
    if metric == "accuracy":
        left.set_ylim(0, 1.02)
    left.set_title(("accuracy" if metric == "accuracy" else "RMSE") + " vs fraction pruned")
    right.set_ylabel("test NLL (nats per example)")
    right.set_title("NLL vs fraction pruned")
    for ax in (left, right):
        ax.set_xlabel("fraction of hidden units removed")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(title or "teacher aligned to narrower copies of itself (no training)")
    fig.curves = curves
    return fig


# --------------------------------------------------------------------------- VID bounds
def vid_bounds(
    result_or_history: Any,
    ax: Optional["Axes"] = None,
    *,
    labels: Union[None, Sequence[str], Mapping[str, str]] = None,
) -> "Figure":
    """The VID lower bounds on the mutual information I(t; s) per feature pair, per epoch.

    For each VID pair (teacher feature t, student feature s), ``bd.fit(distill=[VID(...)])``
    records ``vid.<i>.mi_bound`` = H(t) + E[log q(t | s)] (nats per example; H(t) is the entropy
    of a diagonal Gaussian fitted to the teacher's features, so the bound rises as the amortized
    q(t | s) learns to predict the teacher's feature from the student's). One line per pair (a
    second VID term's pairs are ``vid1.<i>``).

    Args:
        result_or_history: a :class:`~bayesdistill.FitResult`, its ``history`` or the path of a
            ``history.csv``.
        ax: draw on this axes instead of a new figure.
        labels: names of the pairs for the legend, in pair order (e.g. ``["t:8 -> s:4"]``) or a
            mapping column prefix (``"vid.0"``) -> name.

    Raises:
        ValueError: the history holds no ``vid.<i>.mi_bound`` column (no VID term was trained).
    """
    from matplotlib.ticker import MaxNLocator

    rows = _history_rows(result_or_history)
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if _VID_BOUND.match(k) and _column(rows, k)[0]]
    if not keys:
        raise ValueError(
            "vid_bounds(): the history has no VID columns ('vid.<i>.mi_bound'); they are recorded by "
            "bd.fit(..., distill=[VID(teacher, pairs=...)])"
        )
    keys.sort(key=lambda k: (_VID_BOUND.match(k).group(1), int(_VID_BOUND.match(k).group(2))))
    if ax is None:
        fig, axes = _new_figure(1, 1, figsize=(6.4, 4.2))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    for i, key in enumerate(keys):
        prefix = key[: -len(".mi_bound")]
        if isinstance(labels, Mapping):
            name = labels.get(prefix, prefix)
        elif labels is not None and i < len(labels):
            name = f"{prefix}: {labels[i]}"
        else:
            name = prefix
        xs, ys = _column(rows, key)
        ax.plot(xs, ys, color=f"C{i % 10}", marker="o" if len(xs) < 12 else None, ms=3,
                label=f"{name} (last {ys[-1]:.4g})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("H(t) + E[log q(t|s)]  (nats per example)")
    ax.set_title("VID lower bound on I(t; s) per teacher -> student feature pair")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------- cosine distances
def _labelled_tensors(data: Any) -> tuple[Tensor, Tensor]:
    """``(x, y)`` tensors of a labelled ``(x, y)`` tuple, ``TensorDataset``, ``Dataset`` or ``DataLoader``."""
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        x, y = data
    elif isinstance(data, TensorDataset):
        if len(data.tensors) < 2:
            raise ValueError("cosine_distances() needs labelled data; the TensorDataset holds inputs only")
        x, y = data.tensors[:2]
    elif isinstance(data, (Dataset, DataLoader)):
        loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=1024, shuffle=False)
        xs, ys = [], []
        for batch in loader:
            if torch.is_tensor(batch) or len(batch) < 2:
                raise ValueError("cosine_distances() needs labelled data (batches of (inputs, labels))")
            xs.append(batch[0])
            ys.append(batch[1])
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise TypeError(
            f"cosine_distances() expects labelled data: an (x, y) tuple of tensors or a Dataset, got {type(data).__name__}"
        )
    y = torch.as_tensor(y)
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1 or y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError(
            f"cosine_distances() needs integer class labels (similar = same class); got labels of shape "
            f"{tuple(y.shape)} and dtype {y.dtype}"
        )
    if len(x) != len(y):
        raise ValueError(f"cosine_distances(): {len(x)} inputs but {len(y)} labels")
    return x, y.long()


@torch.no_grad()
def _representations(model: Any, x: Tensor, layer: Optional[str], batch_size: int = 1024) -> Tensor:
    """``[N, D]`` outputs of module ``layer`` (or of the network) of a BNN's posterior-mean network
    or an ``nn.Module``, in eval mode, flattened per example."""
    from ..bnn.network import BNN
    from ..distill.function_space import FeatureTaps

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"cosine_distances() expects bd.BNN or nn.Module models, got {type(model).__name__}")
    net = model.net if isinstance(model, BNN) else model
    try:
        param = next(iter(model.parameters()))
        device = param.device
    except StopIteration:
        device = x.device
    was = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start: start + batch_size].to(device)
            if layer is None:
                f = model(xb)
            else:
                with FeatureTaps(net, [layer], "model") as taps:
                    model(xb)
                f = taps.features[layer]
            out.append(f.detach().reshape(len(xb), -1).double().cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def _pair_indices(n: int, max_pairs: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (i < j) of all pairs of ``n`` examples, or of ``max_pairs`` distinct random ones."""
    total = n * (n - 1) // 2
    if total <= max_pairs:
        iu = torch.triu_indices(n, n, 1)
        return iu[0], iu[1]
    g = torch.Generator().manual_seed(seed)
    codes = torch.empty(0, dtype=torch.long)  # pair (i < j) -> i * n + j
    while codes.numel() < max_pairs:
        k = 2 * (max_pairs - codes.numel()) + 16
        i, j = torch.randint(n, (k,), generator=g), torch.randint(n, (k,), generator=g)
        keep = i != j
        codes = torch.unique(torch.cat([codes, torch.minimum(i, j)[keep] * n + torch.maximum(i, j)[keep]]))
    picked = codes[torch.randperm(codes.numel(), generator=g)[:max_pairs]].sort().values
    return picked // n, picked % n


def _separation_auc(similar: Tensor, dissimilar: Tensor) -> float:
    """P(a dissimilar pair is farther apart than a similar pair) (ties count 1/2): Mann-Whitney AUC."""
    if similar.numel() == 0 or dissimilar.numel() == 0:
        return float("nan")
    both = torch.cat([similar, dissimilar])
    order = both.argsort()
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, len(both) + 1, dtype=both.dtype)
    # average ranks of ties
    values, inverse, counts = torch.unique(both, return_inverse=True, return_counts=True)
    if len(values) < len(both):
        sums = torch.zeros(len(values), dtype=both.dtype).index_add_(0, inverse, ranks)
        ranks = (sums / counts)[inverse]
    n_s, n_d = similar.numel(), dissimilar.numel()
    u = float(ranks[n_s:].sum()) - n_d * (n_d + 1) / 2
    return u / (n_s * n_d)


def cosine_distances(
    teacher: Any,
    student: Any = None,
    data: Any = None,
    *,
    layer_teacher: Optional[str] = None,
    layer_student: Optional[str] = None,
    max_pairs: int = 20000,
    seed: int = 0,
    num_bins: int = 50,
    title: Optional[str] = None,
) -> "Figure":
    """Distributions of cosine distances of similar and dissimilar pairs, one panel per model.

    For pairs of examples of the same class ("similar") and of different classes
    ("dissimilar"), the cosine distance ``1 - cos(f(x_i), f(x_j))`` between their representations
    ``f``: the output of a named module (read with a forward hook,
    :class:`~bayesdistill.distill.FeatureTaps`; flattened per example) or, by default, the network
    output (the logits). A model whose representations separate the classes puts the similar
    pairs near 0 and the dissimilar ones far away; distillation should move the student's picture
    towards the teacher's. Each panel's title gives the mean distances and the separation AUC
    (the probability that a dissimilar pair is farther apart than a similar one; 0.5 = no
    separation).

    Call it with two models, ``cosine_distances(teacher, student, data, layer_teacher=...,
    layer_student=...)``, or with a list of ``(name, model)`` or ``(name, model, layer)``
    tuples, ``cosine_distances([("teacher", t, "8"), ("plain", p, "4"), ...], data)``.

    Args:
        teacher, student: a :class:`~bayesdistill.BNN` (its posterior-mean network is used) or an
            ``nn.Module`` (in eval mode).
        data: labelled data: an ``(x, y)`` tuple of tensors or a ``Dataset`` of ``(x, y)`` with
            integer class labels.
        layer_teacher, layer_student: module paths (``dict(net.named_modules())`` keys) whose
            outputs are the representations; ``None``: the network output.
        max_pairs: use all pairs when there are at most this many, else this many distinct pairs
            drawn at random (seeded; the same pairs for every model).
        seed: seed of the pair draw.
        num_bins: histogram bins (shared by all panels).
        title: the figure's title (default: a description of the pairs).

    The figure carries ``fig.distances``: per model name, ``{"similar": Tensor, "dissimilar":
    Tensor, "auc": float, "layer": str | None}``, and ``fig.pairs`` = ``(i, j)`` index tensors.
    """
    if isinstance(teacher, Sequence) and not isinstance(teacher, (str, torch.nn.Module)):
        if data is None:
            data, student = student, None
        elif student is not None:
            raise TypeError("cosine_distances(models, data): with a list of models, do not pass a student")
        if layer_teacher is not None or layer_student is not None:
            raise TypeError("cosine_distances(models, data): give each model's layer in its tuple "
                            "(name, model, layer), not layer_teacher/layer_student")
        models = []
        for entry in teacher:
            if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3) or not isinstance(entry[0], str):
                raise TypeError("cosine_distances(): models must be (name, model) or (name, model, layer) tuples")
            models.append((entry[0], entry[1], entry[2] if len(entry) == 3 else None))
    else:
        if student is None:
            raise TypeError("cosine_distances(teacher, student, data): the student is missing")
        models = [("teacher", teacher, layer_teacher), ("student", student, layer_student)]
    if not models:
        raise ValueError("cosine_distances(): no models given")
    if len({m[0] for m in models}) < len(models):
        raise ValueError(f"cosine_distances(): model names must differ, got {[m[0] for m in models]}")
    if data is None:
        raise TypeError("cosine_distances(): data (labelled examples) is missing")
    if not (isinstance(max_pairs, int) and max_pairs >= 1):
        raise ValueError(f"cosine_distances(): max_pairs must be a positive int, got {max_pairs!r}")
    x, y = _labelled_tensors(data)
    if len(x) < 2:
        raise ValueError(f"cosine_distances() needs at least 2 examples, got {len(x)}")
    i, j = _pair_indices(len(x), max_pairs, seed)
    same = y[i] == y[j]

    distances: dict[str, dict[str, Any]] = {}
    for name, model, layer in models:
        f = torch.nn.functional.normalize(_representations(model, x, layer), dim=1)
        d = (1.0 - (f[i] * f[j]).sum(1)).clamp(0.0, 2.0)
        distances[name] = {"similar": d[same], "dissimilar": d[~same], "layer": layer,
                           "auc": _separation_auc(d[same], d[~same])}

    hi = max(float(torch.cat([v["similar"], v["dissimilar"]]).max()) for v in distances.values())
    edges = torch.linspace(0.0, max(hi, 1e-6), num_bins + 1, dtype=torch.float64).numpy()
    n = len(models)
    fig, axes = _new_figure(1, n, figsize=(4.2 * n + 0.4, 3.8), sharex=True)
    for ax, (name, _, layer) in zip(axes[0], models):
        r = distances[name]
        for key, color, what in (("similar", "tab:green", "similar (same class)"),
                                 ("dissimilar", "tab:red", "dissimilar (different class)")):
            v = r[key]
            if v.numel():
                ax.hist(v.numpy(), bins=edges, density=True, color=color, alpha=0.45,
                        label=f"{what}, n={v.numel()}")
                ax.axvline(float(v.mean()), color=color, lw=1.2)
        where = f"module {layer!r}" if layer is not None else "network output"
        ms = float(r["similar"].mean()) if r["similar"].numel() else float("nan")
        md = float(r["dissimilar"].mean()) if r["dissimilar"].numel() else float("nan")
        ax.set_title(f"{name} ({where})\nmean {ms:.3f} vs {md:.3f}, separation AUC {r['auc']:.3f}", fontsize=9)
        ax.set_xlabel("cosine distance 1 - cos")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="x-small")
    axes[0, 0].set_ylabel("density")
    fig.suptitle(title or f"cosine distances of {len(i)} pairs of {len(x)} examples (vertical lines: means)",
                 fontsize=10)
    fig.distances = distances
    fig.pairs = (i, j)
    return fig


# --------------------------------------------------------------------------- saving
def save(fig: "Figure", path: Union[str, os.PathLike], *, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (temporary file + ``os.replace``).

    Creates the parent folder. A crash mid-write leaves the old file (or none), never a torn PNG.
    Returns the path.
    """
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
