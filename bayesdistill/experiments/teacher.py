"""The teacher pipeline (``bayesdistill fit``): train a Bayesian network, evaluate it, save it whole.

::

    from bayesdistill.experiments import TeacherRecipe, RunSettings, fit_teacher
    result = fit_teacher("runs/teacher", TeacherRecipe(epochs=30), dataset="mnist1d", model="cnn-deep",
                         run=RunSettings(threads=1))
    result.test["accuracy"], result.to_dict()      # the content of metrics.json

Writes into ``out`` (rank 0 of a multi-process run only): ``model.pt`` (the whole model:
``bd.load_model``), ``posterior.pt`` (the posterior with architecture metadata),
``metrics.json``, ``history.csv``, ``elbo.png``, ``calibration.png``, ``snr.png``, and
``checkpoints/checkpoint.pt`` after every epoch (``resume=True`` continues from it).
``metrics.json`` holds, next to the test metrics, the teacher's OOD detection and selective
prediction (``uncertainty``; :mod:`bayesdistill.experiments.uncertainty`) unless ``run.ood`` is
false.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .._version import __version__
from ..bnn import BNN, priors
from ..diagnostics import calibration, plots
from ..infer import FitResult, evaluate, fit
from .factories import (architecture_kwargs, build_model, check_dataset_name, check_model_name, is_import_path,
                        load_dataset)
from .model_file import MODEL_FILE_NAME, POSTERIOR_FILE_NAME, save_model
from .recipes import RunSettings, TeacherRecipe, UncertaintyRecipe
from .results import Result, live
from .runs import (CHECKPOINT_FOLDER, barrier, check_run_folder, environment, is_main, run_stages, open_run_folder,
                   resolve_device, torch_threads, write_metrics)
from .steps import fit_summary, likelihood_for, likelihood_name, lr_schedule, write_history
from .uncertainty import UncertaintyResult, score_networks, uncertainty_step

__all__ = ["TeacherResult", "fit_teacher", "TEACHER_ARTEFACTS"]

#: The files of a teacher run.
TEACHER_ARTEFACTS = ("metrics.json", POSTERIOR_FILE_NAME, MODEL_FILE_NAME, "history.csv", "elbo.png",
                     "calibration.png", "snr.png")


@dataclass
class TeacherResult(Result):
    """What a teacher run measured (``to_dict()``: ``metrics.json``), and the trained BNN.

    ``uncertainty``: the teacher's OOD detection and selective prediction (``None`` with
    ``run.ood`` false; a statement of why not for a regression teacher).
    """

    dataset: str
    model: str
    task: str
    test: dict[str, Any]
    train: dict[str, float]
    epochs_trained: int
    train_size: int
    test_size: int
    num_weights: int
    config: dict[str, Any]
    train_time_s: float
    wall_time_s: float
    bayesdistill_version: str
    calibration: dict[str, Any]
    environment: dict[str, Any]
    uncertainty: Optional[UncertaintyResult] = None
    out: Optional[Path] = live()
    bnn: Optional[BNN] = live()
    history: Optional[FitResult] = live()


@dataclass
class _Teacher:
    """The prepared run: device, data, the untrained BNN and how its network was built."""

    device: torch.device
    data: Any
    dataset: str
    bnn: BNN
    model_kwargs: dict[str, Any]


def _prepare(recipe: TeacherRecipe, dataset: str, model: str, model_kwargs: Optional[Mapping[str, Any]],
             hidden: Optional[Iterable[int]], dataset_kwargs: Optional[Mapping[str, Any]], train_fraction: float,
             run: RunSettings) -> _Teacher:
    """Everything that can fail on the user's input, before any output."""
    device = resolve_device(run.device)
    check_dataset_name(dataset, allow_imports=run.allow_imports)
    check_model_name(model, allow_imports=run.allow_imports)
    data = load_dataset(dataset, train_fraction=train_fraction, seed=run.seed, kwargs=dataset_kwargs,
                        allow_imports=run.allow_imports)
    kwargs = {**architecture_kwargs(model, channels=recipe.channels, hidden=hidden), **dict(model_kwargs or {})}
    torch.manual_seed(run.seed)  # network initialization
    net = build_model(model, data.input_shape, data.output_dim, kwargs, allow_imports=run.allow_imports)
    bnn = BNN(net, prior=priors.Normal(scale=recipe.prior_scale), likelihood=likelihood_for(data.task),
              dataset_size=len(data.train))
    return _Teacher(device, data, dataset if is_import_path(dataset) else data.name, bnn, kwargs)


