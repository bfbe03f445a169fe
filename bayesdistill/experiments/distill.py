"""The distillation pipeline (``bayesdistill distill``): a teacher into a student, against a plain one.

``methods`` chooses how knowledge moves: ``"prior"`` aligns the teacher posterior to the student
(``bd.align``) and makes it the student's prior and start (``bd.student_from_teacher``); the
registered function-space terms (``kd``, ``vid``, ``pkt``, ``hint``, ...) join the student's
objective. The same student with a Normal(0, 1) prior and no terms is trained as the reference.

::

    from bayesdistill.experiments import DistillRecipe, distill
    result = distill("runs/student", "runs/teacher/model.pt", "cnn-small", DistillRecipe(epochs=50),
                     train_fraction=0.1)
    result.distilled.test["accuracy"], result.plain.test["accuracy"]

Writes (rank 0 only) ``metrics.json``, ``model.pt`` and ``posterior.pt`` (the distilled student),
``history.csv`` / ``plain_history.csv``, ``elbo.png``, ``cosine_distances.png``; with ``prior``
``plan.json``, ``plan.pt``, ``alignment.png``, ``pruning_curve.png``; with VID ``vid_bounds.png``;
with ``run.monitor`` ``students.png``. Unless ``run.ood`` is false, every network (teacher,
aligned, distilled, plain) also gets its OOD detection and selective prediction (``uncertainty``
next to its ``test`` metrics; the students' ``kept`` share of the teacher's AUROC;
:mod:`bayesdistill.experiments.uncertainty`), drawn in ``ood_roc.png`` and ``selective.png``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .._version import __version__
from ..bnn import BNN, last_hidden_layer, priors
from ..bnn.taps import FeatureTaps
from .. import datasets
from ..diagnostics import cosine_distances, plots
from ..distill import AlignmentPlan, align, aligned_network, check_alignable, pruning_curve, student_from_teacher
from ..distill.terms.registry import TERMS, available_terms, term_options, terms_from_options
from ..errors import ShapeMismatchError, UnsupportedLayerError
from ..infer import FitResult, evaluate, fit
from .factories import (architecture_kwargs, build_model, check_dataset_name, check_model_name, is_import_path,
                        load_dataset)
from .model_file import MODEL_FILE_NAME, POSTERIOR_FILE_NAME, ModelFile, save_model
from .progress import Stages
from .recipes import (PRIOR_METHOD, PRUNING_PLOT_FRACTIONS, PRUNING_PLOT_MAX_PROBE, DistillRecipe, RunSettings,
                      UncertaintyRecipe)
from .results import Result, live
from .runs import (ExperimentError, barrier, check_run_folder, environment, is_main, run_stages, open_run_folder,
                   resolve_device, torch_threads, write_metrics)
from .steps import (check_fits, fit_summary, has_term_metric, likelihood_for, likelihood_name, load_teacher,
                    lr_schedule, probe_inputs, teacher_dataset, term_summary, write_history)
from .uncertainty import (UncertaintyResult, UncertaintyStep, roc_figure, score_networks, selective_figure,
                          uncertainty_step, with_kept)

__all__ = ["DistillResult", "TrainedStudent", "TeacherSummary", "distill", "DISTILL_ARTEFACTS", "default_pairs"]

DISTILL_ARTEFACTS = ("metrics.json", MODEL_FILE_NAME, POSTERIOR_FILE_NAME, "plan.json", "plan.pt", "history.csv",
                     "plain_history.csv", "elbo.png", "vid_bounds.png", "students.png", "cosine_distances.png",
                     "alignment.png", "pruning_curve.png", "ood_roc.png", "selective.png")

#: The networks' names in the uncertainty figures.
NETWORK_LABELS = {"teacher": "teacher", "aligned": "aligned, untrained", "distilled": "distilled", "plain": "plain"}


@dataclass
class TeacherSummary(Result):
    """The teacher of a distillation run: its file, architecture, size, test metrics and
    OOD detection / selective prediction (``None`` with ``run.ood`` false)."""

    posterior: str
    model: str
    num_weights: int
    test: dict[str, Any]
    uncertainty: Optional[UncertaintyResult] = None


@dataclass
class TrainedStudent(Result):
    """One trained student: test metrics, size, last training ELBO terms, epochs and time, OOD
    detection and selective prediction with the share of the teacher's it keeps (``None`` with
    ``run.ood`` false)."""

    test: dict[str, Any]
    num_weights: int
    train: dict[str, float]
    epochs_trained: int
    train_time_s: float
    uncertainty: Optional[UncertaintyResult] = None


@dataclass
class DistillResult(Result):
    """What a distillation run measured (``to_dict()``: ``metrics.json``)."""

    dataset: str
    task: str
    methods: list[str]
    teacher: TeacherSummary
    student: dict[str, Any]
    distilled: TrainedStudent
    plain: TrainedStudent
    aligned: Optional[dict[str, Any]]
    plan: Optional[dict[str, Any]]
    function_space: Optional[dict[str, Any]]
    cosine: Optional[dict[str, Any]]
    train_size: int
    test_size: int
    probe_size: int
    align_time_s: float
    config: dict[str, Any]
    warnings: list[str]
    pruning_curve: Optional[list[dict[str, Any]]]
    wall_time_s: float
    bayesdistill_version: str
    environment: dict[str, Any] = field(default_factory=dict)
    out: Optional[Path] = live()
    student_bnn: Optional[BNN] = live()
    plain_bnn: Optional[BNN] = live()
    alignment: Optional[AlignmentPlan] = live()
    student_posterior: Any = live()


def default_pairs(teacher_net: Any, student_net: Any) -> dict[str, str]:
    """The teacher's last hidden activation -> the student's (one-line error naming ``--vid-pairs``)."""
    found = {}
    for what, net in (("teacher", teacher_net), ("student", student_net)):
        layer = last_hidden_layer(net)
        if layer is None:
            raise ExperimentError(f"the {what} has no activation module before its read-out to take features from; "
                                  "name the feature pairs with --vid-pairs TEACHER_MODULE:STUDENT_MODULE")
        found[what] = layer
    return {found["teacher"]: found["student"]}


@dataclass
class _Setup:
    """The prepared run (everything checked before any output)."""

    device: torch.device
    teacher: BNN
    teacher_file: ModelFile
    teacher_path: str
    data: Any
    dataset: str
    methods: tuple[str, ...]
    student: str
    student_kwargs: dict[str, Any]
    student_net: torch.nn.Module
    pairs: Optional[dict[str, str]]
    transfer: Optional[int]
    uncertainty: Optional[UncertaintyStep] = None

    @property
    def use_prior(self) -> bool:
        return PRIOR_METHOD in self.methods

    @property
    def fs_methods(self) -> list[str]:
        return [m for m in self.methods if m != PRIOR_METHOD]

    @property
    def teacher_model(self) -> str:
        return self.teacher_file.architecture.model


def _check_methods(methods: Sequence[str], name: str, transfer: Optional[int], pairs: Any) -> tuple[str, ...]:
    """The method list and the options that depend on it."""
    methods = tuple(methods) or (PRIOR_METHOD,)
    unknown = [m for m in methods if m != PRIOR_METHOD and m not in TERMS]
    if unknown:
        raise ExperimentError(f"unknown methods {unknown}; known: {', '.join((PRIOR_METHOD, *available_terms()))}")
    fs = [m for m in methods if m != PRIOR_METHOD]
    pair_methods = [n for n, s in TERMS.items() if s.pairs]
    if transfer:
        if name.lower().replace("_", "-") != "mnist1d":
            raise ExperimentError(f"--transfer generates unlabelled MNIST-1D inputs (bd.datasets.mnist1d_samples) "
                                  f"and only works with --dataset mnist1d, not {name!r}")
        if not fs:
            raise ExperimentError("--transfer feeds unlabelled inputs to function-space terms; add one to --method "
                                  f"({', '.join(available_terms())})")
    if pairs and not any(m in pair_methods for m in fs):
        raise ExperimentError(f"--vid-pairs names the feature pairs of {', '.join(pair_methods)}; none of them is "
                              "in --method")
    return methods


def _check_alignable(s: _Setup) -> None:
    hint = (f"; the function-space methods work for any student: --method {', '.join(available_terms())} "
            "(e.g. --method kd,vid)")
    try:
        check_alignable(s.teacher.net, s.student_net)
    except (ShapeMismatchError, UnsupportedLayerError) as err:
        raise type(err)(f"--method prior: cannot align teacher {s.teacher_model} to student {s.student}: "
                        f"{err}{hint}") from err


def _prepare(teacher: Any, student: str, methods: Sequence[str], dataset: Optional[str],
             student_kwargs: Optional[Mapping[str, Any]], channels: Optional[int], hidden: Any,
             dataset_kwargs: Optional[Mapping[str, Any]], train_fraction: float, transfer: Optional[int],
             pairs: Optional[Mapping[str, str]], uncertainty: UncertaintyRecipe, run: RunSettings) -> _Setup:
    device = resolve_device(run.device)
    teacher_bnn, mf = load_teacher(teacher, device, run.allow_imports)
    name = teacher_dataset(mf, dataset, str(teacher))
    methods = _check_methods(methods, name, transfer, pairs)
    check_dataset_name(name, allow_imports=run.allow_imports)
    check_model_name(student, allow_imports=run.allow_imports, what="student")
    kwargs = {**architecture_kwargs(student, channels=channels, hidden=hidden, strict=True, what="student"),
              **dict(student_kwargs or {})}
    data = load_dataset(name, train_fraction=train_fraction, seed=run.seed,
                        kwargs=dataset_kwargs if dataset_kwargs is not None else mf.training.get("dataset_kwargs"),
                        allow_imports=run.allow_imports)
    check_fits(mf, data, "the teacher")
    for m in methods:
        tasks = TERMS[m].tasks if m in TERMS else None
        if tasks is not None and data.task not in tasks:
            raise ExperimentError(f"--method {m} ({TERMS[m].description}) needs a {' or '.join(tasks)} dataset; "
                                  f"{data.name!r} is {data.task}")
    torch.manual_seed(run.seed)  # the student network's initialization (both students share it)
    net = build_model(student, data.input_shape, data.output_dim, kwargs, allow_imports=run.allow_imports,
                      what="student")
    s = _Setup(device, teacher_bnn, mf, str(teacher), data, name if is_import_path(name) else data.name, methods, student,
               kwargs, net, None, transfer)
    if any(TERMS[m].pairs for m in s.fs_methods):
        s.pairs = dict(pairs) if pairs else default_pairs(teacher_bnn.net, net)
        FeatureTaps(teacher_bnn.net, list(s.pairs), "teacher")  # module paths that exist, before any training
        FeatureTaps(net, list(s.pairs.values()), "student")
    if s.use_prior:
        _check_alignable(s)
    s.uncertainty = uncertainty_step(s.dataset, data.task, uncertainty, enabled=run.ood,
                                     num_samples=run.num_samples, seed=run.seed)
    return s


@dataclass
class _Alignment:
    """The alignment of a run with ``prior``: the plan, the probe inputs (and whether the plan
    used them), its time and warnings; empty without ``prior``."""

    plan: Optional[AlignmentPlan] = None
    probe: Optional[torch.Tensor] = None
    used_probe: bool = False
    time_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def probe_size(self) -> int:
        return len(self.probe) if self.used_probe and self.probe is not None else 0

    @property
    def curve_probe(self) -> int:
        return len(self.probe[:PRUNING_PLOT_MAX_PROBE]) if self.probe is not None else 0


def _align(s: _Setup, recipe: DistillRecipe, probe_size: Optional[int], run: RunSettings,
           stages: Stages) -> _Alignment:
    """Align the teacher to the student (with ``prior``)."""
    if not s.use_prior:
        return _Alignment()
    probe = probe_inputs(s.teacher_file, s.dataset, probe_size, run.seed, run.allow_imports)
    needs_probe = recipe.compensation or recipe.criterion == "data"
    start = time.perf_counter()
    with stages(f"aligning teacher {s.teacher_model} to student {s.student} ({recipe.criterion} criterion"
                + (f", {len(probe)} probe inputs)" if needs_probe else ")")):
        plan = align(s.teacher, s.student_net, criterion=recipe.criterion, probe=probe if needs_probe else None,
                     compensation=recipe.compensation, seed=run.seed, max_probe=len(probe))
    stages.say(plan.summary())
    warnings: list[str] = []
    if recipe.prior_scale == "posterior":
        # a degenerate aligned scale (e.g. a folded layer's unmatched unit) makes KL(q || p) explode
        scales = plan.apply(s.teacher.posterior()).scales
        tiny = {k: int((v < 1e-8).sum()) for k, v in scales.items() if bool((v < 1e-8).any())}
        if tiny:
            warnings.append(f"--prior-scale posterior: {sum(tiny.values())} aligned teacher scales are below 1e-8 "
                            f"({tiny}); the prior pins those weights and KL(q || p) will be huge; consider "
                            "--prior-scale unit or learned")
    for w in warnings:
        stages.warn(w)
    return _Alignment(plan, probe, needs_probe, time.perf_counter() - start, warnings)


def _students(s: _Setup, plan: Optional[AlignmentPlan], recipe: DistillRecipe) -> tuple[BNN, BNN]:
    """The distilled student (teacher prior with ``prior``, else Normal(0, 1)) and the plain one."""
    n = len(s.data.train)
    if s.use_prior:
        distilled = student_from_teacher(s.teacher, s.student_net, plan=plan, prior_scale=recipe.prior_scale,
                                         likelihood=likelihood_for(s.data.task), init=recipe.init, dataset_size=n)
    else:
        distilled = BNN(s.student_net, prior=priors.Normal(scale=1.0), likelihood=likelihood_for(s.data.task),
                        dataset_size=n, init="module")
    plain = BNN(s.student_net, prior=priors.Normal(scale=1.0), likelihood=likelihood_for(s.data.task),
                dataset_size=n, init="module")
    return distilled, plain


def _train(s: _Setup, distilled: BNN, plain: BNN, terms: list[Any], recipe: DistillRecipe, run: RunSettings,
           stages: Stages) -> tuple[FitResult, FitResult]:
    fit_kw = dict(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, device=s.device, seed=run.seed,
                  kl_weight=recipe.kl_weight, lr_schedule=lr_schedule(recipe.lr_schedule), progress=not run.quiet,
                  eval_data=s.data.test if run.monitor else None)
    what = ([f"prior: aligned teacher posterior, prior_scale={recipe.prior_scale}, init={recipe.init}"] if s.use_prior
            else ["prior: Normal(0, 1), random init"])
    if terms:
        what.append("terms: " + ", ".join(t.name for t in terms) + (f" on pairs {s.pairs}" if s.pairs else ""))
    x_transfer = datasets.mnist1d_samples(int(s.transfer), seed=1000 + int(run.seed)) if s.transfer else None
    with stages(f"training the distilled student ({'; '.join(what)})"):
        extra: dict[str, Any] = dict(distill=terms, transfer=x_transfer) if terms else {}
        res_distilled = fit(distilled, s.data.train, **fit_kw, **extra)
    with stages("training the plain student (prior: Normal(0, 1), random init, no distillation terms)"):
        res_plain = fit(plain, s.data.train, **fit_kw)
    return res_distilled, res_plain


def _networks(s: _Setup, plan: Optional[AlignmentPlan], distilled: BNN, plain: BNN) -> dict[str, BNN]:
    """The networks a run evaluates: teacher, the aligned teacher (with ``prior``), distilled, plain."""
    nets = {"teacher": s.teacher}
    if plan is not None:
        nets["aligned"] = aligned_network(s.teacher, s.student_net, plan)
    nets["distilled"], nets["plain"] = distilled, plain
    return nets


def _evaluate(s: _Setup, networks: Mapping[str, BNN], run: RunSettings) -> dict[str, dict[str, Any]]:
    """Test metrics of teacher, aligned teacher, distilled and plain student (the distilled one
    as its files hold it: load the posterior that is saved before calling this)."""
    return {name: evaluate(bnn, s.data.test, num_samples=run.num_samples, seed=run.seed)
            for name, bnn in networks.items()}


def _uncertainty(s: _Setup, networks: Mapping[str, BNN], stages: Stages) -> dict[str, Optional[UncertaintyResult]]:
    """OOD detection and selective prediction of every network; the students' share of the teacher's."""
    results = score_networks(s.uncertainty, stages, networks, s.data.test)
    return {name: r if name == "teacher" else with_kept(r, results["teacher"]) for name, r in results.items()}


def _cosine(s: _Setup, distilled: BNN, plain: BNN, run: RunSettings) -> tuple[Any, Optional[dict[str, Any]]]:
    """The cosine distances of teacher, plain and distilled student (classification only)."""
    if s.data.task != "classification":
        return None, None
    layer = last_hidden_layer(s.student_net)
    methods = ",".join(s.methods)
    result = cosine_distances([(f"teacher {s.teacher_model}", s.teacher, last_hidden_layer(s.teacher.net)),
                               (f"plain {s.student}", plain, layer),
                               (f"distilled {s.student} ({methods})", distilled, layer)], s.data.test, seed=run.seed)
    return result, result.to_dict()["models"]


def _pruning_curves(s: _Setup, recipe: DistillRecipe, probe: torch.Tensor, run: RunSettings) -> list[Any]:
    """The teacher's width-pruning curve with the chosen criterion, without and with compensation."""
    return [pruning_curve(s.teacher, s.data.test, criterion=recipe.criterion, fractions=PRUNING_PLOT_FRACTIONS,
                          compensation=c, probe=probe[:PRUNING_PLOT_MAX_PROBE], num_samples=run.num_samples,
                          seed=run.seed) for c in (False, True)]


