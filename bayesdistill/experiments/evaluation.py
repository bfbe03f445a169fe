"""Evaluate a saved model (``bayesdistill evaluate``): its test metrics, OOD detection and selective
prediction, reproducing the run's."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from ..infer import evaluate
from .factories import AllowImports, is_import_path, load_dataset
from .model_file import read_model_file
from .results import Result
from .recipes import UncertaintyRecipe
from .runs import environment, resolve_device, torch_threads
from .steps import check_fits, teacher_dataset
from .uncertainty import UncertaintyResult, uncertainty_step

__all__ = ["EvaluationResult", "evaluate_model"]


@dataclass
class EvaluationResult(Result):
    """The test metrics of a saved model (``to_dict()``: what ``evaluate --json`` prints) and its
    OOD detection and selective prediction (``uncertainty``; ``None`` with ``ood=False``)."""

    posterior: str
    dataset: str
    model: str
    seed: int
    test: dict[str, Any]
    environment: dict[str, Any] = field(default_factory=dict)
    uncertainty: Optional[UncertaintyResult] = None


def evaluate_model(path: Union[str, os.PathLike], *, dataset: Optional[str] = None,
                   dataset_kwargs: Optional[Mapping[str, Any]] = None, num_samples: int = 32,
                   seed: Optional[int] = None, device: str = "auto", threads: Optional[int] = None,
                   allow_imports: AllowImports = False, ood: bool = True,
                   uncertainty: UncertaintyRecipe = UncertaintyRecipe()) -> EvaluationResult:
    """The posterior-predictive test metrics of the model saved at ``path`` (a model file, a
    posterior file from ``fit`` or a run folder) on ``dataset`` (default: the one it was trained
    on), with ``num_samples`` draws seeded by ``seed`` (default: the run's seed, so the metrics
    reproduce its metrics.json); with ``ood``, its OOD detection and selective prediction
    (``uncertainty``: kinds, scores, draws; the run's values for the same settings)."""
    with torch_threads(threads):
        dev = resolve_device(device)
        mf = read_model_file(path)
        bnn = mf.build(allow_imports=allow_imports, device=dev)
        name = teacher_dataset(mf, dataset, str(path))
        kwargs = dataset_kwargs if dataset_kwargs is not None else (
            mf.training.get("dataset_kwargs") if name == mf.dataset else None)
        data = load_dataset(name, kwargs=kwargs, allow_imports=allow_imports)
        check_fits(mf, data)
        seed = mf.seed if seed is None else int(seed)
        scores = evaluate(bnn, data.test, num_samples=num_samples, seed=seed)
        shown = name if is_import_path(name) else data.name
        step = uncertainty_step(shown, data.task, uncertainty, enabled=ood, num_samples=num_samples, seed=seed)
        unc = step.score(bnn, data.test, mf.architecture.model) if step is not None else None
        return EvaluationResult(str(path), shown, mf.architecture.model, seed, scores, environment(dev), unc)
