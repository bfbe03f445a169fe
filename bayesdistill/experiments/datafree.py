"""Data-free distillation in two steps (``bayesdistill record``, ``bayesdistill datafree``).

Lopes, Fenu & Starner (2017): a teacher ships a record of its activation statistics instead of
its training data (:func:`record_teacher`, once, with the data); later a student is distilled on
inputs reconstructed from the record alone (:func:`datafree`). ::

    from bayesdistill.experiments import DataFreeRecipe, RecordRecipe, datafree, record_teacher
    record_teacher("teacher.record.pt", "runs/teacher/model.pt", RecordRecipe(kind="top"))
    result = datafree("runs/df", "runs/teacher/model.pt", "teacher.record.pt", "mlp", DataFreeRecipe(epochs=50))

:func:`record_teacher` records on the teacher's own training data (the data set, training
fraction and seed its model file records) and writes the record atomically. :func:`datafree`
refuses a record of another teacher (:class:`~bayesdistill.errors.RecordMismatchError`, before any
work), reconstructs ``recipe.inputs`` inputs, fits the student by SVI with the KD term on them
(``bd.distill.datafree.data_free_student``: no training example and no label), then evaluates
teacher and student on the test split of the teacher's data set, with the uncertainty step
(OOD detection and selective prediction, the student's ``kept`` share of the teacher's). Writes
(rank 0 only) ``model.pt`` (the student: ``bayesdistill evaluate`` reads it), ``metrics.json``,
``report.md``, ``history.csv`` and ``elbo.png``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .._version import __version__
from ..bnn import BNN, priors
from ..diagnostics import plots
from ..distill.datafree import ActivationRecord, data_free_student, record, teacher_labels
from ..errors import RunExistsError
from ..infer import evaluate
from .factories import architecture_kwargs, build_model, check_model_name, load_dataset
from .family_reports import datafree_report
from .model_file import MODEL_FILE_NAME, save_model
from .recipes import DataFreeRecipe, RecordRecipe, RunSettings, UncertaintyRecipe
from .results import Result, live
from .runs import (ExperimentError, barrier, check_run_folder, environment, is_main, run_stages, open_run_folder,
                   resolve_device, torch_threads, write_metrics)
from .steps import check_fits, fit_summary, likelihood_for, load_teacher, lr_schedule, teacher_dataset, write_history
from .uncertainty import score_networks, uncertainty_step, with_kept

__all__ = ["RecordResult", "record_teacher", "DataFreeResult", "datafree", "DATAFREE_ARTEFACTS"]

DATAFREE_ARTEFACTS = ("metrics.json", "report.md", MODEL_FILE_NAME, "history.csv", "elbo.png")


@dataclass
class RecordResult(Result):
    """A written activation record: where, of which teacher, on which data, its size."""

    out: str
    teacher: str
    dataset: str
    kind: str
    temperature: float
    num_classes: int
    examples: int
    num_values: int
    blocks: list[str]
    wall_time_s: float
    bayesdistill_version: str
    environment: dict[str, Any] = field(default_factory=dict)
    record: Optional[ActivationRecord] = live()


def _classification(task: str, what: str) -> None:
    if task != "classification":
        raise ExperimentError(f"data-free distillation records per-class statistics: {what} must be a classifier, "
                              f"not a {task} network")


def record_teacher(out: Union[str, os.PathLike], teacher: Union[str, os.PathLike],
                   recipe: RecordRecipe = RecordRecipe(), *, run: RunSettings = RunSettings()) -> RecordResult:
    """Record the teacher saved at ``teacher`` on its own training data; write the record to the
    file ``out`` (atomically; an existing file is refused unless ``run.overwrite``)."""
    t_start = time.perf_counter()
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {str(out)!r} is a folder; the record is one file (e.g. teacher.record.pt)")
    if out.exists() and not run.overwrite:
        raise RunExistsError(f"{str(out)!r} already exists; replace it (overwrite=True, CLI --overwrite) or choose "
                             "another file")
    with torch_threads(run.threads):
        device = resolve_device(run.device)
        bnn, mf = load_teacher(teacher, device, run.allow_imports)
        _classification(mf.task, "the teacher")
        name = teacher_dataset(mf, None, str(teacher))
        t = mf.training
        data = load_dataset(name, train_fraction=float(t.get("train_fraction", 1.0)), seed=int(t.get("seed", 0)),
                            kwargs=t.get("dataset_kwargs"), allow_imports=run.allow_imports)
        check_fits(mf, data, "the teacher")
        stages = run_stages(1, "record", run)
        with stages(f"recording a {recipe.kind} record of {mf.architecture.model} on {len(data.train)} training "
                    f"examples of {name}"):
            rec = record(bnn, data.train, kind=recipe.kind, temperature=recipe.temperature,
                         spectral_fraction=recipe.spectral_fraction, batch_size=recipe.batch_size, device=device,
                         metadata={"dataset": name, "teacher": str(teacher), "model": mf.architecture.model,
                                   "train_fraction": float(t.get("train_fraction", 1.0)),
                                   "seed": int(t.get("seed", 0)), "examples": len(data.train)})
        if is_main():
            out.parent.mkdir(parents=True, exist_ok=True)
            rec.save(out)
    barrier()
    return RecordResult(str(out), str(teacher), name, rec.kind, rec.temperature, rec.num_classes, len(data.train),
                        rec.num_values(), [b.name for b in rec.blocks], time.perf_counter() - t_start, __version__,
                        environment(device), record=rec)


@dataclass
class DataFreeResult(Result):
    """What a data-free run measured (``to_dict()``: ``metrics.json``).

    ``networks``: ``{"teacher", "student"}`` -> ``{"test", "uncertainty"}`` on the test split of
    the teacher's data set; ``reconstruction``: the transfer inputs (count, kind, objective,
    steps, the mean objective before and after, the share the teacher assigns the target class);
    ``agreement``: the share of test inputs where student and teacher predict the same class.
    """

    dataset: str
    teacher: dict[str, Any]
    student: dict[str, Any]
    record: dict[str, Any]
    reconstruction: dict[str, Any]
    networks: dict[str, dict[str, Any]]
    agreement: float
    train: dict[str, Any]
    test_size: int
    config: dict[str, Any]
    wall_time_s: float
    bayesdistill_version: str
    environment: dict[str, Any] = field(default_factory=dict)
    out: Optional[Path] = live()
    student_bnn: Optional[BNN] = live()


def datafree(
    out: Union[str, os.PathLike],
    teacher: Union[str, os.PathLike],
    record_path: Union[str, os.PathLike],
    student: str = "mlp",
    recipe: DataFreeRecipe = DataFreeRecipe(),
    *,
    hidden: Optional[Iterable[int]] = None,
    channels: Optional[int] = None,
    student_kwargs: Optional[Mapping[str, Any]] = None,
    uncertainty: UncertaintyRecipe = UncertaintyRecipe(),
    run: RunSettings = RunSettings(),
) -> DataFreeResult:
    """Distil the teacher saved at ``teacher`` into ``student`` from its record alone; see the
    module docstring. ``hidden`` / ``channels`` / ``student_kwargs``: the student's architecture
    options (``hidden`` for ``mlp``, default 256,256)."""
    t_start = time.perf_counter()
    out = check_run_folder(out, DATAFREE_ARTEFACTS, overwrite=run.overwrite)
    with torch_threads(run.threads):
        device = resolve_device(run.device)
        t_bnn, mf = load_teacher(teacher, device, run.allow_imports)
        _classification(mf.task, "the teacher")
        rec = ActivationRecord.load(record_path)
        rec.check_teacher(t_bnn)  # RecordMismatchError for a record of another teacher
        name = teacher_dataset(mf, rec.metadata.get("dataset"), str(teacher))
        check_model_name(student, allow_imports=run.allow_imports, what="student")
        kwargs = {**architecture_kwargs(student, channels=channels, hidden=hidden, strict=True, what="student"),
                  **dict(student_kwargs or {})}
        test = load_dataset(name, kwargs=mf.training.get("dataset_kwargs"), allow_imports=run.allow_imports)
        check_fits(mf, test, "the teacher")
        torch.manual_seed(run.seed)
        net = build_model(student, mf.input_shape, mf.output_dim, kwargs, allow_imports=run.allow_imports,
                          what="student")
        s_bnn = BNN(net, prior=priors.Normal(scale=1.0), likelihood=likelihood_for(mf.task),
                    dataset_size=recipe.inputs, init="module")
        step = uncertainty_step(name, mf.task, uncertainty, enabled=run.ood, num_samples=run.num_samples,
                                seed=run.seed)
        main = is_main()
        stages = run_stages(3, "datafree", run, step)
        stages.say(f"datafree: teacher {mf.architecture.model} -> student {student} ({s_bnn.num_weights} Bayesian "
                   f"weights) from a {rec.kind} record ({rec.num_values()} numbers), device {device}, "
                   f"{torch.get_num_threads()} threads")
        with stages(f"reconstructing {recipe.inputs} inputs ({recipe.steps} steps) and distilling the student "
                    f"for {recipe.epochs} epochs"):
            res = data_free_student(
                s_bnn, t_bnn, rec, recipe.inputs,
                reconstruct_options={"steps": recipe.steps, "lr": recipe.reconstruct_lr,
                                     "batch_size": recipe.reconstruct_batch_size, "objective": recipe.objective,
                                     **({"feature_weight": recipe.feature_weight, "tv_weight": recipe.tv_weight}
                                        if recipe.objective == "deepinversion" else {}),
                                     "device": device, "progress": not run.quiet, "seed": run.seed},
                weight=recipe.kd_weight, teacher_mode=recipe.teacher_mode, epochs=recipe.epochs,
                batch_size=recipe.batch_size, lr=recipe.lr, lr_schedule=lr_schedule(recipe.lr_schedule),
                seed=run.seed, progress=not run.quiet, kl_weight=recipe.kl_weight, device=device)
        with stages(f"evaluating teacher and student on the test set ({run.num_samples} posterior draws)"):
            s_bnn.load_posterior(s_bnn.posterior())  # evaluate exactly what model.pt holds
            tests = {n: evaluate(b, test.test, num_samples=run.num_samples, seed=run.seed)
                     for n, b in (("teacher", t_bnn), ("student", s_bnn))}
            x_test = test.test.tensors[0]
            agreement = float((teacher_labels(t_bnn, x_test, num_samples=run.num_samples, seed=run.seed)
                               == teacher_labels(s_bnn, x_test, num_samples=run.num_samples, seed=run.seed))
                              .float().mean())
            r = res.reconstruction
            hits = teacher_labels(t_bnn, r.x, num_samples=run.num_samples, seed=run.seed) == r.classes
        unc = score_networks(step, stages, {"teacher": t_bnn, "student": s_bnn}, test.test)
        unc["student"] = with_kept(unc["student"], unc["teacher"])
        config = {"teacher": str(teacher), "record": str(record_path), "student": student, "dataset": name,
                  **recipe.to_dict(), "temperature": rec.temperature, "hidden": list(hidden) if hidden else None,
                  "channels": channels, "student_kwargs": dict(kwargs), "num_samples": run.num_samples,
                  "seed": run.seed, "device": str(device), "overwrite": run.overwrite,
                  "threads": torch.get_num_threads(), "ood": run.ood, "train_fraction": 1.0}
        result = DataFreeResult(
            name, {"path": str(teacher), "model": mf.architecture.model, "num_weights": t_bnn.num_weights},
            {"model": student, "model_kwargs": dict(kwargs), "num_weights": s_bnn.num_weights, "prior": "Normal(0, 1)"},
            {"path": str(record_path), "kind": rec.kind, "temperature": rec.temperature, "num_values": rec.num_values(),
             "blocks": [b.name for b in rec.blocks]},
            {"inputs": len(r), "kind": r.kind, "objective": r.objective, "steps": r.steps,
             "loss_start": float(r.loss_start.mean()), "loss_end": float(r.loss_end.mean()),
             "target_class_rate": float(hits.float().mean())},
            {n: {"test": tests[n], "uncertainty": unc[n]} for n in ("teacher", "student")}, agreement,
            fit_summary(s_bnn, res.fit), len(test.test), config, 0.0, __version__, environment(device),
            out=out, student_bnn=s_bnn)
        with stages("writing the student, metrics and report"):
            result.wall_time_s = time.perf_counter() - t_start
            if main:
                open_run_folder(out, DATAFREE_ARTEFACTS, run.overwrite)
                save_model(s_bnn, out / MODEL_FILE_NAME, model=student, model_kwargs=kwargs,
                           input_shape=mf.input_shape, output_dim=mf.output_dim, dataset=name, training=config)
                write_history(res.fit, out / "history.csv")
                if res.fit.history:
                    plots.save(plots.elbo(res.fit), out / "elbo.png")
                write_metrics(out, result, datafree_report)
    barrier()
    return result