def _config(recipe: TeacherRecipe, t: _Teacher, model: str, hidden: Any, train_fraction: float, local_reparam: Any,
            checkpoint: bool, resume: bool, extend: bool, dataset_kwargs: Any, run: RunSettings) -> dict[str, Any]:
    """The run's settings as recorded in metrics.json and the model file."""
    config = {"dataset": t.dataset, "model": model, "epochs": recipe.epochs, "batch_size": recipe.batch_size,
              "lr": recipe.lr, "lr_schedule": recipe.lr_schedule or "none", "prior_scale": recipe.prior_scale,
              "kl_weight": recipe.kl_weight, "local_reparam": local_reparam, "channels": recipe.channels,
              "hidden": list(hidden) if hidden is not None else None, "train_fraction": train_fraction,
              "num_samples": run.num_samples, "seed": run.seed, "device": str(t.device), "monitor": run.monitor,
              "checkpoint": checkpoint, "resume": resume, "overwrite": run.overwrite, "extend": extend,
              "threads": torch.get_num_threads(), "model_kwargs": dict(t.model_kwargs), "ood": run.ood}
    if dataset_kwargs:
        config["dataset_kwargs"] = dict(dataset_kwargs)
    return config


def _train(recipe: TeacherRecipe, t: _Teacher, out: Path, local_reparam: Any, checkpoint: bool, resume: bool,
           extend: bool, run: RunSettings) -> FitResult:
    ckpt = {"checkpoint_dir": out / CHECKPOINT_FOLDER, "resume": resume, "overwrite": run.overwrite,
            "extend": extend} if checkpoint else {}
    return fit(t.bnn, t.data.train, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
               device=t.device, seed=run.seed, local_reparam=local_reparam, kl_weight=recipe.kl_weight,
               lr_schedule=lr_schedule(recipe.lr_schedule), eval_data=t.data.test if run.monitor else None,
               progress=not run.quiet, **ckpt)


