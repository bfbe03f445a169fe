"""Diagnostic plots: they draw results, never compute them from models or data.

Every function takes a result (a training history, a :class:`~bayesdistill.diagnostics.CalibrationResult`,
a :class:`~bayesdistill.MeanFieldPosterior`, an :class:`~bayesdistill.AlignmentPlan`, pruning
curves, a :class:`~bayesdistill.diagnostics.CosineDistances`, an
:class:`~bayesdistill.diagnostics.OODResult`, a :class:`~bayesdistill.diagnostics.SelectiveResult`), returns a
:class:`matplotlib.figure.Figure`, attaches nothing to it and never calls ``plt.show()``. The
numbers come from the result (and its ``to_dict()`` for reports). Figures are built with the
object API on a bare ``Figure`` (not ``pyplot``), so they need no display, hold no global
``pyplot`` state (nothing to ``plt.close``) and work with any backend, Agg included. In a
notebook the returned figure displays once, as the cell's value.

>>> from bayesdistill import diagnostics
>>> from bayesdistill.diagnostics import plots
>>> fig = plots.elbo(result)                   # a FitResult, its history, or a history.csv path
>>> fig = plots.term_metric(result, "mi_bound")  # any distill/<term>/.../<metric> columns
>>> fig = plots.vid_bounds(result)             # VID lower bounds on I(t; s) per pair, per epoch
>>> fig = plots.calibration(diagnostics.calibration(bnn, data.test))  # reliability diagram
>>> fig = plots.snr_histogram(bnn.posterior()) # |loc| / scale per layer
>>> fig = plots.alignment(plan)                # bd.align: unit scores while pruning, kept/removed
>>> fig = plots.pruning_curve([curve_snr, curve_random])  # bd.distill.pruning_curve results
>>> fig = plots.cosine_distances(diagnostics.cosine_distances([("t", teacher, "8"), ("s", student, "4")], test))
>>> fig = plots.ood(diagnostics.ood_detection(bnn, data.test, x_ood))  # score histograms and ROC curves
>>> fig = plots.roc({"teacher": res_t, "student": res_s}, score="mutual_information")
>>> fig = plots.selective({"teacher": sel_t, "student": sel_s})  # accuracy- and risk-coverage curves
>>> fig = plots.learning_curves({"distilled": r1.history, "plain": r2.history}, reference=teacher_metrics)
>>> fig = plots.weight_noise({"grown": rob1, "scratch": rob2})  # diagnostics.weight_noise_robustness results
>>> plots.save(fig, "elbo.png")

Histories: one record per epoch; distillation terms report under ``distill/<term>/<metric>``
(``distill/kd/loss``, ``distill/vid/pair0/mi_bound``): every ``distill/<term>/loss`` column is a
term loss, whatever the term; nothing here knows a term by name.

Units: the ELBO, its expected negative log-likelihood (NLL) and KL(q || p) are in nats for the
whole training set (as in :class:`~bayesdistill.FitResult`); confidences and accuracies are
probabilities; the signal-to-noise ratio is dimensionless; alignment scores are in the
criterion's units (snr: dimensionless; data: squared pre-activation units; random: none).
Distillation-term losses and the VID bounds are in nats per example; cosine distances
(1 - cos) are dimensionless, in [0, 2]; predictive entropy and mutual information are in nats
per input, max probability, coverage, accuracy and risk are probabilities.
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
from .calibration import CalibrationResult
from .representations import CosineDistances
from .uncertainty import OODResult, SelectiveResult

if TYPE_CHECKING:  # matplotlib is imported on first use: `import bayesdistill` stays fast
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["elbo", "term_metric", "vid_bounds", "calibration", "snr_histogram", "alignment", "pruning_curve",
           "cosine_distances", "learning_curves", "ood", "roc", "selective", "save"]

History = Union[Sequence[Mapping[str, float]], str, os.PathLike]

#: Prefix of the history columns of distillation terms: ``distill/<term>/<metric>``.
TERM_PREFIX = "distill/"


# --------------------------------------------------------------------------- helpers
def _new_figure(nrows: int = 1, ncols: int = 1, *, figsize=(6.4, 4.8), **kw) -> tuple["Figure", Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _history_rows(result_or_history: Any, what: str = "elbo()") -> list[dict[str, float]]:
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
            f"{what} expects a FitResult, a list of per-epoch dicts (FitResult.history) or the path "
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


def _keys(rows: list[dict[str, float]]) -> list[str]:
    """The history's columns in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r))