def _config(s: _Setup, recipe: DistillRecipe, train_fraction: float, probe_size: Optional[int], hidden: Any,
            channels: Optional[int], terms_cfg: dict[str, Any], run: RunSettings) -> dict[str, Any]:
    return {"teacher": s.teacher_path, "student": s.student, "dataset": s.dataset, "train_fraction": train_fraction,
            **recipe.to_dict(), "probe_size": probe_size, "channels": channels,
            "hidden": list(hidden) if hidden is not None else None, "num_samples": run.num_samples,
            "monitor": run.monitor, "seed": run.seed, "device": str(s.device), "method": list(s.methods),
            "transfer": s.transfer, "pairs": s.pairs, "overwrite": run.overwrite, "threads": torch.get_num_threads(),
            "student_kwargs": dict(s.student_kwargs), "ood": run.ood, **terms_cfg}


def _save_student(out: Path, s: _Setup, distilled: BNN, q: Any, recipe: DistillRecipe, config: dict[str, Any],
                  epochs: int) -> None:
    env = environment(s.device)
    meta = {"model": s.student, "model_kwargs": dict(s.student_kwargs), "dataset": s.dataset,
            "input_shape": list(s.data.input_shape), "output_dim": int(s.data.output_dim), "task": s.data.task,
            "likelihood": likelihood_name(s.data.task), "prior": "teacher-posterior" if s.use_prior else "normal",
            "seed": int(config["seed"]), "train_fraction": float(config["train_fraction"]), "epochs": epochs,
            "teacher": s.teacher_path, "teacher_model": s.teacher_model,
            "distill": {"method": list(s.methods), "criterion": recipe.criterion, "prior_scale": recipe.prior_scale,
                        "init": recipe.init, "compensation": recipe.compensation, "kl_weight": recipe.kl_weight},
            "torch_threads": env["torch_threads"], "world_size": env["world_size"], "bayesdistill_version": __version__}
    if not s.use_prior:
        meta["prior_scale"] = 1.0
    q.metadata = meta
    q.save(out / POSTERIOR_FILE_NAME)
    save_model(distilled, out / MODEL_FILE_NAME, model=s.student, model_kwargs=s.student_kwargs,
               input_shape=s.data.input_shape, output_dim=s.data.output_dim, dataset=s.dataset, training=config,
               posterior_metadata=meta)


