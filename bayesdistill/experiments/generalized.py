"""Generalized distillation on a privileged-information data set (``bayesdistill generalized``).

Lopez-Paz, Bottou, Schölkopf & Vapnik (ICLR 2016): per seed, one draw of a ``privileged-*``
data set (``bd.datasets.load(name, seed=seed)``) and one call of
:func:`bayesdistill.distill.generalized_distillation`: the teacher on the privileged inputs x*,
the student on the regular inputs x, the distilled student on x with the teacher's soft labels
on x*. ::

    from bayesdistill.experiments import GeneralizedRecipe, generalized
    result = generalized("runs/gd", "privileged-clean-labels", GeneralizedRecipe(seeds=(0, 1)))
    result.summary["distilled"]["accuracy"]          # {"mean": ..., "std": ...}

Writes (rank 0 only) ``metrics.json`` (per seed and role the test metrics and the selective
prediction of the uncertainty step, then mean ± standard deviation over the seeds) and
``report.md`` (tables rendered from those numbers). The teacher is tested on the test set's
privileged inputs, the students on its regular inputs. The ``privileged-*`` sets have no
built-in OOD sets, so the uncertainty step computes the selective prediction only (and says so).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .._version import __version__
from ..datasets import PRIVILEGED_EXPERIMENTS, load
from ..distill.generalized import ROLES, generalized_distillation
from .family_reports import generalized_report
from .recipes import GeneralizedRecipe, RunSettings, UncertaintyRecipe
from .results import Result, live
from .runs import (ExperimentError, barrier, check_run_folder, environment, is_main, run_stages, open_run_folder,
                   resolve_device, torch_threads, write_metrics)
from .steps import lr_schedule
from .uncertainty import uncertainty_step

__all__ = ["GeneralizedResult", "generalized", "generalized_datasets", "GENERALIZED_ARTEFACTS", "SUMMARY_METRICS", "mean_std",
           "check_privileged"]

GENERALIZED_ARTEFACTS = ("metrics.json", "report.md")
#: The test metrics summarized over seeds (mean ± std) in metrics.json and the report.
SUMMARY_METRICS = ("accuracy", "nll", "ece")


@dataclass
class GeneralizedResult(Result):
    """What a generalized-distillation run measured (``to_dict()``: ``metrics.json``).

    ``per_seed``: one entry per seed: ``{"seed", "train_size", "test_size", <role>: {"test",
    "uncertainty"}}``; ``summary``: role -> metric -> ``{"mean", "std"}`` over the seeds (``std``:
    the sample standard deviation, ``None`` for one seed); ``gain``: the distilled student's
    accuracy minus the student's, per seed and as mean ± std.
    """

    dataset: str
    seeds: list[int]
    roles: list[str]
    per_seed: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, Optional[float]]]]
    gain: dict[str, Any]
    config: dict[str, Any]
    wall_time_s: float
    bayesdistill_version: str
    environment: dict[str, Any] = field(default_factory=dict)
    out: Optional[Path] = live()
    models: Optional[dict[int, dict[str, Any]]] = live()


def mean_std(values: Sequence[float]) -> dict[str, Optional[float]]:
    """``{"mean", "std"}`` of ``values`` (the sample standard deviation; ``None`` for one value)."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "std": std}


def generalized_datasets() -> tuple[str, ...]:
    """The data sets ``generalized`` accepts: the ``privileged-*`` ones."""
    return tuple(PRIVILEGED_EXPERIMENTS)


def check_privileged(dataset: str) -> str:
    """The canonical name of a ``privileged-*`` data set; ``ExperimentError`` naming them otherwise."""
    key = str(dataset).strip().lower().replace("_", "-")
    if key not in PRIVILEGED_EXPERIMENTS:
        raise ExperimentError(
            f"generalized distillation needs a data set with privileged inputs x* (triplets x, x*, y); {dataset!r} "
            f"is not one: use one of {', '.join(PRIVILEGED_EXPERIMENTS)} (docs/privileged.md)")
    return key


def _config(name: str, recipe: GeneralizedRecipe, device: torch.device, run: RunSettings) -> dict[str, Any]:
    return {"dataset": name, **recipe.to_dict(), "num_samples": run.num_samples, "device": str(device),
            "overwrite": run.overwrite, "threads": torch.get_num_threads(), "ood": run.ood}