def _natural(key: str) -> tuple:
    """Sort key of a column: part by part (``vid/...`` before ``vid1/...``), numbers compared as
    numbers (``pair2`` before ``pair10``)."""
    return tuple(tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", part)) for part in key.split("/"))


def _term_loss_columns(rows: list[dict[str, float]]) -> list[str]:
    """The ``distill/<term>/loss`` columns (one per term, in history order) that hold numbers."""
    return [k for k in _keys(rows) if k.startswith(TERM_PREFIX) and k.endswith("/loss") and k.count("/") == 2
            and _column(rows, k)[0]]


def _metric_columns(rows: list[dict[str, float]], metric: str) -> list[str]:
    """The ``distill/.../<metric>`` columns that hold numbers, in natural order."""
    keys = [k for k in _keys(rows) if k.startswith(TERM_PREFIX) and k.endswith("/" + metric)
            and k.count("/") >= 2 and _column(rows, k)[0]]
    return sorted(keys, key=_natural)


def _not_a_result(fn: str, got: Any, expected: str, compute: str) -> TypeError:
    return TypeError(f"plots.{fn}() draws {expected}, not a {type(got).__name__}; compute it first with "
                     f"{compute} and pass the result")


# --------------------------------------------------------------------------- ELBO
def elbo(history_or_result: Any, ax: Optional["Axes"] = None) -> "Figure":
    """Training curves: the ELBO and its two parts, the expected NLL and KL(q || p), per epoch.

    Args:
        history_or_result: a :class:`~bayesdistill.FitResult`, its ``history`` (a list of dicts
            with ``epoch``, ``elbo``, ``nll``, ``kl``), or the path of a ``history.csv`` written
            by :meth:`FitResult.to_csv`.
        ax: draw ELBO, NLL and KL as three lines on this one axes (returns its figure).

    Without ``ax`` the figure has two panels sharing the epoch axis: the ELBO (top), and the NLL
    and KL (bottom, log scale when both are positive), all in nats over the whole training set.
    When the history holds distillation-term losses (``fit(distill=[...])``: every column
    ``distill/<term>/loss``, nats per example), a further panel plots them, one line per term;
    when it holds held-out metrics (``eval_*`` columns from ``fit(eval_data=...)``), the last
    panel plots those (their own units: accuracy, per-example nats, ...). Other per-term
    metrics have :func:`term_metric` (the VID bounds: :func:`vid_bounds`).
    """
    from matplotlib.ticker import MaxNLocator

    rows = _history_rows(history_or_result)
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

    eval_keys = [k for k in _keys(rows) if k.startswith("eval_") and _column(rows, k)[0]]
    term_keys = _term_loss_columns(rows)
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
            panel.plot(xs, ys, color=f"C{(i + 3) % 10}", label=key[len(TERM_PREFIX):-len("/loss")])
        # terms differ by orders of magnitude (VID: hundreds of nats, KD: about one): symlog then
        big, small = max(abs(v) for v in values), min((abs(v) for v in values if v != 0), default=0.0)
        if small > 0 and big / small > 50:
            panel.set_yscale("symlog", linthresh=max(small, 1e-3))
        panel.set_title("distillation terms: loss per example (distill/<term>/loss)")
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


# --------------------------------------------------------------------------- per-term metrics
def term_metric(
    history: Any,
    metric: str,
    ax: Optional["Axes"] = None,
    labels: Union[None, Sequence[str], Mapping[str, str]] = None,
    ylabel: Optional[str] = None,
    title: Optional[str] = None,
) -> "Figure":
    """One distillation-term metric per epoch: one line per history column ``distill/.../<metric>``.

    E.g. ``term_metric(result, "mi_bound")`` draws every ``distill/<term>/pair<i>/mi_bound``
    column (the VID bounds), ``term_metric(result, "loss")`` the terms' losses. Lines are named
    by the column between ``distill/`` and ``/<metric>`` (``vid/pair0``) and ordered naturally
    (``pair2`` before ``pair10``); the legend gives each line's last value.

    Args:
        history: a :class:`~bayesdistill.FitResult`, its ``history`` or the path of a
            ``history.csv``.
        metric: the last part of the column names.
        ax: draw on this axes instead of a new figure.
        labels: legend names in column order (``"<column>: <label>"``), or a mapping from the
            column's middle part (``"vid/pair0"``) to a name.
        ylabel: the axis label (the metric's units).
        title: the title.

    Raises:
        ValueError: the history has no such column.
    """
    from matplotlib.ticker import MaxNLocator

    if not isinstance(metric, str) or not metric or "/" in metric:
        raise ValueError(f"term_metric(): metric must be one column part such as 'mi_bound', got {metric!r}")
    rows = _history_rows(history, "term_metric()")
    keys = _metric_columns(rows, metric)
    if not keys:
        raise ValueError(f"term_metric(): the history has no '{TERM_PREFIX}<term>/.../{metric}' column "
                         f"(columns: {', '.join(_keys(rows)[:20]) or 'none'})")
    if ax is None:
        fig, axes = _new_figure(1, 1, figsize=(6.4, 4.2))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    for i, key in enumerate(keys):
        part = key[len(TERM_PREFIX): -len("/" + metric)]
        if isinstance(labels, Mapping):
            name = labels.get(part, part)
        elif labels is not None and i < len(labels):
            name = f"{part}: {labels[i]}"
        else:
            name = part
        xs, ys = _column(rows, key)
        ax.plot(xs, ys, color=f"C{i % 10}", marker="o" if len(xs) < 12 else None, ms=3,
                label=f"{name} (last {ys[-1]:.4g})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title or f"distillation-term metric '{metric}' per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def vid_bounds(
    history: Any,
    ax: Optional["Axes"] = None,
    *,
    labels: Union[None, Sequence[str], Mapping[str, str]] = None,
) -> "Figure":
    """The VID lower bounds on the mutual information I(t; s) per feature pair, per epoch.

    :func:`term_metric` of ``"mi_bound"`` with VID's units: for each VID pair (teacher feature
    t, student feature s), ``bd.fit(distill=[VID(...)])`` records
    ``distill/<term>/pair<i>/mi_bound`` = H(t) + E[log q(t | s)] (nats per example; H(t) is
    the entropy of a diagonal Gaussian fitted to the teacher's features, so the bound rises as
    the amortized q(t | s) learns to predict the teacher's feature from the student's). One
    line per pair (a second VID term's pairs are ``vid1/pair<i>``).

    Args:
        history: a :class:`~bayesdistill.FitResult`, its ``history`` or the path of a
            ``history.csv``.
        ax: draw on this axes instead of a new figure.
        labels: names of the pairs for the legend, in pair order (e.g. ``["t:8 -> s:4"]``) or a
            mapping ``"vid/pair0"`` -> name.

    Raises:
        ValueError: the history holds no ``.../mi_bound`` column (no VID term was trained).
    """
    rows = _history_rows(history, "vid_bounds()")
    if not _metric_columns(rows, "mi_bound"):
        raise ValueError(
            f"vid_bounds(): the history has no VID columns ('{TERM_PREFIX}<term>/pair<i>/mi_bound'); they are "
            "recorded by bd.fit(..., distill=[VID(teacher, pairs=...)])"
        )
    return term_metric(rows, "mi_bound", ax=ax, labels=labels,
                       ylabel="H(t) + E[log q(t|s)]  (nats per example)",
                       title="VID lower bound on I(t; s) per teacher -> student feature pair")


# --------------------------------------------------------------------------- calibration
def calibration(result: CalibrationResult, ax: Optional["Axes"] = None, title: Optional[str] = None) -> "Figure":
    """A :class:`~bayesdistill.diagnostics.CalibrationResult`: reliability or coverage diagram.

    Classification: the top panel plots, per confidence bin, the accuracy of the top-1
    prediction against its mean confidence (a perfectly calibrated model lies on the diagonal;
    bars below it mean over-confidence) and the bottom panel the number of test points per bin;
    the ECE (``result.ece``) is in the title. The bucket of confidence exactly 1 is drawn in the
    top bin. Regression: the fraction of targets inside the central p-interval of the
    predictive against p, with the mean absolute coverage error in the title.

    Args:
        result: from :func:`bd.diagnostics.calibration(bnn, data) <bayesdistill.diagnostics.calibration>`
            (or :meth:`CalibrationResult.from_probs`).
        ax: draw only the reliability (or coverage) panel on this axes.
        title: a prefix for the title (e.g. the model's name).

    Raises:
        TypeError: ``result`` is not a CalibrationResult (e.g. a BNN).
    """
    if not isinstance(result, CalibrationResult):
        raise _not_a_result("calibration", result, "a CalibrationResult",
                            "bd.diagnostics.calibration(bnn, data)")
    if result.task == "regression":
        return _coverage(result, ax, title)

    n_bins = int(result.n_bins)
    counts = torch.tensor(result.count, dtype=torch.float64)
    acc = torch.tensor(result.accuracy, dtype=torch.float64)
    conf = torch.tensor(result.confidence, dtype=torch.float64)
    lower = torch.tensor(result.bin_lower[:n_bins], dtype=torch.float64)
    upper = torch.tensor(result.bin_upper[:n_bins], dtype=torch.float64)
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

    if ax is None:
        fig, axes = _new_figure(2, 1, figsize=(5.2, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        top, bottom = axes[0, 0], axes[1, 0]
    else:
        fig, top, bottom = ax.figure, ax, None
    top.bar(centers[nonempty], acc.numpy()[nonempty], width=width[nonempty], color="C0",
            edgecolor="k", alpha=0.8, label="accuracy")
    top.bar(centers[nonempty], (conf - acc).numpy()[nonempty], bottom=acc.numpy()[nonempty],
            width=width[nonempty], color="C3", alpha=0.3, hatch="//", edgecolor="C3", label="gap to confidence")
    top.set_aspect("auto")
    _unit_square(top, "confidence (top-1 predictive probability)" if bottom is None else None,
                 "accuracy (top-1)", title, f"reliability diagram: ECE = {result.ece:.4f}, N = {int(counts.sum())}")
    if bottom is not None:
        bottom.bar(centers, counts.numpy(), width=width, color="0.6", edgecolor="k")
        bottom.set_xlabel("confidence (top-1 predictive probability)")
        bottom.set_ylabel("count")
        bottom.grid(alpha=0.3)
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


def _coverage(result: CalibrationResult, ax: Optional["Axes"], title: Optional[str]) -> "Figure":
    if ax is None:
        fig, axes = _new_figure(1, 1, figsize=(5.2, 4.8))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    ax.plot(result.levels, result.observed, marker="o", color="C0", label="observed")
    _unit_square(ax, "nominal coverage of the central predictive interval", "observed coverage", title,
                 f"predictive interval coverage: mean |error| = {result.coverage_error:.4f}")
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
_CURVE_FIELDS = ("criterion", "compensation", "metric", "fraction", "values", "nll")


def _curve_fields(curve: Any) -> dict[str, Any]:
    """The fields of a pruning curve: a ``PruningCurve`` (attributes), its ``to_dict()``, or the
    older dict form that keeps the values under the metric's name."""
    if isinstance(curve, Mapping):
        c = dict(curve)
        if "values" not in c and c.get("metric") in c:
            c["values"] = c[c["metric"]]
    else:
        c = {k: getattr(curve, k) for k in _CURVE_FIELDS if hasattr(curve, k)}
    missing = [k for k in _CURVE_FIELDS if k not in c]
    if missing:
        raise TypeError(
            f"plots.pruning_curve() draws PruningCurve results (bd.distill.pruning_curve(teacher, data, ...)); "
            f"a {type(curve).__name__} lacks {missing}"
        )
    return c


def _curve_label(c: Mapping[str, Any]) -> str:
    comp = c.get("compensation")
    suffix = "" if comp is None else (", compensated" if comp else ", no compensation")
    return f"{c.get('criterion', '?')}{suffix}"


def pruning_curve(curves: Any, title: Optional[str] = None) -> "Figure":
    """Test accuracy (or RMSE) and NLL of a teacher aligned to narrower copies of itself.

    Draws one pruning curve or a list of them, overlaid (e.g. several criteria, with and without
    compensation): the results of :func:`bayesdistill.distill.pruning_curve` (fields
    ``criterion``, ``compensation``, ``metric`` (``"accuracy"`` or ``"rmse"``), ``fraction``,
    ``values``, ``nll``)::

        plots.pruning_curve([curve_snr, curve_snr_comp, curve_random])

    The left panel plots the accuracy (classification, probability units) or RMSE (regression,
    target units) against the fraction of hidden units removed, the right one the NLL (nats per
    example); colours follow the criterion, dashed lines are without compensation. No network
    is trained: each point is the aligned teacher posterior used as q(w).

    Raises:
        TypeError: not a pruning curve (e.g. a BNN) or a list of them.
        ValueError: an empty list, or curves of different metrics.
    """
    if isinstance(curves, Sequence) and not isinstance(curves, (str, Mapping)):
        items = list(curves)
        if not items:
            raise ValueError("pruning_curve(): no curves given")
    else:
        items = [curves]
    fields = [_curve_fields(c) for c in items]
    metrics = {str(c["metric"]) for c in fields}
    if len(metrics) > 1:
        raise ValueError(f"pruning_curve(): cannot overlay curves of different metrics {sorted(metrics)}")
    metric = metrics.pop()

    fig, axes = _new_figure(1, 2, figsize=(11.0, 4.4))
    left, right = axes[0, 0], axes[0, 1]
    crit_colors: dict[str, str] = {}
    for c in fields:
        color = crit_colors.setdefault(str(c.get("criterion")), f"C{len(crit_colors) % 10}")
        style = "--" if c.get("compensation") is False else "-"
        for ax, key in ((left, "values"), (right, "nll")):
            ax.plot(list(c["fraction"]), list(c[key]), marker="o", ls=style, color=color, label=_curve_label(c))
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
    return fig


# --------------------------------------------------------------------------- cosine distances
def cosine_distances(result: CosineDistances, title: Optional[str] = None, *, num_bins: int = 50) -> "Figure":
    """A :class:`~bayesdistill.diagnostics.CosineDistances`: one panel per model.

    Histograms (densities) of the cosine distances of the similar (same-class) and dissimilar
    pairs, with their means as vertical lines; each panel's title gives the model's layer, the
    mean distances and the separation AUC (the probability that a dissimilar pair is farther
    apart than a similar one; 0.5 = no separation).

    Args:
        result: from :func:`bd.diagnostics.cosine_distances(models, data) <bayesdistill.diagnostics.cosine_distances>`.
        title: the figure's title (default: a description of the pairs).
        num_bins: histogram bins (shared by all panels).

    Raises:
        TypeError: ``result`` is not a CosineDistances (e.g. a model).
    """
    if not isinstance(result, CosineDistances):
        raise _not_a_result("cosine_distances", result, "a CosineDistances",
                            "bd.diagnostics.cosine_distances([(name, model, layer), ...], data)")
    models = list(result.models.values())
    everything = [torch.cat([m.similar, m.dissimilar]) for m in models]
    hi = max((float(v.max()) for v in everything if v.numel()), default=0.0)
    edges = torch.linspace(0.0, max(hi, 1e-6), num_bins + 1, dtype=torch.float64).numpy()
    n = len(models)
    fig, axes = _new_figure(1, n, figsize=(4.2 * n + 0.4, 3.8), sharex=True)
    for ax, m in zip(axes[0], models):
        for v, color, what in ((m.similar, "tab:green", "similar (same class)"),
                               (m.dissimilar, "tab:red", "dissimilar (different class)")):
            if v.numel():
                ax.hist(v.numpy(), bins=edges, density=True, color=color, alpha=0.45, label=f"{what}, n={v.numel()}")
                ax.axvline(float(v.mean()), color=color, lw=1.2)
        where = f"module {m.layer!r}" if m.layer is not None else "network output"
        ax.set_title(f"{m.name} ({where})\nmean {m.mean_similar:.3f} vs {m.mean_dissimilar:.3f}, "
                     f"separation AUC {m.separation_auc:.3f}", fontsize=9)
        ax.set_xlabel("cosine distance 1 - cos")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="x-small")
    axes[0, 0].set_ylabel("density")
    fig.suptitle(title or f"cosine distances of {result.num_pairs} pairs of {result.num_examples} examples "
                 "(vertical lines: means)", fontsize=10)
    return fig


# --------------------------------------------------------------------------- learning curves
def learning_curves(
    histories: Mapping[str, Any],
    reference: Optional[Mapping[str, float]] = None,
    title: Optional[str] = None,
) -> "Figure":
    """Held-out accuracy (or RMSE) and NLL per epoch of several runs, side by side.

    Args:
        histories: run name -> a :class:`~bayesdistill.FitResult`, its ``history`` or a
            ``history.csv`` path, with the ``eval_*`` columns of ``fit(eval_data=...)``
            (``eval_accuracy`` or ``eval_rmse``, and ``eval_nll``).
        reference: metrics drawn as dashed horizontal lines labelled "teacher" (e.g. a
            teacher's ``bd.evaluate`` result: ``accuracy`` or ``rmse``, and ``nll``).
        title: the figure's title.

    Raises:
        ValueError: no histories.
    """
    from matplotlib.ticker import MaxNLocator

    if not isinstance(histories, Mapping) or not histories:
        raise ValueError("learning_curves(): histories must be a non-empty mapping name -> history")
    rows = {name: _history_rows(h, "learning_curves()") for name, h in histories.items()}
    fig, axes = _new_figure(1, 2, figsize=(11.0, 4.2))
    left, right = axes[0, 0], axes[0, 1]
    metric = "eval_accuracy" if any("eval_accuracy" in r for h in rows.values() for r in h) else "eval_rmse"
    for i, (name, h) in enumerate(rows.items()):
        for ax, key in ((left, metric), (right, "eval_nll")):
            xs, ys = _column(h, key)
            if xs:
                ax.plot(xs, ys, color=f"C{i % 10}", label=name)
    left.set_ylabel("test accuracy" if metric == "eval_accuracy" else "test RMSE (target units)")
    right.set_ylabel("test NLL (nats per example)")
    if reference:
        for ax, key in ((left, metric[len("eval_"):]), (right, "nll")):
            if key in reference:
                ax.axhline(reference[key], color="0.4", ls="--", lw=1, label="teacher")
    for ax, t in ((left, metric[len("eval_"):]), (right, "NLL")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(f"test {t} per epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- uncertainty
def _named(results: Any, cls: type, fn: str, expected: str, compute: str) -> list[tuple[str, Any]]:
    """``[(name, result)]`` of one result, a list of results (named by their ``name``) or a
    mapping name -> result."""
    if isinstance(results, Mapping):
        items = list(results.items())
    elif isinstance(results, Sequence) and not isinstance(results, (str, bytes)):
        items = [(getattr(r, "name", None), r) for r in results]
    else:
        items = [(getattr(results, "name", None), results)]
    if not items:
        raise ValueError(f"{fn}(): no results given")
    out = []
    for i, (name, r) in enumerate(items):
        if not isinstance(r, cls):
            raise _not_a_result(fn, r, expected, compute)
        out.append((str(name) if name is not None else f"model {i + 1}", r))
    return out


def _series_color(i: int, n: int) -> Any:
    """Colour of line i of n: the default cycle up to 10 lines, tab20 beyond (no colour repeats up to 20)."""
    if n <= 10:
        return f"C{i}"
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)


_SCORE_LABELS = {"entropy": "predictive entropy (nats)", "mutual_information": "mutual information (nats)",
                 "max_probability": "max predictive probability"}


def ood(result: OODResult, title: Optional[str] = None, *, num_bins: int = 40) -> "Figure":
    """An :class:`~bayesdistill.diagnostics.OODResult`: score histograms and ROC curves.

    One panel per score: the densities of the score on the in-distribution (blue) and the OOD
    inputs (red), titled with the AUROC and AUPR (OOD positive); the last panel draws the ROC
    curve of every score (true-positive rate = fraction of OOD inputs flagged, against the
    false-positive rate = fraction of in-distribution inputs flagged; the diagonal is chance).
    A point estimate's mutual information is 0 everywhere: its panel shows one spike.

    Args:
        result: from :func:`bd.diagnostics.ood_detection(model, in_data, ood_data)
            <bayesdistill.diagnostics.ood_detection>` (or :meth:`OODResult.from_probs`).
        title: the figure's title (default: the model's name and the set sizes).
        num_bins: histogram bins per panel.

    Raises:
        TypeError: ``result`` is not an OODResult (e.g. a model).
    """
    if not isinstance(result, OODResult):
        raise _not_a_result("ood", result, "an OODResult", "bd.diagnostics.ood_detection(model, in_data, ood_data)")
    scores = list(result.scores.values())
    n = len(scores) + 1
    fig, axes = _new_figure(1, n, figsize=(3.9 * n + 0.4, 3.7))
    for ax, sc in zip(axes[0], scores):
        both = torch.cat([sc.in_values, sc.ood_values])
        lo, hi = float(both.min()), float(both.max())
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        edges = torch.linspace(lo, hi, num_bins + 1, dtype=torch.float64).numpy()
        ax.hist(sc.in_values.numpy(), bins=edges, density=True, color="tab:blue", alpha=0.5,
                label=f"in distribution, n={result.num_in}")
        ax.hist(sc.ood_values.numpy(), bins=edges, density=True, color="tab:red", alpha=0.5,
                label=f"OOD, n={result.num_ood}")
        ax.set_xlabel(_SCORE_LABELS.get(sc.name, sc.name))
        ax.set_title(f"{sc.name}: AUROC {sc.auroc:.3f}, AUPR {sc.aupr:.3f}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="x-small")
    axes[0, 0].set_ylabel("density")
    last = axes[0, -1]
    for i, sc in enumerate(scores):
        fpr, tpr = sc.roc_curve()
        last.plot(fpr.numpy(), tpr.numpy(), color=f"C{i % 10}", label=f"{sc.name} (AUROC {sc.auroc:.3f})")
    _roc_axes(last, "ROC, OOD = positive")
    who = f"{result.name}: " if result.name else ""
    s = f", S = {result.num_samples}" if result.num_samples else ""
    fig.suptitle(title or f"{who}OOD detection by uncertainty scores{s}", fontsize=10)
    return fig


def _roc_axes(ax, title: str) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate (in-distribution flagged)")
    ax.set_ylabel("true-positive rate (OOD flagged)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="x-small")


def roc(results: Any, score: str = "mutual_information", title: Optional[str] = None,
        ax: Optional["Axes"] = None) -> "Figure":
    """ROC curves of one uncertainty score for several models, overlaid.

    Args:
        results: an :class:`~bayesdistill.diagnostics.OODResult`, a list of them (named by
            their ``name``) or a mapping name -> OODResult (e.g. teacher and students on the
            same in-distribution and OOD inputs).
        score: ``"entropy"``, ``"mutual_information"`` or ``"max_probability"``.
        title: the axes' title.
        ax: draw on this axes instead of a new figure.

    Raises:
        TypeError: a result that is not an OODResult.
        KeyError: a result without that score.
    """
    items = _named(results, OODResult, "roc", "OODResult objects",
                   "bd.diagnostics.ood_detection(model, in_data, ood_data)")
    if ax is None:
        fig, axes = _new_figure(1, 1, figsize=(5.2, 4.8))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    for i, (name, r) in enumerate(items):
        if score not in r.scores:
            raise KeyError(f"roc(): the result of {name!r} has no score {score!r} (it has {list(r.scores)})")
        fpr, tpr = r[score].roc_curve()
        ax.plot(fpr.numpy(), tpr.numpy(), color=_series_color(i, len(items)),
                label=f"{name} (AUROC {r[score].auroc:.3f})")
    _roc_axes(ax, title or f"ROC of the {score.replace('_', ' ')}, OOD = positive")
    return fig


def selective(results: Any, title: Optional[str] = None) -> "Figure":
    """Accuracy-coverage (left) and risk-coverage (right) curves of one or several models.

    Each line is a :class:`~bayesdistill.diagnostics.SelectiveResult`: the accuracy (0-1
    risk) of the model's k most confident answers against the coverage k / N; the legend gives
    the area under the accuracy-coverage curve and the AURC. A model whose confidence ranks its
    errors last rises to the left; the dotted line of the same colour is its accuracy at full
    coverage.

    Args:
        results: a SelectiveResult, a list of them (named by their ``name``) or a mapping
            name -> SelectiveResult.
        title: the figure's title.

    Raises:
        TypeError: a result that is not a SelectiveResult (e.g. a model).
    """
    items = _named(results, SelectiveResult, "selective", "SelectiveResult objects",
                   "bd.diagnostics.selective_prediction(model, data)")
    fig, axes = _new_figure(1, 2, figsize=(11.0, 4.4))
    left, right = axes[0, 0], axes[0, 1]
    for i, (name, r) in enumerate(items):
        color = _series_color(i, len(items))
        left.plot(r.coverage, r.selective_accuracy, color=color, label=f"{name} (area {r.area_accuracy:.3f})")
        left.axhline(r.accuracy, color=color, ls=":", lw=1)
        right.plot(r.coverage, r.risk, color=color, label=f"{name} (AURC {r.aurc:.3f})")
    scores = sorted({r.score for _, r in items})
    left.set_ylabel("accuracy of the answered inputs")
    left.set_title("accuracy-coverage (higher is better)", fontsize=9)
    right.set_ylabel("selective risk (error rate of the answered)")
    right.set_title("risk-coverage (lower is better)", fontsize=9)
    for a in (left, right):
        a.set_xlabel(f"coverage (fraction answered, most confident first by {', '.join(scores)})")
        a.set_xlim(0, 1)
        a.grid(alpha=0.3)
        a.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- saving
def save(fig: "Figure", path: Union[str, os.PathLike], *, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (temporary file + ``os.replace``).

    Creates the parent folder. A crash mid-write leaves the old file (or none), never a torn PNG.
    Returns the path.
    """
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))


# --------------------------------------------------------------------------- weight noise
def weight_noise(results: Any, title: Optional[str] = None, ax: Optional["Axes"] = None) -> "Figure":
    """Accuracy under weight noise per noise level (:func:`~bayesdistill.diagnostics.weight_noise_robustness`).

    Args:
        results: one :class:`~bayesdistill.diagnostics.WeightNoiseRobustness`, or a mapping
            run name -> result (one line each; error bars: the standard deviation over the draws).
        title: the axes' title.
    """
    from .robustness import WeightNoiseRobustness

    runs = {"": results} if isinstance(results, WeightNoiseRobustness) else results
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("weight_noise(): pass a WeightNoiseRobustness or a non-empty mapping name -> result")
    for name, r in runs.items():
        if not isinstance(r, WeightNoiseRobustness):
            raise _not_a_result("weight_noise", r, "WeightNoiseRobustness results",
                                "bd.diagnostics.weight_noise_robustness(bnn, data)")
    if ax is None:
        fig, axes = _new_figure(1, 1, figsize=(5.6, 4.0))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    relative = any(r.relative for r in runs.values())
    for i, (name, r) in enumerate(runs.items()):
        ax.errorbar(r.sigmas, r.accuracy, yerr=r.std, color=f"C{i % 10}", marker="o", ms=3, capsize=2,
                    label=name or None)
    ax.set_xlabel("noise scale sigma" + (" (fraction of each weight)" if relative else " (weight units)"))
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "accuracy under weight noise")
    ax.grid(alpha=0.3)
    if any(runs):
        ax.legend(loc="best", fontsize="small")
    return fig
