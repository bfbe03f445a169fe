"""Reports written from the numbers of a run alone: console tables and the demo's Markdown report.

Every number these functions print comes from the result objects they are given (metrics,
settings, counts of the run); none is quoted from elsewhere. Results from other experiments are
pointed at (the docs pages), never copied.

- console: :func:`metrics_table`, :func:`compare_table`, :func:`teacher_summary`,
  :func:`evaluation_summary`, :func:`distill_summary`, :func:`function_space_summary`,
  :func:`uncertainty_summary`;
- Markdown: :func:`markdown_table`, :func:`demo_report`.

Every network's OOD detection and selective prediction (its ``uncertainty`` entry,
:mod:`bayesdistill.experiments.uncertainty`) appears as rows next to its test metrics
(:func:`uncertainty_rows`) and, per OOD kind, in :func:`uncertainty_summary` and the demo report's
section "Does the student know what it does not know?".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..distill.terms.registry import TERMS
from .uncertainty import KEPT_FORMULA

if TYPE_CHECKING:
    from .demo import DemoResult

__all__ = ["format_value", "metrics_table", "compare_table", "markdown_table", "teacher_summary",
           "evaluation_summary", "distill_summary", "function_space_summary", "distill_columns",
           "function_space_columns", "demo_report", "REFERENCES", "uncertainty_rows", "uncertainty_summary"]

#: The works the report cites (author and year): text, not measurements.
REFERENCES = {"grabovoy2021": "Grabovoy & Strijov, 2021"}


def _d(result: Any) -> dict[str, Any]:
    return result.to_dict() if callable(getattr(result, "to_dict", None)) else dict(result)


def format_value(value: Any) -> str:
    """Floats with 4 decimals (or 3 significant digits in scientific notation when tiny)."""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def metrics_table(metrics: Mapping[str, Any], title: str) -> str:
    """One metric per line under ``title``."""
    width = max(len(k) for k in metrics)
    lines = [title, "-" * max(len(title), width + 12)]
    lines += [f"{k:<{width}}  {format_value(v):>10}" for k, v in metrics.items()]
    return "\n".join(lines)


def _keys(columns: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for m in columns.values() for k in m if k != "num_samples"))


def compare_table(columns: Mapping[str, Mapping[str, Any]], title: str) -> str:
    """Metrics side by side: one column per network (name -> metrics)."""
    keys = _keys(columns)
    width = max([len(k) for k in keys] + [8])
    colw = max([len(c) for c in columns] + [10])
    header = f"{'':<{width}}  " + "  ".join(f"{c:>{colw}}" for c in columns)
    lines = [title, "-" * max(len(title), len(header)), header]
    for k in keys:
        cells = "  ".join(f"{format_value(m[k]) if k in m else '-':>{colw}}" for m in columns.values())
        lines.append(f"{k:<{width}}  {cells}")
    return "\n".join(lines)


def markdown_table(columns: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per metric, one column per network."""
    lines = ["| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for k in _keys(columns):
        lines.append(f"| {k} | " + " | ".join(format_value(m[k]) if k in m else "-" for m in columns.values()) + " |")
    return "\n".join(lines)


def _wall(m: Mapping[str, Any], out: Optional[Path]) -> str:
    return f"\nwall time {m['wall_time_s']:.1f} s; artefacts in {out}" if out is not None else ""


_SHORT_SCORES = {"entropy": "entropy", "mutual_information": "MI", "max_probability": "max prob."}


def uncertainty_rows(u: Optional[Mapping[str, Any]], placeholders: bool = False) -> dict[str, Any]:
    """The headline numbers of a network's ``uncertainty`` entry as table rows: the mean OOD AUROC
    per score, the share of the teacher's it keeps (with a teacher in the run), the selective
    area and the accuracy at the recipe's coverage (nothing when not computed). With
    ``placeholders``, a network without a kept share (the teacher) gets ``"-"`` in those rows, so
    that the rows of a table keep this order."""
    if not u or not u.get("applicable"):
        return {}
    n = len(u.get("kinds") or [])
    rows: dict[str, Any] = {f"OOD AUROC {_SHORT_SCORES.get(k, k)} (mean of {n})": v
                            for k, v in (u.get("mean_auroc") or {}).items()}
    kept = (u.get("kept") or {}).get("auroc") or ({k: None for k in u.get("mean_auroc") or {}} if placeholders else {})
    rows.update({f"kept AUROC {_SHORT_SCORES.get(k, k)}": "-" if v is None else v for k, v in kept.items()
                 if v is not None or placeholders})
    rows["selective area"] = u["selective_area"]
    rows[f"accuracy at coverage {u['coverage']:g}"] = u["accuracy_at_coverage"]
    return rows


def uncertainty_summary(u: Optional[Mapping[str, Any]]) -> str:
    """One network's OOD detection (AUROC per OOD kind and score, and their mean) and selective
    prediction; the statement alone when nothing was computed; ``""`` when it was not asked for."""
    if not u:
        return ""
    if not u.get("applicable"):
        return f"uncertainty: {u['statement']}"
    parts = []
    if u.get("kinds"):
        cols = {_SHORT_SCORES.get(k, k): {**{kind: u["auroc"][kind][k] for kind in u["kinds"]},
                                          "mean": u["mean_auroc"][k]} for k in u["scores"]}
        parts.append(compare_table(cols, f"OOD detection: AUROC (OOD positive) against {u['dataset']}'s OOD sets "
                                         f"(S = {u['num_samples']} draws)"))
    sel = {"selective area": u["selective_area"], f"accuracy at coverage {u['coverage']:g}": u["accuracy_at_coverage"],
           "e-AURC": u["selective"]["e_aurc"]}
    parts.append(metrics_table(sel, f"selective prediction (ranked by {u['selective']['score']})"))
    if not u.get("kinds"):
        parts.append(f"uncertainty: {u['statement']}")
    return "\n\n".join(parts)


def _with_uncertainty(table: str, m: Mapping[str, Any]) -> str:
    extra = uncertainty_summary(m.get("uncertainty"))
    return table + ("\n\n" + extra if extra else "")


def teacher_summary(result: Any, out: Optional[Path] = None) -> str:
    """The test metrics of a teacher run, its OOD detection and selective prediction (and its
    wall time and folder)."""
    m = _d(result)
    shown = dict(m["test"])
    s = shown.pop("num_samples", "?")
    return _with_uncertainty(metrics_table(shown, f"test metrics: {m['model']} on {m['dataset']} (S = {s} draws)"),
                             m) + _wall(m, out)


def evaluation_summary(result: Any) -> str:
    """The test metrics of a saved model, its OOD detection and selective prediction."""
    m = _d(result)
    shown = dict(m["test"])
    s = shown.pop("num_samples", "?")
    return _with_uncertainty(metrics_table(shown, f"test metrics: {m['model']} on {m['dataset']} (S = {s} draws)"), m)


def distill_columns(m: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The networks of a distillation run side by side: teacher, aligned, distilled, plain (test
    metrics, OOD detection and selective prediction, weights, separation AUC)."""
    keys = [k for k in ("teacher", "aligned", "distilled", "plain") if m.get(k)]
    cols = {key: {**m[key]["test"], **uncertainty_rows(m[key].get("uncertainty"), True)} for key in keys}
    for key in cols:
        cols[key]["weights"] = m["teacher" if key == "teacher" else "distilled"]["num_weights"]
    cos = m.get("cosine") or {}
    for key, name in zip(("teacher", "plain", "distilled"), cos):
        cols[key]["separation AUC"] = cos[name]["separation_auc"]
    return cols


def distill_summary(result: Any, out: Optional[Path] = None) -> str:
    m = _d(result)
    s = m["distilled"]["test"].get("num_samples", "?")
    methods = ",".join(m.get("methods") or ["prior"])
    title = (f"test metrics on {m['dataset']} (S = {s} draws): teacher {m['teacher']['model']}, student "
             f"{m['student']['model']} " + ("aligned (before training), " if m.get("aligned") else "")
             + f"distilled (--method {methods}), plain")
    return compare_table(distill_columns(m), title) + _uncertainty_note(m["teacher"].get("uncertainty")) + _wall(m, out)


def _uncertainty_note(u: Optional[Mapping[str, Any]]) -> str:
    """What the uncertainty rows of a comparison measured (or why there are none)."""
    if not u:
        return ""
    return "\nuncertainty: " + u["statement"] + (f"; kept AUROC: {KEPT_FORMULA['auroc']}" if u.get("applicable")
                                                 else "")


def function_space_columns(fs: Mapping[str, Any], uncertainty: bool = True) -> dict[str, dict[str, Any]]:
    """The teacher and each student of the function-space comparison: test metrics (with
    ``uncertainty``, the OOD detection and selective prediction), weights, separation AUC of
    the cosine distances, training time."""
    names = list(fs["cosine"])  # the teacher first, then the students in order
    def rows(u: Any) -> dict[str, Any]:
        return uncertainty_rows(u, True) if uncertainty else {}

    cols = {names[0]: {**fs["teacher"]["test"], **rows(fs["teacher"].get("uncertainty"))}}
    cols[names[0]]["Bayesian weights"] = fs["teacher"]["num_weights"]
    cols[names[0]]["separation AUC"] = fs["cosine"][names[0]]["separation_auc"]
    for name, r in fs["students"].items():
        cols[name] = {**r["test"], **rows(r.get("uncertainty"))}
        cols[name]["Bayesian weights"] = r["num_weights"]
        cols[name]["separation AUC"] = fs["cosine"][name]["separation_auc"]
        cols[name]["train time (s)"] = r["train_time_s"]
    return cols


def function_space_summary(result: Any) -> str:
    fs = _d(result)
    s = fs["teacher"]["test"].get("num_samples", "?")
    return compare_table(function_space_columns(fs), f"function space: teacher {fs['teacher']['model']} -> Bayesian "
                         f"{fs['student']['model']} students on {fs['dataset']} (S = {s} draws)") \
        + _uncertainty_note(fs["teacher"].get("uncertainty"))


# --------------------------------------------------------------------------- the demo's report
def _settings(cfg: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)


def _teacher_section(t: Mapping[str, Any]) -> str:
    cfg = t["config"]
    hyper = _settings(cfg, ("epochs", "lr", "batch_size", "prior_scale", "lr_schedule", "kl_weight", "train_fraction",
                            "seed"))
    env = t.get("environment") or {}
    return f"""## The teacher

A mean-field Bayesian network (`{t['model']}`, {t['num_weights']} Bayesian weights, prior N(0, s²) with
s = {cfg['prior_scale']}) trained by stochastic variational inference on {t['train_size']} training examples of
`{t['dataset']}` for {t['epochs_trained']} epochs ({t['wall_time_s']:.1f} s on device {cfg['device']},
torch threads: {env.get('torch_threads', '?')}). Hyperparameters: {hyper}. Artefacts in `teacher/` (model, posterior, metrics,
history, [ELBO](teacher/elbo.png), [calibration](teacher/calibration.png), [SNR](teacher/snr.png)).
"""


def _layer_rows(plan: Mapping[str, Any]) -> str:
    rows = []
    for L in plan["layers"]:
        student = "removed" if L["removed"] else L["student"]
        units = f"{L['teacher_units']} -> " + ("removed" if L["removed"] else f"{L['student_units']}")
        err = L.get("error")
        recon = f"{err['restricted']:.3g} -> {err['compensated']:.3g}" if err else "-"
        rows.append(f"| {L['teacher']} | {student} | {units} | {recon} |")
    return "\n".join(rows)


def _alignment_text(plan: Mapping[str, Any], probe_size: int) -> str:
    removed = [L["teacher"] for L in plan["layers"] if L["removed"]]
    folded = (f"teacher layer{'s' if len(removed) > 1 else ''} {', '.join(f'`{r}`' for r in removed)} folded away "
              f"by `{plan['removal']}`" if removed else "no layer removed")
    return (f"units removed by the `{plan['criterion']}` criterion, {folded}, compensation "
            f"{'on' if plan['compensation'] else 'off'}" + (f" with {probe_size} teacher training inputs as probe "
                                                            "data" if probe_size else ""))


def _student_section(s: Mapping[str, Any]) -> str:
    cfg, plan = s["config"], s["plan"]
    dhyper = _settings(cfg, ("epochs", "lr", "batch_size", "kl_weight", "lr_schedule", "criterion", "prior_scale",
                             "init", "compensation", "train_fraction", "seed"))
    cols = {name: dict(s[key]["test"]) for name, key in (
        ("teacher", "teacher"), ("aligned, untrained", "aligned"), ("distilled", "distilled"), ("plain", "plain"))}
    for name in cols:
        cols[name]["Bayesian weights"] = s["teacher" if name == "teacher" else "distilled"]["num_weights"]
    out_err = (f" The aligned teacher reproduces the full teacher's outputs on the probe data up to a relative error "
               f"of {plan['output_error']:.3g}." if plan.get("output_error") is not None else "")
    images = "\n\n".join(f"![{alt}]({path})" for alt, path in (
        ("students", "student/students.png"), ("alignment", "student/alignment.png"),
        ("pruning curve", "student/pruning_curve.png")))
    return f"""## The students

The student `{s['student']['model']}` ({s['distilled']['num_weights']} Bayesian weights, the teacher
{s['teacher']['num_weights']}) is trained on {s['train_size']} training examples. The teacher's posterior is
aligned to the student's structure ({REFERENCES['grabovoy2021']}: {_alignment_text(plan, s['probe_size'])}) and
becomes the **distilled** student's prior (and, with `init={cfg['init']}`, its starting point). The **plain**
student has the same architecture, a {s['student'].get('plain_prior', 'Normal')} prior and the network's own
initialization; both are trained with the same settings: {dhyper}.

Test metrics (posterior predictive, {s['distilled']['test'].get('num_samples')} weight draws, {s['test_size']}
test examples; NLL and entropies in nats per example). "aligned, untrained" is the aligned teacher posterior
used as the student's q(w) before any training.

{markdown_table(cols)}

Alignment, per teacher layer (relative reconstruction error of the layer's pre-activations on the probe
data: by the unit selection alone -> with the compensating re-fits):{out_err}

| teacher layer | student layer | units | reconstruction error |
|---|---|---|---|
{_layer_rows(plan)}

{images}

The pruning curve narrows every hidden layer of the teacher (keeping its depth) and evaluates the
aligned posterior without training: it shows what the unit selection, and the least-squares
compensation on probe data, keep of the teacher's function.
"""


def _variant_line(name: str, methods: list[str], c: Mapping[str, Any], pairs: Mapping[str, str]) -> str:
    if not methods:
        return f"- **{name}**: the ELBO alone;"
    parts = []
    for m in methods:
        spec = TERMS.get(m)
        settings = ", ".join(f"{k[len(m) + 1:]}={v}" for k, v in c.items() if k.startswith(m + "_"))
        on = (" on " + ", ".join(f"teacher `{t}` -> student `{s}`" for t, s in pairs.items())) if spec and spec.pairs \
            else ""
        parts.append(f"`{m}` ({spec.description if spec else m}; {settings}){on}")
    return f"- **{name}**: " + " plus ".join(parts) + ";"


def _versus_plain(fs: Mapping[str, Any]) -> str:
    lines = [f"{name} vs plain: accuracy {d['accuracy_points']:+.1f} points, NLL {d['nll']:+.3f} nats, "
             f"ECE {d['ece']:+.3f}" for name, d in (fs.get("versus_plain") or {}).items()]
    return f"In this run (seed {fs['config']['seed']}): " + "; ".join(lines) + "." if lines else ""


def _function_space_section(fs: Mapping[str, Any]) -> str:
    c, st = fs["config"], fs["students"]
    widths = fs["student"].get("widths")
    arch = (f"{'-'.join(str(w) for w in widths)}, " if widths else "")
    variants = "\n".join(_variant_line(name, r["methods"], c, fs["pairs"]) for name, r in st.items())[:-1] + "."
    tf = f" --train-fraction {c['train_fraction']}" if c["train_fraction"] != 1.0 else ""
    vid = any(k.endswith("/mi_bound") for r in st.values() for k in r["final_terms"])
    images = "\n\n".join(f"![{alt}](function-space/{f})" for alt, f in (
        ("students", "students.png"), ("VID bounds", "vid_bounds.png"), ("cosine distances", "cosine_distances.png"))
        if f != "vid_bounds.png" or vid)
    return f"""## Function space: a `{fs['teacher']['model']}` teacher into Bayesian `{fs['student']['model']}` students

No alignment maps this teacher's posterior onto students of another kind, so there is no teacher
prior: knowledge moves through what the networks compute instead. The same teacher is distilled into
Bayesian `{fs['student']['model']}` students ({arch}prior {fs['student']['prior']}, the same initialization for
all) on {fs['train_size']} training examples, {c['epochs']} epochs each ({_settings(c, ('lr', 'batch_size',
'kl_weight', 'lr_schedule'))}). The students:

{variants}

Every term is part of the student's ELBO and is fitted by the same SVI (`bd.fit(..., distill=[...])`).
Test metrics (posterior predictive, {fs['teacher']['test'].get('num_samples')} weight draws, {fs['test_size']}
test examples); "separation AUC": how well the cosine distances of the last hidden representations
separate pairs of test examples of different classes from pairs of the same class (chance level: no
separation at all).

{markdown_table(function_space_columns(fs, uncertainty=False))}

{_versus_plain(fs)}

More experiments (several seeds, longer training, transfer sets of generated unlabelled inputs) are
in docs/function-space.md. The command line trains one such student:
`bayesdistill distill --teacher teacher/model.pt --student {fs['student']['model']} --method kd,vid --epochs {c['epochs']}{tf}`.

{images}

`vid_bounds.png` plots the lower bound H(t) + E[log q(t|s)] on the mutual information between the
teacher's and the student's features (nats per example) over training. H(t) is the entropy of a
diagonal Gaussian fitted to the teacher's features on training inputs; ReLU units that are always
zero contribute a large negative entropy each, so the bound can sit far below zero (vacuous as a
number): its rise over training, as q(t | s) learns to predict the teacher's feature from the
student's, is what it shows (docs/function-space.md, "Caveats"). `cosine_distances.png` shows, as for
sentence encoders, the distances of similar (same class) and dissimilar pairs for the teacher and each
student.
"""


def _uncertainty_networks(student: Mapping[str, Any], fs: Optional[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The demo's networks with their test metrics and ``uncertainty`` entries, by report name."""
    nets = {name: student[key] for name, key in (("teacher", "teacher"), ("aligned, untrained", "aligned"),
                                                 ("distilled", "distilled"), ("plain", "plain")) if student.get(key)}
    for name, r in ((fs or {}).get("students") or {}).items():
        nets[f"{name} (function space)"] = r
    return nets


def _uncertainty_section(student: Mapping[str, Any], fs: Optional[Mapping[str, Any]]) -> str:
    """Does the student know what it does not know? Every network's OOD detection and selective
    prediction, from the run's ``uncertainty`` entries (no section when they were not computed)."""
    nets = _uncertainty_networks(student, fs)
    found = {name: r.get("uncertainty") for name, r in nets.items() if r.get("uncertainty")}
    title = "## Does the student know what it does not know?\n\n"
    if not found:
        return ""
    t = found.get("teacher") or next(iter(found.values()))
    if not t.get("applicable"):
        return title + f"OOD detection and selective prediction: {t['statement']}.\n"
    summary = {name: {**{k: nets[name]["test"][k] for k in ("accuracy", "nll", "ece") if k in nets[name]["test"]},
                      **uncertainty_rows(u, True)} for name, u in found.items()}
    kinds = t.get("kinds") or []
    per_kind = {name: {f"{_SHORT_SCORES.get(sc, sc)}: {kind}": u["auroc"][kind][sc] for sc in u["scores"]
                       for kind in kinds if kind in u["auroc"]} for name, u in found.items()}
    sets = "\n".join(f"- `{kind}` ({t['num_ood'][kind]} inputs): {t['descriptions'][kind]}" for kind in kinds)
    kept = next((u["kept"] for u in found.values() if u.get("kept")), None)
    kept_text = (f" **kept** is the share of the teacher's above-chance AUROC a student keeps, "
                 f"{kept['formula']['auroc']} (0: chance, negative: worse than chance)." if kept else "")
    tables = (f"""OOD detection (AUROC, OOD inputs positive) by the predictive entropy and the mutual information
(MI, the epistemic part), mean over the OOD kinds; selective prediction: the area under the
accuracy-coverage curve (the model answers its most confident test inputs first, ranked by the
{t['selective']['score'].replace('_', ' ')}) and the accuracy of its most confident answers at the given coverage.{kept_text}

{markdown_table(summary)}

AUROC per OOD kind and score:

{markdown_table(per_kind)}
""" if kinds else f"""Selective prediction (no OOD sets for this data set):

{markdown_table(summary)}
""")
    images = "\n\n".join(f"![{alt}]({path})" for alt, path in (
        ("ROC curves of the mutual information per OOD kind", "student/ood_roc.png"),
        ("selective prediction", "student/selective.png")) if kinds or path.endswith("selective.png"))
    intro = (f"its posterior predictive ({t['num_samples']} weight draws, seed {t['seed']}, the same draws for every "
             f"set) scores the {t['num_in']} test examples and the OOD inputs of each kind below "
             f"(`bd.datasets.ood`, seed {t['seed']}), kinds that need no retraining: transformed test inputs and noise"
             if kinds else f"{t['statement']}")
    return f"""{title}A Bayesian teacher should be unsure on inputs unlike its training data, and sure where it is
right. For every network of this run, {intro}.

{sets}

{tables}
{images}

`ood_roc.png`: the ROC curves of the mutual information of the teacher and the students of `student/`,
one panel per OOD kind (the diagonal is chance); `selective.png`: their accuracy- and risk-coverage
curves. Every network's numbers, with the AUPR and the false-positive rates per kind, are in the
`uncertainty` entries of the `metrics.json` files. Held-out classes need a network
trained without them: docs/uncertainty.md measures them over several seeds and says which students keep
the teacher's uncertainty.
"""


def _files_section(fs_present: bool) -> str:
    fs_files = ("\n- `function-space/`: the students of the function-space comparison: `metrics.json`, "
                "`history_<student>.csv`, `students.png`, `elbo.png`, `vid_bounds.png`, `cosine_distances.png`"
                if fs_present else "")
    return f"""## Files

- `teacher/`: `model.pt` (the teacher: `bd.load_model`), `posterior.pt`, `metrics.json`, `history.csv`,
  plots, `checkpoints/`
- `student/`: `model.pt` (the distilled student), `posterior.pt`, `metrics.json` (all four columns above, the
  plan's per-layer data and the pruning curves), `plan.json` / `plan.pt` (`bd.AlignmentPlan.load`),
  `history.csv` (distilled), `plain_history.csv`, `elbo.png`, `students.png`, `alignment.png`,
  `pruning_curve.png`, `cosine_distances.png`, `ood_roc.png` and `selective.png` (unless `--no-ood`){fs_files}
"""


def demo_report(result: "DemoResult") -> str:
    """The demo's Markdown report, from the run's results only."""
    teacher, student = result.teacher.to_dict(), result.student.to_dict()
    fs = result.function_space.to_dict() if result.function_space is not None else None
    note = ("\n> This is a `--quick` smoke run (few epochs on a small subset); the numbers are not "
            "representative. Run `bayesdistill demo` for the full run.\n" if result.recipe.is_quick else "")
    s = student["distilled"]["test"].get("num_samples")
    uncertainty = _uncertainty_section(student, fs)
    return (f"# bayesdistill demo: Bayesian distillation on {teacher['dataset']}\n{note}\n"
            + _teacher_section(teacher) + "\n" + _student_section(student) + "\n"
            + (_function_space_section(fs) + "\n" if fs is not None else "")
            + (uncertainty + "\n" if uncertainty else "") + _files_section(fs is not None)
            + f"\nReproduce the distilled student's evaluation:\n"
              f"`bayesdistill evaluate --posterior student/model.pt --num-samples {s}`\n")