def _one_seed(name: str, seed: int, recipe: GeneralizedRecipe, uncertainty: UncertaintyRecipe, device: torch.device,
              run: RunSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    data = load(name, seed=seed)
    res = generalized_distillation(
        data, temperature=recipe.temperature, imitation=recipe.imitation, prior_scale=recipe.prior_scale,
        epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, lr_schedule=lr_schedule(recipe.lr_schedule),
        teacher_mode=recipe.teacher_mode, num_samples=run.num_samples, seed=seed, device=device,
        progress=not run.quiet, kl_weight=recipe.kl_weight)
    step = uncertainty_step(name, "classification", uncertainty, enabled=run.ood, num_samples=run.num_samples,
                            seed=seed)
    views = {"teacher": data.test.teacher_view(), "student": data.test.regular(), "distilled": data.test.regular()}
    entry: dict[str, Any] = {"seed": seed, "train_size": len(data.train), "test_size": len(data.test)}
    for role in ROLES:
        unc = step.score(res.models[role], views[role], role) if step is not None else None
        entry[role] = {"test": dict(res.metrics[role]), "uncertainty": unc.to_dict() if unc is not None else None}
    return entry, res.models


def _summary(per_seed: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    summary = {role: {m: mean_std([e[role]["test"][m] for e in per_seed]) for m in SUMMARY_METRICS
                      if all(m in e[role]["test"] for e in per_seed)} for role in ROLES}
    for role in ROLES:
        if all((e[role]["uncertainty"] or {}).get("applicable") for e in per_seed):
            summary[role]["selective_area"] = mean_std([e[role]["uncertainty"]["selective_area"] for e in per_seed])
    gains = [e["distilled"]["test"]["accuracy"] - e["student"]["test"]["accuracy"] for e in per_seed]
    return summary, {"per_seed": gains, **mean_std(gains)}


def generalized(
    out: Union[str, os.PathLike],
    dataset: str = "privileged-clean-labels",
    recipe: GeneralizedRecipe = GeneralizedRecipe(),
    *,
    uncertainty: UncertaintyRecipe = UncertaintyRecipe(),
    run: RunSettings = RunSettings(),
) -> GeneralizedResult:
    """Generalized distillation on ``dataset`` for each of ``recipe.seeds``; artefacts into ``out``.

    Args:
        out: the run folder (a folder holding a run is refused unless ``run.overwrite``).
        dataset: a ``privileged-*`` data set (``bd.datasets.PRIVILEGED_EXPERIMENTS``); any other is
            refused before any work.
        recipe: the seeds, the soft labels (temperature, imitation) and the SVI settings.
        uncertainty: the selective prediction's settings (computed unless ``run.ood`` is false).
        run: device, draws, threads, overwrite, quiet, ood (``run.seed`` is not used: ``recipe.seeds``).
    """
    t_start = time.perf_counter()
    name = check_privileged(dataset)
    out = check_run_folder(out, GENERALIZED_ARTEFACTS, overwrite=run.overwrite)
    with torch_threads(run.threads):
        device = resolve_device(run.device)
        main = is_main()
        stages = run_stages(len(recipe.seeds) + 1, "generalized", run)
        stages.say(f"generalized: {name}, seeds {', '.join(map(str, recipe.seeds))}, T={recipe.temperature:g}, "
                   f"lambda={recipe.imitation:g}, {recipe.epochs} epochs, device {device}, "
                   f"{torch.get_num_threads()} threads")
        per_seed, models = [], {}
        for seed in recipe.seeds:
            with stages(f"seed {seed}: teacher on x*, student on x, distilled student"):
                entry, models[seed] = _one_seed(name, seed, recipe, uncertainty, device, run)
            per_seed.append(entry)
        summary, gain = _summary(per_seed)
        result = GeneralizedResult(name, list(recipe.seeds), list(ROLES), per_seed, summary, gain,
                                   _config(name, recipe, device, run), 0.0, __version__, environment(device),
                                   out=out, models=models)
        with stages("writing the metrics and the report"):
            result.wall_time_s = time.perf_counter() - t_start
            if main:
                write_metrics(open_run_folder(out, GENERALIZED_ARTEFACTS, run.overwrite), result, generalized_report)
    barrier()
    return result