def _uncertainty_figures(out: Path, s: _Setup, r: DistillResult) -> None:
    """ROC curves of the mutual information per OOD kind, and the selective-prediction curves."""
    found = {"teacher": r.teacher.uncertainty, "aligned": (r.aligned or {}).get("uncertainty"),
             "distilled": r.distilled.uncertainty, "plain": r.plain.uncertainty}
    results = {NETWORK_LABELS[k]: v for k, v in found.items() if v is not None}
    roc = roc_figure(results, "mutual_information")
    if roc is not None:
        plots.save(roc, out / "ood_roc.png", dpi=100)
    sel = selective_figure(results, title=f"selective prediction on the {s.data.name} test set")
    if sel is not None:
        plots.save(sel, out / "selective.png", dpi=100)


def _figures(out: Path, s: _Setup, r: DistillResult, hist: tuple[FitResult, FitResult], cosine: Any,
             curves: list[Any], probe_len: int, run: RunSettings) -> None:
    """The plots of the run (rank 0 only)."""
    _uncertainty_figures(out, s, r)
    res_distilled, res_plain = hist
    if res_distilled.history:
        plots.save(plots.elbo(res_distilled.history), out / "elbo.png")
        if has_term_metric(res_distilled.history, "mi_bound") and s.pairs:
            plots.save(plots.vid_bounds(res_distilled.history,
                                        labels=[f"teacher {t} -> student {u}" for t, u in s.pairs.items()]),
                       out / "vid_bounds.png")
    if run.monitor and res_distilled.history:
        plots.save(plots.learning_curves({"distilled": res_distilled.history, "plain": res_plain.history},
                                         r.teacher.test, title=f"distilled (--method {','.join(s.methods)}) vs "
                                         "plain student"), out / "students.png")
    if cosine is not None:
        plots.save(plots.cosine_distances(cosine, title=f"{s.data.name} test pairs: cosine distances of the last "
                                          "hidden representations (posterior-mean networks; vertical lines: means)"),
                   out / "cosine_distances.png")
    if r.alignment is not None:
        plots.save(plots.alignment(r.alignment), out / "alignment.png")
        plots.save(plots.pruning_curve(curves, title=f"teacher {s.teacher_model} aligned to narrower copies of itself "
                                       f"(no training; probe {probe_len} inputs)"), out / "pruning_curve.png")


