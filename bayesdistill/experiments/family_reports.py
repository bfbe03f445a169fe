"""Reports of the family commands (``generalized``, ``record``, ``datafree``, ``grow``): console
summaries and ``report.md``, rendered from a run's ``metrics.json`` dict only (no number typed
by hand; numbers printed with :func:`~bayesdistill.experiments.reports.format_value`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from .reports import compare_table, format_value, markdown_table, uncertainty_rows

__all__ = ["mean_pm_std", "generalized_table", "generalized_report", "generalized_summary", "record_summary",
           "network_columns", "datafree_report", "datafree_summary", "grow_report", "grow_summary"]


def _d(result: Any) -> dict[str, Any]:
    return result.to_dict() if callable(getattr(result, "to_dict", None)) else dict(result)


def mean_pm_std(value: Mapping[str, Optional[float]]) -> str:
    """``"mean ± std"`` (the mean alone when ``std`` is ``None``: one seed)."""
    mean, std = value["mean"], value.get("std")
    return format_value(mean) if std is None else f"{format_value(mean)} ± {format_value(std)}"


def _wall(m: Mapping[str, Any], out: Optional[Path]) -> str:
    return f"\nwall time {m['wall_time_s']:.1f} s; artefacts in {out}" if out is not None else ""


# --------------------------------------------------------------------------- generalized
def generalized_table(m: Mapping[str, Any]) -> str:
    """Markdown: one row per role, the summary metrics as mean ± std over the seeds."""
    metrics = list(dict.fromkeys(k for role in m["roles"] for k in m["summary"][role]))
    lines = ["| role | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for role in m["roles"]:
        s = m["summary"][role]
        lines.append(f"| {role} | " + " | ".join(mean_pm_std(s[k]) if k in s else "-" for k in metrics) + " |")
    return "\n".join(lines)


def _per_seed_table(m: Mapping[str, Any]) -> str:
    lines = ["| seed | " + " | ".join(f"{r} accuracy" for r in m["roles"]) + " | gain |",
             "|---" * (len(m["roles"]) + 2) + "|"]
    for e, g in zip(m["per_seed"], m["gain"]["per_seed"]):
        lines.append(f"| {e['seed']} | " + " | ".join(format_value(e[r]["test"]["accuracy"]) for r in m["roles"])
                     + f" | {format_value(g)} |")
    return "\n".join(lines)


def generalized_report(result: Any) -> str:
    """``report.md`` of a ``generalized`` run."""
    m = _d(result)
    c = m["config"]
    first = m["per_seed"][0]
    unc = (first["student"].get("uncertainty") or {}).get("statement")
    parts = [
        f"# Generalized distillation on {m['dataset']}",
        f"Teacher on the privileged inputs x*, student on the regular inputs x, distilled student on x with the "
        f"teacher's soft labels on x* (bd.distill.generalized_distillation; Lopez-Paz et al. 2016). Seeds "
        f"{', '.join(map(str, m['seeds']))} ({first['train_size']} training and {first['test_size']} test "
        f"examples each); T = {format_value(c['temperature'])}, lambda = {format_value(c['imitation'])}, "
        f"{c['epochs']} epochs, lr {format_value(c['lr'])}, kl_weight {format_value(c['kl_weight'])}, "
        f"{c['num_samples']} posterior draws. The teacher is tested on x*, the students on x.",
        "## Test metrics (mean ± standard deviation over the seeds)",
        generalized_table(m),
        f"Gain of the distilled student over the student (accuracy): {mean_pm_std(m['gain'])}.",
        "## Per seed",
        _per_seed_table(m),
    ]
    if unc:
        parts.append(f"Uncertainty step: {unc}.")
    return "\n\n".join(parts) + "\n"


def generalized_summary(result: Any, out: Optional[Path] = None) -> str:
    """The console summary of a ``generalized`` run."""
    m = _d(result)
    cols = {role: {k: mean_pm_std(v) for k, v in m["summary"][role].items()} for role in m["roles"]}
    return (compare_table(cols, f"{m['dataset']}: test metrics, mean ± std over seeds "
                                f"{', '.join(map(str, m['seeds']))}")
            + f"\ndistilled - student accuracy: {mean_pm_std(m['gain'])}" + _wall(m, out))


# --------------------------------------------------------------------------- record
def record_summary(result: Any) -> str:
    """The console summary of a ``record`` run."""
    m = _d(result)
    return (f"record: {m['kind']} record of {m['teacher']} on {m['dataset']} ({m['examples']} training examples, "
            f"{m['num_classes']} classes, T={format_value(m['temperature'])}): {m['num_values']} numbers in "
            f"{len(m['blocks'])} block(s) ({', '.join(m['blocks'])}); written to {m['out']}")


# --------------------------------------------------------------------------- networks side by side
def network_columns(networks: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """name -> its test metrics and uncertainty rows (``networks``: name -> ``{"test", "uncertainty"}``)."""
    return {name: {**n["test"], **uncertainty_rows(n.get("uncertainty"))} for name, n in networks.items()}


def _networks_summary(m: Mapping[str, Any], title: str, out: Optional[Path]) -> str:
    return compare_table(network_columns(m["networks"]), title) + _wall(m, out)


# --------------------------------------------------------------------------- datafree
def datafree_report(result: Any) -> str:
    """``report.md`` of a ``datafree`` run."""
    m = _d(result)
    c, r = m["config"], m["reconstruction"]
    return "\n\n".join([
        f"# Data-free distillation of {m['teacher']['model']} into {m['student']['model']}",
        f"Inputs reconstructed from the teacher's {r['kind']} record ({m['record']['num_values']} numbers; "
        f"objective {r['objective']}, {r['steps']} steps): {r['inputs']} inputs, mean reconstruction loss "
        f"{format_value(r['loss_start'])} -> {format_value(r['loss_end'])}; the teacher gives the target class for "
        f"{format_value(r['target_class_rate'])} of them. The student (prior Normal(0, 1)) was distilled on them by "
        f"KD at T = {format_value(c['temperature'])} for {c['epochs']} epochs; no training example and no label "
        f"was used. Evaluated on the {m['test_size']} test examples of {m['dataset']} "
        f"({c['num_samples']} posterior draws).",
        "## Test metrics",
        markdown_table(network_columns(m["networks"])),
        f"The student agrees with the teacher's predicted class on {format_value(m['agreement'])} of the test set.",
    ]) + "\n"


def datafree_summary(result: Any, out: Optional[Path] = None) -> str:
    """The console summary of a ``datafree`` run."""
    m = _d(result)
    r = m["reconstruction"]
    return (_networks_summary(m, f"data-free: {r['inputs']} inputs from a {r['kind']} record; test set of "
                                 f"{m['dataset']}", None)
            + f"\nstudent-teacher agreement: {format_value(m['agreement'])}" + _wall(m, out))


# --------------------------------------------------------------------------- grow
def grow_report(result: Any) -> str:
    """``report.md`` of a ``grow`` run."""
    m = _d(result)
    c = m["config"]
    parts = [
        f"# {m['large']['model']} grown from {m['small']['model']} on {m['dataset']}",
        f"The small network's posterior ({m['small']['num_weights']} weights, {m['small']['path']}) grown into "
        f"{m['large']['model']} ({m['large']['num_weights']} weights) by mode {c['mode']} "
        f"(function preserving: {m['plan']['function_preserving']}), prior on the old weights {c['prior_scale']}, "
        f"on the new ones Normal(0, {format_value(c['new_prior_scale'])}), start {c['init']}; then SVI for "
        f"{c['epochs']} epochs (lr {format_value(c['lr'])}, kl_weight {format_value(c['kl_weight'])}) on "
        f"{m['train_size']} training examples"
        + ("; against the same network from scratch (prior Normal(0, 1), its own initialization) with the same "
           "settings" if "scratch" in m["networks"] else "") + f". Test set: {m['test_size']} examples, "
        f"{c['num_samples']} posterior draws.",
        "## Test metrics",
        markdown_table(network_columns(m["networks"])),
        "![training curves](elbo.png)",
    ]
    return "\n\n".join(parts) + "\n"


def grow_summary(result: Any, out: Optional[Path] = None) -> str:
    """The console summary of a ``grow`` run."""
    m = _d(result)
    return _networks_summary(m, f"grow ({m['config']['mode']}): {m['small']['model']} -> {m['large']['model']} on "
                                f"{m['dataset']}", out)
