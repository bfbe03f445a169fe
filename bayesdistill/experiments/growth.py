"""Growing a larger network from a small trained one (``bayesdistill grow``).

The small model's posterior is mapped onto a larger architecture by a growth plan
(:func:`bayesdistill.distill.grow`, modes ``net2net``, ``embed``, ``zero``, ``uniform``); the
grown BNN (:func:`bayesdistill.student_from_small`: the small posterior as prior and start of the
old weights, a broad prior on the new ones) is fitted by SVI on the data set (default: the small
model's); with ``compare`` the same network from scratch (prior Normal(0, 1), its own
initialization) is fitted with the same settings. ::

    from bayesdistill.experiments import GrowRecipe, grow
    result = grow("runs/large", "runs/small/model.pt", "mlp", GrowRecipe(epochs=10), hidden=(128, 128), compare=True)
    result.networks["grown"]["test"]["accuracy"], result.networks["scratch"]["test"]["accuracy"]

A plan that would shrink a layer is refused (the library's
:class:`~bayesdistill.errors.ShapeMismatchError`) before any training. Writes (rank 0 only)
``model.pt`` (the grown network; ``bayesdistill evaluate`` reads it), ``plan.pt`` and
``plan.json``, ``metrics.json``, ``report.md``, ``history.csv`` (and ``scratch_history.csv``),
``elbo.png`` (the training curves, both networks with ``compare``). Every network (the small one
too, where the data fit it) gets the uncertainty step.
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
from ..distill.grow import GrowthPlan, student_from_small
from ..distill.grow import grow as grow_plan
from ..infer import FitResult, evaluate, fit
from .factories import architecture_kwargs, build_model, check_dataset_name, check_model_name, is_import_path, load_dataset
from .family_reports import grow_report
from .model_file import MODEL_FILE_NAME, save_model
from .recipes import GrowRecipe, RunSettings, UncertaintyRecipe
from .results import Result, live
from .runs import (barrier, check_run_folder, environment, is_main, open_run_folder, resolve_device, run_stages,
                   torch_threads, write_metrics)
from .steps import fit_summary, likelihood_for, load_teacher, lr_schedule, teacher_dataset, write_history
from .uncertainty import score_networks, uncertainty_step

__all__ = ["GrowResult", "grow", "GROW_ARTEFACTS"]

GROW_ARTEFACTS = ("metrics.json", "report.md", MODEL_FILE_NAME, "plan.pt", "plan.json", "history.csv",
                  "scratch_history.csv", "elbo.png")


@dataclass
class GrowResult(Result):
    """What a growth run measured (``to_dict()``: ``metrics.json``).

    ``networks``: ``"small"`` (where the data fit it), ``"grown"``, and with ``compare``
    ``"scratch"`` -> ``{"test", "uncertainty"}``; ``train``: ``"grown"`` (and ``"scratch"``) ->
    the last training ELBO terms, epochs and time; ``plan``: the growth plan's overview.
    """

    dataset: str
    task: str
    small: dict[str, Any]
    large: dict[str, Any]
    plan: dict[str, Any]
    networks: dict[str, dict[str, Any]]
    train: dict[str, dict[str, Any]]
    train_size: int
    test_size: int
    config: dict[str, Any]
    wall_time_s: float
    bayesdistill_version: str
    environment: dict[str, Any] = field(default_factory=dict)
    out: Optional[Path] = live()
    grown_bnn: Optional[BNN] = live()
    scratch_bnn: Optional[BNN] = live()
    growth_plan: Optional[GrowthPlan] = live()


def _fits(mf: Any, data: Any) -> bool:
    return tuple(data.input_shape) == tuple(mf.input_shape) and int(data.output_dim) == int(mf.output_dim)


def grow(
    out: Union[str, os.PathLike],
    small: Union[str, os.PathLike],
    model: str,
    recipe: GrowRecipe = GrowRecipe(),
    *,
    dataset: Optional[str] = None,
    hidden: Optional[Iterable[int]] = None,
    channels: Optional[int] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    dataset_kwargs: Optional[Mapping[str, Any]] = None,
    train_fraction: float = 1.0,
    compare: bool = False,
    uncertainty: UncertaintyRecipe = UncertaintyRecipe(),
    run: RunSettings = RunSettings(),
) -> GrowResult:
    """Grow the model saved at ``small`` into ``model`` and fit it on ``dataset``; see the module docstring.

    Args:
        out: the run folder (a folder holding a run is refused unless ``run.overwrite``).
        small: the small model's file (``model.pt`` / ``posterior.pt``) or run folder.
        model: the large architecture (built-in or import path); ``hidden`` (mlp), ``channels``
            (1-D CNNs) and ``model_kwargs`` its options.
        recipe: the growth mode, priors, start and SVI settings.
        dataset: default: the small model's; ``dataset_kwargs``: a data-set factory's options.
        train_fraction: fit on this class-balanced fraction of the training set.
        compare: also fit the same network from scratch with the same settings.
        uncertainty: OOD detection and selective prediction of every network (unless ``run.ood`` false).
        run: seed, device, draws, threads, imports, overwrite, quiet, ood.
    """
    t_start = time.perf_counter()
    out = check_run_folder(out, GROW_ARTEFACTS, overwrite=run.overwrite)
    with torch_threads(run.threads):
        device = resolve_device(run.device)
        s_bnn, mf = load_teacher(small, device, run.allow_imports)
        name = teacher_dataset(mf, dataset, str(small))
        check_dataset_name(name, allow_imports=run.allow_imports)
        check_model_name(model, allow_imports=run.allow_imports)
        kwargs = {**architecture_kwargs(model, channels=channels, hidden=hidden, strict=True),
                  **dict(model_kwargs or {})}
        kw = dataset_kwargs if dataset_kwargs is not None else (
            mf.training.get("dataset_kwargs") if name == mf.dataset else None)
        data = load_dataset(name, train_fraction=train_fraction, seed=run.seed, kwargs=kw,
                            allow_imports=run.allow_imports)
        torch.manual_seed(run.seed)  # the large network's initialization (grown and scratch share it)
        net = build_model(model, data.input_shape, data.output_dim, kwargs, allow_imports=run.allow_imports)
        plan = grow_plan(s_bnn, net, mode=recipe.mode, seed=run.seed)  # ShapeMismatchError: it would shrink
        n = len(data.train)
        grown = student_from_small(s_bnn, net, plan=plan, prior_scale=recipe.prior_scale,
                                   new_prior_scale=recipe.new_prior_scale, init=recipe.init,
                                   likelihood=likelihood_for(data.task), dataset_size=n)
        scratch = (BNN(net, prior=priors.Normal(scale=1.0), likelihood=likelihood_for(data.task), dataset_size=n,
                       init="module") if compare else None)
        shown = name if is_import_path(name) else data.name
        step = uncertainty_step(shown, data.task, uncertainty, enabled=run.ood, num_samples=run.num_samples,
                                seed=run.seed)
        main = is_main()
        stages = run_stages(3 + compare, "grow", run, step)
        stages.say(f"grow: {mf.architecture.model} ({s_bnn.num_weights} Bayesian weights) -> {model} "
                   f"({grown.num_weights}) by {recipe.mode} on {data.name} ({n} train / {len(data.test)} test), "
                   f"device {device}, {torch.get_num_threads()} threads")
        stages.say(plan.summary())
        fit_kw = dict(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, device=device, seed=run.seed,
                      kl_weight=recipe.kl_weight, lr_schedule=lr_schedule(recipe.lr_schedule), progress=not run.quiet,
                      eval_data=data.test if run.monitor else None)
        hist: dict[str, FitResult] = {}
        with stages(f"training the grown network for {recipe.epochs} epochs"):
            hist["grown"] = fit(grown, data.train, **fit_kw)
        if scratch is not None:
            with stages(f"training the same network from scratch for {recipe.epochs} epochs"):
                hist["scratch"] = fit(scratch, data.train, **fit_kw)
        with stages(f"evaluating on the test set ({run.num_samples} posterior draws)"):
            grown.load_posterior(grown.posterior())  # evaluate exactly what model.pt holds
            nets = {"small": s_bnn} if _fits(mf, data) else {}
            nets["grown"] = grown
            if scratch is not None:
                nets["scratch"] = scratch
            tests = {k: evaluate(b, data.test, num_samples=run.num_samples, seed=run.seed) for k, b in nets.items()}
        unc = score_networks(step, stages, nets, data.test)
        config = {"small": str(small), "model": model, "dataset": shown, **recipe.to_dict(),
                  "hidden": list(hidden) if hidden is not None else None, "channels": channels,
                  "model_kwargs": dict(kwargs), "train_fraction": train_fraction, "compare": compare,
                  "num_samples": run.num_samples, "seed": run.seed, "device": str(device), "monitor": run.monitor,
                  "overwrite": run.overwrite, "threads": torch.get_num_threads(), "ood": run.ood}
        if kw:
            config["dataset_kwargs"] = dict(kw)
        result = GrowResult(
            shown, data.task,
            {"path": str(small), "model": mf.architecture.model, "num_weights": s_bnn.num_weights,
             "dataset": mf.dataset},
            {"model": model, "model_kwargs": dict(kwargs), "num_weights": grown.num_weights},
            plan.overview(),
            {k: {"test": tests[k], "uncertainty": unc[k]} for k in nets},
            {k: fit_summary(nets[k], h) for k, h in hist.items()}, n, len(data.test), config, 0.0, __version__,
            environment(device), out=out, grown_bnn=grown, scratch_bnn=scratch, growth_plan=plan)
        with stages("writing the model, plan, metrics and report"):
            result.wall_time_s = time.perf_counter() - t_start
            if main:
                _write(out, result, hist, overwrite=run.overwrite, model=model, model_kwargs=kwargs, data=data,
                       dataset=shown, config=config)
    barrier()
    return result


def _write(out: Path, result: GrowResult, hist: Mapping[str, FitResult], *, overwrite: bool, model: str,
           model_kwargs: Mapping[str, Any], data: Any, dataset: str, config: Mapping[str, Any]) -> None:
    """The run's artefacts (rank 0): model.pt, the plan, histories, curves, metrics.json and report.md."""
    open_run_folder(out, GROW_ARTEFACTS, overwrite)
    save_model(result.grown_bnn, out / MODEL_FILE_NAME, model=model, model_kwargs=model_kwargs,
               input_shape=data.input_shape, output_dim=data.output_dim, dataset=dataset, training=dict(config))
    result.growth_plan.save(out / "plan.pt")
    result.growth_plan.to_json(out / "plan.json")
    write_history(hist["grown"], out / "history.csv")
    if "scratch" in hist:
        write_history(hist["scratch"], out / "scratch_history.csv")
    if hist["grown"].history:
        _curves(hist, out / "elbo.png")
    write_metrics(out, result, grow_report)


def _curves(hist: Mapping[str, FitResult], path: Path) -> None:
    """The training ELBO terms of each fitted network, one row of panels per network."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(hist), 3.5))
    axes = fig.subplots(1, len(hist), squeeze=False)
    for ax, (name, h) in zip(axes[0], hist.items()):
        plots.elbo(h, ax=ax)
        ax.set_title(f"{name}: training ELBO, NLL, KL")
    fig.tight_layout()
    plots.save(fig, path)