def _write(out: Path, s: _Setup, r: DistillResult, recipe: DistillRecipe, hist: tuple[FitResult, FitResult],
           cosine: Any, curves: list[Any], probe_len: int, run: RunSettings) -> None:
    """Every artefact but metrics.json (rank 0 only)."""
    open_run_folder(out, DISTILL_ARTEFACTS, run.overwrite)
    _save_student(out, s, r.student_bnn, r.student_posterior, recipe, r.config, len(hist[0].history))
    if r.alignment is not None:
        r.alignment.save(out / "plan.pt")
        r.alignment.to_json(out / "plan.json")
    write_history(hist[0], out / "history.csv")
    write_history(hist[1], out / "plain_history.csv")
    _figures(out, s, r, hist, cosine, curves, probe_len, run)


def _function_space_info(s: _Setup, terms: list[Any], terms_cfg: dict[str, Any], history: list[dict[str, float]]):
    if not terms:
        return None
    return {"terms": [t.name for t in terms], "pairs": s.pairs, "settings": terms_cfg,
            "transfer_size": int(s.transfer or 0), "final": term_summary(history)}


def _result(s: _Setup, al: _Alignment, results: dict[str, Any], unc: Mapping[str, Optional[UncertaintyResult]],
            bnns: tuple[BNN, BNN], hist: tuple[FitResult, FitResult], terms: list[Any], terms_cfg: dict[str, Any],
            cosine: Any, curves: list[Any], config: dict[str, Any]) -> DistillResult:
    distilled, plain = bnns
    aligned: Optional[dict[str, Any]] = None
    if al.plan is not None:
        aligned = {"test": results["aligned"]}
        if unc.get("aligned") is not None:
            aligned["uncertainty"] = unc["aligned"]
    return DistillResult(
        s.dataset, s.data.task, list(s.methods),
        TeacherSummary(s.teacher_path, s.teacher_model, s.teacher.num_weights, results["teacher"], unc["teacher"]),
        {"model": s.student, "model_kwargs": dict(s.student_kwargs), "plain_prior": "Normal(0, 1)"},
        TrainedStudent(results["distilled"], **fit_summary(distilled, hist[0]), uncertainty=unc["distilled"]),
        TrainedStudent(results["plain"], **fit_summary(plain, hist[1]), uncertainty=unc["plain"]),
        aligned,
        al.plan.overview() if al.plan is not None else None,
        _function_space_info(s, terms, terms_cfg, hist[0].history), cosine, len(s.data.train), len(s.data.test),
        al.probe_size, al.time_s, config, al.warnings,
        [c.to_dict() for c in curves] if al.plan is not None else None, 0.0, __version__, environment(s.device),
        student_bnn=distilled, plain_bnn=plain, alignment=al.plan)