def _posterior_metadata(t: _Teacher, model: str, config: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The posterior file's metadata: what ``evaluate`` and older readers need."""
    env = environment(t.device)
    return {"model": model, "model_kwargs": dict(t.model_kwargs), "dataset": t.dataset,
            "input_shape": list(t.data.input_shape), "output_dim": int(t.data.output_dim), "task": t.data.task,
            "likelihood": likelihood_name(t.data.task), "prior_scale": float(config["prior_scale"]),
            "seed": int(config["seed"]), "train_fraction": float(config["train_fraction"]), "epochs": epochs,
            "torch_threads": env["torch_threads"], "world_size": env["world_size"], "bayesdistill_version": __version__}


def _write(out: Path, t: _Teacher, q: Any, model: str, config: dict[str, Any], result: FitResult, cal: Any,
           overwrite: bool) -> None:
    """The artefacts (rank 0 only)."""
    open_run_folder(out, TEACHER_ARTEFACTS, overwrite)
    q.metadata = _posterior_metadata(t, model, config, len(result.history))
    q.save(out / POSTERIOR_FILE_NAME)
    save_model(t.bnn, out / MODEL_FILE_NAME, model=model, model_kwargs=t.model_kwargs,
               input_shape=t.data.input_shape, output_dim=t.data.output_dim, dataset=t.dataset, training=config,
               posterior_metadata=q.metadata)
    write_history(result, out / "history.csv")
    if result.history:
        plots.save(plots.elbo(result), out / "elbo.png")
    plots.save(plots.calibration(cal, title=f"{model} on {t.data.name}"), out / "calibration.png")
    plots.save(plots.snr_histogram(q), out / "snr.png")


def fit_teacher(
    out: Union[str, os.PathLike],
    recipe: TeacherRecipe = TeacherRecipe(),
    *,
    dataset: str = "mnist1d",
    model: str = "cnn",
    model_kwargs: Optional[Mapping[str, Any]] = None,
    hidden: Optional[Iterable[int]] = (256, 256),
    dataset_kwargs: Optional[Mapping[str, Any]] = None,
    train_fraction: float = 1.0,
    local_reparam: Union[bool, str] = False,
    checkpoint: bool = True,
    resume: bool = False,
    extend: bool = False,
    uncertainty: UncertaintyRecipe = UncertaintyRecipe(),
    run: RunSettings = RunSettings(),
) -> TeacherResult:
    """Train a teacher with ``recipe`` on ``dataset`` and write its artefacts into ``out``.

    Args:
        out: the run folder. A folder that already holds a run is refused unless ``resume`` or
            ``run.overwrite`` (before any work); a file is refused.
        recipe: the hyperparameters (``recipe.channels`` applies to ``cnn``).
        dataset: a built-in data-set name or an import path ``package.module:factory`` (with
            ``run.allow_imports``); see :mod:`bayesdistill.experiments.factories`.
        model: a built-in model name or an import path ``package.module:factory`` (likewise).
        model_kwargs: the model factory's options (``hidden`` applies to ``mlp``).
        dataset_kwargs: the options of a data-set factory named by import path.
        train_fraction: train on this class-balanced fraction of the training set.
        local_reparam: ``False``, ``"all"`` or ``"linear"`` (see ``bd.fit``).
        checkpoint: write a checkpoint after every epoch.
        resume: continue from the checkpoint in ``out``.
        extend: allow a resumed run more epochs than it was planned for.
        uncertainty: the OOD kinds, scores and draws of the teacher's OOD detection and
            selective prediction (computed unless ``run.ood`` is false).
        run: seed, device, draws, monitor, threads, imports, overwrite, quiet, ood.

    Under ``torchrun`` every process trains its share and evaluates; rank 0 writes the files.
    """
    t_start = time.perf_counter()
    out = check_run_folder(out, TEACHER_ARTEFACTS, resume=resume, overwrite=run.overwrite)
    with torch_threads(run.threads):
        t = _prepare(recipe, dataset, model, model_kwargs, hidden, dataset_kwargs, train_fraction, run)
        config = _config(recipe, t, model, hidden, train_fraction, local_reparam, checkpoint, resume, extend,
                         dataset_kwargs, run)
        step = uncertainty_step(t.dataset, t.data.task, uncertainty, enabled=run.ood, num_samples=run.num_samples,
                                seed=run.seed)
        main = is_main()
        stages = run_stages(3, "fit", run, step)
        stages.say(f"fit: {model} ({t.bnn.num_weights} Bayesian weights) on {t.data.name} ({len(t.data.train)} "
                   f"train / {len(t.data.test)} test, {t.data.task}), device {t.device}, "
                   f"{torch.get_num_threads()} threads")
        with stages(f"training for {recipe.epochs} epochs"):
            result = _train(recipe, t, out, local_reparam, checkpoint, resume, extend, run)
        with stages(f"evaluating on the test set ({run.num_samples} posterior draws)"):
            q = t.bnn.posterior()
            t.bnn.load_posterior(q)  # evaluate exactly what the files hold (rho = softplus^-1(scale))
            test = evaluate(t.bnn, t.data.test, num_samples=run.num_samples, seed=run.seed)
            cal = calibration(t.bnn, t.data.test, num_samples=run.num_samples, seed=run.seed)
        unc = score_networks(step, stages, {"teacher": t.bnn}, t.data.test)["teacher"]
        with stages("writing the model, metrics and plots"):
            if main:
                _write(out, t, q, model, config, result, cal, run.overwrite)
            summary = fit_summary(t.bnn, result)
            teacher = TeacherResult(
                t.dataset, model, t.data.task, test, summary["train"], summary["epochs_trained"], len(t.data.train),
                len(t.data.test), t.bnn.num_weights, config, summary["train_time_s"], 0.0, __version__, cal.to_dict(),
                environment(t.device), unc, out=out, bnn=t.bnn, history=result)
            teacher.wall_time_s = time.perf_counter() - t_start
            if main:
                write_metrics(out, teacher)
    barrier()  # under torchrun: rank 0's files exist for every rank once this returns
    return teacher
