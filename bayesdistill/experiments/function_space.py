"""The function-space comparison (the demo's third stage): one teacher into students of another kind.

The teacher (a saved model) is distilled into Bayesian students of ``recipe.student`` (by default
MLPs, which no alignment reaches from a CNN), one per variant of ``recipe.variants`` (name ->
registered terms; none = plain), all from the same initialization with a Normal(0, 1) prior and
the recipe's training settings; the terms take their registered defaults. Writes (rank 0 only)
``metrics.json``, ``history_<variant>.csv``, ``students.png``, ``elbo.png`` and ``vid_bounds.png``
(of the last variant with VID), ``cosine_distances.png``. Unless ``run.ood`` is false, the teacher
and every student also get their OOD detection and selective prediction (``uncertainty``; the
students' ``kept`` share of the teacher's AUROC; :mod:`bayesdistill.experiments.uncertainty`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .._version import __version__
from ..bnn import BNN, last_hidden_layer, priors
from ..diagnostics import cosine_distances, plots
from ..distill.terms.registry import term_defaults, terms_from_options
from ..infer import FitResult, evaluate, fit
from .distill import TeacherSummary, default_pairs
from .factories import build_model, load_dataset
from .progress import Stages
from .recipes import FunctionSpaceRecipe, RunSettings, UncertaintyRecipe
from .results import Result, live
from .runs import (barrier, check_run_folder, environment, is_main, resolve_device, run_stages, torch_threads,
                   write_metrics)
from .steps import (check_fits, fit_summary, has_term_metric, likelihood_for, load_teacher, lr_schedule,
                    term_summary, write_history)
from .uncertainty import UncertaintyResult, score_networks, uncertainty_step, with_kept

__all__ = ["FunctionSpaceResult", "FunctionSpaceStudent", "function_space", "FUNCTION_SPACE_ARTEFACTS"]

FUNCTION_SPACE_ARTEFACTS = ("metrics.json", "students.png", "elbo.png", "vid_bounds.png", "cosine_distances.png")


@dataclass
class FunctionSpaceStudent(Result):
    """One student of the comparison: its terms, test metrics, size, epochs, time, last term values,
    OOD detection and selective prediction with the share of the teacher's it keeps (``None``
    with ``run.ood`` false)."""

    methods: list[str]
    test: dict[str, Any]
    num_weights: int
    epochs_trained: int
    train_time_s: float
    final_terms: dict[str, float]
    uncertainty: Optional[UncertaintyResult] = None


@dataclass
class FunctionSpaceResult(Result):
    """What the comparison measured (``to_dict()``: its ``metrics.json``).

    ``versus_plain``: per distilled variant, its test accuracy (in percentage points), NLL and
    ECE minus the plain student's (classification).
    """

    dataset: str
    teacher: TeacherSummary
    student: dict[str, Any]
    pairs: dict[str, str]
    students: dict[str, FunctionSpaceStudent]
    cosine: dict[str, Any]
    train_size: int
    test_size: int
    config: dict[str, Any]
    wall_time_s: float
    bayesdistill_version: str
    versus_plain: dict[str, dict[str, float]] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    out: Optional[Path] = live()
    histories: dict[str, FitResult] = live(None)
    networks: dict[str, BNN] = live(None)


def linear_widths(net: nn.Module) -> Optional[list[int]]:
    """``[inputs, hidden..., outputs]`` of a network whose weight layers are all Linear, else ``None``."""
    weighted = [m for m in net.modules() if any(True for _ in m.parameters(recurse=False))]
    if not weighted or not all(isinstance(m, nn.Linear) for m in weighted):
        return None
    return [weighted[0].in_features] + [m.out_features for m in weighted]


def _student(methods: list[str], bnn: BNN, history: FitResult, test: dict[str, Any],
             uncertainty: Optional[UncertaintyResult] = None) -> FunctionSpaceStudent:
    summary = fit_summary(bnn, history)
    return FunctionSpaceStudent(methods, test, bnn.num_weights, summary["epochs_trained"], summary["train_time_s"],
                                term_summary(history.history), uncertainty)


def _versus_plain(students: dict[str, FunctionSpaceStudent]) -> dict[str, dict[str, float]]:
    if "plain" not in students or "accuracy" not in students["plain"].test:
        return {}
    base = students["plain"].test
    return {name: {"accuracy_points": 100 * (r.test["accuracy"] - base["accuracy"]),
                   "nll": r.test["nll"] - base["nll"], "ece": r.test["ece"] - base["ece"]}
            for name, r in students.items() if name != "plain"}


def _train_variants(recipe: FunctionSpaceRecipe, teacher: BNN, data: Any, net: nn.Module, pairs: dict[str, str],
                    device: torch.device, run: RunSettings, stages: Stages):
    fit_kw = dict(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, device=device, seed=run.seed,
                  kl_weight=recipe.kl_weight, lr_schedule=lr_schedule(recipe.lr_schedule), progress=not run.quiet,
                  eval_data=data.test)
    bnns: dict[str, BNN] = {}
    histories: dict[str, FitResult] = {}
    for name, methods in recipe.variants:
        bnn = BNN(net, prior=priors.Normal(scale=1.0), likelihood=likelihood_for(data.task),
                  dataset_size=len(data.train), init="module")
        terms = terms_from_options(methods, teacher, pairs, {})
        with stages(f"training the {name} student" + (f" (terms {', '.join(t.name for t in terms)})" if terms else "")):
            histories[name] = fit(bnn, data.train, **fit_kw, **({"distill": terms} if terms else {}))
        bnns[name] = bnn
    return bnns, histories


def _figures(out: Path, teacher_model: str, student: str, data: Any, histories: dict[str, FitResult],
             recipe: FunctionSpaceRecipe, teacher_test: dict[str, Any], pairs: dict[str, str], cosine: Any) -> None:
    rows = {name: r.history for name, r in histories.items()}
    if all(rows.values()):
        plots.save(plots.learning_curves(rows, teacher_test, title=f"teacher {teacher_model} -> Bayesian {student} "
                                         "students (function space)"), out / "students.png")
    methods = dict(recipe.variants)
    vid = [n for n, h in rows.items() if has_term_metric(h, "mi_bound")]
    last = vid[-1] if vid else next((n for n, h in rows.items() if methods[n] and h), None)
    if last is not None:
        plots.save(plots.elbo(rows[last]), out / "elbo.png")
    if vid:
        plots.save(plots.vid_bounds(rows[vid[-1]], labels=[f"teacher {t} -> student {s}" for t, s in pairs.items()]),
                   out / "vid_bounds.png")
    plots.save(plots.cosine_distances(cosine, title=f"{data.name} test pairs: cosine distances of the last hidden "
                                      "representations (posterior-mean networks; vertical lines: means)"),
               out / "cosine_distances.png")


def function_space(
    out: Union[str, os.PathLike],
    teacher: Union[str, os.PathLike],
    recipe: FunctionSpaceRecipe = FunctionSpaceRecipe(),
    *,
    uncertainty: UncertaintyRecipe = UncertaintyRecipe(),
    run: RunSettings = RunSettings(),
) -> FunctionSpaceResult:
    """Distill the teacher saved at ``teacher`` into one student per variant of ``recipe``; write
    the artefacts into ``out`` (a folder holding a run is refused unless ``run.overwrite``).
    ``uncertainty``: the OOD detection and selective prediction of the teacher and every student
    (unless ``run.ood`` is false)."""
    t_start = time.perf_counter()
    out = check_run_folder(out, FUNCTION_SPACE_ARTEFACTS, overwrite=run.overwrite)
    with torch_threads(run.threads):
        device = resolve_device(run.device)
        t_bnn, mf = load_teacher(teacher, device, run.allow_imports)
        data = load_dataset(mf.dataset or "mnist1d", train_fraction=recipe.train_fraction, seed=run.seed,
                            kwargs=mf.training.get("dataset_kwargs"), allow_imports=run.allow_imports)
        check_fits(mf, data, "the teacher")
        torch.manual_seed(run.seed)
        net = build_model(recipe.student, data.input_shape, data.output_dim, allow_imports=run.allow_imports,
                          what="student")
        pairs = default_pairs(t_bnn.net, net)
        step = uncertainty_step(mf.dataset or data.name, data.task, uncertainty, enabled=run.ood,
                                num_samples=run.num_samples, seed=run.seed)
        main = is_main()
        stages = run_stages(len(recipe.variants) + 2, "function space", run, step)
        t_model = mf.architecture.model
        stages.say(f"function space: teacher {t_model} -> Bayesian {recipe.student} students on {len(data.train)} "
                   f"training examples, {recipe.epochs} epochs each: {', '.join(n for n, _ in recipe.variants)}")
        bnns, histories = _train_variants(recipe, t_bnn, data, net, pairs, device, run, stages)
        with stages(f"evaluating on the test set ({run.num_samples} posterior draws)"):
            ev = dict(num_samples=run.num_samples, seed=run.seed)
            tests = {name: evaluate(bnns[name], data.test, **ev) for name, _ in recipe.variants}
            teacher_test = evaluate(t_bnn, data.test, **ev)
            layer = last_hidden_layer(net)
            cos = cosine_distances([(f"teacher {t_model}", t_bnn, last_hidden_layer(t_bnn.net))]
                                   + [(name, bnn, layer) for name, bnn in bnns.items()], data.test, seed=run.seed)
        t_name = f"teacher {t_model}"  # as in the cosine distances: the students' names are the variants'
        unc = score_networks(step, stages, {t_name: t_bnn, **bnns}, data.test)
        students = {name: _student(list(methods), bnns[name], histories[name], tests[name],
                                   with_kept(unc[name], unc[t_name]))
                    for name, methods in recipe.variants}
        config = {"epochs": recipe.epochs, "train_fraction": recipe.train_fraction, "seed": run.seed,
                  "num_samples": run.num_samples, "device": str(device), "variants": recipe.variant_methods(),
                  "lr": recipe.lr, "batch_size": recipe.batch_size, "kl_weight": recipe.kl_weight,
                  "lr_schedule": recipe.lr_schedule, **term_defaults(), "threads": torch.get_num_threads(),
                  "ood": run.ood}
        result = FunctionSpaceResult(
            mf.dataset or data.name, TeacherSummary(str(teacher), t_model, t_bnn.num_weights, teacher_test,
                                                    unc[t_name]),
            {"model": recipe.student, "prior": "Normal(0, 1)", "widths": linear_widths(net)}, pairs, students,
            cos.to_dict()["models"], len(data.train), len(data.test), config, 0.0, __version__,
            _versus_plain(students), environment(device), out, histories, bnns)
        with stages("writing the histories, metrics and plots"):
            if main:
                out.mkdir(parents=True, exist_ok=True)
                for name, h in histories.items():
                    write_history(h, out / f"history_{name}.csv")
                _figures(out, t_model, recipe.student, data, histories, recipe, teacher_test, pairs, cos)
            result.wall_time_s = time.perf_counter() - t_start
            if main:
                write_metrics(out, result)
    barrier()  # under torchrun: rank 0's files exist for every rank once this returns
    return result