def distill(
    out: Union[str, os.PathLike],
    teacher: Union[str, os.PathLike],
    student: str,
    recipe: DistillRecipe = DistillRecipe(),
    *,
    methods: Sequence[str] = (PRIOR_METHOD,),
    dataset: Optional[str] = None,
    student_kwargs: Optional[Mapping[str, Any]] = None,
    channels: Optional[int] = None,
    hidden: Optional[Sequence[int]] = None,
    dataset_kwargs: Optional[Mapping[str, Any]] = None,
    train_fraction: float = 1.0,
    transfer: Optional[int] = None,
    pairs: Optional[Mapping[str, str]] = None,
    term_settings: Optional[Mapping[str, Any]] = None,
    probe_size: Optional[int] = None,
    uncertainty: UncertaintyRecipe = UncertaintyRecipe(),
    run: RunSettings = RunSettings(),
) -> DistillResult:
    """Distill the teacher saved at ``teacher`` into ``student`` and write the artefacts into ``out``.

    Args:
        out: the run folder (a folder holding a run is refused unless ``run.overwrite``).
        teacher: the teacher's model file, posterior file (from ``fit``) or run folder.
        student: a built-in architecture or an import path (``run.allow_imports``).
        recipe: training, alignment, prior and start settings.
        methods: ``"prior"`` and/or registered term names (``bd.distill.available_terms()``).
        dataset: default: the teacher's. ``dataset_kwargs``: a data-set factory's options.
        student_kwargs: the student's architecture options (the model factory's keywords).
        channels: the channels of the 1-D CNN students.
        hidden: the hidden widths of an ``mlp`` student.
        train_fraction: the students' class-balanced fraction of the training set.
        transfer: N generated unlabelled MNIST-1D inputs for the function-space terms.
        pairs: ``{teacher_module: student_module}`` feature pairs of the pair terms (default: the
            last hidden activations).
        term_settings: ``{"<term>_<option>": value}`` (defaults: the registered ones).
        probe_size: a seeded subset of the teacher's training inputs as probe data (default: all).
        uncertainty: the OOD kinds, scores and draws of every network's OOD detection and
            selective prediction (computed unless ``run.ood`` is false).
        run: seed, device, draws, monitor, threads, imports, overwrite, quiet, ood.
    """
    t_start = time.perf_counter()
    out = check_run_folder(out, DISTILL_ARTEFACTS, overwrite=run.overwrite)
    with torch_threads(run.threads):
        s = _prepare(teacher, student, methods, dataset, student_kwargs, channels, hidden, dataset_kwargs,
                     train_fraction, transfer, pairs, uncertainty, run)
        main = is_main()
        stages = run_stages(4 + 2 * s.use_prior, "distill", run, s.uncertainty)
        stages.say(f"distill: teacher {s.teacher_model} ({s.teacher.num_weights} Bayesian weights) -> student "
                   f"{s.student} on {s.data.name} ({len(s.data.train)} train / {len(s.data.test)} test), method "
                   f"{','.join(s.methods)}" + (f", transfer {s.transfer} unlabelled inputs" if s.transfer else "")
                   + f", device {s.device}, {torch.get_num_threads()} threads")
        al = _align(s, recipe, probe_size, run, stages)
        distilled, plain = _students(s, al.plan, recipe)
        terms = terms_from_options(s.fs_methods, s.teacher, s.pairs, term_settings or {})
        hist = _train(s, distilled, plain, terms, recipe, run, stages)
        with stages(f"evaluating on the test set ({run.num_samples} posterior draws)"):
            q_student = distilled.posterior()
            distilled.load_posterior(q_student)  # evaluate exactly what the files hold (rho = softplus^-1(scale))
            networks = _networks(s, al.plan, distilled, plain)
            results = _evaluate(s, networks, run)
            cosine, cosine_dict = _cosine(s, distilled, plain, run)
        unc = _uncertainty(s, networks, stages)
        curves: list[Any] = []
        if al.plan is not None:
            with stages("the teacher's pruning curves (aligned to narrower copies of itself, no training)"):
                curves = _pruning_curves(s, recipe, al.probe, run)
        config = _config(s, recipe, train_fraction, probe_size, hidden, channels, term_options(term_settings or {}),
                         run)
        r = _result(s, al, results, unc, (distilled, plain), hist, terms, term_options(term_settings or {}, s.fs_methods),
                    cosine_dict, curves, config)
        r.out, r.student_posterior = out, q_student
        with stages("writing the model, metrics and plots"):
            if main:
                _write(out, s, r, recipe, hist, cosine, curves, al.curve_probe, run)
            r.wall_time_s = time.perf_counter() - t_start
            if main:
                write_metrics(out, r)
    barrier()  # under torchrun: rank 0's files exist for every rank once this returns
    return r
